//! The agent's session with the managers: dial a manager, open a dispatcher session, and
//! while it lasts beat, listen, take assignments and send statuses; when it ends, dial again.
//!
//! ```text
//! Session::run ─ dial (Managers: heaviest first, next one after a failure; a follower's
//!   │             UNAVAILABLE names the leader, dialled next at once)
//!   ├─ Session stream:   session id, node object, manager list (kept in Managers)
//!   ├─ Heartbeat:        at once, then every period the dispatcher answers
//!   ├─ Assignments:      COMPLETE then INCREMENTAL → WorkerHandle::assign
//!   ├─ UpdateTaskStatus: batches of ≤ 1024 from the StatusReporter; a failed batch is put back
//!   └─ LogBroker (when `logs` is set): log subscriptions served by `crate::logs`; a failed
//!      listen is retried (1 s, 30 s against a manager without a broker) and never ends
//!      the session
//! any of the first four ends → the session ends → Backoff (100 ms doubling to 8 s, jittered) → dial
//! ```
//!
//! After each new session the worker re-queues every task's status, so statuses that were
//! queued (or lost in flight) while no manager was reachable arrive once one is. Tasks keep
//! running throughout: the session never touches the worker's runners, it only feeds them.
//!
//! Invariant: the agent talks to at most one dispatcher at a time, and only through a
//! session it opened; increments are applied only on top of the set they name
//! (`applies_to`), otherwise the session is re-opened for a fresh COMPLETE set.

mod peers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::identity::{NodeCredentials, client_tls_config};
use berth_proto::v1::dispatcher_client::DispatcherClient;
use berth_proto::v1::{
    AssignmentsRequest, AssignmentsType, HeartbeatRequest, Node, NodeDescription, SessionMessage,
    SessionRequest, UpdateTaskStatusRequest,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::logs::{LogPublisher, TaskLogs};
use crate::worker::WorkerHandle;

pub use peers::{Backoff, Managers};

/// gRPC metadata key in which a manager that is not the leader names the leader's address.
pub const LEADER_ADDR_METADATA: &str = "berth-leader-addr";

/// Largest message accepted from a manager (a COMPLETE set of a busy node can be large).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Redirects followed in a row before backing off.
const MAX_REDIRECTS: usize = 3;

/// Why the session loop gave up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No manager address is known: nothing to dial.
    #[error("no manager address is known; join a cluster first")]
    NoManagers,
}

/// Settings of the session.
#[derive(Clone)]
pub struct SessionConfig {
    /// Managers to dial first ("IP:port"), e.g. the address joined through.
    pub managers: Vec<String>,
    /// Where to remember the managers the cluster reports (`<state dir>/agent/managers.json`);
    /// `None` remembers nothing.
    pub managers_file: Option<PathBuf>,
    /// The node's credentials; a renewed certificate is used from the next dial on.
    pub credentials: watch::Receiver<NodeCredentials>,
    /// The node description sent with every new session.
    pub describe: Arc<dyn Fn() -> NodeDescription + Send + Sync>,
    /// Connect timeout (5 s).
    pub connect_timeout: Duration,
    /// Timeout of each unary call and of the first session message (5 s).
    pub rpc_timeout: Duration,
    /// First reconnect delay (100 ms).
    pub backoff_min: Duration,
    /// Largest reconnect delay (8 s).
    pub backoff_max: Duration,
    /// Statuses per UpdateTaskStatus call at most (1024).
    pub status_batch: usize,
    /// Called with this node's object from every session message (berthd renews its
    /// certificate when the managers changed the node's role).
    pub on_node: Option<NodeCallback>,
    /// Where this node's task logs are read for `berth service logs`; `None` serves no log
    /// subscriptions (simulated nodes).
    pub logs: Option<Arc<dyn TaskLogs>>,
}

/// See [`SessionConfig::on_node`].
pub type NodeCallback = Arc<dyn Fn(&Node) + Send + Sync>;

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("managers", &self.managers)
            .field("managers_file", &self.managers_file)
            .field("rpc_timeout", &self.rpc_timeout)
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// Swarm's timings, dialling `managers` first, with `credentials` and `description`.
    pub fn new(
        managers: Vec<String>,
        credentials: watch::Receiver<NodeCredentials>,
        description: NodeDescription,
    ) -> Self {
        SessionConfig {
            managers,
            managers_file: None,
            credentials,
            describe: Arc::new(move || description.clone()),
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(8),
            status_batch: 1024,
            on_node: None,
            logs: None,
        }
    }
}

/// What the session is doing, for `berth info` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The manager of the current session, if one is open.
    pub manager: Option<String>,
    /// The current session id ("" when none).
    pub session_id: String,
    /// Sessions opened since start.
    pub sessions: u64,
    /// The last reason a session ended or a dial failed.
    pub last_error: Option<String>,
}

/// The agent's session loop (see the module docs).
pub struct Session {
    cfg: SessionConfig,
    worker: WorkerHandle,
    state: watch::Sender<SessionState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("cfg", &self.cfg)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// How one dial ended.
enum Outcome {
    /// The loop was cancelled.
    Cancelled,
    /// The manager is not the leader; dial the leader next.
    Redirect(String),
    /// The session ended (or never started); `established` tells which.
    Ended { established: bool, error: String },
}

/// The leader a manager named in `status`, if any.
fn leader_of(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDR_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn ended(established: bool, error: impl std::fmt::Display) -> Outcome {
    Outcome::Ended {
        established,
        error: error.to_string(),
    }
}

impl Session {
    /// A session feeding `worker`.
    pub fn new(cfg: SessionConfig, worker: WorkerHandle) -> Self {
        Session {
            cfg,
            worker,
            state: watch::Sender::new(SessionState::default()),
        }
    }

    /// Follows what the session is doing.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.subscribe()
    }

    /// Keeps a session open until `cancel`. Never gives up while a manager address is known.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), SessionError> {
        let mut managers = Managers::new(&self.cfg.managers, self.cfg.managers_file.as_deref());
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut redirect: Option<String> = None;
        let mut redirects = 0;
        let mut last_session = String::new();
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let addr = match redirect.take() {
                Some(a) => a,
                None => managers
                    .current()
                    .map(str::to_owned)
                    .ok_or(SessionError::NoManagers)?,
            };
            let outcome = tokio::select! {
                _ = cancel.cancelled() => Outcome::Cancelled,
                o = self.serve(&addr, &mut managers, &mut last_session) => o,
            };
            self.state.send_modify(|s| {
                s.manager = None;
                s.session_id.clear();
            });
            let wait = match outcome {
                Outcome::Cancelled => return Ok(()),
                Outcome::Redirect(leader) if redirects < MAX_REDIRECTS && leader != addr => {
                    tracing::debug!(from = %addr, to = %leader, "following the leader");
                    redirects += 1;
                    redirect = Some(leader);
                    continue;
                }
                Outcome::Redirect(leader) => {
                    redirects = 0;
                    managers.failed(&addr);
                    self.record_error(format!("{addr} keeps redirecting (to {leader})"));
                    backoff.next_delay()
                }
                Outcome::Ended { established, error } => {
                    redirects = 0;
                    if established {
                        backoff.reset();
                        tracing::info!(manager = %addr, %error, "session ended; reconnecting");
                    } else {
                        managers.failed(&addr);
                        tracing::debug!(manager = %addr, %error, "could not open a session");
                    }
                    self.record_error(error);
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn record_error(&self, error: String) {
        self.state.send_modify(|s| s.last_error = Some(error));
    }

    async fn dial(&self, addr: &str) -> Result<Channel, String> {
        let creds = self.cfg.credentials.borrow().clone();
        let tls = client_tls_config(&creds).map_err(|e| e.to_string())?;
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| format!("bad manager address {addr:?}: {e}"))?
            .connect_timeout(self.cfg.connect_timeout)
            .tcp_keepalive(Some(Duration::from_secs(10)))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(self.cfg.rpc_timeout)
            .keep_alive_while_idle(true)
            .tls_config(tls)
            .map_err(|e| e.to_string())?;
        endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))
    }

    /// One dial: open a session on `addr` and serve it until it ends.
    async fn serve(
        &self,
        addr: &str,
        managers: &mut Managers,
        last_session: &mut String,
    ) -> Outcome {
        let channel = match self.dial(addr).await {
            Ok(c) => c,
            Err(e) => return ended(false, e),
        };
        let client =
            DispatcherClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_SIZE);
        let request = SessionRequest {
            description: Some((self.cfg.describe)()),
            session_id: last_session.clone(),
        };
        let opened = tokio::time::timeout(self.cfg.rpc_timeout, async {
            let mut stream = client.clone().session(request).await?.into_inner();
            let first = stream
                .message()
                .await?
                .ok_or_else(|| Status::unavailable("the session stream ended at once"))?;
            Ok::<_, Status>((stream, first))
        })
        .await;
        let (mut session_stream, first) = match opened {
            Err(_) => return ended(false, format!("{addr}: no session within the timeout")),
            Ok(Err(status)) => {
                return match leader_of(&status) {
                    Some(leader) => Outcome::Redirect(leader),
                    None => ended(false, format!("{addr}: {}", status.message())),
                };
            }
            Ok(Ok(x)) => x,
        };
        let session_id = first.session_id.clone();
        *last_session = session_id.clone();
        managers.update(&first.managers);
        if let (Some(on_node), Some(node)) = (&self.cfg.on_node, &first.node) {
            on_node(node);
        }
        self.state.send_modify(|s| {
            s.manager = Some(addr.to_owned());
            s.session_id = session_id.clone();
            s.sessions += 1;
        });
        tracing::info!(manager = %addr, %session_id, "session open");
        if self.worker.report_all().await.is_err() {
            return ended(true, "the worker stopped");
        }

        let error = tokio::select! {
            e = listen(&mut session_stream, managers, self.cfg.on_node.as_ref()) => e,
            e = self.heartbeats(client.clone(), &session_id) => e,
            e = self.assignments(client.clone(), &session_id) => e,
            e = self.send_statuses(client.clone(), &session_id) => e,
            e = self.serve_logs(channel) => e,
        };
        ended(true, format!("{addr}: {error}"))
    }

    /// Serves log subscriptions for as long as the session lasts (never ends it).
    async fn serve_logs(&self, channel: Channel) -> String {
        let Some(source) = self.cfg.logs.clone() else {
            return std::future::pending().await;
        };
        let publisher = LogPublisher::new(self.worker.clone(), source);
        loop {
            let wait = match publisher.listen(channel.clone()).await {
                Ok(()) => Duration::from_secs(1),
                Err(s) if s.code() == Code::Unimplemented => Duration::from_secs(30),
                Err(s) => {
                    tracing::debug!(error = %s.message(), "log subscriptions: listening failed");
                    Duration::from_secs(1)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn heartbeats(&self, mut client: DispatcherClient<Channel>, session_id: &str) -> String {
        loop {
            let call = client.heartbeat(HeartbeatRequest {
                session_id: session_id.to_owned(),
            });
            let period = match tokio::time::timeout(self.cfg.rpc_timeout, call).await {
                Err(_) => return "heartbeat timed out".into(),
                Ok(Err(s)) => return format!("heartbeat refused: {}", s.message()),
                Ok(Ok(r)) => r
                    .into_inner()
                    .period
                    .and_then(|p| Duration::try_from(p).ok())
                    .filter(|p| !p.is_zero())
                    .unwrap_or(Duration::from_secs(5)),
            };
            tokio::time::sleep(period).await;
        }
    }

    async fn assignments(&self, mut client: DispatcherClient<Channel>, session_id: &str) -> String {
        let mut stream = match client
            .assignments(AssignmentsRequest {
                session_id: session_id.to_owned(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return format!("assignments refused: {}", s.message()),
        };
        let mut applied = String::new();
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return "the assignments stream ended".into(),
                Err(s) => return format!("assignments stream: {}", s.message()),
            };
            if msg.r#type == AssignmentsType::Incremental as i32 && msg.applies_to != applied {
                return format!(
                    "assignments out of sequence (have {applied:?}, increment applies to {:?})",
                    msg.applies_to
                );
            }
            applied = msg.results_in.clone();
            if self.worker.assign(msg).await.is_err() {
                return "the worker stopped".into();
            }
        }
    }

    async fn send_statuses(
        &self,
        mut client: DispatcherClient<Channel>,
        session_id: &str,
    ) -> String {
        let reporter = self.worker.reporter().clone();
        loop {
            reporter.ready().await;
            let batch = reporter.take(self.cfg.status_batch.max(1));
            if batch.is_empty() {
                continue;
            }
            let call = client.update_task_status(UpdateTaskStatusRequest {
                session_id: session_id.to_owned(),
                updates: batch.clone(),
            });
            match tokio::time::timeout(self.cfg.rpc_timeout, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(s))
                    if matches!(s.code(), Code::PermissionDenied | Code::InvalidArgument) =>
                {
                    // Resending cannot help; keep the rest flowing.
                    tracing::error!(error = %s.message(), dropped = batch.len(), "status batch refused");
                }
                Ok(Err(s)) => {
                    reporter.requeue(batch);
                    return format!("status update refused: {}", s.message());
                }
                Err(_) => {
                    reporter.requeue(batch);
                    return "status update timed out".into();
                }
            }
        }
    }
}

/// Reads the session stream: keeps the manager list current; returns why it ended.
async fn listen(
    stream: &mut tonic::Streaming<SessionMessage>,
    managers: &mut Managers,
    on_node: Option<&NodeCallback>,
) -> String {
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if managers.update(&m.managers) {
                    tracing::info!(managers = ?managers.addrs(), "manager list changed");
                }
                if let (Some(on_node), Some(node)) = (on_node, &m.node) {
                    on_node(node);
                }
            }
            Ok(None) => return "the session stream ended".into(),
            Err(s) => return format!("session stream: {}", s.message()),
        }
    }
}
