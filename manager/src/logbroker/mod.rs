//! The log broker: `berth service logs` gathered from every node through the managers.
//!
//! ```text
//! berth ─SubscribeLogs─▶ (follower: proxied to the leader) leader's LogBroker
//!                          │ which nodes hold the selected tasks? (store, select.rs)
//!                          ├─▶ SubscriptionMessage on each node's ListenSubscriptions stream
//!                          ◀── PublishLogs streams from those agents (lines, then close)
//! berth ◀── lines merged as they come, plus warnings for nodes that could not answer
//! ```
//!
//! Agents hold their ListenSubscriptions stream with the manager of their dispatcher session,
//! the leader, so the leader's broker is the one that knows every connected node; followers
//! proxy SubscribeLogs to it ([`service`]).
//!
//! Invariants:
//! - a node may publish only for subscriptions it was asked to serve, and its lines carry its
//!   own node id (the certificate's), whatever the agent wrote;
//! - nodes the dispatcher marked DOWN are not asked (nor waited for);
//! - a non-follow subscription ends once every node asked has closed, went away, or did not
//!   start answering within [`BrokerConfig::start_timeout`]; every node that could not answer
//!   is named in a warning, and the lines that did arrive are still delivered
//!   ("incomplete log stream", but partial results);
//! - a follow subscription asks nodes that come to hold selected tasks later, and asks a node
//!   again after it reconnects, from just after the last line it sent (no duplicates);
//! - when the subscriber goes away, every node asked is told to stop (`close`);
//! - channels are bounded: a slow subscriber slows its publishers, nothing queues without end.

mod select;
pub mod service;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use berth_proto::v1::{
    LogMessage, LogSelector, LogSubscriptionOptions, PublishLogsMessage, SubscribeLogsMessage,
    SubscribeLogsRequest, SubscriptionMessage,
};
use futures::Stream;
use prost_types::Timestamp;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Status;

use crate::store::Store;

pub use select::selects;
pub use service::{LogBrokerService, LogsService};

/// Subscriptions buffered per listening node before the broker counts it as unreachable.
const LISTENER_BUFFER: usize = 256;

/// Batches buffered per subscriber (publishers wait when it is full).
const SUBSCRIBER_BUFFER: usize = 64;

/// Why the broker refused something.
#[derive(Debug, thiserror::Error)]
pub enum LogBrokerError {
    /// The selector names a service the store does not have.
    #[error("no such service: {0}")]
    NoSuchService(String),
    /// The selector names a task the store does not have.
    #[error("no such task: {0}")]
    NoSuchTask(String),
    /// The selector names a node the store does not have.
    #[error("no such node: {0}")]
    NoSuchNode(String),
    /// The selector selects nothing.
    #[error("a log subscription must select at least one service, task or node")]
    EmptySelector,
    /// A node published for a subscription it was not asked to serve.
    #[error("node {node} was not asked for the logs of subscription {subscription}")]
    NotAsked {
        /// The publishing node.
        node: String,
        /// The subscription it named.
        subscription: String,
    },
}

/// Timings of the broker.
#[derive(Debug, Clone, Copy)]
pub struct BrokerConfig {
    /// How long a node asked for logs may take to start answering (10 s).
    pub start_timeout: Duration,
    /// How often subscriptions are re-checked: follow mode asks new nodes, slow starters time
    /// out (1 s).
    pub recheck: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            start_timeout: Duration::from_secs(10),
            recheck: Duration::from_secs(1),
        }
    }
}

/// One node's open ListenSubscriptions stream.
struct Listener {
    conn: u64,
    tx: mpsc::Sender<Result<SubscriptionMessage, Status>>,
}

/// Where one node stands in one subscription.
struct Asked {
    /// The listener connection the subscription went out on.
    conn: u64,
    /// When it was asked.
    at: Instant,
    /// It opened its publish stream.
    publishing: bool,
    /// It sent everything (or will not: it went away or timed out).
    done: bool,
}

/// One subscriber's subscription.
struct Sub {
    selector: LogSelector,
    options: LogSubscriptionOptions,
    tx: mpsc::Sender<SubscribeLogsMessage>,
    nodes: HashMap<String, Asked>,
    /// Nodes already named in a "not connected" warning (follow mode warns once).
    warned: HashSet<String>,
    /// Per node, the time of the last line delivered (follow mode resumes after it).
    last: HashMap<String, Timestamp>,
}

impl Sub {
    fn complete(&self) -> bool {
        !self.options.follow && self.nodes.values().all(|a| a.done)
    }

    /// The subscription as node `node` is asked it: a resumed follow starts after the last
    /// line that node delivered.
    fn message_for(&self, id: &str, node: &str) -> SubscriptionMessage {
        let mut options = self.options.clone();
        if let Some(last) = self.last.get(node) {
            options.tail = None;
            options.since = Some(after(last));
        }
        SubscriptionMessage {
            id: id.to_owned(),
            selector: Some(self.selector.clone()),
            options: Some(options),
            close: false,
        }
    }
}

/// One nanosecond after `t`.
fn after(t: &Timestamp) -> Timestamp {
    if t.nanos >= 999_999_999 {
        Timestamp {
            seconds: t.seconds + 1,
            nanos: 0,
        }
    } else {
        Timestamp {
            seconds: t.seconds,
            nanos: t.nanos + 1,
        }
    }
}

#[derive(Default)]
struct State {
    listeners: HashMap<String, Listener>,
    subs: HashMap<String, Sub>,
    next_conn: u64,
}

/// Sends subscription `id` to `node`'s listener; the connection it went out on.
fn ask(listeners: &HashMap<String, Listener>, id: &str, sub: &Sub, node: &str) -> Option<u64> {
    let listener = listeners.get(node)?;
    listener
        .tx
        .try_send(Ok(sub.message_for(id, node)))
        .ok()
        .map(|()| listener.conn)
}

/// Tells `node` (if still on connection `conn`) to stop serving subscription `id`.
fn tell_to_stop(listeners: &HashMap<String, Listener>, id: &str, node: &str, conn: u64) {
    if let Some(l) = listeners.get(node).filter(|l| l.conn == conn) {
        let _ = l.tx.try_send(Ok(SubscriptionMessage {
            id: id.to_owned(),
            close: true,
            ..Default::default()
        }));
    }
}

struct Inner {
    store: Store,
    cfg: BrokerConfig,
    state: Mutex<State>,
}

/// The broker of one manager (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct LogBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("LogBroker")
            .field("listeners", &state.listeners.len())
            .field("subscriptions", &state.subs.len())
            .finish()
    }
}

fn deliver(tx: &mpsc::Sender<SubscribeLogsMessage>, warnings: Vec<String>) {
    if warnings.is_empty() {
        return;
    }
    if tx
        .try_send(SubscribeLogsMessage {
            messages: Vec::new(),
            warnings: warnings.clone(),
        })
        .is_err()
    {
        tracing::debug!(?warnings, "log subscriber is full or gone; warning dropped");
    }
}

impl LogBroker {
    /// A broker over `store` with default timings.
    pub fn new(store: Store) -> Self {
        LogBroker::with_config(store, BrokerConfig::default())
    }

    /// A broker over `store` with timings `cfg`.
    pub fn with_config(store: Store, cfg: BrokerConfig) -> Self {
        LogBroker {
            inner: Arc::new(Inner {
                store,
                cfg,
                state: Mutex::new(State::default()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Nodes with an open ListenSubscriptions stream now.
    pub fn listening(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.lock().listeners.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    /// Starts a subscription: asks the nodes holding the selected tasks and returns the merged
    /// stream of their lines (and of warnings). Dropping the stream ends the subscription.
    pub fn subscribe(
        &self,
        req: SubscribeLogsRequest,
    ) -> Result<impl Stream<Item = SubscribeLogsMessage> + Send + 'static, LogBrokerError> {
        let selector = req.selector.unwrap_or_default();
        let options = req.options.unwrap_or_default();
        let targets = self.inner.store.view(|t| {
            select::validate(t, &selector)?;
            Ok::<_, LogBrokerError>(select::nodes(t, &selector))
        })?;
        let id = berth_proto::ids::new_id();
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let follow = options.follow;
        {
            let mut state = self.lock();
            let mut sub = Sub {
                selector,
                options,
                tx,
                nodes: HashMap::new(),
                warned: HashSet::new(),
                last: HashMap::new(),
            };
            let mut warnings = Vec::new();
            for (node, target) in targets {
                if target.down {
                    warnings.push(format!("node {} is down", target.name));
                    sub.warned.insert(node);
                    continue;
                }
                match ask(&state.listeners, &id, &sub, &node) {
                    Some(conn) => {
                        sub.nodes.insert(
                            node,
                            Asked {
                                conn,
                                at: Instant::now(),
                                publishing: false,
                                done: false,
                            },
                        );
                    }
                    None => {
                        warnings.push(format!("node {} is not connected", target.name));
                        sub.warned.insert(node);
                    }
                }
            }
            deliver(&sub.tx, warnings);
            tracing::debug!(subscription = %id, nodes = sub.nodes.len(), follow, "log subscription");
            // A non-follow subscription nobody can answer ends after its warnings.
            if !sub.complete() {
                state.subs.insert(id.clone(), sub);
            }
        }
        let mut tick = tokio::time::interval(self.inner.cfg.recheck);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stream = SubscriberStream {
            rx,
            tick,
            guard: SubGuard {
                broker: self.clone(),
                id,
            },
        };
        Ok(futures::stream::unfold(stream, |mut s| async move {
            loop {
                tokio::select! {
                    m = s.rx.recv() => return m.map(|m| (m, s)),
                    _ = s.tick.tick() => s.guard.broker.recheck(&s.guard.id),
                }
            }
        }))
    }

    /// Re-checks subscription `id`: follow mode asks nodes that now hold selected tasks (or
    /// reconnected); nodes that did not start answering in time are given up.
    fn recheck(&self, id: &str) {
        let follow = match self.lock().subs.get(id) {
            Some(sub) => sub.options.follow,
            None => return,
        };
        let targets = if follow {
            let selector = self.lock().subs.get(id).map(|s| s.selector.clone());
            match selector {
                Some(sel) => self.inner.store.view(|t| select::nodes(t, &sel)),
                None => return,
            }
        } else {
            Default::default()
        };
        let mut state = self.lock();
        let state = &mut *state;
        let Some(sub) = state.subs.get_mut(id) else {
            return;
        };
        let mut warnings = Vec::new();
        for (node, target) in targets {
            let current = state.listeners.get(&node).map(|l| l.conn);
            let stale = match sub.nodes.get(&node) {
                None => true,
                Some(a) => Some(a.conn) != current,
            };
            if !stale {
                continue;
            }
            if target.down {
                if sub.warned.insert(node.clone()) {
                    warnings.push(format!("node {} is down", target.name));
                }
                continue;
            }
            match ask(&state.listeners, id, sub, &node) {
                Some(conn) => {
                    sub.warned.remove(&node);
                    sub.nodes.insert(
                        node,
                        Asked {
                            conn,
                            at: Instant::now(),
                            publishing: false,
                            done: false,
                        },
                    );
                }
                None => {
                    if sub.warned.insert(node.clone()) {
                        warnings.push(format!("node {} is not connected", target.name));
                    }
                }
            }
        }
        let timeout = self.inner.cfg.start_timeout;
        let slow: Vec<String> = sub
            .nodes
            .iter()
            .filter(|(_, a)| !a.done && !a.publishing && a.at.elapsed() >= timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for node in slow {
            let name = self.inner.store.view(|t| select::node_name(t, &node));
            warnings.push(format!(
                "node {name} did not answer within {}s",
                timeout.as_secs()
            ));
            if let Some(a) = sub.nodes.get(&node) {
                let conn = a.conn;
                if sub.options.follow {
                    sub.nodes.remove(&node);
                } else if let Some(a) = sub.nodes.get_mut(&node) {
                    a.done = true;
                }
                tell_to_stop(&state.listeners, id, &node, conn);
            }
        }
        deliver(&sub.tx, warnings);
        if sub.complete() {
            state.subs.remove(id);
        }
    }

    /// The subscriber went away: tell every node asked to stop.
    fn cancel(&self, id: &str) {
        let mut state = self.lock();
        if let Some(sub) = state.subs.remove(id) {
            for (node, asked) in &sub.nodes {
                if !asked.done {
                    tell_to_stop(&state.listeners, id, node, asked.conn);
                }
            }
            tracing::debug!(subscription = %id, "log subscriber went away");
        }
    }

    /// Opens node `node`'s ListenSubscriptions stream (replacing an older one of the same
    /// node, which then ends). Dropping the stream unregisters it.
    pub fn listen(
        &self,
        node: &str,
    ) -> impl Stream<Item = Result<SubscriptionMessage, Status>> + Send + 'static {
        let (tx, rx) = mpsc::channel(LISTENER_BUFFER);
        let conn = {
            let mut state = self.lock();
            state.next_conn += 1;
            let conn = state.next_conn;
            state
                .listeners
                .insert(node.to_owned(), Listener { conn, tx });
            conn
        };
        tracing::debug!(%node, conn, "node listens for log subscriptions");
        let guard = ListenerGuard {
            broker: self.clone(),
            node: node.to_owned(),
            conn,
        };
        futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|m| (m, (rx, guard)))
        })
    }

    /// Node `node`'s listener `conn` is gone: nodes asked on it that never started answering
    /// will not answer.
    fn unlisten(&self, node: &str, conn: u64) {
        let mut state = self.lock();
        if state.listeners.get(node).is_some_and(|l| l.conn == conn) {
            state.listeners.remove(node);
        }
        let name = self.inner.store.view(|t| select::node_name(t, node));
        let mut finished = Vec::new();
        for (id, sub) in &mut state.subs {
            let Some(asked) = sub.nodes.get_mut(node) else {
                continue;
            };
            if asked.conn != conn || asked.publishing || asked.done {
                continue;
            }
            if sub.options.follow {
                sub.nodes.remove(node);
            } else {
                asked.done = true;
            }
            deliver(
                &sub.tx,
                vec![format!("node {name} disconnected before it sent its logs")],
            );
            if sub.complete() {
                finished.push(id.clone());
            }
        }
        for id in finished {
            state.subs.remove(&id);
        }
    }

    /// Takes one message node `node` published: returns where its lines go (`None` when the
    /// subscription is gone: they are dropped). The lines carry `node` as their node id.
    pub fn publish(
        &self,
        node: &str,
        msg: PublishLogsMessage,
    ) -> Result<Option<(mpsc::Sender<SubscribeLogsMessage>, SubscribeLogsMessage)>, LogBrokerError>
    {
        let mut state = self.lock();
        let Some(sub) = state.subs.get_mut(&msg.subscription_id) else {
            return Ok(None);
        };
        let Some(asked) = sub.nodes.get_mut(node) else {
            return Err(LogBrokerError::NotAsked {
                node: node.to_owned(),
                subscription: msg.subscription_id,
            });
        };
        asked.publishing = true;
        let mut messages: Vec<LogMessage> = msg.messages;
        for m in &mut messages {
            let ctx = m.context.get_or_insert_with(Default::default);
            ctx.node_id = node.to_owned();
        }
        if sub.options.follow
            && let Some(ts) = messages
                .iter()
                .filter_map(|m| m.timestamp)
                .max_by_key(|t| (t.seconds, t.nanos))
        {
            let newer = sub
                .last
                .get(node)
                .is_none_or(|l| (ts.seconds, ts.nanos) > (l.seconds, l.nanos));
            if newer {
                sub.last.insert(node.to_owned(), ts);
            }
        }
        Ok(Some((
            sub.tx.clone(),
            SubscribeLogsMessage {
                messages,
                warnings: Vec::new(),
            },
        )))
    }

    /// Node `node` is done with subscription `id`: it closed it (`warning` is `None`), or its
    /// publish stream ended early (the warning says so).
    pub fn node_done(&self, id: &str, node: &str, warning: Option<String>) {
        let mut state = self.lock();
        let Some(sub) = state.subs.get_mut(id) else {
            return;
        };
        if sub.options.follow {
            sub.nodes.remove(node);
        } else if let Some(a) = sub.nodes.get_mut(node) {
            a.done = true;
        }
        if let Some(w) = warning {
            deliver(&sub.tx, vec![w]);
        }
        if sub.complete() {
            state.subs.remove(id);
        }
    }

    /// The name warnings use for node `id`.
    pub fn node_name(&self, id: &str) -> String {
        self.inner.store.view(|t| select::node_name(t, id))
    }
}

/// Ends its subscription when the subscriber's stream is dropped.
struct SubGuard {
    broker: LogBroker,
    id: String,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        self.broker.cancel(&self.id);
    }
}

struct SubscriberStream {
    rx: mpsc::Receiver<SubscribeLogsMessage>,
    tick: tokio::time::Interval,
    guard: SubGuard,
}

/// Unregisters a node's listener when its stream is dropped.
struct ListenerGuard {
    broker: LogBroker,
    node: String,
    conn: u64,
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.broker.unlisten(&self.node, self.conn);
    }
}

#[cfg(test)]
mod tests;
