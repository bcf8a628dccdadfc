//! The agent side of a node in a swarm: the worker (runs assigned tasks on the local engine)
//! and the session with the managers' dispatcher that feeds it. Runs on every node, managers
//! included, like Swarm.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::engine::Engine;
use berth_agent::logs::EngineLogs;
use berth_agent::network::{NetworkAgent, NetworkConfig};
use berth_agent::session::{NodeCallback, Session, SessionConfig};
use berth_agent::worker::{EngineExecutor, Worker, WorkerConfig, WorkerHandle};
use berth_proto::identity::NodeCredentials;
use berth_proto::v1::{AssignmentsMessage, AssignmentsType, NodeDescription, Platform, Resources};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the agent keeps its network state, task files and manager list, inside the state
/// directory (its task records are in [`berth_agent::worker::TASK_DB_DIR`]).
pub const AGENT_DIR: &str = "agent";

/// Where tasks' secrets and configs are mounted (tmpfs, briefly) inside the state directory.
pub const TASK_FILES_DIR: &str = "agent/task-files";

/// Where the data path keeps namespaces and per-task files, inside the state directory.
pub const NETWORK_DIR: &str = "agent/network";

/// The running worker and session of this node.
#[derive(Debug)]
pub struct NodeAgent {
    cancel: CancellationToken,
    /// Stops only the session (and what follows it), leaving the worker running.
    session_cancel: CancellationToken,
    worker: WorkerHandle,
    network: NetworkAgent,
    tasks: TaskTracker,
}

impl NodeAgent {
    /// Opens the worker (its task database under `state_root`), adopts the containers of its
    /// tasks, and starts the session with `managers`.
    pub fn start(
        state_root: &Path,
        engine: Engine,
        managers: Vec<String>,
        credentials: watch::Receiver<NodeCredentials>,
        advertise_addr: &str,
        on_node: NodeCallback,
    ) -> anyhow::Result<NodeAgent> {
        let data_addr = advertise_addr
            .rsplit_once(':')
            .map_or(advertise_addr, |(ip, _)| ip)
            .parse()
            .ok();
        let network =
            NetworkAgent::new(NetworkConfig::new(state_root.join(NETWORK_DIR), data_addr))?;
        let engine_for_logs = engine.clone();
        let worker = Worker::open(
            WorkerConfig::new(state_root),
            Arc::new(
                EngineExecutor::new(engine)
                    .with_network(network.clone())
                    .with_task_files(state_root.join(TASK_FILES_DIR)),
            ),
        )?;
        let mut cfg = SessionConfig::new(managers, credentials.clone(), describe(advertise_addr));
        cfg.managers_file = Some(state_root.join("agent/managers.json"));
        cfg.on_node = Some(on_node);
        cfg.logs = Some(Arc::new(EngineLogs::new(engine_for_logs)));
        let handle = worker.handle();
        let session = Session::new(cfg, worker.handle());
        let cancel = CancellationToken::new();
        let session_cancel = cancel.child_token();
        let tasks = TaskTracker::new();
        let stop = cancel.clone();
        tasks.spawn(async move {
            if let Err(err) = worker.run(stop).await {
                tracing::error!("worker stopped: {err}");
            }
        });
        let sessions = session.state();
        let (net, stop) = (network.clone(), cancel.clone());
        tasks.spawn(async move { net.run(stop).await });
        tasks.spawn(berth_agent::network::follow::follow(
            network.clone(),
            sessions,
            credentials,
            session_cancel.clone(),
        ));
        let stop = session_cancel.clone();
        tasks.spawn(async move {
            if let Err(err) = session.run(stop).await {
                tracing::error!("session stopped: {err}");
            }
        });
        Ok(NodeAgent {
            cancel,
            session_cancel,
            worker: handle,
            network,
            tasks,
        })
    }

    /// Leaves the swarm's work behind cleanly, as Docker's `swarm leave` does: ends the
    /// session (nothing new arrives), removes every task's container (each stopped within its
    /// grace period), then the node's overlay bridges, tunnels and rules, and stops. Returns
    /// the number of tasks still on the node after `timeout` (their records are then kept,
    /// so a later start still knows them).
    pub async fn leave(self, timeout: Duration) -> anyhow::Result<usize> {
        self.session_cancel.cancel();
        self.worker
            .assign(AssignmentsMessage {
                r#type: AssignmentsType::Complete as i32,
                ..Default::default()
            })
            .await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let left = loop {
            let left = self.worker.tasks().await?.len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if left == 0
            && let Err(err) = self.network.clear().await
        {
            tracing::warn!("removing the node's overlay networks: {err}");
        }
        self.stop().await;
        Ok(left)
    }

    /// Stops the session and the worker; containers keep running.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// What this node tells the managers about itself.
fn describe(advertise_addr: &str) -> NodeDescription {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    NodeDescription {
        hostname: super::swarm::hostname(),
        platform: Some(Platform {
            os: std::env::consts::OS.into(),
            architecture: std::env::consts::ARCH.into(),
        }),
        resources: Some(Resources {
            nano_cpus: i64::try_from(cpus).unwrap_or(1) * 1_000_000_000,
            memory_bytes: memory_bytes(),
            ..Default::default()
        }),
        engine_version: crate::VERSION.into(),
        addr: advertise_addr
            .rsplit_once(':')
            .map_or(advertise_addr, |(ip, _)| ip)
            .to_string(),
        ..Default::default()
    }
}

/// Total memory from /proc/meminfo (0 if unreadable).
fn memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
