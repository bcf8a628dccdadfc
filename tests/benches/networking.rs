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
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    anyhow::ensure!(reply.starts_with(b"HTTP/1.0 200"), "bad answer");
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

/// RUNNING time of the task of `service` as its agent reported it, through the Control API.
fn running_at(cluster: &TestCluster, service: &str) -> anyhow::Result<Option<SystemTime>> {
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
            Ok(tasks
                .iter()
                .filter_map(|t| t.status.as_ref())
                .find(|s| s.state == TaskState::Running as i32)
                .and_then(|s| s.timestamp)
                .and_then(|t| {
                    SystemTime::UNIX_EPOCH.checked_add(Duration::new(
                        u64::try_from(t.seconds).ok()?,
                        u32::try_from(t.nanos).ok()?,
                    ))
                }))
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
    println!("1. HTTP GET, {REQUESTS} sequential requests, one connection each:");
    let to_direct = SocketAddr::from((direct, 80));
    let d = in_netns(&client_ns, move || load(to_direct, REQUESTS))?;
    report("direct to a task on node 1 (anchor)", &d);
    let to_vip = SocketAddr::from((web_vip, 80));
    let v = in_netns(&client_ns, move || load(to_vip, REQUESTS))?;
    report("through the VIP (3 tasks, 2 remote)", &v);
    let mesh_to = SocketAddr::from((cluster.net().hosts()[1].addr(), 8080));
    let m = cluster.net().hosts()[2].run(move || load(mesh_to, REQUESTS))?;
    report("routing mesh (node 1 :8080, from host 2)", &m);

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
        let reached = in_netns(&client_ns, move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if get(to).is_ok() {
                    return Ok(SystemTime::now());
                }
                anyhow::ensure!(Instant::now() < deadline, "never reachable");
                std::thread::sleep(Duration::from_millis(2));
            }
        })?;
        let running = running_at(&cluster, &name)?.context("no RUNNING timestamp")?;
        let gap = reached.duration_since(running).unwrap_or(Duration::ZERO);
        println!("  {name}: {:>7.1} ms", ms(gap));
        gaps.push(gap);
    }
    gaps.sort();
    println!(
        "  median {:.1} ms, max {:.1} ms (anchor: the manager's view batching is 20 ms, the dispatcher's status flush 100 ms)",
        ms(percentile(&gaps, 0.5)),
        ms(percentile(&gaps, 1.0))
    );
    Ok(())
}
