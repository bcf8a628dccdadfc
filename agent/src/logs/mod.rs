//! The agent's side of `berth service logs`: it listens for log subscriptions from the manager
//! of its session and publishes its tasks' log lines for each.
//!
//! ```text
//! LogBroker.ListenSubscriptions ─▶ SubscriptionMessage { id, selector, options }
//!   └─ serve(id): PublishLogs stream
//!        ├─ an empty message at once (the broker sees the node is answering)
//!        ├─ for each local task the selector selects: its container's log (TaskLogs),
//!        │   tail/since/streams applied, lines tagged with service, node and task ids
//!        ├─ non-follow: everything written so far, then `close`
//!        └─ follow: new lines as they are written, tasks that arrive later included
//!           (re-scanned every second; all of their output, `tail` is for what existed at
//!           subscription time), until the broker says `close` or the session ends
//! ```
//!
//! Invariants: lines of one task are published in the order they were written; a subscription
//! the broker closed stops publishing; nothing here outlives the session it runs in (the
//! listener future owns every subscription task).

mod engine;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::log_broker_client::LogBrokerClient;
use berth_proto::v1::{
    ContainerLogsMessage, ListenSubscriptionsRequest, LogContext, LogMessage, LogSelector,
    LogSubscriptionOptions, PublishLogsMessage, SubscriptionMessage, Task,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::worker::WorkerHandle;

pub use engine::EngineLogs;

/// Lines per PublishLogs message at most.
const BATCH: usize = 256;

/// Lines buffered between a subscription's readers and its publisher.
const LINE_BUFFER: usize = 1024;

/// How often a follow subscription looks for new local tasks.
const RESCAN: Duration = Duration::from_secs(1);

/// Why a task's log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// Reading the log failed.
    #[error("reading the log of task {task}: {message}")]
    Read {
        /// The task id.
        task: String,
        /// What went wrong.
        message: String,
    },
}

/// A task's log lines, in the order they were written.
pub type LineStream = Pin<Box<dyn Stream<Item = Result<ContainerLogsMessage, LogsError>> + Send>>;

/// A boxed future, for object-safe traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where task logs come from (the engine's container log files in production).
pub trait TaskLogs: Send + Sync + 'static {
    /// The log of `task`'s container as `options` ask (tail, since, follow until the container
    /// exits); `None` when the task has no container on this node (any more).
    fn open(
        &self,
        task: &Task,
        options: &LogSubscriptionOptions,
    ) -> BoxFuture<'_, Result<Option<LineStream>, LogsError>>;
}

/// Whether `selector` selects `task`.
pub fn selects(selector: &LogSelector, task: &Task) -> bool {
    selector.service_ids.contains(&task.service_id)
        || selector.task_ids.contains(&task.id)
        || (!task.node_id.is_empty() && selector.node_ids.contains(&task.node_id))
}

/// Serves log subscriptions for one session (see the module docs).
#[derive(Clone)]
pub struct LogPublisher {
    worker: WorkerHandle,
    source: Arc<dyn TaskLogs>,
}

impl std::fmt::Debug for LogPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPublisher").finish_non_exhaustive()
    }
}

impl LogPublisher {
    /// Publishes the logs of `worker`'s tasks, read from `source`.
    pub fn new(worker: WorkerHandle, source: Arc<dyn TaskLogs>) -> Self {
        LogPublisher { worker, source }
    }

    /// Listens for subscriptions on `channel` and serves them until the listen stream ends;
    /// returns why it ended. Dropping the future stops every subscription it serves.
    pub async fn listen(&self, channel: Channel) -> Result<(), tonic::Status> {
        let mut client = LogBrokerClient::new(channel.clone());
        let mut subscriptions = client
            .listen_subscriptions(ListenSubscriptionsRequest {})
            .await?
            .into_inner();
        let mut running: HashMap<String, CancellationToken> = HashMap::new();
        let mut tasks: JoinSet<String> = JoinSet::new();
        loop {
            tokio::select! {
                msg = subscriptions.message() => {
                    let Some(sub) = msg? else {
                        return Ok(());
                    };
                    if sub.close {
                        if let Some(cancel) = running.remove(&sub.id) {
                            cancel.cancel();
                        }
                        continue;
                    }
                    if running.contains_key(&sub.id) {
                        continue;
                    }
                    let cancel = CancellationToken::new();
                    running.insert(sub.id.clone(), cancel.clone());
                    let this = self.clone();
                    let client = LogBrokerClient::new(channel.clone());
                    tasks.spawn(async move {
                        let id = sub.id.clone();
                        if let Err(e) = this.serve(client, sub, cancel).await {
                            tracing::debug!(subscription = %id, error = %e, "log subscription ended");
                        }
                        id
                    });
                }
                Some(done) = tasks.join_next() => {
                    if let Ok(id) = done {
                        running.remove(&id);
                    }
                }
            }
        }
    }

    /// Serves one subscription on its own PublishLogs stream.
    async fn serve(
        &self,
        mut client: LogBrokerClient<Channel>,
        sub: SubscriptionMessage,
        cancel: CancellationToken,
    ) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel::<PublishLogsMessage>(16);
        let hello = PublishLogsMessage {
            subscription_id: sub.id.clone(),
            messages: Vec::new(),
            close: false,
        };
        // The channel is empty: the first message always fits.
        let _ = tx.try_send(hello);
        let call = client.publish_logs(ReceiverStream::new(rx));
        let produce = self.produce(sub, tx, cancel);
        let (answer, ()) = tokio::join!(call, produce);
        answer.map(|_| ())
    }

    /// Reads the selected tasks' logs and feeds them to `out`; closes the subscription when
    /// done (non-follow), or stops when `cancel` fires.
    async fn produce(
        &self,
        sub: SubscriptionMessage,
        out: mpsc::Sender<PublishLogsMessage>,
        cancel: CancellationToken,
    ) {
        let selector = sub.selector.unwrap_or_default();
        let options = sub.options.unwrap_or_default();
        let (line_tx, mut lines) = mpsc::channel::<LogMessage>(LINE_BUFFER);
        let mut seen = HashSet::new();
        let mut readers = JoinSet::new();
        self.scan(&selector, &options, &mut seen, &line_tx, &mut readers)
            .await;
        // Tasks found later started after the subscription: all their output is new.
        let later = LogSubscriptionOptions {
            tail: None,
            ..options.clone()
        };
        let mut line_tx = options.follow.then_some(line_tx);
        let mut rescan = tokio::time::interval(RESCAN);
        rescan.reset();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                line = lines.recv() => {
                    let Some(first) = line else {
                        break;
                    };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match lines.try_recv() {
                            Ok(l) => batch.push(l),
                            Err(_) => break,
                        }
                    }
                    let msg = PublishLogsMessage {
                        subscription_id: sub.id.clone(),
                        messages: batch,
                        close: false,
                    };
                    if out.send(msg).await.is_err() {
                        return;
                    }
                }
                _ = rescan.tick(), if line_tx.is_some() => {
                    if let Some(tx) = &line_tx {
                        self.scan(&selector, &later, &mut seen, tx, &mut readers).await;
                    }
                }
                Some(_) = readers.join_next() => {}
            }
        }
        line_tx.take();
        let _ = out
            .send(PublishLogsMessage {
                subscription_id: sub.id.clone(),
                messages: Vec::new(),
                close: true,
            })
            .await;
    }

    /// Starts a reader for every selected task not read yet.
    async fn scan(
        &self,
        selector: &LogSelector,
        options: &LogSubscriptionOptions,
        seen: &mut HashSet<String>,
        out: &mpsc::Sender<LogMessage>,
        readers: &mut JoinSet<()>,
    ) {
        let Ok(tasks) = self.worker.tasks().await else {
            return;
        };
        for task in tasks {
            if !selects(selector, &task) || seen.contains(&task.id) {
                continue;
            }
            let stream = match self.source.open(&task, options).await {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(task = %task.id, error = %e, "task log unreadable");
                    continue;
                }
            };
            seen.insert(task.id.clone());
            let context = LogContext {
                service_id: task.service_id.clone(),
                node_id: task.node_id.clone(),
                task_id: task.id.clone(),
            };
            let streams = options.streams.clone();
            readers.spawn(read_task(stream, context, streams, out.clone()));
        }
    }
}

/// Forwards one task's lines (of the wanted streams) to `out`.
async fn read_task(
    mut stream: LineStream,
    context: LogContext,
    streams: Vec<i32>,
    out: mpsc::Sender<LogMessage>,
) {
    while let Some(item) = stream.next().await {
        let line = match item {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(task = %context.task_id, error = %e, "task log read failed");
                return;
            }
        };
        if !streams.is_empty() && !streams.contains(&line.stream) {
            continue;
        }
        let msg = LogMessage {
            context: Some(context.clone()),
            timestamp: line.timestamp,
            stream: line.stream,
            data: line.data,
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
