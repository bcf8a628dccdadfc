//! The per-task controller loop: takes one task from its current observed state through
//! ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE | FAILED, or to SHUTDOWN /
//! REJECTED, calling its [`Controller`] at each step, and honours the desired state the
//! managers send (RUNNING, READY = prepare but do not start, SHUTDOWN, REMOVE).
//!
//! Every observed state is sent to the worker as an [`Event`]; the worker persists it and
//! queues it for the managers. The loop never moves a task backwards: it only goes forward
//! from the state it was started in.
//!
//! Failures before STARTING end in REJECTED, failures from STARTING on in FAILED (as
//! `TaskState` documents). When the worker stops (daemon shutdown) the loop returns wherever
//! it is without touching the container: containers outlive `berthd`.

use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::v1::{ContainerStatus, Task, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::executor::{Controller, ExecError, ExitStatus};

/// What the managers want of a task, as the runner sees it.
#[derive(Debug, Clone)]
pub(crate) struct Desired {
    /// The task as last assigned (its `desired_state` matters here).
    pub task: Arc<Task>,
    /// The task left the assignment set: stop it, remove its container, and end.
    pub remove: bool,
}

/// What a runner tells the worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// The task reached a new observed status.
    Status {
        /// The task.
        task_id: String,
        /// Its status.
        status: TaskStatus,
    },
    /// The task's container was removed after the task left the set; forget the task.
    Removed {
        /// The task.
        task_id: String,
    },
}

/// The state a task is in, reading an unknown wire value as NEW.
pub(crate) fn state_of(raw: i32) -> TaskState {
    TaskState::try_from(raw).unwrap_or(TaskState::New)
}

/// A status observed now.
pub(crate) fn status_now(
    state: TaskState,
    message: &str,
    err: Option<String>,
    container: Option<ContainerStatus>,
) -> TaskStatus {
    TaskStatus {
        timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
        state: state as i32,
        message: message.to_owned(),
        err: err.unwrap_or_default(),
        container_status: container,
        ..Default::default()
    }
}

/// The terminal state and error text of a container that exited with `exit`.
pub(crate) fn exit_outcome(exit: ExitStatus) -> (TaskState, Option<String>) {
    if exit.code == 0 && !exit.oom_killed {
        (TaskState::Complete, None)
    } else if exit.oom_killed {
        (
            TaskState::Failed,
            Some(format!(
                "task: non-zero exit ({}): killed by the OOM killer",
                exit.code
            )),
        )
    } else {
        (
            TaskState::Failed,
            Some(format!("task: non-zero exit ({})", exit.code)),
        )
    }
}

/// `base` with the exit of `exit` recorded (pid cleared).
pub(crate) fn with_exit(base: Option<ContainerStatus>, exit: ExitStatus) -> ContainerStatus {
    let mut cs = base.unwrap_or_default();
    cs.pid = 0;
    cs.exit_code = exit.code;
    cs.oom_killed = exit.oom_killed;
    cs
}

/// One task's loop (see the module docs).
pub(crate) struct Runner {
    pub task_id: String,
    pub controller: Box<dyn Controller>,
    pub desired: watch::Receiver<Desired>,
    pub events: mpsc::Sender<Event>,
    /// The observed state the loop starts from.
    pub state: TaskState,
    /// The container as last observed (id, pid, exit code).
    pub container: Option<ContainerStatus>,
    /// Cancelled when the worker stops.
    pub cancel: CancellationToken,
}

/// Why a step ended early.
enum Interrupt {
    /// The worker stops: return without touching the container.
    Stop,
    /// The desired state changed: re-evaluate.
    Changed,
}

impl Runner {
    /// Runs until the task is removed or the worker stops.
    pub async fn run(mut self) {
        let mut removed = false;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            let want = self.desired.borrow_and_update().clone();
            let desired = state_of(want.task.desired_state);
            if want.remove || desired >= TaskState::Shutdown {
                if !self.state.is_terminal() && !self.stop().await {
                    return;
                }
                if (want.remove || desired == TaskState::Remove) && !removed {
                    if let Err(e) = self.controller.remove().await {
                        tracing::warn!(task_id = %self.task_id, error = %e, "removing the container failed");
                    }
                    removed = true;
                }
                if want.remove {
                    let _ = self
                        .events
                        .send(Event::Removed {
                            task_id: self.task_id.clone(),
                        })
                        .await;
                    return;
                }
                if matches!(self.changed().await, Interrupt::Stop) {
                    return;
                }
                continue;
            }
            let keep_going = match self.state {
                s if s < TaskState::Accepted => {
                    self.advance(TaskState::Accepted, "accepted", None).await
                }
                TaskState::Accepted => self.advance(TaskState::Preparing, "preparing", None).await,
                TaskState::Preparing => self.prepare().await,
                TaskState::Ready => {
                    if desired >= TaskState::Running {
                        self.advance(TaskState::Starting, "starting", None).await
                    } else {
                        matches!(self.changed().await, Interrupt::Changed)
                    }
                }
                TaskState::Starting => self.start().await,
                TaskState::Running => self.wait().await,
                _ => matches!(self.changed().await, Interrupt::Changed),
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Waits for a new desired state (or the worker stopping).
    async fn changed(&mut self) -> Interrupt {
        tokio::select! {
            _ = self.cancel.cancelled() => Interrupt::Stop,
            r = self.desired.changed() => match r {
                Ok(()) => Interrupt::Changed,
                Err(_) => Interrupt::Stop,
            },
        }
    }

    /// Records and reports `state`; false when the worker is gone.
    async fn advance(&mut self, state: TaskState, message: &str, err: Option<String>) -> bool {
        self.state = state;
        let status = status_now(state, message, err, self.container.clone());
        self.events
            .send(Event::Status {
                task_id: self.task_id.clone(),
                status,
            })
            .await
            .is_ok()
    }

    async fn prepare(&mut self) -> bool {
        let outcome = tokio::select! {
            _ = self.cancel.cancelled() => return false,
            r = self.controller.prepare() => Some(r),
            r = self.desired.changed() => {
                if r.is_err() {
                    return false;
                }
                None
            }
        };
        match outcome {
            // The desired state changed mid-prepare; the loop re-evaluates (prepare is
            // re-entrant, shutdown is handled at the top of the loop).
            None => true,
            Some(Ok(())) => self.advance(TaskState::Ready, "prepared", None).await,
            Some(Err(e)) => self.fail(TaskState::Rejected, "preparing", &e).await,
        }
    }

    async fn start(&mut self) -> bool {
        let r = tokio::select! {
            _ = self.cancel.cancelled() => return false,
            r = self.controller.start() => r,
        };
        match r {
            Ok(cs) => {
                self.container = Some(cs);
                self.advance(TaskState::Running, "started", None).await
            }
            Err(e) => self.fail(TaskState::Failed, "starting", &e).await,
        }
    }

    async fn wait(&mut self) -> bool {
        let r = tokio::select! {
            _ = self.cancel.cancelled() => return false,
            r = self.controller.wait() => r,
            r = self.desired.changed() => {
                return r.is_ok();
            }
        };
        match r {
            Ok(exit) => {
                self.container = Some(with_exit(self.container.take(), exit));
                let (state, err) = exit_outcome(exit);
                let message = if state == TaskState::Complete {
                    "finished"
                } else {
                    "started"
                };
                self.advance(state, message, err).await
            }
            Err(e) => self.fail(TaskState::Failed, "started", &e).await,
        }
    }

    async fn fail(&mut self, state: TaskState, message: &str, e: &ExecError) -> bool {
        tracing::info!(task_id = %self.task_id, error = %e, ?state, "task failed");
        self.advance(state, message, Some(e.to_string())).await
    }

    /// Stops the container (if it may exist) and reports SHUTDOWN.
    async fn stop(&mut self) -> bool {
        let mut err = None;
        if self.state >= TaskState::Preparing {
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = self.controller.shutdown() => r,
            };
            match r {
                Ok(Some(exit)) => self.container = Some(with_exit(self.container.take(), exit)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(task_id = %self.task_id, error = %e, "stopping the container failed");
                    err = Some(e.to_string());
                }
            }
        }
        self.advance(TaskState::Shutdown, "shutdown", err).await
    }
}
