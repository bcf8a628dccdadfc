//! Service benchmarks (issue 5), not timed tests: each figure beside Docker Swarm's, measured
//! on this machine in the same run by `../shared/bench/swarm-anchor.sh`, and the ratio.
//!
//! ```text
//! cargo build --release --workspace --bins && cargo bench -p berth-tests --bench services
//! ```
//!
//! One node (a real `berthd` in a netns test host, real containers, the real CLI to create,
//! scale and kill; convergence polled every 10 ms over the local API):
//! 1. `service create` → all N running (the managers' view, like Swarm's `service ls` N/N),
//!    N = 1, 10, 100;
//! 2. `service scale` 100 → 200 (all running), 200 → 0 (no container running; all removed);
//! 3. `berth kill` of a task's container → a new container running (restart delay 0);
//! 4. control-plane memory per running container: RSS and PSS of `berthd` and the
//!    per-container supervisors (every process of the node's network namespace but the
//!    containers, which have their own), (200 containers − 0) / 200; Swarm's is dockerd +
//!    containerd + the shims;
//! 5. idle CPU with 100 replicas over `IDLE_SECS` (30 s): the same processes.
//!
//! Scale (in this process): a real manager (Raft on sled with fsync, dispatcher, orchestrator,
//! scheduler, served over mTLS on 127.0.0.1) and `SIM_NODES` (1 000) agents, each a real
//! session and worker with `SimulatedExecutor` (tasks "run" without containers); one service
//! of `SIM_TASKS` (50 000) replicas: placements committed per second (tasks with a node in the
//! manager's store), and the time until every task is reported RUNNING by its agent. The node
//! objects are written straight into the store and the certificates issued from the cluster's
//! root CA, instead of 1 000 `swarm join`s.
//!
//! What differs from Swarm: Swarm gives every container a veth pair on a bridge plus iptables
//! rules (≈ 60 ms of this host's floor per container); ours get a fresh network namespace with
//! loopback only unless networks are attached. Swarm's times include its CLI call and a 100 ms
//! poll; ours include the CLI call and a 10 ms poll.
//!
//! Knobs (env): `BENCH_RUNS` (3), `IDLE_SECS` (30), `SWARM` (1: run the anchor; 0: skip),
//! `SIM_NODES` (1000), `SIM_TASKS` (50000), `BENCH_PARTS` (`one,sim`: the one-node part with
//! Swarm, the simulated-node part), `BENCH_QUICK=1` (the reduced form for CI: 1 run,
//! 1/10 replicas and 10 → 20 → 0, 5 s idle, 100 simulated nodes × 5 000 tasks, no Swarm).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use berth_agent::session::{Session, SessionConfig};
use berth_agent::worker::{SimulatedExecutor, Worker, WorkerConfig};
use berth_manager::ca::{DEFAULT_NODE_CERT_VALIDITY, RootCa};
use berth_manager::manager::{InitOptions, Manager, ManagerConfig};
use berth_manager::store::{ChangeSet, Event, Object, StoreActions};
use berth_proto::identity::{Role, client_tls_config, install_crypto_provider};
use berth_proto::v1::control_client::ControlClient;
use berth_proto::v1::list_tasks_request::Filters;
use berth_proto::v1::local_node_client::LocalNodeClient;
use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    Annotations, Cluster, ContainerListRequest, ContainerSpec, CreateServiceRequest,
    ListTasksRequest, Node, NodeAvailability, NodeDescription, NodeMembership, NodeRole, NodeSpec,
    NodeState, NodeStatus, Platform, ReplicatedService, Resources, ServiceSpec, Task, TaskSpec,
    TaskState,
};
use berth_tests::cluster::{TestCluster, TestNode};
use berth_tests::image::DEFAULT_REF;
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// The task of every one-node figure: Swarm's workload, exits at once on SIGTERM.
const WORKLOAD: &str = "trap \"exit 0\" TERM; sleep 1000000 & wait";

/// Poll period of the convergence checks.
const POLL: Duration = Duration::from_millis(10);

/// Pause before memory and CPU snapshots, as the Swarm script's SETTLE.
const SETTLE: Duration = Duration::from_secs(3);

/// Linux's USER_HZ (clock ticks in /proc/PID/stat), fixed at 100 on every architecture we run.
const CLK_TCK: u64 = 100;

struct Config {
    runs: usize,
    idle: Duration,
    swarm: bool,
    sizes: Vec<u64>,
    /// The size that is then scaled to twice itself and to 0.
    scaled: u64,
    sim_nodes: usize,
    sim_tasks: u64,
    /// Run the one-node part (and Swarm).
    one_node: bool,
    /// Run the simulated-node part.
    sim: bool,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

impl Config {
    fn from_env() -> Config {
        let quick = env::<u8>("BENCH_QUICK").is_some_and(|q| q != 0);
        let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "one,sim".into());
        Config {
            runs: env("BENCH_RUNS")
                .unwrap_or(if quick { 1 } else { 3 })
                .max(1),
            idle: Duration::from_secs(env("IDLE_SECS").unwrap_or(if quick { 5 } else { 30 })),
            swarm: env::<u8>("SWARM").map_or(!quick, |s| s != 0),
            sizes: if quick { vec![1, 10] } else { vec![1, 10, 100] },
            scaled: if quick { 10 } else { 100 },
            sim_nodes: env("SIM_NODES").unwrap_or(if quick { 100 } else { 1000 }),
            sim_tasks: env("SIM_TASKS").unwrap_or(if quick { 5000 } else { 50_000 }),
            one_node: parts.split(',').any(|p| p.trim() == "one"),
            sim: parts.split(',').any(|p| p.trim() == "sim"),
        }
    }
}

/// Samples per figure, in the order first recorded.
#[derive(Default)]
struct Samples {
    order: Vec<String>,
    values: BTreeMap<String, Vec<f64>>,
}

impl Samples {
    fn add(&mut self, name: &str, value: f64) {
        if !self.values.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.values.entry(name.to_owned()).or_default().push(value);
        eprintln!("# sample {name} = {value:.4}");
    }

    /// Median, min, max.
    fn stats(&self, name: &str) -> Option<(f64, f64, f64)> {
        let mut v = self.values.get(name)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some((median, v[0], v[n - 1]))
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------- processes of the node

/// Inode of a network namespace file (`/proc/PID/ns/net` or a bind mount of one).
fn netns_inode(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {path:?}"))?
        .ino())
}

/// The node's control plane: every process in its network namespace except `berth` CLI
/// calls (the containers live in namespaces of their own).
fn control_plane_pids(net: u64) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            netns_inode(Path::new(&format!("/proc/{pid}/ns/net"))).is_ok_and(|i| i == net)
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() != "berth")
        })
        .collect()
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (RSS KiB, PSS KiB, processes) of `pids`.
fn memory(pids: &[u32]) -> (u64, u64, usize) {
    let mut rss = 0;
    let mut pss = 0;
    for pid in pids {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            rss += kib_field(&s, "VmRSS:");
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            pss += kib_field(&s, "Pss:");
        }
    }
    (rss, pss, pids.len())
}

/// CPU ticks (user + system) of each of `pids`.
fn cpu_ticks(pids: &[u32]) -> BTreeMap<u32, u64> {
    pids.iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((*pid, utime + stime))
        })
        .collect()
}

// ---------------------------------------------------------------- one node

/// What a convergence wait waits for.
#[derive(Debug)]
enum Probe {
    /// The service has this many tasks running (managers' view).
    Running(String, usize),
    /// No container of the service is running (false) or exists at all (true).
    NoContainers(String, bool),
    /// A running container of the service other than this one exists.
    Replaced(String, String),
}

struct OneNode {
    cluster: TestCluster,
    control: ControlClient<Channel>,
    local: LocalNodeClient<Channel>,
    net: u64,
}

fn socket_of(node: &TestNode) -> anyhow::Result<PathBuf> {
    Ok(node
        .state_dir()
        .parent()
        .context("state dir has a parent")?
        .join("berthd.sock"))
}

impl OneNode {
    fn start(rt: &Runtime) -> anyhow::Result<OneNode> {
        let cluster = TestCluster::new(1)?;
        cluster.init(0)?;
        cluster.load_test_image()?;
        let socket = socket_of(cluster.node(0))?;
        let channel = rt.block_on(async {
            Endpoint::try_from(format!("unix://{}", socket.display()))?
                .connect()
                .await
                .context("connecting to berthd's socket")
        })?;
        let net = netns_inode(&cluster.node(0).host().netns_path())?;
        Ok(OneNode {
            control: ControlClient::new(channel.clone()),
            local: LocalNodeClient::new(channel),
            cluster,
            net,
        })
    }

    fn node(&self) -> &TestNode {
        self.cluster.node(0)
    }

    /// `berth service create -d` of `n` replicas; returns the service id.
    fn create(&self, name: &str, n: u64, extra: &[&str]) -> anyhow::Result<String> {
        let n = n.to_string();
        let mut args = vec!["service", "create", "-d", "--name", name, "--replicas", &n];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[DEFAULT_REF, "sh", "-c", WORKLOAD]);
        let out = self.node().berth_ok(&args)?;
        out.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
            .context("service create printed no id")
    }

    /// Tasks of `service` running as the managers see them (desired and observed RUNNING).
    async fn running_tasks(&mut self, service: &str) -> anyhow::Result<usize> {
        let tasks: Vec<Task> = self
            .control
            .list_tasks(ListTasksRequest {
                filters: Some(Filters {
                    service_ids: vec![service.to_owned()],
                    desired_states: vec![TaskState::Running as i32],
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .tasks;
        Ok(tasks
            .iter()
            .filter(|t| t.status.as_ref().map(|s| s.state) == Some(TaskState::Running as i32))
            .count())
    }

    /// Containers of `service` on the node (running ones, or all): id list.
    async fn containers(&mut self, service: &str, all: bool) -> anyhow::Result<Vec<String>> {
        let list = self
            .local
            .container_list(ContainerListRequest { all })
            .await?
            .into_inner()
            .containers;
        Ok(list
            .into_iter()
            .filter(|c| {
                c.config
                    .as_ref()
                    .and_then(|cfg| cfg.labels.get("com.docker.swarm.service.id"))
                    .is_some_and(|s| s == service)
            })
            .map(|c| c.id)
            .collect())
    }

    async fn holds(&mut self, probe: &Probe) -> anyhow::Result<bool> {
        Ok(match probe {
            Probe::Running(id, n) => self.running_tasks(id).await? == *n,
            Probe::NoContainers(id, all) => self.containers(id, *all).await?.is_empty(),
            Probe::Replaced(id, old) => self.containers(id, false).await?.iter().any(|c| c != old),
        })
    }

    /// Seconds from `t0` until `probe` holds (polled every [`POLL`]).
    fn until(&mut self, rt: &Runtime, t0: Instant, probe: Probe) -> anyhow::Result<f64> {
        let deadline = t0 + Duration::from_secs(300);
        loop {
            if rt.block_on(self.holds(&probe))? {
                return Ok(t0.elapsed().as_secs_f64());
            }
            ensure!(Instant::now() < deadline, "timed out waiting for {probe:?}");
            std::thread::sleep(POLL);
        }
    }

    fn snapshot(&self) -> (u64, u64, usize) {
        memory(&control_plane_pids(self.net))
    }
}

fn one_node(rt: &Runtime, cfg: &Config, s: &mut Samples) -> anyhow::Result<()> {
    let mut bench = OneNode::start(rt)?;
    for run in 1..=cfg.runs {
        eprintln!("# one node: run {run}/{}  load {}", cfg.runs, load());
        std::thread::sleep(SETTLE);
        let (rss0, pss0, procs0) = bench.snapshot();
        s.add("mem_0_total_rss_mib", rss0 as f64 / 1024.0);
        eprintln!("# control plane at 0 replicas: {procs0} processes");
        for &n in &cfg.sizes {
            let name = format!("bench-c{n}");
            let t0 = Instant::now();
            let id = bench.create(&name, n, &[])?;
            let t = bench.until(rt, t0, Probe::Running(id.clone(), n as usize))?;
            s.add(&format!("create_{n}_to_running"), t);
            if n == cfg.scaled {
                let twice = n * 2;
                std::thread::sleep(SETTLE);
                let (rss, _, procs) = bench.snapshot();
                eprintln!("# control plane at {n} replicas: {procs} processes, {rss} KiB RSS");
                let pids = control_plane_pids(bench.net);
                let before = cpu_ticks(&pids);
                std::thread::sleep(cfg.idle);
                let after = cpu_ticks(&pids);
                let ticks: u64 = after
                    .iter()
                    .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(*t)))
                    .sum();
                s.add(
                    &format!("cpu_idle{n}_ms_per_{}s", cfg.idle.as_secs()),
                    (ticks * 1000 / CLK_TCK) as f64,
                );

                let t0 = Instant::now();
                bench
                    .node()
                    .berth_ok(&["service", "scale", "-d", &format!("{name}={twice}")])?;
                let t = bench.until(rt, t0, Probe::Running(id.clone(), twice as usize))?;
                s.add(&format!("scale_{n}_to_{twice}"), t);
                std::thread::sleep(SETTLE);
                let (rss, pss, procs) = bench.snapshot();
                eprintln!("# control plane at {twice} replicas: {procs} processes");
                s.add(
                    "mem_per_container_rss_kib",
                    (rss.saturating_sub(rss0)) as f64 / twice as f64,
                );
                s.add(
                    "mem_per_container_pss_kib",
                    (pss.saturating_sub(pss0)) as f64 / twice as f64,
                );

                let t0 = Instant::now();
                bench
                    .node()
                    .berth_ok(&["service", "scale", "-d", &format!("{name}=0")])?;
                let t = bench.until(rt, t0, Probe::NoContainers(id.clone(), false))?;
                s.add(&format!("scale_{twice}_to_0_stopped"), t);
                let t = bench.until(rt, t0, Probe::NoContainers(id.clone(), true))?;
                s.add(&format!("scale_{twice}_to_0_removed"), t);
            }
            bench.node().berth_ok(&["service", "rm", &name])?;
            bench.until(rt, Instant::now(), Probe::NoContainers(id.clone(), true))?;
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    // A killed container is replaced (restart delay 0).
    let id = bench.create("bench-k0", 1, &["--restart-delay", "0s"])?;
    bench.until(rt, Instant::now(), Probe::Running(id.clone(), 1))?;
    for _ in 0..cfg.runs {
        std::thread::sleep(SETTLE);
        let old = rt
            .block_on(bench.containers(&id, false))?
            .into_iter()
            .next()
            .context("the task's container")?;
        let t0 = Instant::now();
        bench.node().berth_ok(&["kill", &old])?;
        let t = bench.until(rt, t0, Probe::Replaced(id.clone(), old.clone()))?;
        s.add("kill_replace_restartdelay_0s", t);
    }
    bench.node().berth_ok(&["service", "rm", "bench-k0"])?;
    Ok(())
}

// ---------------------------------------------------------------- Swarm, same run

/// Swarm's figures: name → (median, unit, commentary).
type Anchor = BTreeMap<String, (f64, String, String)>;

fn swarm_anchor(cfg: &Config) -> anyhow::Result<Anchor> {
    let script = std::env::var("SWARM_ANCHOR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/swarm-anchor.sh")
        });
    ensure!(
        script.is_file(),
        "{script:?} is missing (set SWARM_ANCHOR or SWARM=0)"
    );
    let sizes: Vec<String> = cfg.sizes.iter().map(u64::to_string).collect();
    let log = std::env::temp_dir().join(format!("swarm-anchor-{}.log", std::process::id()));
    eprintln!("# running {script:?} (its raw samples go to {log:?})");
    let out = Command::new("bash")
        .arg(&script)
        .env("PHASES", "create kill")
        .env("CREATE_NS", sizes.join(" "))
        .env("RUNS", cfg.runs.to_string())
        .env("IDLE_SECS", cfg.idle.as_secs().to_string())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .output()
        .with_context(|| format!("running {script:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{script:?} failed ({}): see {log:?}\n{stdout}",
        out.status
    );
    let mut anchor = Anchor::new();
    for line in stdout.lines() {
        if line.starts_with('#') {
            println!("  swarm {line}");
            continue;
        }
        let (figure, comment) = line.split_once('#').unwrap_or((line, ""));
        let mut f = figure.split_whitespace();
        if let (Some(name), Some(value), Some(unit)) = (f.next(), f.next(), f.next())
            && let Ok(v) = value.parse::<f64>()
        {
            anchor.insert(
                name.to_owned(),
                (v, unit.to_owned(), comment.trim().to_owned()),
            );
        }
    }
    Ok(anchor)
}

// ---------------------------------------------------------------- simulated nodes

struct SimResult {
    register: f64,
    first_placed: f64,
    all_placed: f64,
    all_running: f64,
    tasks: u64,
    nodes: usize,
    cpu_s: f64,
}

/// Tasks placed on a node and tasks running, in the whole store (the benchmark's only
/// service), kept current from change sets.
struct Counts {
    placed: i64,
    running: i64,
}

fn placed(t: &Task) -> i64 {
    i64::from(!t.node_id.is_empty())
}

fn running(t: &Task) -> i64 {
    i64::from(t.status.as_ref().map(|s| s.state) == Some(TaskState::Running as i32))
}

impl Counts {
    fn of(tables: &berth_manager::store::Tables) -> Counts {
        let mut c = Counts {
            placed: 0,
            running: 0,
        };
        for t in tables.table::<Task>().iter() {
            c.placed += placed(t);
            c.running += running(t);
        }
        c
    }

    fn apply(&mut self, changes: &ChangeSet) {
        for event in &changes.events {
            match event {
                Event::Created(Object::Task(t)) => {
                    self.placed += placed(t);
                    self.running += running(t);
                }
                Event::Updated {
                    old: Object::Task(old),
                    new: Object::Task(new),
                } => {
                    self.placed += placed(new) - placed(old);
                    self.running += running(new) - running(old);
                }
                Event::Removed(Object::Task(t)) => {
                    self.placed -= placed(t);
                    self.running -= running(t);
                }
                _ => {}
            }
        }
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            u64::try_from(self.placed).unwrap_or(0),
            u64::try_from(self.running).unwrap_or(0),
        )
    }
}

fn self_cpu_s() -> f64 {
    cpu_ticks(&[std::process::id()])
        .values()
        .next()
        .map_or(0.0, |t| *t as f64 / CLK_TCK as f64)
}

async fn simulated(nodes: usize, tasks: u64) -> anyhow::Result<SimResult> {
    install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let manager_id = berth_proto::ids::new_id();
    let (manager, creds) = Manager::init_cluster(
        ManagerConfig::new(dir.path(), &manager_id, &addr),
        InitOptions {
            hostname: "sim-manager".into(),
            // The manager runs no agent here: only the simulated nodes take tasks.
            availability: NodeAvailability::Drain,
            ..Default::default()
        },
    )
    .await?;
    let stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .tls_config(manager.server_tls_config()?)?
        .add_routes(manager.routes());
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    let shutdown = stop.clone();
    let served = tokio::spawn(async move {
        let _ = server
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
    });

    // Nodes: objects in the store, certificates from the cluster's root CA.
    let store = manager.store();
    let cluster = store
        .list::<Cluster>()
        .into_iter()
        .next()
        .context("no cluster object")?;
    let root = cluster.root_ca.as_ref().context("no root CA")?;
    let ca = RootCa::from_pem(
        std::str::from_utf8(&root.ca_cert)?,
        std::str::from_utf8(&root.ca_key)?,
    )?;
    let ids: Vec<String> = (0..nodes).map(|_| berth_proto::ids::new_id()).collect();
    for chunk in ids.chunks(500) {
        let mut batch = StoreActions::new();
        for id in chunk {
            batch.create(Node {
                id: id.clone(),
                spec: Some(NodeSpec {
                    annotations: None,
                    desired_role: NodeRole::Worker as i32,
                    membership: NodeMembership::Accepted as i32,
                    availability: NodeAvailability::Active as i32,
                }),
                status: Some(NodeStatus {
                    state: NodeState::Unknown as i32,
                    ..Default::default()
                }),
                role: NodeRole::Worker as i32,
                ..Default::default()
            });
        }
        manager.replica().propose(&batch).await?;
    }
    let t_register = Instant::now();
    let agents = CancellationToken::new();
    let mut keep = Vec::with_capacity(nodes);
    for (i, id) in ids.iter().enumerate() {
        let node_creds = ca.issue_node_credentials(
            id,
            Role::Worker,
            manager.cluster_id(),
            DEFAULT_NODE_CERT_VALIDITY,
        )?;
        let (tx, rx) = watch::channel(node_creds);
        keep.push(tx);
        let worker = Worker::open(WorkerConfig::in_memory(), Arc::new(SimulatedExecutor))?;
        let description = NodeDescription {
            hostname: format!("sim-{i}"),
            platform: Some(Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
            }),
            resources: Some(Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
                pids: 0,
            }),
            ..Default::default()
        };
        let session = Session::new(
            SessionConfig::new(vec![addr.clone()], rx, description),
            worker.handle(),
        );
        tokio::spawn(worker.run(agents.child_token()));
        tokio::spawn(session.run(agents.child_token()));
    }
    let ready = |store: &berth_manager::store::Store| {
        store
            .list::<Node>()
            .iter()
            .filter(|n| n.status.as_ref().map(|s| s.state) == Some(NodeState::Ready as i32))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready(&store) < nodes {
        ensure!(
            Instant::now() < deadline,
            "only {} of {nodes} simulated nodes registered",
            ready(&store)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let register = t_register.elapsed().as_secs_f64();
    eprintln!("# {nodes} simulated nodes ready after {register:.1} s");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(client_tls_config(&creds)?)?
        .connect()
        .await?;
    let mut control = ControlClient::new(channel);
    // Counted from the store's change stream: no polling load on the manager.
    let (tables, mut watch) = store.subscribe();
    let mut counts = Counts::of(&tables);
    drop(tables);
    let cpu0 = self_cpu_s();
    let t0 = Instant::now();
    control
        .create_service(CreateServiceRequest {
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: "sim".into(),
                    ..Default::default()
                }),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "busybox:latest".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(Mode::Replicated(ReplicatedService { replicas: tasks })),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .service
        .context("no service")?;
    let mut first_placed = None;
    let mut all_placed = None;
    let deadline = t0 + Duration::from_secs(900);
    let all_running = loop {
        let (placed, running) = counts.snapshot();
        let now = t0.elapsed().as_secs_f64();
        if placed > 0 && first_placed.is_none() {
            first_placed = Some(now);
        }
        if placed >= tasks && all_placed.is_none() {
            all_placed = Some(now);
            eprintln!("# all {tasks} placed after {now:.2} s");
        }
        if running >= tasks {
            break now;
        }
        ensure!(
            Instant::now() < deadline,
            "after 900 s: {placed} placed, {running} running of {tasks}"
        );
        match tokio::time::timeout(Duration::from_secs(1), watch.recv()).await {
            Err(_) => {}
            Ok(Ok(changes)) => counts.apply(&changes),
            Ok(Err(e)) => {
                eprintln!("# store watch: {e}; recounting");
                let (tables, w) = store.subscribe();
                watch = w;
                counts = Counts::of(&tables);
            }
        }
    };
    let cpu_s = self_cpu_s() - cpu0;
    agents.cancel();
    stop.cancel();
    let _ = served.await;
    drop(keep);
    manager.shutdown().await?;
    Ok(SimResult {
        register,
        first_placed: first_placed.unwrap_or(all_running),
        all_placed: all_placed.unwrap_or(all_running),
        all_running,
        tasks,
        nodes,
        cpu_s,
    })
}

// ---------------------------------------------------------------- report

/// One row: our median [min–max], Swarm's, and how many times better ours is.
fn row(s: &Samples, ours: &str, anchor: &Anchor, theirs: &[&str], unit: &str, label: &str) {
    let Some((med, min, max)) = s.stats(ours) else {
        println!("{label:<44} (not measured)");
        return;
    };
    let swarm: Option<f64> = if theirs.is_empty() {
        None
    } else {
        theirs
            .iter()
            .map(|n| anchor.get(*n).map(|(v, _, _)| *v))
            .sum::<Option<f64>>()
    };
    let (swarm_text, ratio) = match swarm {
        Some(v) if v > 0.0 && med > 0.0 => (format!("{v:>10.3}"), format!("{:>8.1}x", v / med)),
        Some(v) => (format!("{v:>10.3}"), "       -".to_owned()),
        None => ("         -".to_owned(), "       -".to_owned()),
    };
    println!("{label:<44} {med:>10.3} [{min:.3}-{max:.3}] {swarm_text} {ratio}  {unit}");
}

fn main() -> anyhow::Result<()> {
    if std::env::args().skip(1).any(|a| a != "--bench") {
        bail!("usage: cargo bench -p berth-tests --bench services (env knobs: see the source)");
    }
    let cfg = Config::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "# services benchmarks: {} run(s), host load {} ({} CPUs)",
        cfg.runs,
        load(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if cfg.one_node {
        one_node_part(&rt, &cfg)?;
    }
    if cfg.sim {
        sim_part(&rt, &cfg)?;
    }
    Ok(())
}

/// The one-node figures, Swarm's, and their table.
fn one_node_part(rt: &Runtime, cfg: &Config) -> anyhow::Result<()> {
    let mut s = Samples::default();
    one_node(rt, cfg, &mut s)?;
    let load_ours = load();
    let anchor = if cfg.swarm {
        swarm_anchor(cfg)?
    } else {
        Anchor::new()
    };
    let load_swarm = load();

    println!();
    println!(
        "## one node: ours vs Docker Swarm on this machine, same run (median [min-max] of {} runs)",
        cfg.runs
    );
    println!("# host load after ours: {load_ours}; after Swarm: {load_swarm}");
    println!(
        "{:<44} {:>10} {:>15} {:>10} {:>9}  unit",
        "figure", "berth", "", "swarm", "swarm/us"
    );
    for &n in &cfg.sizes {
        row(
            &s,
            &format!("create_{n}_to_running"),
            &anchor,
            &[&format!("swarm_create_{n}_to_running")],
            "s",
            &format!("create -> {n} running"),
        );
    }
    let n = cfg.scaled;
    let twice = n * 2;
    row(
        &s,
        &format!("scale_{n}_to_{twice}"),
        &anchor,
        &[&format!("swarm_scale_{n}_to_{twice}")],
        "s",
        &format!("scale {n} -> {twice} (all running)"),
    );
    row(
        &s,
        &format!("scale_{twice}_to_0_stopped"),
        &anchor,
        &[&format!("swarm_scale_{twice}_to_0_stopped")],
        "s",
        &format!("scale {twice} -> 0 (none running)"),
    );
    row(
        &s,
        &format!("scale_{twice}_to_0_removed"),
        &anchor,
        &[&format!("swarm_scale_{twice}_to_0_removed")],
        "s",
        &format!("scale {twice} -> 0 (all removed)"),
    );
    row(
        &s,
        "kill_replace_restartdelay_0s",
        &anchor,
        &["swarm_kill_replace_restartdelay_0s_container_running"],
        "s",
        "killed task replaced (restart delay 0)",
    );
    row(
        &s,
        "mem_per_container_rss_kib",
        &anchor,
        &["mem_per_container_rss"],
        "KiB",
        "control-plane RSS per running container",
    );
    row(
        &s,
        "mem_per_container_pss_kib",
        &anchor,
        &["mem_per_container_pss"],
        "KiB",
        "control-plane PSS per running container",
    );
    row(
        &s,
        "mem_0_total_rss_mib",
        &anchor,
        &["mem_0_total_rss"],
        "MiB",
        "control plane RSS at 0 replicas",
    );
    let idle = cfg.idle.as_secs();
    row(
        &s,
        &format!("cpu_idle{n}_ms_per_{idle}s"),
        &anchor,
        &[
            &format!("cpu_idle{n}_dockerd_containerd_{idle}s"),
            &format!("cpu_idle{n}_shims_{idle}s"),
        ],
        "ms",
        &format!("idle CPU, {n} replicas, {idle} s"),
    );
    println!(
        "# differs: Swarm gives each container a veth pair on a bridge and iptables rules (~60 ms of this host's floor); ours get a fresh netns with loopback only (no network attached)."
    );
    println!(
        "# differs: memory/CPU are berthd (manager + agent) + one supervisor per container vs dockerd + containerd + one containerd-shim per container."
    );
    for (name, (v, unit, _)) in &anchor {
        if name.starts_with("host_") || name.starts_with("poll_call") {
            println!("# swarm run: {name} = {v} {unit}");
        }
    }

    Ok(())
}

/// The simulated-node figures.
fn sim_part(rt: &Runtime, cfg: &Config) -> anyhow::Result<()> {
    println!();
    println!("## scale: simulated nodes against a real manager (Raft on sled, fsync)");
    let sim = rt.block_on(simulated(cfg.sim_nodes, cfg.sim_tasks))?;
    let placing = (sim.all_placed - sim.first_placed).max(1e-9);
    println!(
        "{:<44} {:>10.2} s",
        format!("{} simulated nodes registered", sim.nodes),
        sim.register
    );
    println!(
        "{:<44} {:>10.2} s",
        format!("create -> all {} tasks placed", sim.tasks),
        sim.all_placed
    );
    println!(
        "{:<44} {:>10.0} /s   goal >= 10000/s; Nomad C1M 3750/s (published), Swarm: no local figure (3 starts/s end to end)",
        "placements committed per second (end to end)",
        sim.tasks as f64 / sim.all_placed.max(1e-9)
    );
    println!(
        "{:<44} {:>10.0} /s   (first to last placement)",
        "placements committed per second (placing)",
        sim.tasks as f64 / placing
    );
    println!(
        "{:<44} {:>10.2} s",
        format!("create -> all {} reported RUNNING", sim.tasks),
        sim.all_running
    );
    println!(
        "{:<44} {:>10.1} s   (manager + {} agents in one process, 2 cores)",
        "CPU used meanwhile", sim.cpu_s, sim.nodes
    );
    println!("# host load at the end: {}", load());
    Ok(())
}
