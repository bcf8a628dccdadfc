//! Test fixtures: a store state built from objects written at chosen times, and short
//! constructors for nodes, services and tasks.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    Annotations, Cluster, ClusterSpec, ContainerSpec, GlobalService, Node, NodeAvailability,
    NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus, OrchestrationConfig, Platform,
    ReplicatedService, Resources, RestartCondition, RestartPolicy, Service, ServiceSpec, Task,
    TaskSpec, TaskState, TaskStatus,
};

use super::clock::to_timestamp;
use crate::store::{Object, StoreActions, Tables};

/// Seconds after the epoch, as a time.
pub fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A store state under construction.
#[derive(Default)]
pub struct Fx {
    pub tables: Tables,
}

impl Fx {
    pub fn new() -> Self {
        Fx::default()
    }

    /// Creates `objs` in one entry at time `secs`.
    pub fn create(&mut self, secs: u64, objs: Vec<Object>) -> &mut Self {
        let mut b = StoreActions::new();
        for o in objs {
            b.create(o);
        }
        self.apply(secs, b)
    }

    /// Replaces `objs` (read at their stored versions) in one entry at time `secs`.
    pub fn update(&mut self, secs: u64, objs: Vec<Object>) -> &mut Self {
        let mut b = StoreActions::new();
        for o in objs {
            let version = stored_version(&self.tables, &o);
            b.update(with_version(o, version));
        }
        self.apply(secs, b)
    }

    pub fn apply(&mut self, secs: u64, b: StoreActions) -> &mut Self {
        let index = self.tables.version() + 1;
        self.tables
            .apply(index, to_timestamp(at(secs)), b)
            .expect("fixture batch applies");
        self
    }
}

fn stored_version(tables: &Tables, o: &Object) -> u64 {
    use crate::store::StoreObject;
    match o {
        Object::Node(n) => tables.get::<Node>(&n.id).map_or(0, |x| x.version()),
        Object::Service(s) => tables.get::<Service>(&s.id).map_or(0, |x| x.version()),
        Object::Task(t) => tables.get::<Task>(&t.id).map_or(0, |x| x.version()),
        Object::Cluster(c) => tables.get::<Cluster>(&c.id).map_or(0, |x| x.version()),
        _ => 0,
    }
}

fn with_version(o: Object, version: u64) -> Object {
    use crate::store::StoreObject;
    use std::sync::Arc;
    fn set<T: StoreObject>(mut a: Arc<T>, v: u64) -> Arc<T> {
        Arc::make_mut(&mut a).meta_mut().version = v;
        a
    }
    match o {
        Object::Node(n) => Object::Node(set(n, version)),
        Object::Service(s) => Object::Service(set(s, version)),
        Object::Task(t) => Object::Task(set(t, version)),
        Object::Cluster(c) => Object::Cluster(set(c, version)),
        other => other,
    }
}

/// A ready, active worker with 4 CPUs and 8 GiB, linux/amd64.
pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        spec: Some(NodeSpec {
            annotations: Some(Annotations::default()),
            availability: NodeAvailability::Active as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: format!("host-{id}"),
            platform: Some(Platform {
                architecture: "x86_64".into(),
                os: "linux".into(),
            }),
            resources: Some(Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
                pids: 0,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            addr: "10.0.0.1".into(),
            ..Default::default()
        }),
        role: NodeRole::Worker as i32,
        ..Default::default()
    }
}

pub fn with_state(mut n: Node, state: NodeState) -> Node {
    n.status.get_or_insert_with(Default::default).state = state as i32;
    n
}

pub fn with_availability(mut n: Node, a: NodeAvailability) -> Node {
    n.spec.get_or_insert_with(Default::default).availability = a as i32;
    n
}

pub fn with_labels(mut n: Node, labels: &[(&str, &str)]) -> Node {
    let spec = n.spec.get_or_insert_with(Default::default);
    let ann = spec.annotations.get_or_insert_with(Default::default);
    ann.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<HashMap<_, _>>();
    n
}

pub fn with_resources(mut n: Node, cpus: i64, memory: i64) -> Node {
    n.description.get_or_insert_with(Default::default).resources = Some(Resources {
        nano_cpus: cpus,
        memory_bytes: memory,
        pids: 0,
    });
    n
}

/// A replicated service with `replicas` and a restart policy (None = Docker's defaults).
pub fn replicated(id: &str, replicas: u64, restart: Option<RestartPolicy>) -> Service {
    service(
        id,
        Some(Mode::Replicated(ReplicatedService { replicas })),
        restart,
    )
}

/// A global service.
pub fn global(id: &str, restart: Option<RestartPolicy>) -> Service {
    service(id, Some(Mode::Global(GlobalService {})), restart)
}

fn service(id: &str, mode: Option<Mode>, restart: Option<RestartPolicy>) -> Service {
    Service {
        id: id.into(),
        spec_version: 1,
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: format!("svc-{id}"),
                ..Default::default()
            }),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                restart,
                ..Default::default()
            }),
            mode,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Sets the number of replicas.
pub fn scaled(mut s: Service, replicas: u64) -> Service {
    if let Some(spec) = s.spec.as_mut() {
        spec.mode = Some(Mode::Replicated(ReplicatedService { replicas }));
    }
    s
}

/// A restart policy.
pub fn restart(
    condition: RestartCondition,
    delay_s: i64,
    max: u64,
    window_s: i64,
) -> RestartPolicy {
    RestartPolicy {
        condition: condition as i32,
        delay: Some(prost_types::Duration {
            seconds: delay_s,
            nanos: 0,
        }),
        max_attempts: max,
        window: Some(prost_types::Duration {
            seconds: window_s,
            nanos: 0,
        }),
    }
}

/// A task of `svc` (copying its task spec) in `slot` on `node` ("" = unassigned).
pub fn task(
    id: &str,
    svc: &Service,
    slot: u64,
    node: &str,
    observed: TaskState,
    desired: TaskState,
) -> Task {
    Task {
        id: id.into(),
        spec: svc.spec.as_ref().and_then(|s| s.task.clone()),
        spec_version: svc.spec_version,
        service_id: svc.id.clone(),
        slot,
        node_id: node.into(),
        status: Some(TaskStatus {
            state: observed as i32,
            ..Default::default()
        }),
        desired_state: desired as i32,
        ..Default::default()
    }
}

/// A running task.
pub fn running(id: &str, svc: &Service, slot: u64, node: &str) -> Task {
    task(id, svc, slot, node, TaskState::Running, TaskState::Running)
}

/// `t` observed in `state`.
pub fn observed_as(mut t: Task, state: TaskState) -> Task {
    t.status.get_or_insert_with(Default::default).state = state as i32;
    t
}

/// `t` wanting `state`.
pub fn desired_as(mut t: Task, state: TaskState) -> Task {
    t.desired_state = state as i32;
    t
}

/// The cluster object with a task history limit.
pub fn cluster(limit: i64) -> Cluster {
    Cluster {
        id: "cluster".into(),
        spec: Some(ClusterSpec {
            annotations: Some(Annotations {
                name: "default".into(),
                ..Default::default()
            }),
            orchestration: Some(OrchestrationConfig {
                task_history_retention_limit: limit,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Objects for [`Fx::create`].
#[macro_export]
#[doc(hidden)]
macro_rules! objs {
    ($($o:expr),* $(,)?) => { vec![$($crate::store::Object::from($o)),*] };
}
