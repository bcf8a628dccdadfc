//! Replication of the store with openraft 0.9: the log and vote on sled ([`LogStore`]), the
//! store as the state machine with snapshots in sled ([`StateMachine`]), and [`RaftNode`],
//! the one handle the rest of the manager uses (open, initialize, write, leadership).
//!
//! Architecture invariants:
//! - The store changes only by applying committed entries, in log order, on every manager.
//! - A write is acknowledged only after its entry is committed and applied locally; its
//!   [`ApplyResult`] says whether the batch was applied or refused (optimistic concurrency).
//! - The network is a parameter (any `RaftNetworkFactory`): the gRPC transport in production,
//!   [`MemRouter`] in tests.

// openraft's error types (StorageError, RaftError, ...) are large by design and appear in
// every storage signature; boxing them would fight the trait definitions.
#![allow(clippy::result_large_err)]

pub mod entry_codec;
mod log_store;
mod mem_network;
pub mod snapshot_schedule;
mod state_machine;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::{
    BasicNode, Config, ConfigError, Raft, RaftMetrics, ServerState, SnapshotPolicy, StorageError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use log_store::{LogReader, LogStore, entry_chunks};
pub use mem_network::{MemConnection, MemNetwork, MemRouter};
pub use state_machine::StateMachine;
pub use types::{ApplyResult, NodeId, RaftRequest, TypeConfig, now};

use crate::store::{Store, StoreActions};

/// Timing and log-compaction settings of a Raft node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max: Duration,
    /// openraft's own snapshot policy. Off by default: snapshots follow the cluster object's
    /// interval ([`snapshot_schedule`]); tests may set a fixed policy here as well.
    pub snapshot_policy: SnapshotPolicy,
    /// Log entries kept behind the last snapshot for slow followers.
    pub max_in_snapshot_log_to_keep: u64,
    /// How long a write waits for a leader and a commit before failing with
    /// [`WriteError::NoQuorum`].
    pub write_timeout: Duration,
    /// Change sets a store subscriber may fall behind before it lags.
    pub watch_capacity: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 500,
            write_timeout: Duration::from_secs(10),
            watch_capacity: crate::store::DEFAULT_WATCH_CAPACITY,
        }
    }
}

impl RaftConfig {
    fn to_openraft(&self) -> Result<Config, ConfigError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Config {
            cluster_name: "berth".into(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            snapshot_policy: self.snapshot_policy.clone(),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            // A chunk travels raw (see `raft_net::wire`); 1 MiB in 1 s leaves a debug build
            // and a loaded host room. Unlike AppendEntries, snapshots have their own deadline.
            snapshot_max_chunk_size: 1024 * 1024,
            install_snapshot_timeout: 1000,
            ..Config::default()
        }
        .validate()
    }
}

/// Failures to open, initialise or reconfigure a Raft node.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    /// The sled log database could not be opened.
    #[error("failed to open the raft log in {path:?}")]
    OpenDb {
        /// The log directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// Reading or writing Raft storage failed.
    #[error("raft storage failed: {0}")]
    Storage(#[from] StorageError<NodeId>),
    /// The timing settings are inconsistent.
    #[error("invalid raft config: {0}")]
    Config(#[from] ConfigError),
    /// The Raft core stopped.
    #[error("raft stopped: {0}")]
    Fatal(#[from] Fatal<NodeId>),
    /// The node already belongs to a cluster (it has a log or a vote).
    #[error("raft is already initialized")]
    AlreadyInitialized,
    /// The initial membership was refused.
    #[error("cannot initialize raft: {0}")]
    Initialize(String),
    /// The log flusher did not stop after shutdown.
    #[error("raft log flusher did not stop within {0:?}")]
    ShutdownTimeout(Duration),
}

/// Why a write (or membership change) was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// This manager is not the leader; send the write to the leader.
    #[error(
        "this manager is not the leader; the leader is raft member {leader_id} at {leader_addr}"
    )]
    NotLeader {
        /// Raft id of the leader.
        leader_id: NodeId,
        /// Its Raft address.
        leader_addr: String,
    },
    /// No leader could commit the write in time: too few managers are reachable. The write
    /// may still be applied later if it reached the log of a leader that regains quorum.
    #[error(
        "no quorum: the cluster has no leader, or too few managers are reachable to commit writes (gave up after {waited:?})"
    )]
    NoQuorum {
        /// How long the write waited.
        waited: Duration,
    },
    /// A membership change was refused (for example, a change already in progress).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The Raft core stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

/// Who leads, as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// Raft id of the leader, if one is known.
    pub leader_id: Option<NodeId>,
    /// The leader's Raft address, if known.
    pub leader_addr: Option<String>,
    /// The current term.
    pub term: u64,
    /// Whether this node is the leader.
    pub is_self: bool,
}

impl Leadership {
    fn from_metrics(id: NodeId, m: &RaftMetrics<NodeId, BasicNode>) -> Self {
        let leader_addr = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        Leadership {
            leader_id: m.current_leader,
            leader_addr,
            term: m.current_term,
            is_self: m.current_leader == Some(id) && m.state == ServerState::Leader,
        }
    }
}

/// How long [`RaftNode::shutdown`] waits for the log flusher to finish.
const FLUSHER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One manager's Raft member: the store it replicates and the Raft core driving it.
pub struct RaftNode {
    id: NodeId,
    raft: Raft<TypeConfig>,
    store: Store,
    config: RaftConfig,
    leadership: watch::Receiver<Leadership>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("leadership", &*self.leadership.borrow())
            .finish()
    }
}

impl RaftNode {
    /// Opens (or creates) the Raft data in `data_dir` (owned by Raft: the sled log in `log/`,
    /// the current snapshot in `snapshot/`) and starts the Raft core as member `id`. The
    /// store is restored from the last snapshot and the committed log after it. Call
    /// [`RaftNode::initialize`] on a brand-new cluster.
    pub async fn open<N>(
        data_dir: &Path,
        id: NodeId,
        network: N,
        config: RaftConfig,
    ) -> Result<RaftNode, RaftNodeError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let log_dir = data_dir.join("log");
        let (log_store, flusher) =
            LogStore::open(&log_dir).map_err(|source| RaftNodeError::OpenDb {
                path: log_dir.clone(),
                source,
            })?;
        let store = Store::with_watch_capacity(config.watch_capacity);
        let state_machine = StateMachine::open(&data_dir.join("snapshot"), store.clone())?;
        let raft_config = Arc::new(config.to_openraft()?);
        let raft = Raft::new(id, raft_config, network, log_store, state_machine).await?;

        let mut metrics = raft.metrics();
        let (tx, leadership) = watch::channel(Leadership::from_metrics(id, &metrics.borrow()));
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let stop = cancel.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = metrics.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let now = Leadership::from_metrics(id, &metrics.borrow_and_update());
                        tx.send_if_modified(|cur| {
                            let modified = *cur != now;
                            if modified {
                                tracing::info!(raft_id = id, leader = ?now.leader_id, term = now.term, "raft leadership changed");
                                *cur = now;
                            }
                            modified
                        });
                    }
                }
            }
        });
        snapshot_schedule::spawn(&tasks, cancel.clone(), raft.clone(), store.clone());
        tasks.close();
        Ok(RaftNode {
            id,
            raft,
            store,
            config,
            leadership,
            cancel,
            tasks,
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// This node's Raft id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The replicated store (read it here; write through [`RaftNode::write`]).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The openraft handle, for the Raft RPC service (append_entries, vote, install_snapshot).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Live openraft metrics.
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// Starts a brand-new cluster with this node as its only member, reachable at `addr`.
    pub async fn initialize(&self, addr: &str) -> Result<(), RaftNodeError> {
        self.initialize_members(BTreeMap::from([(self.id, addr.to_owned())]))
            .await
    }

    /// Starts a brand-new cluster with these voters (Raft id → address).
    pub async fn initialize_members(
        &self,
        members: BTreeMap<NodeId, String>,
    ) -> Result<(), RaftNodeError> {
        let members: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(RaftNodeError::AlreadyInitialized)
            }
            Err(RaftError::APIError(e)) => Err(RaftNodeError::Initialize(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(RaftNodeError::Fatal(f)),
        }
    }

    /// Whether this node is the leader right now.
    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().is_self
    }

    /// The current leader as this node sees it.
    pub fn leadership(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    /// A watch that changes whenever the leader or the term changes.
    pub fn leadership_changes(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// Proposes `batch` as one log entry (stamped with this node's clock) and waits until it is
    /// committed and applied here. The [`ApplyResult`] tells whether the batch was applied or
    /// refused. Fails with [`WriteError::NotLeader`] on a follower and with
    /// [`WriteError::NoQuorum`] when no leader commits it within the write timeout.
    pub async fn write(&self, batch: &StoreActions) -> Result<ApplyResult, WriteError> {
        self.write_request(RaftRequest::now(batch)).await
    }

    /// Like [`RaftNode::write`] with an already built request (e.g. forwarded by a follower).
    pub async fn write_request(&self, request: RaftRequest) -> Result<ApplyResult, WriteError> {
        let started = Instant::now();
        let deadline = started + self.config.write_timeout;
        loop {
            let attempt =
                tokio::time::timeout_at(deadline, self.raft.client_write(request.clone())).await;
            let err = match attempt {
                Err(_elapsed) => {
                    return Err(WriteError::NoQuorum {
                        waited: started.elapsed(),
                    });
                }
                Ok(Ok(resp)) => return Ok(resp.data),
                Ok(Err(e)) => e,
            };
            self.no_leader_yet(err, deadline, started).await?;
        }
    }

    /// Maps a client-write error; returns `Ok` (after a short pause) when no leader is known
    /// yet and the deadline allows another attempt.
    async fn no_leader_yet(
        &self,
        err: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
        deadline: Instant,
        started: Instant,
    ) -> Result<(), WriteError> {
        match err {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                match (f.leader_id, f.leader_node) {
                    (Some(leader_id), Some(node)) if leader_id != self.id => {
                        Err(WriteError::NotLeader {
                            leader_id,
                            leader_addr: node.addr,
                        })
                    }
                    _ => {
                        // An election is under way (or quorum is lost): wait a little and retry.
                        let pause = deadline
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(20));
                        if pause.is_zero() {
                            return Err(WriteError::NoQuorum {
                                waited: started.elapsed(),
                            });
                        }
                        tokio::time::sleep(pause).await;
                        Ok(())
                    }
                }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Err(WriteError::Membership(e.to_string()))
            }
            RaftError::Fatal(f) => Err(WriteError::Fatal(f.to_string())),
        }
    }

    /// Adds a non-voting member at `addr` and waits (up to the write timeout) until it has
    /// caught up with the log.
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), WriteError> {
        let started = Instant::now();
        let deadline = started + self.config.write_timeout;
        let add = self.raft.add_learner(id, BasicNode::new(addr), true);
        match tokio::time::timeout_at(deadline, add).await {
            Err(_elapsed) => Err(WriteError::NoQuorum {
                waited: started.elapsed(),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.no_leader_yet(e, deadline, started).await?;
                Err(WriteError::NoQuorum {
                    waited: started.elapsed(),
                })
            }
        }
    }

    /// Sets the voters to exactly `voters` (members must have been added as learners first).
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), WriteError> {
        let started = Instant::now();
        let deadline = started + self.config.write_timeout;
        match tokio::time::timeout_at(deadline, self.raft.change_membership(voters, false)).await {
            Err(_elapsed) => Err(WriteError::NoQuorum {
                waited: started.elapsed(),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.no_leader_yet(e, deadline, started).await?;
                Err(WriteError::NoQuorum {
                    waited: started.elapsed(),
                })
            }
        }
    }

    /// Builds a snapshot now (and compacts the log behind it per the config).
    pub async fn snapshot_now(&self) -> Result<(), RaftNodeError> {
        self.raft.trigger().snapshot().await?;
        Ok(())
    }

    /// Stops the Raft core and waits until the data directory is no longer written.
    pub async fn shutdown(self) -> Result<(), RaftNodeError> {
        self.cancel.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(raft_id = self.id, error = %e, "raft core ended with an error");
        }
        self.tasks.wait().await;
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(self.raft);
        if let Some(flusher) = flusher {
            match tokio::time::timeout(FLUSHER_STOP_TIMEOUT, flusher).await {
                Ok(_) => {}
                Err(_) => return Err(RaftNodeError::ShutdownTimeout(FLUSHER_STOP_TIMEOUT)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use anyhow::{Context, bail};
    use berth_proto::v1::{Annotations, Service, ServiceSpec, Task};
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::store::{ObjectKind, StoreError};

    /// Builds a fresh sled log store and state machine in a temp dir for each suite case.
    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
            let (log_store, _flusher) = LogStore::open(&dir.path().join("log"))
                .map_err(|e| openraft::StorageIOError::write(&e))?;
            let sm = StateMachine::open(&dir.path().join("snapshot"), Store::new())?;
            Ok((dir, log_store, sm))
        }
    }

    /// openraft's own conformance suite for RaftLogStorage + RaftStateMachine, on sled.
    #[test]
    fn openraft_storage_suite_passes_on_sled() {
        Suite::test_all(SledBuilder).expect("openraft storage suite");
    }

    fn fast_config() -> RaftConfig {
        RaftConfig {
            write_timeout: Duration::from_secs(5),
            ..RaftConfig::default()
        }
    }

    fn addr(id: NodeId) -> String {
        format!("127.0.0.1:{}", 4400 + id)
    }

    static SEQ: AtomicU64 = AtomicU64::new(0);

    fn service(name: &str) -> Service {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        Service {
            id: format!("svc{}x{n}", std::process::id()),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tasks_batch(prefix: &str, n: usize) -> StoreActions {
        let mut b = StoreActions::new();
        for i in 0..n {
            b.create(Task {
                id: format!("{prefix}-{i}"),
                service_id: "s".into(),
                slot: i as u64,
                ..Default::default()
            });
        }
        b
    }

    /// Polls `probe` every 10 ms until it holds or `within` passes.
    async fn wait_until(
        what: &str,
        within: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while !probe() {
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting until {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Opens a node, retrying while a previous instance in this process still holds the sled
    /// lock (its last background flush can outlive shutdown by a few milliseconds).
    async fn open_node(
        dir: &Path,
        id: NodeId,
        router: &MemRouter,
        config: RaftConfig,
    ) -> anyhow::Result<RaftNode> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match RaftNode::open(dir, id, router.network(id), config.clone()).await {
                Ok(node) => {
                    router.register(id, node.raft().clone());
                    return Ok(node);
                }
                Err(RaftNodeError::OpenDb { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context("opening raft node"),
            }
        }
    }

    struct Cluster {
        router: MemRouter,
        dirs: BTreeMap<NodeId, tempfile::TempDir>,
        nodes: BTreeMap<NodeId, RaftNode>,
        config: RaftConfig,
    }

    impl Cluster {
        async fn start(ids: &[NodeId], config: RaftConfig) -> anyhow::Result<Cluster> {
            let router = MemRouter::new();
            let mut cluster = Cluster {
                router,
                dirs: BTreeMap::new(),
                nodes: BTreeMap::new(),
                config,
            };
            for &id in ids {
                let dir = tempfile::tempdir()?;
                let node =
                    open_node(dir.path(), id, &cluster.router, cluster.config.clone()).await?;
                cluster.dirs.insert(id, dir);
                cluster.nodes.insert(id, node);
            }
            let members = ids.iter().map(|&id| (id, addr(id))).collect();
            cluster.nodes[&ids[0]].initialize_members(members).await?;
            Ok(cluster)
        }

        async fn leader(&self) -> anyhow::Result<NodeId> {
            let mut found = None;
            wait_until("a leader is elected", Duration::from_secs(10), || {
                found = self.nodes.values().find(|n| n.is_leader()).map(|n| n.id());
                found.is_some()
            })
            .await?;
            found.context("leader")
        }

        async fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
            self.router.unregister(id);
            let node = self.nodes.remove(&id).context("no such node")?;
            node.shutdown().await?;
            Ok(())
        }

        async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
            let dir = self.dirs.get(&id).context("no dir")?;
            let node = open_node(dir.path(), id, &self.router, self.config.clone()).await?;
            self.nodes.insert(id, node);
            Ok(())
        }

        /// Waits until every running node's store has the same dump as `leader`'s.
        async fn converged(&self, leader: NodeId) -> anyhow::Result<()> {
            let want = self.nodes[&leader].store().dump();
            wait_until(
                "every store matches the leader's",
                Duration::from_secs(10),
                || self.nodes.values().all(|n| n.store().dump() == want),
            )
            .await
        }

        async fn stop(mut self) -> anyhow::Result<()> {
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                self.kill(id).await?;
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_single_node_cluster_commits_and_refuses_like_the_store() -> anyhow::Result<()> {
        let cluster = Cluster::start(&[1], fast_config()).await?;
        let leader = cluster.leader().await?;
        let node = &cluster.nodes[&leader];
        assert!(node.is_leader());
        assert_eq!(
            node.leadership().leader_addr.as_deref(),
            Some(addr(1).as_str())
        );

        let web = service("web");
        let mut b = StoreActions::new();
        b.create(web.clone());
        let res = node.write(&b).await?;
        assert_eq!(res.result, Ok(1));
        let stored = node.store().get::<Service>(&web.id).context("stored")?;
        assert_eq!(stored.meta.map(|m| m.version), Some(res.log_index));

        // A stale update is refused through Raft just as the store refuses it.
        let mut stale = (*stored).clone();
        stale.meta = None;
        let mut b = StoreActions::new();
        b.update(stale).create(service("WEB"));
        let res = node.write(&b).await?;
        let errors = res.result.expect_err("refused").errors;
        assert!(
            matches!(errors[0].error, StoreError::OutOfSequence { .. }),
            "{errors:?}"
        );
        assert!(
            matches!(errors[1].error, StoreError::NameConflict { .. }),
            "{errors:?}"
        );
        assert_eq!(node.store().list::<Service>().len(), 1);

        assert!(matches!(
            node.initialize(&addr(1)).await,
            Err(RaftNodeError::AlreadyInitialized)
        ));
        cluster.stop().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_replicate_survive_leader_loss_and_a_restart_catches_up()
    -> anyhow::Result<()> {
        let mut cluster = Cluster::start(&[1, 2, 3], fast_config()).await?;
        let first = cluster.leader().await?;
        for i in 0..20 {
            let res = cluster.nodes[&first]
                .write(&tasks_batch(&format!("a{i}"), 10))
                .await?;
            assert_eq!(res.result, Ok(10));
        }
        cluster.converged(first).await?;
        assert_eq!(cluster.nodes[&first].store().list::<Task>().len(), 200);

        // A follower refuses writes and names the leader.
        let follower = cluster
            .nodes
            .keys()
            .copied()
            .find(|&id| id != first)
            .context("follower")?;
        let err = cluster.nodes[&follower]
            .write(&tasks_batch("f", 1))
            .await
            .expect_err("follower write");
        assert_eq!(
            err,
            WriteError::NotLeader {
                leader_id: first,
                leader_addr: addr(first)
            }
        );

        // Kill the leader: another one takes over and writes continue.
        let mut changes = cluster.nodes[&follower].leadership_changes();
        changes.mark_unchanged();
        let killed_at = Instant::now();
        cluster.kill(first).await?;
        let second = cluster.leader().await?;
        assert_ne!(second, first);
        // The follower's leadership watch saw the change.
        wait_until(
            "the follower's watch names the new leader",
            Duration::from_secs(5),
            || changes.has_changed().unwrap_or(false) && changes.borrow().leader_id == Some(second),
        )
        .await?;
        let res = cluster.nodes[&second].write(&tasks_batch("b", 10)).await?;
        tracing::info!(failover = ?killed_at.elapsed(), "leader replaced and first write committed");
        assert_eq!(res.result, Ok(10));
        for i in 0..10 {
            cluster.nodes[&second]
                .write(&tasks_batch(&format!("c{i}"), 5))
                .await?;
        }

        // The old leader comes back from its sled directory and catches up, nothing lost.
        cluster.restart(first).await?;
        cluster.converged(second).await?;
        let restarted = cluster.nodes[&first].store();
        assert_eq!(restarted.list::<Task>().len(), 200 + 10 + 50);
        assert_eq!(
            restarted.version(),
            cluster.nodes[&second].store().version()
        );
        cluster.stop().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_missed_compacted_log_installs_a_snapshot() -> anyhow::Result<()> {
        let config = RaftConfig {
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
            max_in_snapshot_log_to_keep: 0,
            ..fast_config()
        };
        let mut cluster = Cluster::start(&[1, 2, 3], config).await?;
        let leader = cluster.leader().await?;
        let lagging = cluster
            .nodes
            .keys()
            .copied()
            .find(|&id| id != leader)
            .context("follower")?;
        cluster.kill(lagging).await?;
        for i in 0..60 {
            cluster.nodes[&leader]
                .write(&tasks_batch(&format!("s{i}"), 3))
                .await?;
        }
        // The leader snapshotted and purged the log the lagging node would need.
        let purged = || {
            cluster.nodes[&leader]
                .metrics()
                .borrow()
                .purged
                .map(|l| l.index)
        };
        wait_until("the leader purges its log", Duration::from_secs(10), || {
            purged().is_some_and(|p| p > 20)
        })
        .await?;

        cluster.restart(lagging).await?;
        cluster.converged(leader).await?;
        let snap = cluster.nodes[&lagging].metrics().borrow().snapshot;
        assert!(
            snap.is_some_and(|s| s.index > 20),
            "lagging node has snapshot {snap:?}"
        );
        assert_eq!(cluster.nodes[&lagging].store().list::<Task>().len(), 180);

        // Restarting the caught-up node rebuilds its store from its own snapshot + log.
        cluster.kill(lagging).await?;
        cluster.nodes[&leader]
            .write(&tasks_batch("after", 2))
            .await?;
        cluster.restart(lagging).await?;
        cluster.converged(leader).await?;
        cluster.stop().await
    }

    #[tokio::test]
    async fn snapshots_follow_the_cluster_objects_interval() -> anyhow::Result<()> {
        let cluster = Cluster::start(&[1], fast_config()).await?;
        cluster.leader().await?;
        let node = &cluster.nodes[&1];
        let snapshot = || node.metrics().borrow().snapshot.map(|l| l.index);
        for i in 0..12 {
            node.write(&tasks_batch(&format!("a{i}"), 1)).await?;
        }
        // Without a cluster object the interval is Docker's 10 000.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(snapshot(), None);

        let spec = |interval| berth_proto::v1::Cluster {
            id: "c".into(),
            spec: Some(berth_proto::v1::ClusterSpec {
                raft: Some(berth_proto::v1::RaftConfig {
                    snapshot_interval: interval,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut batch = StoreActions::new();
        batch.create(spec(5));
        node.write(&batch).await?;
        wait_until("a snapshot at interval 5", Duration::from_secs(5), || {
            snapshot().is_some()
        })
        .await?;
        // Let the first snapshot land before counting from it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let first = snapshot().context("snapshot")?;
        for i in 0..6 {
            node.write(&tasks_batch(&format!("b{i}"), 1)).await?;
        }
        wait_until(
            "the next snapshot 5 entries on",
            Duration::from_secs(5),
            || snapshot().is_some_and(|s| s >= first + 5),
        )
        .await?;

        // A larger interval (set through the store, as `swarm update` does) stops them.
        let mut cur = (*node.store().list::<berth_proto::v1::Cluster>()[0]).clone();
        cur.spec = spec(1000).spec;
        let mut batch = StoreActions::new();
        batch.update(cur);
        node.write(&batch).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let settled = snapshot();
        for i in 0..20 {
            node.write(&tasks_batch(&format!("c{i}"), 1)).await?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(snapshot(), settled);
        cluster.stop().await
    }

    #[tokio::test]
    async fn a_restarted_single_node_keeps_every_committed_write() -> anyhow::Result<()> {
        let config = RaftConfig {
            snapshot_policy: SnapshotPolicy::LogsSinceLast(7),
            ..fast_config()
        };
        let mut cluster = Cluster::start(&[1], config).await?;
        cluster.leader().await?;
        let mut last = 0;
        for i in 0..25 {
            last = cluster.nodes[&1]
                .write(&tasks_batch(&format!("r{i}"), 2))
                .await?
                .log_index;
        }
        let before = cluster.nodes[&1].store().dump();
        cluster.kill(1).await?;
        cluster.restart(1).await?;
        // The store is rebuilt (snapshot + committed log) before any new election.
        let node = &cluster.nodes[&1];
        wait_until("the store is replayed", Duration::from_secs(5), || {
            node.store().version() == last
        })
        .await?;
        assert_eq!(node.store().dump(), before);
        cluster.leader().await?;
        let res = cluster.nodes[&1].write(&tasks_batch("after", 1)).await?;
        assert!(res.log_index > last);
        assert_eq!(cluster.nodes[&1].store().list::<Task>().len(), 51);
        cluster.stop().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_manager_joins_as_learner_then_voter() -> anyhow::Result<()> {
        let mut cluster = Cluster::start(&[1], fast_config()).await?;
        cluster.leader().await?;
        cluster.nodes[&1].write(&tasks_batch("j", 5)).await?;

        let dir = tempfile::tempdir()?;
        let joiner = open_node(dir.path(), 2, &cluster.router, cluster.config.clone()).await?;
        cluster.dirs.insert(2, dir);
        cluster.nodes.insert(2, joiner);
        cluster.nodes[&1].add_learner(2, &addr(2)).await?;
        cluster.nodes[&1]
            .change_membership(BTreeSet::from([1, 2]))
            .await?;
        let voters = cluster.nodes[&1]
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect::<Vec<_>>();
        assert_eq!(voters, vec![1, 2]);
        // The learner-turned-voter cannot take writes; it names the leader.
        let err = cluster.nodes[&2]
            .write(&tasks_batch("x", 1))
            .await
            .expect_err("not leader");
        assert_eq!(
            err,
            WriteError::NotLeader {
                leader_id: 1,
                leader_addr: addr(1)
            }
        );
        cluster.nodes[&1].write(&tasks_batch("k", 5)).await?;
        cluster.converged(1).await?;
        assert_eq!(cluster.nodes[&2].store().list::<Task>().len(), 10);
        cluster.stop().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_without_quorum_fails_writes_with_no_quorum() -> anyhow::Result<()> {
        let config = RaftConfig {
            write_timeout: Duration::from_millis(800),
            ..fast_config()
        };
        let mut cluster = Cluster::start(&[1, 2, 3], config).await?;
        let leader = cluster.leader().await?;
        cluster.nodes[&leader].write(&tasks_batch("q", 1)).await?;
        for id in [1, 2, 3] {
            if id != leader {
                cluster.kill(id).await?;
            }
        }
        let mut b = StoreActions::new();
        b.remove(ObjectKind::Task, "q-0");
        match cluster.nodes[&leader].write(&b).await {
            Err(WriteError::NoQuorum { waited }) => {
                assert!(waited >= Duration::from_millis(700), "{waited:?}")
            }
            other => bail!("expected NoQuorum, got {other:?}"),
        }
        // Not applied locally either.
        assert!(cluster.nodes[&leader].store().get::<Task>("q-0").is_some());
        cluster.stop().await
    }
}
