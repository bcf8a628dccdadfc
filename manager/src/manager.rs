//! [`Manager`]: one manager's composition, as `berthd` uses it — the Raft member on sled
//! under the state directory, the gRPC services it serves on the node's cluster port (CA,
//! Control, Raft, RaftMembership), and the leader-only role reconciler and root CA rotation
//! ([`crate::ca::rotation`]).
//!
//! Life cycle:
//! - [`Manager::init_cluster`]: a new cluster (cluster id, root CA, join tokens, a Raft group
//!   of one, the cluster object and this node's Node object, this node's certificate);
//! - [`Manager::open`]: a restart, from the Raft data on disk;
//! - [`Manager::join`]: a node that got a manager certificate (joined with the manager token,
//!   or promoted and renewed) opens an empty Raft member and asks the leader, through
//!   `RaftMembership.Join`, to add it as a learner and then a voter; this runs in the
//!   background and keeps retrying, because the leader can only reach the new member once
//!   `berthd` serves [`Manager::routes`]. [`Manager::wait_joined`] waits for the outcome;
//! - [`Manager::force_new_cluster`]: recovery from lost quorum (see [`recovery`]);
//! - [`Manager::shutdown`].
//!
//! Secrets: every entry point opens the data key file of the state directory
//! ([`crate::secrets`]); `init_cluster` creates the key, and a manager that starts without one
//! (joined, promoted, or its file lost) fetches it from the other managers in the background
//! ([`crate::secrets::service::fetch_until_held`]).
//!
//! Raft member ids come from node ids ([`crate::raft_net::raft_id_for`]) and are recorded in
//! the Node objects' `manager_status.raft_id`.

mod leader;
mod recovery;
mod roles;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use berth_proto::identity::{
    NodeCredentials, Role, TlsError, install_crypto_provider, server_tls_config,
};
use berth_proto::v1::{
    Annotations, CaConfig, Cluster, ClusterSpec, DispatcherConfig, IssuanceState, IssuanceStatus,
    JoinTokens as WireJoinTokens, ManagerStatus, Node, NodeAvailability, NodeCertificate,
    NodeDescription, NodeMembership, NodeRole, NodeSpec, NodeState, NodeStatus,
    OrchestrationConfig, RaftJoinRequest, Reachability, RootCa as WireRootCa,
};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::transport::ServerTlsConfig;

use crate::ca::service::CaService;
use crate::ca::{CaError, DEFAULT_NODE_CERT_VALIDITY, JoinTokens, RootCa};
use crate::control::ControlService;
use crate::dispatcher::{DispatcherService, DispatcherSlot};
use crate::logbroker::{LogBroker, LogBrokerService, LogsService};
use crate::raft::{Leadership, NodeId, RaftConfig, RaftNode, RaftNodeError};
use crate::raft_net::{
    GrpcNetwork, MembershipService, Peers, ProposeError, RaftService, Replica, Timeouts,
    leader_addr_of, raft_id_for,
};
use crate::secrets::service::{KeysService, fetch_until_held};
use crate::secrets::{Keyring, SecretsError};
use crate::store::{Store, StoreActions};

/// Name of the Raft data directory inside the state directory.
pub const RAFT_DIR: &str = "raft";

/// How often the role reconciler looks at the nodes (on the leader).
const RECONCILE_PERIOD: Duration = Duration::from_millis(500);

/// Settings of one manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The node's state directory; Raft data lives in `<state_dir>/raft`.
    pub state_dir: PathBuf,
    /// This node's id (the CN of its certificate).
    pub node_id: String,
    /// The address other managers and nodes reach this one at ("IP:port" of the cluster port).
    pub advertise_addr: String,
    /// Raft timings and compaction.
    pub raft: RaftConfig,
    /// Node certificate validity written into a new cluster (default 90 days).
    pub cert_expiry: Duration,
    /// Connection timings between managers.
    pub timeouts: Timeouts,
}

impl ManagerConfig {
    /// Defaults for everything but the three identifying settings.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        node_id: impl Into<String>,
        advertise_addr: impl Into<String>,
    ) -> Self {
        ManagerConfig {
            state_dir: state_dir.into(),
            node_id: node_id.into(),
            advertise_addr: advertise_addr.into(),
            raft: RaftConfig::default(),
            cert_expiry: DEFAULT_NODE_CERT_VALIDITY,
            timeouts: Timeouts::default(),
        }
    }

    /// The Raft data directory.
    pub fn raft_dir(&self) -> PathBuf {
        self.state_dir.join(RAFT_DIR)
    }
}

/// Settings of a new cluster (`berth swarm init` flags).
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// This node's host name (shown by `node ls` until its agent reports one).
    pub hostname: String,
    /// This node's availability; ACTIVE by default.
    pub availability: NodeAvailability,
    /// Node certificate validity; `None` = `ManagerConfig::cert_expiry`.
    pub cert_expiry: Option<Duration>,
    /// Dispatcher heartbeat period; `None` = 5 s.
    pub dispatcher_heartbeat: Option<Duration>,
    /// Terminated tasks kept per slot; `None` = 5.
    pub task_history_limit: Option<i64>,
    /// Overlay address pools; empty = ["10.0.0.0/8"].
    pub default_addr_pool: Vec<String>,
    /// Prefix length of overlay subnets; 0 = 24.
    pub subnet_size: u32,
    /// VXLAN UDP port; 0 = 4789.
    pub data_path_port: u32,
    /// Raft log entries between snapshots; `None` = 10 000.
    pub snapshot_interval: Option<u64>,
}

/// Why a manager could not start, join or stop.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Raft storage or the Raft core failed.
    #[error(transparent)]
    Raft(Box<RaftNodeError>),
    /// The CA could not be created or could not sign.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The node credentials cannot make a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Writing the initial objects failed.
    #[error("writing the cluster state failed: {0}")]
    Write(#[from] ProposeError),
    /// `init_cluster` on a state directory that already has Raft data.
    #[error(
        "{0:?} already holds raft data: this node is already part of a cluster (use open, or force_new_cluster to recover)"
    )]
    AlreadyInitialized(PathBuf),
    /// `open`/`force_new_cluster` on a state directory without Raft data.
    #[error("{0:?} holds no raft data: this node was never a manager")]
    NotInitialized(PathBuf),
    /// The credentials are not this manager's.
    #[error("unusable manager credentials: {0}")]
    Credentials(String),
    /// Joining the Raft group did not complete.
    #[error("joining raft failed: {0}")]
    Join(String),
    /// The Raft data could not be rewritten for force-new-cluster.
    #[error("force-new-cluster failed: {0}")]
    Recovery(String),
    /// Shutting down did not complete cleanly.
    #[error("shutdown: {0}")]
    Shutdown(String),
    /// The data key file could not be read or written.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

impl From<RaftNodeError> for ManagerError {
    fn from(e: RaftNodeError) -> Self {
        ManagerError::Raft(Box::new(e))
    }
}

/// Where a background join stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JoinState {
    /// Not joining (init, open, force-new-cluster).
    NotJoining,
    /// Still trying; the last error, if any.
    Joining(Option<String>),
    /// A voter now.
    Joined,
}

/// One running manager. See the module docs.
pub struct Manager {
    replica: Arc<Replica>,
    dispatcher: DispatcherSlot,
    logs: LogBroker,
    keyring: Keyring,
    cluster_id: String,
    creds: RwLock<NodeCredentials>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    join_state: watch::Receiver<JoinState>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("node_id", &self.replica.node_id())
            .field("raft_id", &self.replica.raft_id())
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

fn has_raft_data(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

impl Manager {
    /// Creates a new cluster with this node as its only manager and leader. Returns the
    /// manager and this node's credentials (to be saved by the caller).
    pub async fn init_cluster(
        cfg: ManagerConfig,
        opts: InitOptions,
    ) -> Result<(Manager, NodeCredentials), ManagerError> {
        install_crypto_provider();
        if has_raft_data(&cfg.raft_dir()) {
            return Err(ManagerError::AlreadyInitialized(cfg.raft_dir()));
        }
        let cluster_id =
            berth_proto::ids::try_new_id().map_err(|e| ManagerError::Credentials(e.to_string()))?;
        let ca = RootCa::generate()?;
        let tokens = JoinTokens::generate(&ca)?;
        let expiry = opts.cert_expiry.unwrap_or(cfg.cert_expiry);
        let creds = ca.issue_node_credentials(&cfg.node_id, Role::Manager, &cluster_id, expiry)?;
        let keyring = Keyring::open(&cfg.state_dir)?;
        keyring.generate()?;
        let manager = Manager::start(
            &cfg,
            creds.clone(),
            JoinState::NotJoining,
            keyring,
            Vec::new(),
        )
        .await?;
        let raft = manager
            .replica
            .raft()
            .map_err(|s| ManagerError::Shutdown(s.message().into()))?;
        raft.initialize(&cfg.advertise_addr).await?;
        drop(raft);

        let raft_id = manager.replica.raft_id();
        let cluster = Cluster {
            id: cluster_id.clone(),
            meta: None,
            spec: Some(ClusterSpec {
                annotations: Some(Annotations {
                    name: "default".into(),
                    ..Default::default()
                }),
                orchestration: Some(OrchestrationConfig {
                    task_history_retention_limit: opts.task_history_limit.unwrap_or(5),
                }),
                raft: Some(berth_proto::v1::RaftConfig {
                    snapshot_interval: opts.snapshot_interval.unwrap_or(10_000),
                    election_tick: 10,
                    heartbeat_tick: 1,
                }),
                dispatcher: Some(DispatcherConfig {
                    heartbeat_period: opts.dispatcher_heartbeat.map(proto_duration),
                }),
                ca_config: Some(CaConfig {
                    node_cert_expiry: Some(proto_duration(expiry)),
                    force_rotate: 0,
                }),
            }),
            root_ca: Some(WireRootCa {
                ca_key: ca.key_pem().into_bytes(),
                ca_cert: ca.cert_pem().as_bytes().to_vec(),
                ca_cert_hash: format!("sha256:{}", sha256_hex(ca.cert_der().as_ref())),
                join_tokens: Some(WireJoinTokens {
                    worker: tokens.get(Role::Worker).to_string(),
                    manager: tokens.get(Role::Manager).to_string(),
                }),
                rotation: None,
            }),
            default_addr_pool: if opts.default_addr_pool.is_empty() {
                vec!["10.0.0.0/8".into()]
            } else {
                opts.default_addr_pool.clone()
            },
            subnet_size: if opts.subnet_size == 0 {
                24
            } else {
                opts.subnet_size
            },
            data_path_port: if opts.data_path_port == 0 {
                4789
            } else {
                opts.data_path_port
            },
            removed_nodes: Default::default(),
        };
        let node = Node {
            id: cfg.node_id.clone(),
            meta: None,
            spec: Some(NodeSpec {
                annotations: None,
                desired_role: NodeRole::Manager as i32,
                membership: NodeMembership::Accepted as i32,
                availability: opts.availability as i32,
            }),
            description: Some(NodeDescription {
                hostname: opts.hostname.clone(),
                addr: cfg.advertise_addr.clone(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: NodeState::Unknown as i32,
                message: String::new(),
                addr: String::new(),
            }),
            manager_status: Some(ManagerStatus {
                raft_id,
                addr: cfg.advertise_addr.clone(),
                leader: true,
                reachability: Reachability::Reachable as i32,
            }),
            role: NodeRole::Manager as i32,
            certificate: Some(NodeCertificate {
                role: NodeRole::Manager as i32,
                csr: Vec::new(),
                status: Some(IssuanceStatus {
                    state: IssuanceState::Issued as i32,
                    err: String::new(),
                }),
                certificate: creds.cert_pem.clone().into_bytes(),
                cn: cfg.node_id.clone(),
            }),
            attachments: Vec::new(),
        };
        let mut batch = StoreActions::new();
        batch
            .create(cluster)
            .create(node)
            .create(crate::allocator::ingress_network_object());
        manager.replica.propose(&batch).await?;
        tracing::info!(node_id = %cfg.node_id, cluster_id = %manager.cluster_id, raft_id, "cluster initialized");
        Ok((manager, creds))
    }

    /// Restarts a manager from the Raft data in its state directory.
    pub async fn open(cfg: ManagerConfig, creds: NodeCredentials) -> Result<Manager, ManagerError> {
        install_crypto_provider();
        if !has_raft_data(&cfg.raft_dir()) {
            return Err(ManagerError::NotInitialized(cfg.raft_dir()));
        }
        let keyring = Keyring::open(&cfg.state_dir)?;
        Manager::start(&cfg, creds, JoinState::NotJoining, keyring, Vec::new()).await
    }

    /// Starts a manager that is not yet a Raft member and joins it through the leader (reached
    /// via any of `leader_addrs`, following redirects) in the background. Serve
    /// [`Manager::routes`] before waiting with [`Manager::wait_joined`]: the leader replicates
    /// the log to the new member before making it a voter.
    pub async fn join(
        cfg: ManagerConfig,
        creds: NodeCredentials,
        leader_addrs: Vec<String>,
    ) -> Result<Manager, ManagerError> {
        install_crypto_provider();
        if leader_addrs.is_empty() {
            return Err(ManagerError::Join(
                "no manager address to join through".into(),
            ));
        }
        let keyring = Keyring::open(&cfg.state_dir)?;
        let manager = Manager::start(
            &cfg,
            creds,
            JoinState::Joining(None),
            keyring,
            leader_addrs.clone(),
        )
        .await?;
        Ok(manager.spawn_join(leader_addrs))
    }

    /// Recovers from lost quorum: reopens this manager's Raft data as a single-member cluster
    /// that keeps every committed (and locally logged) entry, then waits until it leads.
    pub async fn force_new_cluster(
        cfg: ManagerConfig,
        creds: NodeCredentials,
    ) -> Result<Manager, ManagerError> {
        install_crypto_provider();
        let dir = cfg.raft_dir();
        if !has_raft_data(&dir) {
            return Err(ManagerError::NotInitialized(dir));
        }
        let raft_id = raft_id_for(&cfg.node_id);
        recovery::reset_membership(&dir, raft_id, &cfg.advertise_addr).await?;
        let keyring = Keyring::open(&cfg.state_dir)?;
        let manager =
            Manager::start(&cfg, creds, JoinState::NotJoining, keyring, Vec::new()).await?;
        let deadline = Instant::now() + cfg.raft.write_timeout;
        while !manager.replica.is_leader() {
            if Instant::now() > deadline {
                return Err(ManagerError::Recovery(
                    "the single-member cluster elected no leader".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(node_id = %cfg.node_id, raft_id, "forced a new single-manager cluster from local state");
        Ok(manager)
    }

    /// Starts the member; without a data key in `keyring`, also the background fetch of it
    /// (asking `key_seeds` first).
    async fn start(
        cfg: &ManagerConfig,
        creds: NodeCredentials,
        join: JoinState,
        keyring: Keyring,
        key_seeds: Vec<String>,
    ) -> Result<Manager, ManagerError> {
        let identity = creds
            .identity()
            .map_err(|e| ManagerError::Credentials(e.to_string()))?;
        if identity.node_id != cfg.node_id || identity.role != Role::Manager {
            return Err(ManagerError::Credentials(format!(
                "the certificate is for {} node {}, not manager {}",
                identity.role, identity.node_id, cfg.node_id
            )));
        }
        let peers = Peers::new(&creds, cfg.timeouts)?;
        let raft_id = raft_id_for(&cfg.node_id);
        let raft = open_raft(cfg, raft_id, &peers).await?;
        let replica = Arc::new(Replica::new(
            cfg.node_id.clone(),
            cfg.advertise_addr.clone(),
            raft,
            peers,
            cfg.raft.write_timeout,
        ));
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(roles::run(
            replica.clone(),
            cancel.clone(),
            RECONCILE_PERIOD,
        ));
        tasks.spawn(crate::ca::rotation::run(
            replica.clone(),
            cancel.clone(),
            RECONCILE_PERIOD,
        ));
        let dispatcher = DispatcherSlot::new();
        leader::spawn(&replica, &dispatcher, &keyring, &tasks, &cancel);
        if keyring.key().is_none() {
            tasks.spawn(fetch_until_held(
                replica.clone(),
                keyring.clone(),
                key_seeds,
                cancel.clone(),
            ));
        }
        let (_, join_state) = watch::channel(join);
        Ok(Manager {
            logs: LogBroker::new(replica.store().clone()),
            replica,
            dispatcher,
            keyring,
            cluster_id: identity.cluster_id,
            creds: RwLock::new(creds),
            cancel,
            tasks,
            join_state,
        })
    }

    fn spawn_join(mut self, leader_addrs: Vec<String>) -> Manager {
        let (tx, rx) = watch::channel(JoinState::Joining(None));
        self.join_state = rx;
        let replica = self.replica.clone();
        let cancel = self.cancel.clone();
        self.tasks
            .spawn(async move { join_loop(replica, leader_addrs, tx, cancel).await });
        self
    }

    /// Waits until this manager is a Raft voter (after [`Manager::join`]; immediate
    /// otherwise), or fails with the last join error after `timeout`.
    pub async fn wait_joined(&self, timeout: Duration) -> Result<(), ManagerError> {
        let mut rx = self.join_state.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                JoinState::NotJoining | JoinState::Joined => return Ok(()),
                JoinState::Joining(last) => {
                    let wait = tokio::time::timeout_at(deadline, rx.changed()).await;
                    if wait.is_err() {
                        return Err(ManagerError::Join(
                            last.unwrap_or_else(|| format!("not a raft voter after {timeout:?}")),
                        ));
                    }
                    if let Ok(Err(_)) = wait {
                        return Err(ManagerError::Join("the manager stopped".into()));
                    }
                }
            }
        }
    }

    /// The gRPC services to mount on the node's cluster port: CA, Control, Raft,
    /// RaftMembership and the Dispatcher agents hold their sessions with.
    pub fn routes(&self) -> Routes {
        Routes::new(CaService::new(self.replica.clone()).into_server())
            .add_service(
                DispatcherService::for_replica(self.dispatcher.clone(), self.replica.clone())
                    .into_server(),
            )
            .add_service(
                ControlService::with_keyring(self.replica.clone(), self.keyring.clone())
                    .into_server(),
            )
            .add_service(KeysService::new(self.replica.clone(), self.keyring.clone()).into_server())
            .add_service(RaftService::new(self.replica.clone()).into_server())
            .add_service(MembershipService::new(self.replica.clone()).into_server())
            .add_service(LogsService::new(self.logs.clone(), self.replica.clone()).into_server())
            .add_service(
                LogBrokerService::new(self.logs.clone(), self.replica.clone()).into_server(),
            )
    }

    /// The TLS configuration to serve [`Manager::routes`] with (this node's certificate,
    /// client certificates verified against the root CA, optional for joining nodes).
    pub fn server_tls_config(&self) -> Result<ServerTlsConfig, ManagerError> {
        Ok(server_tls_config(&self.credentials())?)
    }

    /// This manager's current credentials.
    pub fn credentials(&self) -> NodeCredentials {
        self.creds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Uses renewed credentials for calls to other managers from now on (the server's TLS
    /// configuration is the caller's to rebuild from [`Manager::server_tls_config`]).
    pub fn update_credentials(&self, creds: NodeCredentials) -> Result<(), ManagerError> {
        let identity = creds
            .identity()
            .map_err(|e| ManagerError::Credentials(e.to_string()))?;
        if identity.node_id != self.replica.node_id() {
            return Err(ManagerError::Credentials(format!(
                "the certificate is for node {}, not {}",
                identity.node_id,
                self.replica.node_id()
            )));
        }
        self.replica.peers().set_credentials(&creds)?;
        *self.creds.write().unwrap_or_else(PoisonError::into_inner) = creds;
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.replica.node_id()
    }

    /// The cluster id (the O of every node certificate).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// This manager's Raft member id.
    pub fn raft_id(&self) -> NodeId {
        self.replica.raft_id()
    }

    /// The local replica of the store (read it; write through the leader).
    pub fn store(&self) -> Store {
        self.replica.store().clone()
    }

    /// The shared Raft handle the services use (for components berthd adds, such as the
    /// dispatcher).
    pub fn replica(&self) -> Arc<Replica> {
        self.replica.clone()
    }

    /// Whether this manager leads now.
    pub fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// Leader and term changes as this manager sees them.
    pub fn leadership_changes(&self) -> Option<watch::Receiver<Leadership>> {
        self.replica.raft().ok().map(|r| r.leadership_changes())
    }

    /// Stops the background tasks and the Raft member and waits until its data directory is
    /// closed. Calls still arriving on served routes answer UNAVAILABLE.
    pub async fn shutdown(self) -> Result<(), ManagerError> {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let Some(mut raft) = self.replica.take_raft() else {
            return Ok(());
        };
        // In-flight calls hold clones for a moment; wait for them to finish.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(raft) {
                Ok(node) => {
                    node.shutdown().await?;
                    tracing::info!(node_id = %self.replica.node_id(), "manager stopped");
                    return Ok(());
                }
                Err(shared) if Instant::now() < deadline => {
                    raft = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(shared) => {
                    let _ = shared.raft().shutdown().await;
                    return Err(ManagerError::Shutdown(
                        "raft is still in use by a request; its core was stopped".into(),
                    ));
                }
            }
        }
    }
}

/// Opens the Raft member, retrying briefly while a previous instance in this process still
/// holds the sled lock (its last background flush can outlive its shutdown).
async fn open_raft(
    cfg: &ManagerConfig,
    raft_id: NodeId,
    peers: &Peers,
) -> Result<RaftNode, ManagerError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let network = GrpcNetwork::new(raft_id, peers.clone());
        match RaftNode::open(&cfg.raft_dir(), raft_id, network, cfg.raft.clone()).await {
            Ok(node) => return Ok(node),
            Err(RaftNodeError::OpenDb { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the leader to add this manager until it is a voter (or the manager stops).
async fn join_loop(
    replica: Arc<Replica>,
    addrs: Vec<String>,
    state: watch::Sender<JoinState>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0usize;
    loop {
        if is_voter(&replica) {
            let _ = state.send(JoinState::Joined);
            return;
        }
        let mut addr = addrs[attempt % addrs.len()].clone();
        attempt += 1;
        let mut last_err = None;
        for _hop in 0..3 {
            match join_once(&replica, &addr).await {
                Ok(()) => {
                    tracing::info!(node_id = %replica.node_id(), via = %addr, "joined raft as a voter");
                    let _ = state.send(JoinState::Joined);
                    return;
                }
                Err(status) => {
                    let redirect = leader_addr_of(&status).filter(|a| *a != addr);
                    last_err = Some(format!("{addr}: {}", status.message()));
                    match redirect {
                        Some(next) => addr = next,
                        None => break,
                    }
                }
            }
        }
        if let Some(e) = &last_err {
            tracing::debug!(node_id = %replica.node_id(), error = %e, "raft join attempt failed; retrying");
        }
        let _ = state.send(JoinState::Joining(last_err));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn is_voter(replica: &Replica) -> bool {
    replica.voters().contains(&replica.raft_id())
}

async fn join_once(replica: &Replica, addr: &str) -> Result<(), tonic::Status> {
    let mut client = replica
        .peers()
        .membership_client(addr)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(RaftJoinRequest {
        addr: replica.advertise_addr().to_owned(),
        node_id: replica.node_id().to_owned(),
    });
    // Adding a learner waits for it to catch up; allow for that.
    let budget = replica.write_timeout() * 2 + Duration::from_secs(2);
    request.set_timeout(budget);
    match tokio::time::timeout(budget, client.join(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded("join timed out")),
    }
}
