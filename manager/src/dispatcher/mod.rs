//! The dispatcher: the leader's side of every agent's session. It registers agents, keeps
//! their nodes' liveness, streams each node its assignments, and writes the task statuses
//! agents report into the store.
//!
//! ```text
//!  agent ──Session──────────▶ register: node READY (description, address), session id
//!        ──Heartbeat────────▶ deadline = now + period × 3      ┐ expiry: node DOWN
//!        ──UpdateTaskStatus─▶ Pending (latest per task) ─┐      │ ("heartbeat failure")
//!        ◀─Assignments────── AssignmentSet per stream    │      │
//!                            (COMPLETE, then INCREMENTAL │      │
//!                             ≤ 4 at once, then ≤ 4      │      │
//!                             per 100 ms)                ▼      ▼
//!                                      Dispatcher::run: flush every 100 ms (at once while
//!                                      < 4 flushes in 100 ms, or at 10 000 queued) through
//!                                      the Writer, one batch per ≤ 1000 updates
//! ```
//!
//! - Leader only: [`Dispatcher::run`] installs itself in a [`DispatcherSlot`] while it runs;
//!   the gRPC [`DispatcherService`] (mounted once on every manager) serves through the slot
//!   and answers UNAVAILABLE, naming the leader, when the slot is empty.
//!   [`run_while_leader`] starts one per term and stops it when leadership is lost.
//! - Liveness ([`nodes`]): a node is DOWN after 3 missed heartbeat periods (the period comes
//!   from the cluster object, default 5 s); a dropped session stream makes it DISCONNECTED
//!   at once and DOWN when its window passes without a new session; when a dispatcher starts
//!   (a leader change) every node not DOWN becomes UNKNOWN and gets 6 periods to reconnect.
//! - Statuses ([`pending`]): an agent may only report its own tasks (PERMISSION_DENIED
//!   otherwise); a status that would move a task backwards, or names a task that is gone, is
//!   dropped when flushed.
//! - Assignments ([`assignments`]): only this node's tasks (ASSIGNED or later) and the
//!   secrets and configs they use; sealed secrets are opened with the data key only in the
//!   message sent ([`crate::secrets::open_for_agent`]).
//!
//! Invariants: every store write goes through the [`Writer`]; a task's status never moves
//! backwards; a session's streams end when the session does (replaced, expired, or the
//! dispatcher stopped), so an agent never listens to a dispatcher that stopped leading.

mod assignments;
mod burst;
mod nodes;
mod pending;
mod service;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use berth_proto::v1::{
    AssignmentsMessage, Cluster, Node, NodeDescription, NodeRole, NodeState, SessionMessage, Task,
    TaskStatusUpdate, WeightedPeer,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::orchestrator::{IsLeader, WriteFailure, Writer};
use crate::store::{Object, Store, Tables, WatchError};

pub use nodes::RateLimit;
pub use service::DispatcherService;

use assignments::AssignmentSet;
use burst::BurstWindow;
use nodes::{Registry, Session, SessionRefused};
use pending::{NodeChange, Pending};

/// Docker's default heartbeat period.
pub const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);

/// Message of a node that missed its heartbeats.
pub const HEARTBEAT_FAILURE: &str = "heartbeat failure";

/// Message of a node whose session stream was dropped.
pub const DISCONNECTED_MESSAGE: &str = "node is currently trying to find new manager";

/// Message of a node a new leader has not heard from yet.
pub const UNKNOWN_AFTER_ELECTION: &str =
    "node moved to unknown state after a leader change; waiting for it to reconnect";

/// Assignment messages per session, and status flushes, that go out at once within one
/// batching window before batching starts ([`BurstWindow`]).
const BURST: usize = 4;

/// How many times a flush re-reads the store after a write was refused (another component
/// wrote the same object in between).
const FLUSH_ATTEMPTS: usize = 5;

/// How long a registration waits for its node update to be committed.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the dispatcher (defaults are Swarm's).
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Heartbeat period used when the cluster object sets none (5 s).
    pub default_heartbeat_period: Duration,
    /// Missed periods before a node is DOWN (3).
    pub grace_multiplier: u32,
    /// Periods a node gets to reconnect after a leader change before it is DOWN (6).
    pub leader_change_grace_multiplier: u32,
    /// Largest random change of the period sent to agents, as a fraction of it (0.1), so
    /// that agents do not beat in lockstep.
    pub heartbeat_jitter: f64,
    /// Status flush period (100 ms); also the window of the status burst rule: up to
    /// 4 flushes per window happen at once when statuses arrive to an empty queue.
    pub flush_interval: Duration,
    /// Queued task statuses that trigger a flush before the period ends (10 000).
    pub flush_max_items: usize,
    /// Store updates per write at most (1000).
    pub max_actions_per_write: usize,
    /// The batching window of INCREMENTAL messages (100 ms): up to 4 messages per
    /// window go at once; beyond that, changes gather until a slot of the window frees.
    pub assignment_batch_wait: Duration,
    /// Changes that make an INCREMENTAL message go out at once (100).
    pub assignment_batch_max: usize,
    /// Registrations a node may make in a window (3 per 8 s).
    pub rate_limit: RateLimit,
    /// The data key sealed secrets are opened with before they are sent to an agent (an
    /// empty keyring by default: sealed secrets are then not sent).
    pub keyring: crate::secrets::Keyring,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            default_heartbeat_period: DEFAULT_HEARTBEAT_PERIOD,
            grace_multiplier: 3,
            leader_change_grace_multiplier: 6,
            heartbeat_jitter: 0.1,
            flush_interval: Duration::from_millis(100),
            flush_max_items: 10_000,
            max_actions_per_write: 1000,
            assignment_batch_wait: Duration::from_millis(100),
            assignment_batch_max: 100,
            rate_limit: RateLimit {
                count: 3,
                period: Duration::from_secs(8),
            },
            keyring: crate::secrets::Keyring::default(),
        }
    }
}

/// Why the dispatcher stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatcherError {
    /// A write found that this manager no longer leads.
    #[error("lost leadership: {0}")]
    NotLeader(String),
    /// Replication stopped for good.
    #[error("replication stopped: {0}")]
    Fatal(String),
}

/// Where the running dispatcher (if any) is found by the gRPC service. Cheap to clone; make
/// one per manager, give it to [`DispatcherService`] and to every [`Dispatcher`] started
/// while this manager leads.
#[derive(Debug, Clone, Default)]
pub struct DispatcherSlot {
    current: Arc<RwLock<Option<Arc<Shared>>>>,
}

impl DispatcherSlot {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self) -> Option<Arc<Shared>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, shared: &Arc<Shared>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(shared.clone());
    }

    fn clear(&self, shared: &Arc<Shared>) {
        let mut slot = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, shared)) {
            *slot = None;
        }
    }

    /// Whether a dispatcher is serving.
    pub fn is_running(&self) -> bool {
        self.get().is_some()
    }

    /// Number of nodes with a live session (0 when no dispatcher runs).
    pub fn sessions(&self) -> usize {
        self.get().map_or(0, |s| lock(&s.registry).connected())
    }
}

/// Why a call was refused (mapped to a status in [`service`]).
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("node {0} not found")]
    NodeNotFound(String),
    #[error(transparent)]
    Session(#[from] SessionRefused),
    #[error("task {task_id} is not assigned to node {node_id}")]
    NotYours { task_id: String, node_id: String },
    #[error("{0}")]
    Unavailable(String),
}

impl From<CallError> for Status {
    fn from(e: CallError) -> Status {
        match &e {
            CallError::NodeNotFound(_) => Status::not_found(e.to_string()),
            CallError::Session(SessionRefused::Invalid { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            CallError::Session(SessionRefused::RateLimited { .. }) => {
                Status::unavailable(e.to_string())
            }
            CallError::NotYours { .. } => Status::permission_denied(e.to_string()),
            CallError::Unavailable(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// State shared by the run loop and the calls.
#[derive(Debug)]
struct Shared {
    store: Store,
    cfg: DispatcherConfig,
    registry: Mutex<Registry>,
    pending: Mutex<Pending>,
    /// Recent non-empty flushes: statuses arriving while fewer than [`BURST`] flushes
    /// happened within the flush interval are flushed at once instead of at the next tick.
    flushes: Mutex<BurstWindow>,
    flush_now: Notify,
    deadlines_changed: Notify,
    /// Cancelled when the dispatcher stops; parent of every session's token.
    stopped: CancellationToken,
    streams: TaskTracker,
}

/// The result sender of a server stream.
type StreamTx<T> = mpsc::Sender<Result<T, Status>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Registry and Pending are plain data updated without panicking paths.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The heartbeat period the cluster object sets, if any.
fn cluster_period(tables: &Tables) -> Option<Duration> {
    tables
        .list::<Cluster>()
        .first()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.dispatcher.as_ref())
        .and_then(|d| d.heartbeat_period)
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero())
}

/// The managers agents may connect to, the leader heaviest.
fn managers_of(tables: &Tables) -> Vec<WeightedPeer> {
    let mut peers: Vec<WeightedPeer> = tables
        .list::<Node>()
        .iter()
        .filter(|n| n.role == NodeRole::Manager as i32)
        .filter_map(|n| {
            let ms = n.manager_status.as_ref()?;
            if ms.addr.is_empty() {
                return None;
            }
            Some(WeightedPeer {
                node_id: n.id.clone(),
                addr: ms.addr.clone(),
                weight: if ms.leader { 10 } else { 1 },
            })
        })
        .collect();
    peers.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.node_id.cmp(&b.node_id)));
    peers
}

/// A random factor in [1 - jitter, 1 + jitter].
fn jitter_factor(jitter: f64) -> f64 {
    let unit = berth_proto::identity::renewal::random_jitter();
    1.0 + jitter.clamp(0.0, 0.5) * (2.0 * unit - 1.0)
}

impl Shared {
    /// `msg` with its sealed secrets opened for the agent ([`crate::secrets::open_for_agent`]).
    fn for_agent(&self, mut msg: AssignmentsMessage) -> AssignmentsMessage {
        crate::secrets::open_for_agent(&mut msg, &self.cfg.keyring);
        msg
    }

    fn period(&self) -> Duration {
        self.store
            .view(cluster_period)
            .unwrap_or(self.cfg.default_heartbeat_period)
    }

    fn ttl(&self, period: Duration, multiplier: u32) -> Duration {
        period.saturating_mul(multiplier.max(1))
    }

    fn queue_node(&self, node_id: &str, change: NodeChange, waiter: Option<pending::Waiter>) {
        let mut p = lock(&self.pending);
        p.node(node_id, change);
        if let Some(w) = waiter {
            p.wait(w);
        }
    }

    /// At start: every node that is not DOWN becomes UNKNOWN and is watched.
    fn watch_known_nodes(&self) {
        let period = self.period();
        let deadline = Instant::now() + self.ttl(period, self.cfg.leader_change_grace_multiplier);
        let nodes = self.store.list::<Node>();
        let mut registry = lock(&self.registry);
        for node in nodes {
            let state = node.status.as_ref().map_or(0, |s| s.state);
            if state == NodeState::Down as i32 {
                continue;
            }
            registry.watch(&node.id, deadline);
            self.queue_node(
                &node.id,
                NodeChange {
                    state: NodeState::Unknown,
                    message: UNKNOWN_AFTER_ELECTION.into(),
                    description: None,
                    addr: None,
                },
                None,
            );
        }
    }

    /// Opens a session: the node must exist; it is READY once this returns.
    async fn register(
        &self,
        node_id: &str,
        description: Option<NodeDescription>,
        addr: Option<String>,
    ) -> Result<Session, CallError> {
        if self.store.get::<Node>(node_id).is_none() {
            return Err(CallError::NodeNotFound(node_id.to_owned()));
        }
        let now = Instant::now();
        let deadline = now + self.ttl(self.period(), self.cfg.grace_multiplier);
        let session = lock(&self.registry).register(
            node_id,
            berth_proto::ids::new_id(),
            now,
            deadline,
            self.cfg.rate_limit,
            &self.stopped,
        )?;
        self.deadlines_changed.notify_one();
        let (tx, rx) = oneshot::channel();
        self.queue_node(
            node_id,
            NodeChange {
                state: NodeState::Ready,
                message: String::new(),
                description,
                addr,
            },
            Some(tx),
        );
        self.flush_now.notify_one();
        match tokio::time::timeout(REGISTER_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(%node_id, session_id = %session.id, "node registered");
                Ok(session)
            }
            Ok(Ok(Err(e))) => Err(CallError::Unavailable(format!(
                "could not mark node {node_id} ready: {e}"
            ))),
            Ok(Err(_)) => Err(CallError::Unavailable("the dispatcher stopped".into())),
            Err(_) => Err(CallError::Unavailable(format!(
                "marking node {node_id} ready took longer than {REGISTER_TIMEOUT:?}"
            ))),
        }
    }

    fn session(&self, node_id: &str, session_id: &str) -> Result<Session, CallError> {
        Ok(lock(&self.registry).session(node_id, session_id)?)
    }

    /// A heartbeat: returns the period to beat again within.
    fn heartbeat(&self, node_id: &str, session_id: &str) -> Result<Duration, CallError> {
        let period = self.period();
        let deadline = Instant::now() + self.ttl(period, self.cfg.grace_multiplier);
        // Only moves a deadline later: the run loop's timer needs no wake-up.
        lock(&self.registry).heartbeat(node_id, session_id, deadline)?;
        Ok(period.mul_f64(jitter_factor(self.cfg.heartbeat_jitter)))
    }

    /// Queues statuses reported by `node_id`, refusing the whole call if one names a task on
    /// another node. Statuses of tasks that are gone are skipped.
    fn report(&self, node_id: &str, updates: Vec<TaskStatusUpdate>) -> Result<(), CallError> {
        self.store.view(|t| {
            for u in &updates {
                if let Some(task) = t.get::<Task>(&u.task_id)
                    && task.node_id != node_id
                {
                    return Err(CallError::NotYours {
                        task_id: u.task_id.clone(),
                        node_id: node_id.to_owned(),
                    });
                }
            }
            Ok(())
        })?;
        let (was_empty, queued) = {
            let mut p = lock(&self.pending);
            let was_empty = p.is_empty();
            for u in updates {
                if let Some(status) = u.status {
                    p.task_status(node_id, u.task_id, status);
                }
            }
            (was_empty, p.task_count())
        };
        let now_allowed = || lock(&self.flushes).ready_at(Instant::now()).is_none();
        if queued >= self.cfg.flush_max_items || (was_empty && queued > 0 && now_allowed()) {
            self.flush_now.notify_one();
        }
        Ok(())
    }

    /// The agent dropped its session stream.
    fn disconnected(&self, node_id: &str, session_id: &str) {
        let current = lock(&self.registry).disconnect(node_id, session_id);
        if current {
            tracing::info!(%node_id, "node session dropped");
            self.queue_node(
                node_id,
                NodeChange {
                    state: NodeState::Disconnected,
                    message: DISCONNECTED_MESSAGE.into(),
                    description: None,
                    addr: None,
                },
                None,
            );
        }
    }

    /// Marks the nodes whose window passed DOWN.
    fn expire(&self) {
        let expired = lock(&self.registry).expire(Instant::now());
        for node_id in expired {
            tracing::warn!(%node_id, "node missed its heartbeats; marking it down");
            self.queue_node(
                &node_id,
                NodeChange {
                    state: NodeState::Down,
                    message: HEARTBEAT_FAILURE.into(),
                    description: None,
                    addr: None,
                },
                None,
            );
        }
    }

    /// Writes everything queued. Refused writes are rebuilt from the current store a few
    /// times; an unavailable store keeps the queue for the next flush.
    async fn flush(&self, writer: &dyn Writer) -> Result<(), DispatcherError> {
        let taken = lock(&self.pending).take();
        if taken.is_empty() {
            return Ok(());
        }
        lock(&self.flushes).record(Instant::now());
        for attempt in 1..=FLUSH_ATTEMPTS {
            let batches = self
                .store
                .view(|t| taken.build(t, self.cfg.max_actions_per_write));
            let mut refused = false;
            for batch in batches {
                match writer.write(batch).await {
                    Ok(_) => {}
                    Err(WriteFailure::Refused(e)) => {
                        tracing::debug!(attempt, error = %e, "status batch refused; re-reading the store");
                        refused = true;
                        break;
                    }
                    Err(WriteFailure::Unavailable(m)) => {
                        tracing::warn!(error = %m, "store unavailable; keeping statuses for the next flush");
                        lock(&self.pending).restore(taken);
                        return Ok(());
                    }
                    Err(WriteFailure::NotLeader(m)) => {
                        taken.notify(Err(m.clone()));
                        return Err(DispatcherError::NotLeader(m));
                    }
                    Err(WriteFailure::Fatal(m)) => {
                        taken.notify(Err(m.clone()));
                        return Err(DispatcherError::Fatal(m));
                    }
                }
            }
            if !refused {
                taken.notify(Ok(()));
                return Ok(());
            }
        }
        tracing::warn!("status batch still refused after {FLUSH_ATTEMPTS} attempts; dropped");
        taken.notify(Err("the store kept refusing the update".into()));
        Ok(())
    }
}

/// The leader's dispatcher (see the module docs).
pub struct Dispatcher {
    shared: Arc<Shared>,
    writer: Arc<dyn Writer>,
    slot: DispatcherSlot,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("cfg", &self.shared.cfg)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher reading `store`, writing through `writer`, served through `slot` while it
    /// runs.
    pub fn new(
        store: Store,
        writer: Arc<dyn Writer>,
        slot: DispatcherSlot,
        cfg: DispatcherConfig,
    ) -> Self {
        let flush_interval = cfg.flush_interval;
        Dispatcher {
            shared: Arc::new(Shared {
                store,
                cfg,
                registry: Mutex::new(Registry::default()),
                pending: Mutex::new(Pending::default()),
                flushes: Mutex::new(BurstWindow::new(flush_interval, BURST)),
                flush_now: Notify::new(),
                deadlines_changed: Notify::new(),
                stopped: CancellationToken::new(),
                streams: TaskTracker::new(),
            }),
            writer,
            slot,
        }
    }

    /// Serves agents until `cancel` (Ok) or until a write finds this manager no longer leads
    /// (Err). On return every session stream has ended and the slot is empty.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), DispatcherError> {
        let shared = self.shared;
        shared.watch_known_nodes();
        self.slot.install(&shared);
        tracing::info!("dispatcher started");
        let result = run_loop(&shared, &*self.writer, &cancel).await;
        self.slot.clear(&shared);
        lock(&shared.registry).close_all();
        shared.stopped.cancel();
        shared.streams.close();
        shared.streams.wait().await;
        if result.is_ok() {
            // Statuses already acknowledged to agents: one last try.
            let last = tokio::time::timeout(Duration::from_secs(1), shared.flush(&*self.writer));
            if let Ok(Err(e)) = last.await {
                tracing::debug!(error = %e, "final dispatcher flush failed");
            }
        }
        lock(&shared.pending)
            .take()
            .notify(Err("the dispatcher stopped".into()));
        tracing::info!(?result, "dispatcher stopped");
        result
    }
}

/// Pause before starting a dispatcher again after one stopped on an error while this
/// manager still leads.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Runs a [`Dispatcher`] whenever `leadership` says this manager leads, until `cancel`: a
/// new one for each term (it marks nodes UNKNOWN and gives them time to reconnect), stopped
/// and drained when leadership is lost. Returns when `cancel` fires or the signal closes.
pub async fn run_while_leader<L: IsLeader + Send + Sync + 'static>(
    store: Store,
    writer: Arc<dyn Writer>,
    slot: DispatcherSlot,
    cfg: DispatcherConfig,
    mut leadership: watch::Receiver<L>,
    cancel: CancellationToken,
) {
    loop {
        while !leadership.borrow_and_update().is_leader() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = leadership.changed() => if changed.is_err() { return },
            }
        }
        let term = cancel.child_token();
        let dispatcher = Dispatcher::new(store.clone(), writer.clone(), slot.clone(), cfg.clone());
        let mut run = tokio::spawn(dispatcher.run(term.clone()));
        let early = loop {
            tokio::select! {
                _ = cancel.cancelled() => break false,
                changed = leadership.changed() => {
                    if changed.is_err() || !leadership.borrow_and_update().is_leader() {
                        break false;
                    }
                }
                ended = &mut run => {
                    match ended {
                        Ok(Ok(())) => tracing::warn!("dispatcher ended early"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "dispatcher stopped"),
                        Err(e) => tracing::error!(error = %e, "dispatcher panicked"),
                    }
                    break true;
                }
            }
        };
        term.cancel();
        if !early {
            // Drain it: its streams end before another term can start one.
            let _ = run.await;
        }
        if cancel.is_cancelled() {
            return;
        }
        if early {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RESTART_PAUSE) => {}
            }
        }
    }
}

async fn run_loop(
    shared: &Shared,
    writer: &dyn Writer,
    cancel: &CancellationToken,
) -> Result<(), DispatcherError> {
    let mut tick = tokio::time::interval(shared.cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = lock(&shared.registry).next_deadline();
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            _ = shared.flush_now.notified() => {}
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            _ = shared.deadlines_changed.notified() => continue,
        }
        shared.expire();
        shared.flush(writer).await?;
    }
}

/// Sends `msg` unless the receiver is gone; false when it is.
async fn send<T>(tx: &StreamTx<T>, msg: Result<T, Status>) -> bool {
    tx.send(msg).await.is_ok()
}

fn session_ended() -> Status {
    Status::unavailable(
        "the session ended (replaced, expired, or the dispatcher stopped); open a new session",
    )
}

/// The session stream of one agent: the first message, then a new one whenever the node
/// object or the manager list changes.
async fn session_stream(
    shared: Arc<Shared>,
    node_id: String,
    session: Session,
    tx: StreamTx<SessionMessage>,
) {
    let view = |t: &Tables| (t.get::<Node>(&node_id), managers_of(t));
    let (snap, mut watch) = shared.store.subscribe();
    let (mut node, mut managers) = view(&snap);
    drop(snap);
    let message = |node: &Option<Arc<Node>>, managers: &Vec<WeightedPeer>| SessionMessage {
        session_id: session.id.clone(),
        node: node.as_deref().cloned(),
        managers: managers.clone(),
    };
    if !send(&tx, Ok(message(&node, &managers))).await {
        shared.disconnected(&node_id, &session.id);
        return;
    }
    loop {
        let relevant = tokio::select! {
            _ = tx.closed() => {
                shared.disconnected(&node_id, &session.id);
                return;
            }
            _ = session.token.cancelled() => {
                let _ = send(&tx, Err(session_ended())).await;
                return;
            }
            r = watch.recv() => match r {
                Ok(changes) => changes.events.iter().any(|e| matches!(e.object(), Object::Node(_))),
                Err(WatchError::Closed) => return,
                Err(WatchError::Lagged { .. } | WatchError::Reset { .. }) => {
                    let (_, w) = shared.store.subscribe();
                    watch = w;
                    true
                }
            },
        };
        if !relevant {
            continue;
        }
        let (n, m) = shared.store.view(view);
        if n.is_none() {
            lock(&shared.registry).forget(&node_id);
            let _ = send(
                &tx,
                Err(Status::not_found(format!(
                    "node {node_id} was removed from the cluster"
                ))),
            )
            .await;
            return;
        }
        if n != node || m != managers {
            node = n;
            managers = m;
            if !send(&tx, Ok(message(&node, &managers))).await {
                shared.disconnected(&node_id, &session.id);
                return;
            }
        }
    }
}

/// The assignments stream of one session: COMPLETE, then batched INCREMENTAL messages.
async fn assignments_stream(
    shared: Arc<Shared>,
    node_id: String,
    session: Session,
    tx: StreamTx<AssignmentsMessage>,
) {
    let mut set = AssignmentSet::new(&node_id);
    let (snap, mut watch) = shared.store.subscribe();
    let first = shared.for_agent(set.complete(&snap));
    drop(snap);
    if !send(&tx, Ok(first)).await {
        return;
    }
    // Batching: up to BURST messages in a row go out at once; beyond that, changes wait
    // for a free slot in the `assignment_batch_wait` window (or `assignment_batch_max`
    // changes go at once).
    let mut due: Option<Instant> = None;
    let mut sent = BurstWindow::new(shared.cfg.assignment_batch_wait, BURST);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = session.token.cancelled() => {
                let _ = send(&tx, Err(session_ended())).await;
                return;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                due = None;
                sent.record(Instant::now());
                if !send(&tx, Ok(shared.for_agent(set.increment()))).await {
                    return;
                }
            }
            r = watch.recv() => match r {
                Ok(changes) => {
                    set.apply(&changes, &shared.store);
                    let ready_at = sent.ready_at(Instant::now());
                    if set.pending() >= shared.cfg.assignment_batch_max
                        || (set.pending() > 0 && due.is_none() && ready_at.is_none())
                    {
                        due = None;
                        sent.record(Instant::now());
                        if !send(&tx, Ok(shared.for_agent(set.increment()))).await {
                            return;
                        }
                    } else if set.pending() > 0 && due.is_none() {
                        due = ready_at;
                    }
                }
                Err(WatchError::Closed) => return,
                Err(WatchError::Lagged { .. } | WatchError::Reset { .. }) => {
                    // Fell behind: start over with a complete set.
                    let (snap, w) = shared.store.subscribe();
                    watch = w;
                    due = None;
                    let complete = shared.for_agent(set.complete(&snap));
                    if !send(&tx, Ok(complete)).await {
                        return;
                    }
                }
            },
        }
    }
}
