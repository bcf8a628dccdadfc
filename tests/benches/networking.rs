//! Service networking benchmarks (issue 7), not timed tests: every figure is printed beside
//! its anchor from the same run.
//!
//! ```text
//! cargo build --release --workspace --bins && cargo bench -p berth-tests --bench networking
//! ```
//!
//! Three nodes in netns test hosts; a 3-replica busybox httpd service `web` on an overlay
//! network with port 8080 published, and an idle `client` service on node 0.
//!
//! 1. HTTP requests (sequential, one connection each, from inside the client container's
//!    namespace): to one task's overlay address directly (the anchor), through the service
//!    VIP (nftables DNAT in the client's namespace, VXLAN to other nodes), and through the
//!    routing mesh (node 1's address, port 8080, from host 2). Requests/s and latency
//!    p50/p99.
//! 2. Time from a new task's RUNNING (the agent's status timestamp) to the first answer
//!    through its service's VIP, over several fresh services.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use berth_proto::identity::{CertDir, client_tls_config, install_crypto_provider};
use berth_proto::v1::control_client::ControlClient;
use berth_proto::v1::list_tasks_request::Filters;
use berth_proto::v1::{ListServicesRequest, ListTasksRequest, TaskState, list_services_request};
use berth_tests::cluster::TestCluster;
use berth_tests::wait;
use serde_json::Value;
use tonic::transport::Endpoint;

const SERVE_HOSTNAME: &str = "hostname > /srv/www/index.html; exec httpd -f -p 80 -h /srv/www";
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
const REQUESTS: usize = 400;

/// A DNS query for the A records of `name` (one question, recursion desired).
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `f` on a thread inside the network namespace bound at `path`.
fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = std::fs::File::open(path).with_context(|| format!("opening {path:?}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// One GET to `to`: its latency.
fn get(to: SocketAddr) -> anyhow::Result<Duration> {
    get_within(to, Duration::from_secs(2))
}

/// One GET to `to`, giving up on connecting after `connect`: its latency.
fn get_within(to: SocketAddr, connect: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, connect)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let status = reply.split(|b| *b == b'\n').next().unwrap_or_default();
    anyhow::ensure!(
        status.starts_with(b"HTTP/1.") && status.windows(5).any(|w| w == b" 200 "),
        "bad answer: {}",
        String::from_utf8_lossy(status)
    );
    Ok(start.elapsed())
}

/// `n` sequential GETs: requests/s and sorted latencies.
fn load(to: SocketAddr, n: usize) -> anyhow::Result<(f64, Vec<Duration>)> {
    for _ in 0..10 {
        get(to)?;
    }
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        lat.push(get(to)?);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    Ok((rate, lat))
}

fn report(what: &str, (rate, lat): &(f64, Vec<Duration>)) {
    println!(
        "  {what:<34} {rate:>7.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        ms(percentile(lat, 0.5)),
        ms(percentile(lat, 0.99))
    );
}

fn cluster() -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(3)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
    cluster.join(1, 0, "worker")?;
    cluster.join(2, 0, "worker")?;
    cluster.load_test_image()?;
    wait::wait_until(Duration::from_secs(15), "3 nodes ready", || {
        let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
        Ok(ls.lines().filter(|l| l.contains(" Ready ")).count() == 3)
    })?;
    Ok(cluster)
}

fn converge(cluster: &TestCluster, service: &str, want: &str) -> anyhow::Result<()> {
    wait::wait_until(
        Duration::from_secs(60),
        &format!("{service} {want}"),
        || {
            let ls = cluster.node(0).berth_ok(&["service", "ls"])?;
            Ok(ls
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(service) && l.contains(want)))
        },
    )?;
    Ok(())
}

/// The bound namespace of the running task of `service` on node `i`.
fn task_netns(cluster: &TestCluster, i: usize, service: &str) -> anyhow::Result<PathBuf> {
    let out = cluster.node(i).berth_ok(&["ps", "--format", "json"])?;
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)?;
        let name = v["Names"].as_str().unwrap_or_default();
        if let Some(rest) = name.strip_prefix(&format!("{service}.")) {
            let task_id = rest.rsplit('.').next().unwrap_or_default();
            return Ok(cluster
                .node(i)
                .state_dir()
                .join("agent/network/netns")
                .join(task_id));
        }
    }
    anyhow::bail!("no task of {service} on node {i}")
}

fn vip(cluster: &TestCluster, service: &str) -> anyhow::Result<Option<Ipv4Addr>> {
    let out = cluster.node(0).berth_ok(&["service", "inspect", service])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok()))
}

/// When the task of `service` was RUNNING as its agent reported it, and when the managers
/// stored that (the task's last write), through the Control API.
fn running_at(
    cluster: &TestCluster,
    service: &str,
) -> anyhow::Result<Option<(SystemTime, SystemTime)>> {
    let creds = CertDir::new(cluster.node(0).state_dir().join("certificates")).load()?;
    let target = cluster.node(0).cluster_addr();
    let name = service.to_string();
    cluster.node(0).host().run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            install_crypto_provider();
            let channel = Endpoint::from_shared(format!("https://{target}"))?
                .tls_config(client_tls_config(&creds)?)?
                .connect()
                .await?;
            let mut control = ControlClient::new(channel);
            let services = control
                .list_services(ListServicesRequest {
                    filters: Some(list_services_request::Filters {
                        names: vec![name],
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .services;
            let Some(svc) = services.first() else {
                return Ok(None);
            };
            let tasks = control
                .list_tasks(ListTasksRequest {
                    filters: Some(Filters {
                        service_ids: vec![svc.id.clone()],
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner()
                .tasks;
            let time = |t: prost_types::Timestamp| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(
                    u64::try_from(t.seconds).ok()?,
                    u32::try_from(t.nanos).ok()?,
                ))
            };
            let Some(task) = tasks.iter().find(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| s.state == TaskState::Running as i32)
            }) else {
                return Ok(None);
            };
            let running = task
                .status
                .as_ref()
                .and_then(|s| s.timestamp)
                .and_then(time);
            let stored = task.meta.as_ref().and_then(|m| m.updated_at).and_then(time);
            Ok(running.zip(stored))
        })
    })
}

fn main() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster()?;
    let n0 = cluster.node(0);
    let image = berth_tests::image::DEFAULT_REF;
    n0.berth_ok(&["network", "create", "front"])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "client",
        "--network",
        "front",
        "--constraint",
        "node.hostname==node-0",
        image,
        "sh",
        "-c",
        IDLE,
    ])?;
    converge(&cluster, "web", "3/3")?;
    converge(&cluster, "client", "1/1")?;
    let client_ns = task_netns(&cluster, 0, "client")?;
    let web_vip = vip(&cluster, "web")?.context("web has no VIP")?;
    // A task of web on another node: its address from tasks.web, the first that is not local.
    let web_on_1 = task_netns(&cluster, 1, "web")?;
    let direct: Ipv4Addr = in_netns(&web_on_1, || {
        let addrs = nix::ifaddrs::getifaddrs()?;
        addrs
            .filter(|a| a.interface_name == "eth0")
            .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|i| i.ip())))
            .next()
            .context("no eth0 address")
    })?;
    println!(
        "networking benchmark: 3 nodes (netns hosts), web ×3 on overlay 'front', port 8080 published"
    );
    println!(
        "1. HTTP GET, {REQUESTS} sequential requests per path (3 interleaved rounds), one connection each:"
    );
    let to_direct = SocketAddr::from((direct, 80));
    let to_vip = SocketAddr::from((web_vip, 80));
    let mesh_to = SocketAddr::from((cluster.net().hosts()[1].addr(), 8080));
    let mut results: [(f64, Vec<Duration>); 3] = Default::default();
    let per_round = REQUESTS / 3;
    for _ in 0..3 {
        let rounds = [
            in_netns(&client_ns, move || load(to_direct, per_round))?,
            in_netns(&client_ns, move || load(to_vip, per_round))?,
            cluster.net().hosts()[2].run(move || load(mesh_to, per_round))?,
        ];
        for (acc, (rate, lat)) in results.iter_mut().zip(rounds) {
            // Total time adds up over rounds; the rate is recomputed below.
            acc.0 += per_round as f64 / rate;
            acc.1.extend(lat);
        }
    }
    for (what, (secs, lat)) in [
        "direct to a task on node 1 (anchor)",
        "through the VIP (3 tasks, 2 remote)",
        "routing mesh (node 1 :8080, host 2)",
    ]
    .iter()
    .zip(results.iter_mut())
    {
        lat.sort();
        report(what, &((lat.len() as f64) / *secs, std::mem::take(lat)));
    }

    println!("2. task RUNNING → first answer through its service's VIP:");
    let mut gaps = Vec::new();
    for k in 0..5 {
        let name = format!("fresh{k}");
        n0.berth_ok(&[
            "service",
            "create",
            "-d",
            "--name",
            &name,
            "--network",
            "front",
            "--constraint",
            "node.hostname==node-1",
            image,
            "sh",
            "-c",
            SERVE_HOSTNAME,
        ])?;
        let mut addr = None;
        wait::wait_until(Duration::from_secs(20), "a VIP", || {
            addr = vip(&cluster, &name)?;
            Ok(addr.is_some())
        })?;
        let to = SocketAddr::from((addr.context("vip")?, 80));
        let q = dns_query(&format!("tasks.{name}"));
        let (in_dns, reached) = in_netns(&client_ns, move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let dns = std::net::UdpSocket::bind("127.0.0.1:0")?;
            dns.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut in_dns = None;
            loop {
                if in_dns.is_none() {
                    dns.send_to(&q, "127.0.0.11:53")?;
                    let mut buf = [0u8; 512];
                    // ANCOUNT (bytes 6..8) > 0: the task is in the answers.
                    if let Ok(n) = dns.recv(&mut buf)
                        && n > 8
                        && u16::from_be_bytes([buf[6], buf[7]]) > 0
                    {
                        in_dns = Some(SystemTime::now());
                    }
                }
                // A short connect timeout: until the client's node knows the VIP, a
                // connection waits for an ARP answer that never comes.
                if get_within(to, Duration::from_millis(20)).is_ok() {
                    return Ok((in_dns.unwrap_or_else(SystemTime::now), SystemTime::now()));
                }
                anyhow::ensure!(Instant::now() < deadline, "never reachable");
                std::thread::sleep(Duration::from_millis(2));
            }
        })?;
        let (running, stored) = running_at(&cluster, &name)?.context("no RUNNING timestamp")?;
        let after = |t: SystemTime| ms(t.duration_since(running).unwrap_or(Duration::ZERO));
        let gap = reached.duration_since(running).unwrap_or(Duration::ZERO);
        println!(
            "  {name}: {:>7.1} ms   (stored in Raft +{:.1} ms, in the client's DNS +{:.1} ms)",
            ms(gap),
            after(stored),
            after(in_dns)
        );
        gaps.push(gap);
    }
    gaps.sort();
    println!(
        "  median {:.1} ms, max {:.1} ms (anchors: dispatcher status flush ≤ 100 ms, view batching 20 ms)",
        ms(percentile(&gaps, 0.5)),
        ms(percentile(&gaps, 1.0))
    );
    Ok(())
}
