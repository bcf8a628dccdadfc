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
//!
//! Health: a task whose container has a health check ([`Controller::health`]) stays STARTING
//! (health STARTING) after its container started, and is reported RUNNING (health HEALTHY)
//! at the first passing probe. Once UNHEALTHY — before or after that — its container is
//! stopped and the task FAILED ("task: non-zero exit (N): unhealthy container", Docker's
//! words); the managers' restart policy replaces it. Every status carries the health as the
//! runner last saw it; health changes that do not move the state are not reported.

use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::v1::{ContainerStatus, HealthState, Task, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::executor::{Controller, ExecError, ExitStatus, HealthWatch};

/// Why a task whose health check failed ended (Docker's words).
pub(crate) const UNHEALTHY: &str = "unhealthy container";

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
    /// The container's health, once looked up (after prepare); `None` without a check.
    pub health: Option<HealthWatch>,
    /// [`Runner::health`] was looked up.
    pub health_looked_up: bool,
    /// The health reported with every status.
    pub health_state: HealthState,
}

/// What ended a wait on a started container.
enum Woke {
    /// The worker stops.
    Stop,
    /// The desired state changed (`false`: the worker is gone).
    Changed(bool),
    /// The container exited (or waiting failed).
    Exited(Result<ExitStatus, ExecError>),
    /// The health check passed.
    Healthy,
    /// The health check failed `retries` times in a row.
    Unhealthy,
}

/// Waits for the next health change of `health`; `None` once the watch ended (the
/// container is gone; `health` is cleared so later calls wait forever).
async fn next_health(health: &mut Option<HealthWatch>) -> Option<HealthState> {
    let Some(rx) = health.as_mut() else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_ok() {
        return Some(rx.borrow_and_update().status);
    }
    *health = None;
    None
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
                        self.look_up_health();
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

    /// Looks up the container's health check (once, after prepare).
    fn look_up_health(&mut self) {
        if self.health_looked_up {
            return;
        }
        self.health_looked_up = true;
        self.health = self.controller.health();
        if let Some(h) = &self.health
            && self.health_state == HealthState::None
        {
            self.health_state = h.borrow().status;
        }
    }

    /// Records and reports `state`; false when the worker is gone.
    async fn advance(&mut self, state: TaskState, message: &str, err: Option<String>) -> bool {
        self.state = state;
        let mut status = status_now(state, message, err, self.container.clone());
        status.health = self.health_state as i32;
        self.events
            .send(Event::Status {
                task_id: self.task_id.clone(),
                status,
            })
            .await
            .is_ok()
    }

    async fn prepare(&mut self) -> bool {
        let mut preparing = self.controller.prepare();
        let outcome = loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = preparing.as_mut() => break Some(r),
                r = self.desired.changed() => {
                    if r.is_err() {
                        return false;
                    }
                    // Only a stop interrupts a prepare: dropping it mid-way would leave its
                    // container creation running in the background while a new attempt (or
                    // the start) raced it. A task that is still wanted (e.g. READY → RUNNING
                    // when the task it replaces has stopped) lets the prepare finish.
                    let want = self.desired.borrow();
                    if want.remove || state_of(want.task.desired_state) >= TaskState::Shutdown {
                        break None;
                    }
                }
            }
        };
        drop(preparing);
        match outcome {
            // Stopping mid-prepare: the loop's shutdown path handles it.
            None => true,
            Some(Ok(())) => self.advance(TaskState::Ready, "prepared", None).await,
            Some(Err(e)) => self.fail(TaskState::Rejected, "preparing", &e).await,
        }
    }

    /// Starts the container (unless this runner already did) and, with a health check,
    /// waits for its first verdict before reporting RUNNING.
    async fn start(&mut self) -> bool {
        if self.container.is_none() {
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = self.controller.start() => r,
            };
            match r {
                Ok(cs) => self.container = Some(cs),
                Err(e) => return self.fail(TaskState::Failed, "starting", &e).await,
            }
        }
        self.look_up_health();
        let now = self.health.as_mut().map(|h| h.borrow_and_update().status);
        let verdict = match now {
            None | Some(HealthState::Healthy) => Woke::Healthy,
            Some(HealthState::Unhealthy) => Woke::Unhealthy,
            Some(_) => self.watch(true).await,
        };
        match verdict {
            Woke::Healthy => {
                if self.health.is_some() {
                    self.health_state = HealthState::Healthy;
                }
                self.advance(TaskState::Running, "started", None).await
            }
            woke => self.woke(woke).await,
        }
    }

    /// Waits until the container exits, the desired state changes, the worker stops, or (with
    /// a health check) it turns unhealthy — or, with `until_healthy`, healthy.
    async fn watch(&mut self, until_healthy: bool) -> Woke {
        let wait = self.controller.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Woke::Stop,
                r = self.desired.changed() => return Woke::Changed(r.is_ok()),
                r = &mut wait => return Woke::Exited(r),
                h = next_health(&mut self.health) => match h {
                    Some(HealthState::Unhealthy) => return Woke::Unhealthy,
                    Some(HealthState::Healthy) if until_healthy => return Woke::Healthy,
                    // The check goes on (or the container is gone: its wait ends soon).
                    _ => {}
                },
            }
        }
    }

    /// Acts on what ended a wait; false when the runner should end.
    async fn woke(&mut self, woke: Woke) -> bool {
        match woke {
            Woke::Stop => false,
            Woke::Changed(alive) => alive,
            // Healthy again while running: nothing to report.
            Woke::Healthy => true,
            Woke::Unhealthy => self.unhealthy().await,
            Woke::Exited(r) => self.exited(r).await,
        }
    }

    async fn wait(&mut self) -> bool {
        self.look_up_health();
        let unhealthy = self
            .health
            .as_mut()
            .is_some_and(|h| h.borrow_and_update().status == HealthState::Unhealthy);
        let woke = if unhealthy {
            Woke::Unhealthy
        } else {
            self.watch(false).await
        };
        self.woke(woke).await
    }

    /// Stops a container whose health check failed and reports the task FAILED.
    async fn unhealthy(&mut self) -> bool {
        self.health_state = HealthState::Unhealthy;
        tracing::info!(task_id = %self.task_id, "the task's container is unhealthy; stopping it");
        let r = tokio::select! {
            _ = self.cancel.cancelled() => return false,
            r = self.controller.shutdown() => r,
        };
        let err = match r {
            Ok(Some(exit)) => {
                self.container = Some(with_exit(self.container.take(), exit));
                if exit.code == 0 {
                    UNHEALTHY.to_owned()
                } else {
                    format!("task: non-zero exit ({}): {UNHEALTHY}", exit.code)
                }
            }
            Ok(None) => UNHEALTHY.to_owned(),
            Err(e) => format!("{UNHEALTHY} (stopping it failed: {e})"),
        };
        self.advance(TaskState::Failed, "started", Some(err)).await
    }

    /// Reports how the container ended.
    async fn exited(&mut self, r: Result<ExitStatus, ExecError>) -> bool {
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
