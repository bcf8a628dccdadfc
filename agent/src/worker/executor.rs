//! The seam between the worker and whatever runs containers: an [`Executor`] makes one
//! [`Controller`] per task, and the controller takes the task's container through
//! prepare → start → wait → shutdown → remove.
//!
//! Implementations: the production executor over the container runtime and image store (the
//! engine), [`super::SimulatedExecutor`] (benchmarks only: no containers), and
//! [`super::fake::FakeExecutor`] (tests).
//!
//! Contract every implementation keeps:
//! - every method is idempotent: `prepare` of a prepared container, `shutdown` of a stopped
//!   one and `remove` of a removed one succeed without doing anything;
//! - `wait` may be called again after its future was dropped (the worker drops it when the
//!   desired state changes) and reports the same exit;
//! - dropping a controller never stops its container: a restarted worker re-attaches with
//!   [`Executor::adopt`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use berth_proto::v1::{Config, ContainerStatus, Secret, Task};
use tokio::sync::watch;

/// A task container's health as its probes report it (see [`crate::health`]).
pub type HealthWatch = watch::Receiver<crate::health::Health>;

/// A boxed, sendable future (the trait methods return these so executors can be `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an executor step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The task's image is not on this node and cannot be pulled; the task is REJECTED with
    /// this reason (worded as Docker's, since `service ps` shows it).
    #[error("No such image: {image}")]
    ImageNotFound {
        /// The image reference as the task names it.
        image: String,
    },
    /// The task spec cannot be run here (no container spec, invalid option).
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    /// The container this controller manages does not exist.
    #[error("container of task {task_id} not found")]
    ContainerNotFound {
        /// The task.
        task_id: String,
    },
    /// Any other failure of the step, with the runtime's message.
    #[error("{0}")]
    Failed(String),
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code (128 + signal when killed by a signal).
    pub code: i32,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}

/// What a restarted worker finds of a task's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// No container exists (never created, or removed).
    Missing,
    /// The container is created (prepared) and not started.
    Created,
    /// The container is running.
    Running {
        /// Its PID 1 on the host.
        pid: i32,
    },
    /// The container ran and ended.
    Exited(ExitStatus),
}

/// A task's controller plus what was found of its container ([`Executor::adopt`]).
pub struct Adopted {
    /// The controller, attached to the container if one exists.
    pub controller: Box<dyn Controller>,
    /// The container's state.
    pub observed: Observed,
}

impl fmt::Debug for Adopted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adopted")
            .field("observed", &self.observed)
            .finish_non_exhaustive()
    }
}

/// The secrets and configs a task references, as the managers sent them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dependencies {
    /// Secrets (with their data), in the order the task references them.
    pub secrets: Vec<Secret>,
    /// Configs (with their data), in the order the task references them.
    pub configs: Vec<Config>,
}

/// Makes controllers: one per task.
pub trait Executor: Send + Sync + 'static {
    /// A controller for a task the worker has not run yet. Nothing is created until
    /// [`Controller::prepare`].
    fn controller(&self, task: &Task, deps: Dependencies)
    -> Result<Box<dyn Controller>, ExecError>;

    /// A controller for a task a previous worker ran, attached to its container if that still
    /// exists, with the container's state (a restarted `berthd` adopts its tasks this way).
    fn adopt(&self, task: &Task, deps: Dependencies) -> BoxFuture<'_, Result<Adopted, ExecError>>;
}

/// Runs one task's container (see the module docs for the contract).
pub trait Controller: Send + Sync {
    /// Makes the container ready to start: the image present (or pulled), the container
    /// created. An image that is missing and cannot be pulled is [`ExecError::ImageNotFound`].
    fn prepare(&self) -> BoxFuture<'_, Result<(), ExecError>>;

    /// Starts the prepared container; returns once it runs (the runner then waits for
    /// [`Controller::health`] to say healthy before it reports RUNNING).
    fn start(&self) -> BoxFuture<'_, Result<ContainerStatus, ExecError>>;

    /// Waits until the container exits.
    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ExecError>>;

    /// Stops the container: stop signal, grace period, then SIGKILL. Returns how it ended
    /// (`None` when it never ran).
    fn shutdown(&self) -> BoxFuture<'_, Result<Option<ExitStatus>, ExecError>>;

    /// Deletes the container and everything it left (rootfs, cgroups, state).
    fn remove(&self) -> BoxFuture<'_, Result<(), ExecError>>;

    /// The container's health, once it is prepared; `None` when it has no health check (or
    /// does not exist). Executors without health checks keep this default.
    fn health(&self) -> Option<HealthWatch> {
        None
    }
}
