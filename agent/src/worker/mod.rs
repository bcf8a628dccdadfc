//! The worker: reconciles the managers' assignment set with the tasks on this node.
//!
//! ```text
//! session ──AssignmentsMessage──▶ WorkerHandle::assign ──▶ Worker::run (one loop, owns all state)
//!                                                             │  one Runner per task (task.rs),
//!                                                             │  driving a Controller (executor.rs)
//!   session ◀── StatusReporter (coalesced, reporter.rs) ◀─────┘  every status: TaskDb, then reporter
//! ```
//!
//! - A COMPLETE message replaces the set: local tasks missing from it are stopped and their
//!   containers removed; an INCREMENTAL one adds, updates or removes single tasks. Secrets and
//!   configs are kept in memory only, for the tasks that reference them.
//! - Each task has one runner ([`task`]) that takes it through prepare → start → wait →
//!   shutdown → remove, following its desired state (RUNNING, READY, SHUTDOWN, REMOVE).
//! - Every new observed status is written to the task database ([`TaskDb`]: one file per task,
//!   replaced atomically; terminal statuses fsynced) *before* it is queued for the managers,
//!   and after each new session [`WorkerHandle::report_all`] queues every task's status again,
//!   so a terminal state is never lost, not across lost connections nor daemon restarts.
//! - On start the worker reloads its tasks from the database and adopts their containers
//!   through [`Executor::adopt`]: running ones are watched again, ones that ended meanwhile
//!   are reported with their exit codes.
//! - When the worker stops (daemon shutdown) its runners stop where they are; containers keep
//!   running. Losing the managers stops nothing either: the session reconnects while tasks run.
//!
//! Invariant: a task's observed state only moves forward — in the runner, in the database and
//! in the reporter's queue.

mod db;
mod engine;
mod executor;
pub mod fake;
mod reporter;
mod simulated;
mod task;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_proto::v1::assignment_change::Assignment;
use berth_proto::v1::{
    AssignmentAction, AssignmentsMessage, AssignmentsType, Config, ContainerStatus, HealthState,
    Secret, Task, TaskState, TaskStatus,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use db::{TaskDb, TaskDbError};
pub use engine::{EngineExecutor, container_config};
pub use executor::{
    Adopted, BoxFuture, Controller, Dependencies, ExecError, Executor, ExitStatus, HealthWatch,
    Observed,
};
pub use reporter::StatusReporter;
pub use simulated::{SIMULATED_LABEL, SimulatedExecutor};

use task::{Desired, Event, Runner, exit_outcome, state_of, status_now, with_exit};

/// Where the task database lives inside the agent's state directory.
pub const TASK_DB_DIR: &str = "worker/tasks";

/// Why the worker failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The task database failed.
    #[error(transparent)]
    Db(#[from] TaskDbError),
    /// The worker has stopped; nothing more can be assigned.
    #[error("the worker has stopped")]
    Stopped,
}

/// Settings of the worker.
#[derive(Debug, Clone, Default)]
pub struct WorkerConfig {
    /// Directory of the task database; `None` keeps nothing on disk (simulated nodes).
    pub db_dir: Option<PathBuf>,
}

impl WorkerConfig {
    /// The task database under the agent's state directory ([`TASK_DB_DIR`]).
    pub fn new(state_dir: &Path) -> Self {
        WorkerConfig {
            db_dir: Some(state_dir.join(TASK_DB_DIR)),
        }
    }

    /// No task database (simulated nodes in benchmarks).
    pub fn in_memory() -> Self {
        WorkerConfig { db_dir: None }
    }
}

enum Command {
    Assign(Box<AssignmentsMessage>, oneshot::Sender<()>),
    ReportAll(oneshot::Sender<()>),
    Tasks(oneshot::Sender<Vec<Task>>),
}

/// A handle on a running worker (cheap to clone): what the session uses.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    reporter: StatusReporter,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Assign(m, _) => write!(f, "Assign({} changes)", m.changes.len()),
            Command::ReportAll(_) => write!(f, "ReportAll"),
            Command::Tasks(_) => write!(f, "Tasks"),
        }
    }
}

impl WorkerHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.map_err(|_| WorkerError::Stopped)
    }

    /// Applies one assignments message; returns once the worker has taken it in (runners
    /// started, updated or told to stop), not when the containers have got there.
    pub async fn assign(&self, msg: AssignmentsMessage) -> Result<(), WorkerError> {
        self.call(|tx| Command::Assign(Box::new(msg), tx)).await
    }

    /// Queues the current status of every task for the managers (after a new session).
    pub async fn report_all(&self) -> Result<(), WorkerError> {
        self.call(Command::ReportAll).await
    }

    /// Every task on this node as assigned, with its `status` the latest observed one.
    pub async fn tasks(&self) -> Result<Vec<Task>, WorkerError> {
        self.call(Command::Tasks).await
    }

    /// The queue of statuses for the managers.
    pub fn reporter(&self) -> &StatusReporter {
        &self.reporter
    }
}

/// The worker (see the module docs): open it, hand [`Worker::handle`] to the session, run it.
pub struct Worker {
    executor: Arc<dyn Executor>,
    db: Arc<TaskDb>,
    stored: Vec<Task>,
    commands: mpsc::Receiver<Command>,
    handle: WorkerHandle,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("stored", &self.stored.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Opens the task database (blocking file I/O) and prepares the worker; its tasks are
    /// adopted when [`Worker::run`] starts.
    pub fn open(cfg: WorkerConfig, executor: Arc<dyn Executor>) -> Result<Worker, WorkerError> {
        let (db, stored) = TaskDb::open(cfg.db_dir.as_deref())?;
        let (tx, rx) = mpsc::channel(64);
        Ok(Worker {
            executor,
            db: Arc::new(db),
            stored,
            commands: rx,
            handle: WorkerHandle {
                commands: tx,
                reporter: StatusReporter::new(),
            },
        })
    }

    /// The handle the session uses.
    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// Adopts the stored tasks, then serves assignments until `cancel`; on return every
    /// runner has stopped and every container is left as it is.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), WorkerError> {
        let Worker {
            executor,
            db,
            stored,
            mut commands,
            handle,
        } = self;
        let (events_tx, mut events) = mpsc::channel(1024);
        let mut st = State {
            executor,
            db,
            reporter: handle.reporter.clone(),
            tasks: HashMap::new(),
            secrets: HashMap::new(),
            configs: HashMap::new(),
            events: events_tx,
            runners: JoinSet::new(),
            stop_runners: cancel.child_token(),
        };
        for task in stored {
            st.adopt(task).await;
        }
        tracing::info!(tasks = st.tasks.len(), "worker started");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(cmd) = commands.recv() => st.command(cmd).await,
                Some(ev) = events.recv() => st.event(ev).await,
                Some(joined) = st.runners.join_next(), if !st.runners.is_empty() => {
                    if let Err(e) = joined {
                        tracing::error!(error = %e, "a task runner ended abnormally");
                    }
                }
            }
        }
        st.stop_runners.cancel();
        while st.runners.join_next().await.is_some() {}
        drop(handle);
        tracing::info!("worker stopped; containers left running");
        Ok(())
    }
}

struct Entry {
    /// As assigned, with `status` the latest observed status.
    task: Task,
    desired: watch::Sender<Desired>,
}

struct State {
    executor: Arc<dyn Executor>,
    db: Arc<TaskDb>,
    reporter: StatusReporter,
    tasks: HashMap<String, Entry>,
    secrets: HashMap<String, Secret>,
    configs: HashMap<String, Config>,
    events: mpsc::Sender<Event>,
    runners: JoinSet<()>,
    stop_runners: CancellationToken,
}

/// Where a task resumes after its container was looked at, and the status to report if the
/// look changed it.
#[derive(Debug, Clone, PartialEq)]
struct Resume {
    state: TaskState,
    report: Option<(TaskState, &'static str, Option<String>)>,
    exit: Option<ExitStatus>,
    pid: Option<i32>,
}

/// Decides how a task stored in state `stored` resumes given what exists of its container.
fn resume(stored: TaskState, observed: Observed) -> Resume {
    let keep = |state| Resume {
        state,
        report: None,
        exit: None,
        pid: None,
    };
    let moved = |state, message, err: Option<&str>| Resume {
        state,
        report: Some((state, message, err.map(str::to_owned))),
        exit: None,
        pid: None,
    };
    if stored.is_terminal() || stored < TaskState::Preparing {
        return keep(stored);
    }
    match observed {
        // A STARTING task may be waiting for its health check: its runner takes the running
        // container from there (RUNNING at once without a check, else once healthy).
        Observed::Running { pid } => Resume {
            pid: Some(pid),
            ..if matches!(stored, TaskState::Running | TaskState::Starting) {
                keep(stored)
            } else {
                moved(TaskState::Running, "started", None)
            }
        },
        Observed::Exited(exit) => {
            let (state, err) = exit_outcome(exit);
            let message = if state == TaskState::Complete {
                "finished"
            } else {
                "started"
            };
            Resume {
                exit: Some(exit),
                ..moved(state, message, err.as_deref())
            }
        }
        Observed::Created => match stored {
            TaskState::Preparing => moved(TaskState::Ready, "prepared", None),
            TaskState::Ready | TaskState::Starting => keep(stored),
            _ => moved(
                TaskState::Failed,
                "started",
                Some("the container is no longer running"),
            ),
        },
        Observed::Missing => match stored {
            TaskState::Preparing => keep(stored),
            TaskState::Ready => moved(
                TaskState::Rejected,
                "preparing",
                Some("the prepared container disappeared while berthd was down"),
            ),
            _ => moved(
                TaskState::Failed,
                "started",
                Some("the container disappeared while berthd was down"),
            ),
        },
    }
}

impl State {
    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Assign(msg, done) => {
                self.assign(*msg).await;
                let _ = done.send(());
            }
            Command::ReportAll(done) => {
                for (id, entry) in &self.tasks {
                    if let Some(status) = &entry.task.status {
                        self.reporter.report(id.clone(), status.clone());
                    }
                }
                let _ = done.send(());
            }
            Command::Tasks(reply) => {
                let mut tasks: Vec<Task> = self.tasks.values().map(|e| e.task.clone()).collect();
                tasks.sort_by(|a, b| a.id.cmp(&b.id));
                let _ = reply.send(tasks);
            }
        }
    }

    async fn assign(&mut self, msg: AssignmentsMessage) {
        let complete = msg.r#type == AssignmentsType::Complete as i32;
        if complete {
            self.secrets.clear();
            self.configs.clear();
        }
        let mut updates = Vec::new();
        let mut removes = Vec::new();
        for change in msg.changes {
            let remove = change.action == AssignmentAction::Remove as i32;
            match change.assignment {
                Some(Assignment::Secret(s)) if remove => {
                    self.secrets.remove(&s.id);
                }
                Some(Assignment::Secret(s)) => {
                    self.secrets.insert(s.id.clone(), s);
                }
                Some(Assignment::Config(c)) if remove => {
                    self.configs.remove(&c.id);
                }
                Some(Assignment::Config(c)) => {
                    self.configs.insert(c.id.clone(), c);
                }
                Some(Assignment::Task(t)) if remove => removes.push(t.id),
                Some(Assignment::Task(t)) => updates.push(t),
                None => {}
            }
        }
        if complete {
            let listed: HashSet<&str> = updates.iter().map(|t| t.id.as_str()).collect();
            removes.extend(
                self.tasks
                    .keys()
                    .filter(|id| !listed.contains(id.as_str()))
                    .cloned(),
            );
        }
        for task in updates {
            self.upsert(task).await;
        }
        for id in removes {
            if let Some(entry) = self.tasks.get(&id) {
                entry.desired.send_modify(|d| d.remove = true);
            }
        }
    }

    fn deps_for(&self, task: &Task) -> Dependencies {
        let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            return Dependencies::default();
        };
        Dependencies {
            secrets: c
                .secrets
                .iter()
                .filter_map(|r| self.secrets.get(&r.secret_id).cloned())
                .collect(),
            configs: c
                .configs
                .iter()
                .filter_map(|r| self.configs.get(&r.config_id).cloned())
                .collect(),
        }
    }

    /// A task the managers sent (new, or an update of one we run).
    async fn upsert(&mut self, task: Task) {
        if let Some(entry) = self.tasks.get_mut(&task.id) {
            let changed = entry.task.desired_state != task.desired_state
                || entry.task.spec != task.spec
                || entry.task.spec_version != task.spec_version;
            // Our observed status stays: the managers' copy trails it.
            let observed = entry.task.status.take();
            entry.task = Task {
                status: observed,
                ..task
            };
            if changed {
                let record = entry.task.clone();
                entry
                    .desired
                    .send_modify(|d| d.task = Arc::new(record.clone()));
                self.persist(record, false).await;
            }
            return;
        }
        let state = state_of(task.status.as_ref().map_or(0, |s| s.state));
        if state >= TaskState::Preparing {
            // The managers think it got further than we know (our database was lost): look
            // at what exists, as after a restart.
            self.adopt(task).await;
            return;
        }
        let deps = self.deps_for(&task);
        match self.executor.controller(&task, deps) {
            Ok(controller) => {
                self.persist(task.clone(), false).await;
                self.spawn(task, controller, state, None);
            }
            Err(e) => {
                let status =
                    status_now(TaskState::Rejected, "preparing", Some(e.to_string()), None);
                self.record_without_runner(task, status).await;
            }
        }
    }

    /// Takes over a task a previous worker ran (or one the managers say got further than we
    /// know): attaches to its container and resumes from what exists.
    async fn adopt(&mut self, mut task: Task) {
        let stored = state_of(task.status.as_ref().map_or(0, |s| s.state));
        let deps = self.deps_for(&task);
        let adopted = self.executor.adopt(&task, deps).await;
        let Adopted {
            controller,
            observed,
        } = match adopted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "adopting the task's container failed");
                let (state, message) = if stored >= TaskState::Starting {
                    (TaskState::Failed, "started")
                } else {
                    (TaskState::Rejected, "preparing")
                };
                let status = if stored.is_terminal() {
                    task.status.clone().unwrap_or_default()
                } else {
                    status_now(
                        state,
                        message,
                        Some(format!("adopting the container failed: {e}")),
                        None,
                    )
                };
                self.record_without_runner(task, status).await;
                return;
            }
        };
        let r = resume(stored, observed);
        tracing::info!(task_id = %task.id, ?stored, ?observed, resumed = ?r.state, "adopted task");
        let mut container: Option<ContainerStatus> = task
            .status
            .as_ref()
            .and_then(|s| s.container_status.clone());
        if let Some(pid) = r.pid {
            let mut cs = container.unwrap_or_default();
            cs.pid = pid;
            container = Some(cs);
        }
        if let Some(exit) = r.exit {
            container = Some(with_exit(container, exit));
        }
        let reported = r.report.is_some();
        if let Some((state, message, err)) = r.report {
            task.status = Some(status_now(state, message, err, container.clone()));
        }
        let durable = r.state.is_terminal();
        self.persist(task.clone(), durable).await;
        if reported && let Some(status) = &task.status {
            self.reporter.report(task.id.clone(), status.clone());
        }
        self.spawn(task, controller, r.state, container);
    }

    /// Keeps a task that has no controller (the executor refused it) with a final status.
    async fn record_without_runner(&mut self, mut task: Task, status: TaskStatus) {
        task.status = Some(status.clone());
        self.persist(task.clone(), true).await;
        self.reporter.report(task.id.clone(), status);
        // A runner on an inert controller still handles removal uniformly.
        let controller: Box<dyn Controller> = Box::new(Inert);
        let state = state_of(task.status.as_ref().map_or(0, |s| s.state));
        self.spawn(task, controller, state, None);
    }

    fn spawn(
        &mut self,
        task: Task,
        controller: Box<dyn Controller>,
        state: TaskState,
        container: Option<ContainerStatus>,
    ) {
        let (tx, rx) = watch::channel(Desired {
            task: Arc::new(task.clone()),
            remove: false,
        });
        let health_state = task
            .status
            .as_ref()
            .and_then(|s| HealthState::try_from(s.health).ok())
            .unwrap_or(HealthState::None);
        let runner = Runner {
            task_id: task.id.clone(),
            controller,
            desired: rx,
            events: self.events.clone(),
            state,
            container,
            cancel: self.stop_runners.child_token(),
            health: None,
            health_looked_up: false,
            health_state,
        };
        self.tasks
            .insert(task.id.clone(), Entry { task, desired: tx });
        self.runners.spawn(runner.run());
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Status { task_id, status } => {
                let Some(entry) = self.tasks.get_mut(&task_id) else {
                    return;
                };
                let current = state_of(entry.task.status.as_ref().map_or(0, |s| s.state));
                let next = state_of(status.state);
                if !current.can_move_to(next) {
                    return;
                }
                entry.task.status = Some(status.clone());
                let record = entry.task.clone();
                self.persist(record, next.is_terminal()).await;
                self.reporter.report(task_id, status);
            }
            Event::Removed { task_id } => {
                self.tasks.remove(&task_id);
                let db = self.db.clone();
                let r = tokio::task::spawn_blocking(move || db.delete(&task_id)).await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "forgetting a removed task failed"),
                    Err(e) => tracing::error!(error = %e, "task db delete panicked"),
                }
            }
        }
    }

    /// Writes `task` to the database (off the async threads). Failures are logged: the
    /// status is still reported, so the managers learn it even if this node forgets it.
    async fn persist(&self, task: Task, durable: bool) {
        if !self.db.is_persistent() {
            return;
        }
        let db = self.db.clone();
        let id = task.id.clone();
        match tokio::task::spawn_blocking(move || db.put(&task, durable)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(task_id = %id, error = %e, "persisting the task failed"),
            Err(e) => tracing::error!(task_id = %id, error = %e, "task db write panicked"),
        }
    }
}

/// The controller of a task the executor could not make one for: every step fails, shutdown
/// and remove do nothing.
struct Inert;

impl Controller for Inert {
    fn prepare(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async { Err(ExecError::Failed("no controller for this task".into())) })
    }
    fn start(&self) -> BoxFuture<'_, Result<ContainerStatus, ExecError>> {
        Box::pin(async { Err(ExecError::Failed("no controller for this task".into())) })
    }
    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ExecError>> {
        Box::pin(async { Err(ExecError::Failed("no controller for this task".into())) })
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<Option<ExitStatus>, ExecError>> {
        Box::pin(async { Ok(None) })
    }
    fn remove(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod tests;
