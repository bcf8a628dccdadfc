//! Allocation rounds on fixture stores: a state in, the writes out, applied, and the next
//! round checked to have nothing left to do.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    Annotations, Cluster, ContainerSpec, EndpointSpec, HealthState, IpamConfig, IpamOptions,
    Network, NetworkAttachmentConfig, NetworkSpec, Node, NodeDescription, NodeState, NodeStatus,
    PortConfig, PublishMode, ReplicatedService, ResolutionMode, Service, ServiceSpec, Task,
    TaskSpec, TaskState, TaskStatus,
};

use super::ipam::Subnet;
use super::view::node_view;
use super::*;
use crate::orchestrator::to_timestamp;
use crate::store::{StoreActions, StoreObject, Tables};

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1000)
}

struct Fx {
    tables: Tables,
    cursors: Cursors,
}

impl Fx {
    fn new(pool: &str, size: u32) -> Fx {
        let mut fx = Fx {
            tables: Tables::default(),
            cursors: Cursors::default(),
        };
        let cluster = Cluster {
            id: "c".into(),
            spec: Some(berth_proto::v1::ClusterSpec {
                annotations: Some(Annotations {
                    name: "default".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            default_addr_pool: vec![pool.into()],
            subnet_size: size,
            data_path_port: 4789,
            ..Default::default()
        };
        fx.create(vec![cluster.into()]);
        fx
    }

    fn apply(&mut self, b: StoreActions) {
        let index = self.tables.version() + 1;
        self.tables
            .apply(index, to_timestamp(now()), b)
            .expect("batch applies");
    }

    fn create(&mut self, objs: Vec<crate::store::Object>) {
        let mut b = StoreActions::new();
        for o in objs {
            b.create(o);
        }
        self.apply(b);
    }

    fn update<T: StoreObject + Into<crate::store::Object>>(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut T),
    ) {
        let mut o = (*self.tables.get::<T>(id).expect("object")).clone();
        f(&mut o);
        let mut b = StoreActions::new();
        b.update(o);
        self.apply(b);
    }

    /// One round, its writes applied; returns how many units it wrote.
    fn round(&mut self) -> usize {
        let d = decide(&self.tables, &mut self.cursors, now());
        let n = d.units.len();
        for unit in d.units {
            let mut b = StoreActions::new();
            b.actions.extend(unit);
            self.apply(b);
        }
        n
    }

    /// Rounds until one writes nothing (at most 5).
    fn settle(&mut self) {
        for _ in 0..5 {
            if self.round() == 0 {
                return;
            }
        }
        panic!("allocation does not settle");
    }

    fn net(&self, name: &str) -> std::sync::Arc<Network> {
        self.tables.get_by_name::<Network>(name).expect("network")
    }

    fn task(&self, id: &str) -> std::sync::Arc<Task> {
        self.tables.get::<Task>(id).expect("task")
    }
}

fn network(id: &str, name: &str, subnet: Option<&str>) -> Network {
    Network {
        id: id.into(),
        spec: Some(NetworkSpec {
            annotations: Some(Annotations {
                name: name.into(),
                ..Default::default()
            }),
            driver: "overlay".into(),
            ipam: subnet.map(|s| IpamOptions {
                configs: vec![IpamConfig {
                    subnet: s.into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ingress(id: &str) -> Network {
    Network {
        id: id.into(),
        spec: Some(ingress_spec()),
        ..Default::default()
    }
}

fn service(id: &str, nets: &[&str], ports: Vec<PortConfig>, mode: ResolutionMode) -> Service {
    Service {
        id: id.into(),
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: id.into(),
                ..Default::default()
            }),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                networks: nets
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: (*n).into(),
                        aliases: vec![],
                    })
                    .collect(),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
            endpoint: Some(EndpointSpec {
                mode: mode as i32,
                ports,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn new_task(id: &str, svc: &Service, slot: u64) -> Task {
    Task {
        id: id.into(),
        service_id: svc.id.clone(),
        slot,
        spec: svc.spec.as_ref().and_then(|s| s.task.clone()),
        status: Some(TaskStatus {
            state: TaskState::New as i32,
            ..Default::default()
        }),
        desired_state: TaskState::Running as i32,
        ..Default::default()
    }
}

fn node(id: &str, ip: &str) -> Node {
    Node {
        id: id.into(),
        description: Some(NodeDescription {
            addr: ip.into(),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(published: u32, target: u32, mode: PublishMode) -> PortConfig {
    PortConfig {
        published_port: published,
        target_port: target,
        publish_mode: mode as i32,
        ..Default::default()
    }
}

fn addr_of(t: &Task, net: &Network) -> String {
    t.networks
        .iter()
        .find(|a| a.network.as_ref().is_some_and(|n| n.id == net.id))
        .and_then(|a| a.addresses.first().cloned())
        .unwrap_or_default()
}

#[test]
fn networks_get_distinct_subnets_and_vxlan_ids_then_nothing_more() {
    let mut fx = Fx::new("10.0.0.0/8", 24);
    fx.create(vec![
        ingress("i").into(),
        network("a", "front", None).into(),
        network("b", "back", Some("10.0.0.0/24")).into(),
    ]);
    let d = decide(&fx.tables, &mut fx.cursors, now());
    assert!(d.again);
    assert_eq!(d.units.len(), 3);
    fx.settle();
    let nets = ["ingress", "front", "back"].map(|n| fx.net(n));
    assert_eq!(nets[2].ipam[0].subnet, "10.0.0.0/24");
    assert_eq!(nets[2].ipam[0].gateway, "10.0.0.1");
    let subnets: Vec<Subnet> = nets
        .iter()
        .map(|n| Subnet::parse(&n.ipam[0].subnet).expect("subnet"))
        .collect();
    for (i, a) in subnets.iter().enumerate() {
        assert_eq!(a.prefix(), 24);
        for b in &subnets[i + 1..] {
            assert!(!a.overlaps(b), "{a} overlaps {b}");
        }
    }
    let vnis: HashSet<u32> = nets.iter().map(|n| n.vxlan_id).collect();
    assert_eq!(vnis.len(), 3);
    assert!(vnis.iter().all(|v| *v >= plan::FIRST_VXLAN_ID));
}

#[test]
fn tasks_get_an_address_per_network_and_the_service_a_vip() {
    let mut fx = Fx::new("10.10.0.0/16", 24);
    let web = service("web", &["front"], vec![], ResolutionMode::Vip);
    fx.create(vec![
        ingress("i").into(),
        network("a", "front", None).into(),
        web.clone().into(),
    ]);
    fx.create(
        (1..=3)
            .map(|i| new_task(&format!("t{i}"), &web, i).into())
            .collect(),
    );
    fx.settle();
    let front = fx.net("front");
    let svc = fx.tables.get::<Service>("web").expect("service");
    let endpoint = svc.endpoint.clone().expect("endpoint");
    assert_eq!(endpoint.virtual_ips.len(), 1);
    assert_eq!(endpoint.virtual_ips[0].network_id, front.id);
    let vip = endpoint.virtual_ips[0].addr.clone();
    let mut seen: HashSet<String> = [vip.clone()].into_iter().collect();
    for i in 1..=3 {
        let t = fx.task(&format!("t{i}"));
        assert_eq!(
            t.status.as_ref().map(|s| s.state),
            Some(TaskState::Pending as i32)
        );
        assert_eq!(t.endpoint.as_ref(), Some(&endpoint));
        // No published port: the task is only on its own network.
        assert_eq!(t.networks.len(), 1);
        let a = addr_of(&t, &front);
        assert!(a.ends_with("/24"), "{a}");
        assert!(!a.starts_with(&format!("{}/", front.ipam[0].gateway)));
        assert!(seen.insert(a.clone()), "{a} handed out twice");
    }
}

#[test]
fn published_ports_attach_tasks_to_ingress_with_dynamic_ports_and_dnsrr_has_no_vip() {
    let mut fx = Fx::new("10.10.0.0/16", 24);
    let web = service(
        "web",
        &["front"],
        vec![
            port(8080, 80, PublishMode::Ingress),
            port(0, 81, PublishMode::Ingress),
            port(9000, 90, PublishMode::Host),
        ],
        ResolutionMode::Vip,
    );
    let rr = service("rr", &["front"], vec![], ResolutionMode::Dnsrr);
    fx.create(vec![
        ingress("i").into(),
        network("a", "front", None).into(),
        web.clone().into(),
        rr.clone().into(),
    ]);
    fx.create(vec![
        new_task("w1", &web, 1).into(),
        new_task("r1", &rr, 1).into(),
    ]);
    fx.settle();
    let w1 = fx.task("w1");
    let ports: Vec<u32> = w1
        .endpoint
        .as_ref()
        .map(|e| e.ports.iter().map(|p| p.published_port).collect())
        .unwrap_or_default();
    assert_eq!(ports, vec![8080, 30000, 9000]);
    assert_eq!(w1.networks.len(), 2);
    assert!(!addr_of(&w1, &fx.net("ingress")).is_empty());
    let r1 = fx.task("r1");
    assert_eq!(r1.networks.len(), 1);
    assert!(
        r1.endpoint
            .as_ref()
            .is_some_and(|e| e.virtual_ips.is_empty())
    );
    // An update that keeps the dynamic port asks for nothing new.
    fx.update::<Service>("web", |s| {
        s.spec_version = 99;
    });
    assert_eq!(fx.round(), 0);
}

#[test]
fn a_task_waits_with_the_reason_until_its_network_exists() {
    let mut fx = Fx::new("10.10.0.0/16", 24);
    let web = service("web", &["later"], vec![], ResolutionMode::Vip);
    fx.create(vec![web.clone().into()]);
    fx.create(vec![new_task("t1", &web, 1).into()]);
    fx.settle();
    let t = fx.task("t1");
    let status = t.status.clone().expect("status");
    assert_eq!(status.state, TaskState::New as i32);
    assert_eq!(status.err, "network later not found");
    fx.create(vec![network("n", "later", None).into()]);
    fx.settle();
    let t = fx.task("t1");
    assert_eq!(
        t.status.as_ref().map(|s| s.state),
        Some(TaskState::Pending as i32)
    );
    assert_eq!(t.status.as_ref().map(|s| s.err.as_str()), Some(""));
    assert!(!addr_of(&t, &fx.net("later")).is_empty());
}

#[test]
fn a_full_network_says_so_and_an_ended_task_frees_its_address() {
    let mut fx = Fx::new("10.10.0.0/16", 24);
    // A /29 has 6 host addresses: the gateway, the service's VIP and 4 tasks.
    let web = service("web", &["tiny"], vec![], ResolutionMode::Vip);
    fx.create(vec![
        network("n", "tiny", Some("10.99.0.0/29")).into(),
        web.clone().into(),
    ]);
    fx.create(
        (1..=5)
            .map(|i| new_task(&format!("t{i}"), &web, i).into())
            .collect(),
    );
    fx.settle();
    let waiting: Vec<String> = (1..=5)
        .map(|i| fx.task(&format!("t{i}")))
        .filter(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.state == TaskState::New as i32)
        })
        .map(|t| t.status.clone().map(|s| s.err).unwrap_or_default())
        .collect();
    assert_eq!(
        waiting,
        vec!["no free address on network tiny (10.99.0.0/29)"]
    );
    let done = (1..=5)
        .map(|i| format!("t{i}"))
        .find(|id| {
            fx.task(id)
                .status
                .as_ref()
                .is_some_and(|s| s.state == TaskState::Pending as i32)
        })
        .expect("an allocated task");
    fx.update::<Task>(&done, |t| {
        if let Some(s) = t.status.as_mut() {
            s.state = TaskState::Failed as i32;
        }
    });
    fx.settle();
    let pending = (1..=5)
        .filter(|i| {
            fx.task(&format!("t{i}"))
                .status
                .as_ref()
                .is_some_and(|s| s.state == TaskState::Pending as i32)
        })
        .count();
    assert_eq!(pending, 4);
}

#[test]
fn nodes_get_their_own_addresses_and_views_follow_the_tasks() {
    let mut fx = Fx::new("10.10.0.0/16", 24);
    let web = service(
        "web",
        &["front"],
        vec![port(8080, 80, PublishMode::Ingress)],
        ResolutionMode::Vip,
    );
    let cli = service("cli", &["front"], vec![], ResolutionMode::Vip);
    fx.create(vec![
        node("n1", "192.0.2.1").into(),
        node("n2", "192.0.2.2").into(),
        node("n3", "192.0.2.3").into(),
        ingress("i").into(),
        network("a", "front", None).into(),
        web.clone().into(),
        cli.clone().into(),
    ]);
    fx.create(vec![
        new_task("w1", &web, 1).into(),
        new_task("w2", &web, 2).into(),
        new_task("c1", &cli, 1).into(),
    ]);
    fx.settle();
    // The scheduler's part, by hand: w1 on n1 (running), w2 on n2 (starting), c1 on n2.
    for (id, node_id, state) in [
        ("w1", "n1", TaskState::Running),
        ("w2", "n2", TaskState::Starting),
        ("c1", "n2", TaskState::Running),
    ] {
        fx.update::<Task>(id, |t| {
            t.node_id = node_id.into();
            if let Some(s) = t.status.as_mut() {
                s.state = state as i32;
            }
        });
    }
    fx.settle();
    let front = fx.net("front");
    let ingress_net = fx.net("ingress");
    let attached = |n: &str, net: &Network| {
        fx.tables
            .get::<Node>(n)
            .expect("node")
            .attachments
            .iter()
            .any(|a| a.network.as_ref().is_some_and(|x| x.id == net.id))
    };
    assert!(attached("n1", &front) && attached("n1", &ingress_net));
    assert!(attached("n2", &front) && attached("n2", &ingress_net));
    assert!(!attached("n3", &front) && attached("n3", &ingress_net));

    let v = node_view(&fx.tables, "n2");
    assert_eq!(v.data_path_port, 4789);
    let names: Vec<&str> = v
        .networks
        .iter()
        .map(|n| plan::network_name(n.network.as_ref().expect("network")))
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"front") && names.contains(&"ingress"));
    let fv = v
        .networks
        .iter()
        .find(|n| n.network.as_ref().is_some_and(|x| x.id == front.id))
        .expect("front view");
    assert!(!fv.node_addr.is_empty());
    let peers: Vec<&str> = fv.peers.iter().map(|p| p.addr.as_str()).collect();
    assert_eq!(peers, vec!["192.0.2.1"]);
    // The peer's own address on the network, for its bridge's forwarding entry.
    assert!(fv.peers[0].network_addr.ends_with("/24"), "{:?}", fv.peers);
    let active: Vec<(&str, bool)> = fv
        .endpoints
        .iter()
        .map(|e| (e.task_id.as_str(), e.active))
        .collect();
    assert_eq!(active.len(), 3);
    assert!(active.contains(&("w1", true)) && active.contains(&("w2", false)));
    let web_view = fv.services.iter().find(|s| s.name == "web").expect("web");
    assert!(!web_view.vip.is_empty() && web_view.ports.is_empty());
    // The ingress view lists every other node as a peer and the published port.
    let iv = v
        .networks
        .iter()
        .find(|n| n.network.as_ref().is_some_and(|x| x.id == ingress_net.id))
        .expect("ingress view");
    assert_eq!(iv.peers.len(), 2);
    let published: Vec<u32> = iv
        .services
        .iter()
        .flat_map(|s| s.ports.iter().map(|p| p.published_port))
        .collect();
    assert_eq!(published, vec![8080]);
    // n3 has no task: only the ingress network.
    assert_eq!(node_view(&fx.tables, "n3").networks.len(), 1);

    // Unhealthy, or on a node that went down: no longer active.
    fx.update::<Task>("w1", |t| {
        if let Some(s) = t.status.as_mut() {
            s.health = HealthState::Unhealthy as i32;
        }
    });
    let v = node_view(&fx.tables, "n2");
    let fv = v
        .networks
        .iter()
        .find(|n| n.network.as_ref().is_some_and(|x| x.id == front.id))
        .expect("front view");
    assert!(fv.endpoints.iter().all(|e| e.task_id != "w1" || !e.active));
    // Out of touch (a restarted leader waits for it, or its session dropped): its tasks
    // still run and keep taking traffic; only DOWN takes them out.
    let n2_active = |fx: &Fx| {
        let v = node_view(&fx.tables, "n1");
        v.networks
            .iter()
            .find(|n| n.network.as_ref().is_some_and(|x| x.id == front.id))
            .expect("front view")
            .endpoints
            .iter()
            .any(|e| e.node_id == "n2" && e.active)
    };
    assert!(n2_active(&fx), "positive control: n2's task takes traffic");
    for state in [NodeState::Unknown, NodeState::Disconnected] {
        fx.update::<Node>("n2", |n| {
            if let Some(s) = n.status.as_mut() {
                s.state = state as i32;
            }
        });
        assert!(n2_active(&fx), "{state:?} node dropped from the VIP");
    }
    fx.update::<Node>("n2", |n| {
        if let Some(s) = n.status.as_mut() {
            s.state = NodeState::Down as i32;
        }
    });
    assert!(!n2_active(&fx));
    let v = node_view(&fx.tables, "n1");
    let fv = v
        .networks
        .iter()
        .find(|n| n.network.as_ref().is_some_and(|x| x.id == front.id))
        .expect("front view");
    assert!(fv.endpoints.iter().all(|e| e.node_id != "n2" || !e.active));
}
