//! The data path on a real kernel (root): two node namespaces joined by a veth "wire" on
//! TEST-NET-1, one agent each, one container namespace each. Traffic flows only between
//! namespaces this test created.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_proto::v1::{
    IpamConfig, Network, NetworkAttachment, NetworkEndpoint, NetworkPeer, NetworkSpec, NetworkView,
    NetworksMessage, ResolutionMode, ServiceEndpoint, Task,
};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio_util::sync::CancellationToken;

use super::*;

/// Removes the test's namespaces on drop (also when a test fails).
struct Namespaces(Vec<PathBuf>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = netns::remove(p);
        }
    }
}

fn network() -> Network {
    Network {
        id: "front".into(),
        spec: Some(NetworkSpec {
            driver: "overlay".into(),
            ..Default::default()
        }),
        ipam: vec![IpamConfig {
            subnet: "10.9.0.0/24".into(),
            range: String::new(),
            gateway: "10.9.0.1".into(),
        }],
        vxlan_id: 4097,
        ..Default::default()
    }
}

fn task(id: &str, service: &str, addr: &str) -> Task {
    Task {
        id: id.into(),
        service_id: service.into(),
        networks: vec![NetworkAttachment {
            network: Some(network()),
            addresses: vec![addr.into()],
            aliases: vec![],
        }],
        ..Default::default()
    }
}

fn view(node_addr: &str, peer: (&str, &str, &str), web_active: bool) -> NetworksMessage {
    let ep = |task: &str, svc: &str, node: &str, addr: &str, active: bool| NetworkEndpoint {
        task_id: task.into(),
        service_id: svc.into(),
        node_id: node.into(),
        addr: addr.into(),
        aliases: vec![],
        active,
    };
    NetworksMessage {
        data_path_port: 4789,
        networks: vec![NetworkView {
            network: Some(network()),
            node_addr: node_addr.into(),
            peers: vec![NetworkPeer {
                node_id: peer.0.into(),
                addr: peer.1.into(),
                network_addr: peer.2.into(),
            }],
            endpoints: vec![
                ep("ta", "cli", "n1", "10.9.0.3/24", true),
                ep("tb", "web", "n2", "10.9.0.4/24", web_active),
            ],
            services: vec![
                ServiceEndpoint {
                    service_id: "web".into(),
                    name: "web".into(),
                    vip: "10.9.0.2/24".into(),
                    mode: ResolutionMode::Vip as i32,
                    ports: vec![],
                },
                ServiceEndpoint {
                    service_id: "cli".into(),
                    name: "cli".into(),
                    vip: "10.9.0.5/24".into(),
                    mode: ResolutionMode::Vip as i32,
                    ports: vec![],
                },
            ],
        }],
    }
}

async fn wire(n1: &Path, n2: &Path) -> Result<(), NetworkError> {
    let a = Netlink::open(Some(n1))?;
    a.create_veth("u1", "u2", 1500, None, n2).await?;
    let b = Netlink::open(Some(n2))?;
    for (nl, name, ip) in [(&a, "u1", "192.0.2.1"), (&b, "u2", "192.0.2.2")] {
        let i = nl
            .index(name)
            .await?
            .ok_or_else(|| NetworkError::Missing(name.into()))?;
        nl.add_address(i, ip.parse().expect("ip"), 24).await?;
        nl.up(i).await?;
        let lo = nl
            .index("lo")
            .await?
            .ok_or_else(|| NetworkError::Missing("lo".into()))?;
        nl.up(lo).await?;
    }
    Ok(())
}

/// A UDP echo server on `addr:port` inside `netns`, until `stop`.
fn echo(
    netns: &Path,
    addr: Ipv4Addr,
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let socket =
        netns::run_in(Some(netns), move || UdpSocket::bind((addr, port))).expect("bind echo");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], from);
            }
        }
    })
}

/// Sends `msg` from inside `netns` to `to` and returns the reply, trying for up to 3 s.
fn ask(netns: &Path, to: (Ipv4Addr, u16), msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    netns::run_in(Some(netns), move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.connect(to)?;
        let mut last = std::io::Error::other("no reply");
        for _ in 0..15 {
            s.send(&msg)?;
            let mut buf = [0u8; 512];
            match s.recv(&mut buf) {
                Ok(n) => return Ok(buf[..n].to_vec()),
                Err(e) => last = e,
            }
        }
        Err(last)
    })
}

fn links(netns: &Path) -> Vec<String> {
    let mut names = netns::run_in(Some(netns), || {
        Ok(nix::ifaddrs::getifaddrs()
            .map(|a| a.map(|x| x.interface_name).collect::<Vec<_>>())
            .unwrap_or_default())
    })
    .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_carry_vip_and_dns_traffic_and_detach_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let n1 = tmp.path().join("n1");
    let n2 = tmp.path().join("n2");
    let guard = Namespaces(vec![n1.clone(), n2.clone()]);
    netns::create(&n1).expect("node 1");
    netns::create(&n2).expect("node 2");
    wire(&n1, &n2).await.expect("wire");
    let agent = |dir: &str, ns: &Path, ip: &str| {
        NetworkAgent::new(NetworkConfig {
            dir: tmp.path().join(dir),
            node_netns: Some(ns.to_owned()),
            data_addr: ip.parse().ok(),
            attach_timeout: Duration::from_secs(5),
        })
        .expect("agent")
    };
    let a1 = agent("a1", &n1, "192.0.2.1");
    let a2 = agent("a2", &n2, "192.0.2.2");
    let cancel = CancellationToken::new();
    for a in [&a1, &a2] {
        let a = a.clone();
        let c = cancel.clone();
        tokio::spawn(async move { a.run(c).await });
    }
    a1.set_view(view(
        "10.9.0.201/24",
        ("n2", "192.0.2.2", "10.9.0.202/24"),
        true,
    ));
    a2.set_view(view(
        "10.9.0.202/24",
        ("n1", "192.0.2.1", "10.9.0.201/24"),
        true,
    ));
    let ta = a1
        .attach(&task("ta", "cli", "10.9.0.3/24"), "cli.1")
        .await
        .expect("attach a");
    let tb = a2
        .attach(&task("tb", "web", "10.9.0.4/24"), "web.1")
        .await
        .expect("attach b");
    assert!(netns::is_bound(&ta.netns) && netns::is_bound(&tb.netns));
    assert_eq!(links(&ta.netns), vec!["eth0", "lo"]);
    assert_eq!(
        std::fs::read_to_string(&ta.resolv_conf).expect("resolv"),
        plan::resolv_conf()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let server = echo(
        &tb.netns,
        "10.9.0.4".parse().expect("ip"),
        7000,
        stop.clone(),
    );
    let (ta_ns, tb_ns) = (ta.netns.clone(), tb.netns.clone());
    let direct = tokio::task::spawn_blocking(move || {
        ask(&ta_ns, ("10.9.0.4".parse().expect("ip"), 7000), b"direct")
    })
    .await
    .expect("join");
    assert_eq!(direct.expect("over vxlan"), b"direct");
    let ns = ta.netns.clone();
    let via_vip = tokio::task::spawn_blocking(move || {
        ask(&ns, ("10.9.0.2".parse().expect("ip"), 7000), b"vip")
    })
    .await
    .expect("join");
    assert_eq!(via_vip.expect("through the VIP"), b"vip");

    // The embedded DNS answers the service name and tasks.<name>.
    let ns = ta.netns.clone();
    let dns = |name: &'static str| {
        let ns = ns.clone();
        move || -> Vec<Ipv4Addr> {
            let mut q = Message::query();
            q.add_query(Query::query(
                Name::from_ascii(name).expect("name"),
                RecordType::A,
            ));
            let reply =
                ask(&ns, (plan::DNS_ADDR, 53), &q.to_vec().expect("encode")).expect("dns reply");
            Message::from_vec(&reply)
                .expect("decode")
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()
        }
    };
    let web = tokio::task::spawn_blocking(dns("web."))
        .await
        .expect("join");
    assert_eq!(web, vec![Ipv4Addr::new(10, 9, 0, 2)]);
    let tasks = tokio::task::spawn_blocking(dns("tasks.web."))
        .await
        .expect("join");
    assert_eq!(tasks, vec![Ipv4Addr::new(10, 9, 0, 4)]);

    // web's task stops: the VIP refuses at once and DNS has no task left.
    a1.set_view(view(
        "10.9.0.201/24",
        ("n2", "192.0.2.2", "10.9.0.202/24"),
        false,
    ));
    let mut rules = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let out = tokio::process::Command::new("nsenter")
            .arg(format!("--net={}", ta.netns.display()))
            .args(["nft", "list", "ruleset"])
            .output()
            .await
            .expect("nft list");
        rules = String::from_utf8_lossy(&out.stdout).into_owned();
        if rules.contains("reject") {
            break;
        }
    }
    assert!(rules.contains("ip daddr 10.9.0.2 reject"), "{rules}");
    let tasks = tokio::task::spawn_blocking(dns("tasks.web."))
        .await
        .expect("join");
    assert!(tasks.is_empty(), "{tasks:?}");
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    drop(tb_ns);

    // Detach, then a view without networks: nothing of ours is left.
    a1.detach("ta").await.expect("detach a");
    a2.detach("tb").await.expect("detach b");
    assert!(!ta.netns.exists() && !tb.netns.exists());
    assert!(!ta.resolv_conf.exists());
    let empty = NetworksMessage {
        data_path_port: 4789,
        networks: vec![],
    };
    a1.set_view(empty.clone());
    a2.set_view(empty);
    let mut left = Vec::new();
    let mut tables = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = links(&n1).into_iter().chain(links(&n2)).collect();
        tables.clear();
        for n in [&n1, &n2] {
            let out = tokio::process::Command::new("nsenter")
                .arg(format!("--net={}", n.display()))
                .args(["nft", "list", "tables"])
                .output()
                .await
                .expect("nft list");
            tables.push_str(String::from_utf8_lossy(&out.stdout).trim());
        }
        if left.iter().all(|l| !l.starts_with(plan::IFACE_PREFIX)) && tables.is_empty() {
            break;
        }
    }
    assert_eq!(left, vec!["lo", "u1", "lo", "u2"]);
    assert_eq!(tables, "", "nftables tables left in the nodes");
    cancel.cancel();
    drop(guard);
}
