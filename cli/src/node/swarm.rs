//! This daemon's part in a swarm: `swarm init`, `join`, `leave`, and resuming after a restart.
//!
//! A node in a swarm has saved credentials (`certificates/`), a saved [`Membership`]
//! (`swarm.json`) and, on managers, Raft data (`raft/`). A manager serves its gRPC services
//! (CA, Control, Raft, RaftMembership) with mutual TLS on the cluster port, and the local
//! socket's Control API is forwarded to it with the node's own certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_agent::engine::Engine;
use berth_agent::session::NodeCallback;
use berth_manager::manager::{InitOptions, Manager, ManagerConfig};
use berth_proto::identity::Role;
use berth_proto::identity::{CertDir, NodeCredentials, client_tls_config, server_rustls_config};
use berth_proto::v1::{
    InfoResponse, IssuanceState, LocalSwarmState, Node, NodeAvailability, NodeRole,
    SwarmInitRequest, SwarmJoinRequest,
};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::StateDir;
use super::agent::{AGENT_DIR, NodeAgent};
use super::cluster_tls::{self, ServerTls};
use super::forward::Target;
use super::membership::Membership;

/// The default cluster port.
const DEFAULT_PORT: u16 = 4377;

/// The swarm side of the daemon.
#[derive(Debug)]
pub struct Swarm {
    state: Arc<StateDir>,
    engine: Engine,
    control: Target,
    active: Mutex<Option<Active>>,
}

/// A node that is part of a swarm.
#[derive(Debug)]
struct Active {
    membership: Membership,
    manager: Option<Manager>,
    server: Option<ClusterServer>,
    renewal: Option<Renewal>,
}

/// The certificate renewal of an active node: [`berth_agent::join::renew_loop`] plus the task
/// applying each renewed certificate (a new role starts or stops the manager).
#[derive(Debug)]
struct Renewal {
    cancel: CancellationToken,
    agent: Option<NodeAgent>,
}

/// The cluster port's gRPC server.
#[derive(Debug)]
struct ClusterServer {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// The TLS configuration of the next handshakes (renewals swap it; the port stays open).
    tls: ServerTls,
}

impl ClusterServer {
    /// Stops accepting, lets in-flight calls finish for a moment, then drops what is left
    /// (long-lived streams would otherwise hold a graceful shutdown forever).
    async fn stop(mut self) {
        self.cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

impl Swarm {
    /// The swarm side over `state`, forwarding local Control calls through `control`.
    pub fn new(state: Arc<StateDir>, control: Target, engine: Engine) -> Self {
        Self {
            state,
            engine,
            control,
            active: Mutex::new(None),
        }
    }

    fn cert_dir(&self) -> CertDir {
        CertDir::new(self.state.root().join("certificates"))
    }

    /// Rejoins the swarm this node was part of before a restart, if any.
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(membership) = Membership::load(self.state.root())? else {
            return Ok(());
        };
        let creds = self
            .cert_dir()
            .load()
            .context("loading this node's certificates")?;
        let mut active = Active {
            membership: membership.clone(),
            manager: None,
            server: None,
            renewal: None,
        };
        if membership.manager {
            let manager = Manager::open(self.manager_config(&membership), creds.clone())
                .await
                .context("reopening this node's manager")?;
            self.serve_manager(&mut active, manager, &creds).await?;
        }
        tracing::info!(node_id = %membership.node_id, manager = membership.manager, "rejoined the swarm");
        self.start_renewal(&mut active);
        *self.active.lock().await = Some(active);
        Ok(())
    }

    fn manager_config(&self, membership: &Membership) -> ManagerConfig {
        ManagerConfig::new(
            self.state.root(),
            membership.node_id.clone(),
            membership.advertise_addr.clone(),
        )
    }

    /// `berth swarm init`.
    pub async fn init(self: &Arc<Self>, request: SwarmInitRequest) -> anyhow::Result<String> {
        let mut guard = self.active.lock().await;
        if request.force_new_cluster {
            return self.force_new_cluster(&mut guard).await;
        }
        if guard.is_some() {
            anyhow::bail!(
                "This node is already part of a swarm. Use \"berth swarm leave\" to leave this swarm and join another one."
            );
        }
        let listen_addr = listen_addr(&request.listen_addr)?;
        let advertise_addr = advertise_addr(&request.advertise_addr, listen_addr)?;
        let node_id = berth_proto::ids::try_new_id()?;
        let cfg = ManagerConfig::new(self.state.root(), node_id.clone(), advertise_addr.clone());
        let opts = InitOptions {
            hostname: hostname(),
            availability: NodeAvailability::try_from(request.availability)
                .unwrap_or(NodeAvailability::Active),
            cert_expiry: request.cert_expiry.map(duration),
            dispatcher_heartbeat: request.dispatcher_heartbeat.map(duration),
            task_history_limit: request.task_history_limit,
            default_addr_pool: request.default_addr_pool.clone(),
            subnet_size: request.default_addr_pool_mask_len,
            data_path_port: request.data_path_port,
            snapshot_interval: request.snapshot_interval,
        };
        // Bind first: a port in use fails the init before any state is written.
        let listener = TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("listening on {listen_addr}"))?;
        let (manager, creds) = Manager::init_cluster(cfg, opts).await?;
        self.cert_dir()
            .save(&creds)
            .context("saving this node's certificates")?;
        let membership = Membership {
            node_id: node_id.clone(),
            cluster_id: manager.cluster_id().to_string(),
            manager: true,
            listen_addr: listen_addr.to_string(),
            advertise_addr: advertise_addr.clone(),
            manager_addrs: vec![advertise_addr],
        };
        membership.save(self.state.root())?;
        let mut active = Active {
            membership,
            manager: None,
            server: None,
            renewal: None,
        };
        self.serve_manager_on(&mut active, manager, &creds, listener)?;
        self.start_renewal(&mut active);
        *guard = Some(active);
        tracing::info!(%node_id, "swarm initialized");
        Ok(node_id)
    }

    /// `berth swarm join`: joins through any of the given managers with the token, which
    /// decides the role.
    pub async fn join(
        self: &Arc<Self>,
        request: SwarmJoinRequest,
    ) -> anyhow::Result<(String, NodeRole)> {
        let mut guard = self.active.lock().await;
        if guard.is_some() {
            anyhow::bail!(
                "This node is already part of a swarm. Use \"berth swarm leave\" to leave this swarm and join another one."
            );
        }
        if request.remote_addrs.is_empty() {
            anyhow::bail!("no manager address given: berth swarm join --token TOKEN HOST:PORT");
        }
        let listen_addr = listen_addr(&request.listen_addr)?;
        let advertise_addr = advertise_addr(&request.advertise_addr, listen_addr)?;
        let remotes: Vec<String> = request
            .remote_addrs
            .iter()
            .map(|addr| with_default_port(addr))
            .collect();
        // Bind first: a port in use fails the join before the cluster records this node.
        let listener = TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("listening on {listen_addr}"))?;
        let availability =
            NodeAvailability::try_from(request.availability).unwrap_or(NodeAvailability::Active);
        let joined =
            berth_agent::join::join_cluster(&remotes, &request.join_token, None, availability)
                .await?;
        self.cert_dir()
            .save(&joined.credentials)
            .context("saving this node's certificates")?;
        let mut manager_addrs = vec![joined.manager_addr.clone()];
        manager_addrs.extend(
            remotes
                .iter()
                .filter(|a| **a != joined.manager_addr)
                .cloned(),
        );
        let is_manager = joined.role == Role::Manager;
        let membership = Membership {
            node_id: joined.node_id.clone(),
            cluster_id: joined.cluster_id.clone(),
            manager: is_manager,
            listen_addr: listen_addr.to_string(),
            advertise_addr,
            manager_addrs: manager_addrs.clone(),
        };
        membership.save(self.state.root())?;
        let mut active = Active {
            membership,
            manager: None,
            server: None,
            renewal: None,
        };
        if is_manager {
            let manager = Manager::join(
                self.manager_config(&active.membership),
                joined.credentials.clone(),
                manager_addrs,
            )
            .await?;
            self.serve_manager_on(&mut active, manager, &joined.credentials, listener)?;
            if let Some(manager) = active.manager.as_ref() {
                manager
                    .wait_joined(Duration::from_secs(30))
                    .await
                    .context("joining the managers' Raft group")?;
            }
        } else {
            drop(listener);
        }
        self.start_renewal(&mut active);
        *guard = Some(active);
        let role = if is_manager {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        };
        tracing::info!(node_id = %joined.node_id, ?role, "joined the swarm");
        Ok((joined.node_id, role))
    }

    async fn force_new_cluster(
        self: &Arc<Self>,
        guard: &mut Option<Active>,
    ) -> anyhow::Result<String> {
        let membership = match guard.as_ref() {
            Some(active) => active.membership.clone(),
            None => Membership::load(self.state.root())?
                .context("this node was never part of a swarm: nothing to recover")?,
        };
        if !membership.manager {
            anyhow::bail!("--force-new-cluster needs a manager's state; this node is a worker");
        }
        if let Some(active) = guard.take() {
            stop_active(active, Stop::Shutdown).await;
        }
        let creds = self
            .cert_dir()
            .load()
            .context("loading this node's certificates")?;
        // The stopped manager's Raft storage is released by background tasks as they wind
        // down; retry briefly while its lock is still held.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let manager = loop {
            match Manager::force_new_cluster(self.manager_config(&membership), creds.clone()).await
            {
                Ok(manager) => break manager,
                Err(err)
                    if err.to_string().contains("could not acquire lock")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!("waiting for the stopped manager to release its storage");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => {
                    return Err(err).context("forcing a new cluster from this manager's state");
                }
            }
        };
        let mut membership = membership;
        membership.manager_addrs = vec![membership.advertise_addr.clone()];
        membership.save(self.state.root())?;
        let mut active = Active {
            membership: membership.clone(),
            manager: None,
            server: None,
            renewal: None,
        };
        self.serve_manager(&mut active, manager, &creds).await?;
        self.start_renewal(&mut active);
        *guard = Some(active);
        Ok(membership.node_id)
    }

    async fn serve_manager(
        &self,
        active: &mut Active,
        manager: Manager,
        creds: &NodeCredentials,
    ) -> anyhow::Result<()> {
        let addr: SocketAddr = active.membership.listen_addr.parse()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        self.serve_manager_on(active, manager, creds, listener)
    }

    /// Serves `manager`'s routes on `listener` and points local Control calls at it.
    fn serve_manager_on(
        &self,
        active: &mut Active,
        manager: Manager,
        creds: &NodeCredentials,
        listener: TcpListener,
    ) -> anyhow::Result<()> {
        let tls = ServerTls::new(
            server_rustls_config(creds).context("configuring TLS on the cluster port")?,
        );
        let routes = manager.routes();
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone().cancelled_owned();
        let server = tonic::transport::Server::builder().add_routes(routes);
        let addr = active.membership.listen_addr.clone();
        let incoming = cluster_tls::incoming(listener, tls.clone(), cancel.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(%addr, "cluster port stopped: {err}");
            }
        });
        self.control.set(Some(manager_channel(
            &active.membership.advertise_addr,
            creds,
        )?));
        active.manager = Some(manager);
        active.server = Some(ClusterServer { cancel, task, tls });
        Ok(())
    }

    /// Starts the node's background loops: certificate renewal (at 50-80 % of its validity,
    /// or at once when the managers changed this node's role or rotate the root CA) applying
    /// each new certificate (a manager's cluster port takes it, and its trust bundle, for
    /// the next TLS handshakes), and the agent (worker + session with the dispatcher).
    fn start_renewal(self: &Arc<Self>, active: &mut Active) {
        let creds = match self.cert_dir().load() {
            Ok(creds) => creds,
            Err(err) => {
                tracing::error!("cannot load this node's certificates ({err}): not starting");
                return;
            }
        };
        let cert_role = creds.identity().map(|i| i.role).ok();
        let (updates, mut renewed) = watch::channel(creds);
        let renew_now = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let mut managers = active.membership.manager_addrs.clone();
        if active.membership.manager && !managers.contains(&active.membership.advertise_addr) {
            managers.insert(0, active.membership.advertise_addr.clone());
        }
        let agent_creds = updates.subscribe();
        tokio::spawn(berth_agent::join::renew_loop(
            self.cert_dir(),
            managers.clone(),
            updates,
            renew_now.clone(),
            cancel.clone(),
        ));
        let swarm = Arc::clone(self);
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = renewed.changed() => if changed.is_err() { return },
                }
                let creds = renewed.borrow_and_update().clone();
                if let Err(err) = swarm.apply_credentials(creds).await {
                    tracing::error!("applying the renewed certificate failed: {err:#}");
                }
            }
        });
        // The managers changed this node's role (promote/demote), or a root CA rotation asks
        // for a new certificate (status ROTATE): renew now.
        let role_watch = agent_creds.clone();
        let on_node: NodeCallback = Arc::new(move |node: &Node| {
            let rotate = node
                .certificate
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.state == IssuanceState::Rotate as i32);
            if rotate {
                tracing::info!("the managers are rotating the root CA; renewing");
                renew_now.notify_one();
                return;
            }
            let current = role_watch
                .borrow()
                .identity()
                .map(|i| i.role)
                .ok()
                .or(cert_role);
            let wanted = match NodeRole::try_from(node.role) {
                Ok(NodeRole::Manager) => Role::Manager,
                _ => Role::Worker,
            };
            if current != Some(wanted) {
                tracing::info!(?wanted, "the managers changed this node's role; renewing");
                renew_now.notify_one();
            }
        });
        let agent = match NodeAgent::start(
            self.state.root(),
            self.engine.clone(),
            managers,
            agent_creds,
            &active.membership.advertise_addr,
            on_node,
        ) {
            Ok(agent) => Some(agent),
            Err(err) => {
                tracing::error!("the agent could not start: {err:#}");
                None
            }
        };
        active.renewal = Some(Renewal { cancel, agent });
    }

    /// Uses a renewed certificate: a manager certificate on a worker starts a manager (it
    /// joins Raft), a worker certificate on a manager stops it, and a manager keeps serving,
    /// with the new certificate and trust bundle from the next TLS handshake on (the cluster
    /// port stays open).
    async fn apply_credentials(self: &Arc<Self>, creds: NodeCredentials) -> anyhow::Result<()> {
        let role = creds.identity()?.role;
        let mut guard = self.active.lock().await;
        let Some(active) = guard.as_mut() else {
            return Ok(());
        };
        if role == Role::Manager
            && let (Some(manager), Some(server)) = (active.manager.as_ref(), active.server.as_ref())
        {
            manager.update_credentials(creds.clone())?;
            server.tls.set(server_rustls_config(&creds)?);
            self.control.set(Some(manager_channel(
                &active.membership.advertise_addr,
                &creds,
            )?));
            return Ok(());
        }
        let running = active.manager.take();
        if let Some(server) = active.server.take() {
            server.stop().await;
        }
        match (running, role) {
            (None, Role::Worker) => {}
            (Some(manager), Role::Worker) => {
                tracing::info!("demoted: stopping this node's manager");
                self.control.set(None);
                if let Err(err) = manager.shutdown().await {
                    tracing::warn!("manager shutdown: {err}");
                }
                let raft = self.state.root().join(berth_manager::manager::RAFT_DIR);
                if raft.exists() {
                    std::fs::remove_dir_all(&raft).with_context(|| format!("removing {raft:?}"))?;
                }
                active.membership.manager = false;
                active.membership.save(self.state.root())?;
            }
            (None, Role::Manager) => {
                tracing::info!("promoted: starting a manager and joining Raft");
                let manager = Manager::join(
                    self.manager_config(&active.membership),
                    creds.clone(),
                    active.membership.manager_addrs.clone(),
                )
                .await?;
                self.serve_manager(active, manager, &creds).await?;
                active.membership.manager = true;
                active.membership.save(self.state.root())?;
            }
            (Some(manager), Role::Manager) => {
                manager.update_credentials(creds.clone())?;
                self.serve_manager(active, manager, &creds).await?;
            }
        }
        Ok(())
    }

    /// `berth swarm leave`.
    pub async fn leave(&self, force: bool) -> anyhow::Result<()> {
        let mut guard = self.active.lock().await;
        let Some(active) = guard.as_ref() else {
            anyhow::bail!("This node is not part of a swarm");
        };
        if active.manager.is_some() && !force {
            anyhow::bail!(
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm, and leaving a manager without demoting it first can cost the others their quorum. Demote it first (berth node demote), or use `--force` to ignore this message."
            );
        }
        self.control.set(None);
        let mut dirs = vec!["certificates", berth_manager::manager::RAFT_DIR];
        if let Some(active) = guard.take() {
            if stop_active(active, Stop::Leave).await {
                dirs.extend([AGENT_DIR, berth_agent::worker::TASK_DB_DIR]);
            } else {
                tracing::warn!(
                    "some task containers could not be removed; the node keeps their records"
                );
            }
        }
        Membership::remove(self.state.root())?;
        for dir in dirs {
            let path = self.state.root().join(dir);
            if path.exists() {
                std::fs::remove_dir_all(&path).with_context(|| format!("removing {path:?}"))?;
            }
        }
        Ok(())
    }

    /// Fills the swarm part of `berth info`.
    pub async fn describe(&self, info: &mut InfoResponse) {
        let guard = self.active.lock().await;
        match guard.as_ref() {
            None => info.swarm_state = LocalSwarmState::Inactive as i32,
            Some(active) => {
                info.swarm_state = LocalSwarmState::Active as i32;
                info.node_id = active.membership.node_id.clone();
                info.cluster_id = active.membership.cluster_id.clone();
                info.is_manager = active.manager.is_some();
                info.node_addr = active.membership.advertise_addr.clone();
                info.manager_addrs = active.membership.manager_addrs.clone();
            }
        }
    }

    /// Stops the swarm side at daemon shutdown (state is kept).
    pub async fn shutdown(&self) {
        self.control.set(None);
        if let Some(active) = self.active.lock().await.take() {
            stop_active(active, Stop::Shutdown).await;
        }
    }
}

/// Why the swarm side stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Daemon shutdown (or a restart of the swarm side): containers keep running and are
    /// adopted when the agent starts again.
    Shutdown,
    /// `swarm leave`: the node's task containers and overlay networks are removed.
    Leave,
}

/// How long `swarm leave` waits for the node's task containers to be removed.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops everything `active` runs; returns false when leaving left task containers on the
/// node (a shutdown leaves them running on purpose and returns true).
async fn stop_active(active: Active, why: Stop) -> bool {
    let mut clean = true;
    if let Some(renewal) = active.renewal {
        renewal.cancel.cancel();
        match (renewal.agent, why) {
            (Some(agent), Stop::Leave) => match agent.leave(LEAVE_TIMEOUT).await {
                Ok(left) => clean = left == 0,
                Err(err) => {
                    tracing::warn!("removing the node's tasks: {err:#}");
                    clean = false;
                }
            },
            (Some(agent), Stop::Shutdown) => agent.stop().await,
            (None, _) => {}
        }
    }
    if let Some(server) = active.server {
        server.stop().await;
    }
    if let Some(manager) = active.manager
        && let Err(err) = manager.shutdown().await
    {
        tracing::warn!("manager shutdown: {err}");
    }
    clean
}

/// A channel to a manager's cluster port, authenticated with this node's certificate.
fn manager_channel(addr: &str, creds: &NodeCredentials) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(client_tls_config(creds)?)?
        .connect_timeout(Duration::from_secs(5));
    Ok(endpoint.connect_lazy())
}

/// `--listen-addr`: `IP[:port]`, port 4377 by default.
fn listen_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let text = if text.is_empty() { "0.0.0.0" } else { text };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: std::net::IpAddr = text
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid listen address {text:?}: expected IP[:port]"))?;
    Ok(SocketAddr::new(ip, DEFAULT_PORT))
}

/// `--advertise-addr`: `IP[:port]`, the port defaulting to the listen port; when empty, the
/// listen address if it names one IP.
fn advertise_addr(text: &str, listen: SocketAddr) -> anyhow::Result<String> {
    if text.is_empty() {
        if listen.ip().is_unspecified() {
            anyhow::bail!(
                "could not choose an IP address to advertise since the listen address is {listen}: use --advertise-addr"
            );
        }
        return Ok(listen.to_string());
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr.to_string());
    }
    let ip: std::net::IpAddr = text
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid advertise address {text:?}: expected IP[:port]"))?;
    Ok(SocketAddr::new(ip, listen.port()).to_string())
}

/// A manager address with the default port when none is given.
fn with_default_port(addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_ok()
        || addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:{DEFAULT_PORT}")
    }
}

fn duration(d: prost_types::Duration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}

/// The machine's host name.
pub fn hostname() -> String {
    if let Some(name) = HOSTNAME.get() {
        return name.clone();
    }
    nix::unistd::gethostname()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `berthd --hostname`: the name this node reports instead of the machine's.
static HOSTNAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the reported host name once, at daemon start.
pub fn set_hostname(name: Option<String>) {
    if let Some(name) = name {
        let _ = HOSTNAME.set(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_like_docker() {
        assert_eq!(listen_addr("").unwrap().to_string(), "0.0.0.0:4377");
        assert_eq!(
            listen_addr("10.1.2.3").unwrap().to_string(),
            "10.1.2.3:4377"
        );
        assert_eq!(
            listen_addr("10.1.2.3:5000").unwrap().to_string(),
            "10.1.2.3:5000"
        );
        assert!(listen_addr("eth0x").is_err());
        let listen = listen_addr("0.0.0.0:4400").unwrap();
        assert_eq!(advertise_addr("10.0.0.5", listen).unwrap(), "10.0.0.5:4400");
        assert!(
            advertise_addr("", listen)
                .unwrap_err()
                .to_string()
                .contains("--advertise-addr")
        );
        let specific = listen_addr("10.0.0.9").unwrap();
        assert_eq!(advertise_addr("", specific).unwrap(), "10.0.0.9:4377");
    }
}
