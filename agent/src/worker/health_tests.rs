//! The task runner with a health check, on a scripted controller: RUNNING only once healthy,
//! FAILED and stopped once unhealthy (while starting or running), health carried in every
//! status, and no health at all without a check.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1::{ContainerStatus, HealthState, Task, TaskState, TaskStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::executor::{BoxFuture, Controller, ExecError, ExitStatus, HealthWatch};
use super::task::{Desired, Event, Runner};
use crate::health::Health;

/// A container whose health and exit the test sets.
struct Scripted {
    health: Option<watch::Sender<Health>>,
    exit: watch::Sender<Option<ExitStatus>>,
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl Controller for Scripted {
    fn prepare(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        self.calls.lock().unwrap().push("prepare");
        Box::pin(async { Ok(()) })
    }
    fn start(&self) -> BoxFuture<'_, Result<ContainerStatus, ExecError>> {
        self.calls.lock().unwrap().push("start");
        Box::pin(async {
            Ok(ContainerStatus {
                container_id: "c1".into(),
                pid: 42,
                ..Default::default()
            })
        })
    }
    fn wait(&self) -> BoxFuture<'_, Result<ExitStatus, ExecError>> {
        let mut rx = self.exit.subscribe();
        Box::pin(async move {
            let exit = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ExecError::Failed("gone".into()))?;
            Ok(exit.expect("waited for Some"))
        })
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<Option<ExitStatus>, ExecError>> {
        self.calls.lock().unwrap().push("shutdown");
        let exit = ExitStatus {
            code: 143,
            oom_killed: false,
        };
        self.exit.send_if_modified(|e| {
            if e.is_none() {
                *e = Some(exit);
                true
            } else {
                false
            }
        });
        let got = *self.exit.borrow();
        Box::pin(async move { Ok(got) })
    }
    fn remove(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async { Ok(()) })
    }
    fn health(&self) -> Option<HealthWatch> {
        self.health.as_ref().map(watch::Sender::subscribe)
    }
}

struct Harness {
    health: watch::Sender<Health>,
    exit: watch::Sender<Option<ExitStatus>>,
    calls: Arc<Mutex<Vec<&'static str>>>,
    desired: watch::Sender<Desired>,
    events: mpsc::Receiver<Event>,
    cancel: CancellationToken,
    task: Task,
}

fn task(desired: TaskState) -> Task {
    Task {
        id: "t1".into(),
        desired_state: desired as i32,
        ..Default::default()
    }
}

/// Starts a runner on a fresh task (from ASSIGNED); `checked` gives it a health check.
fn start(checked: bool) -> Harness {
    start_from(TaskState::Assigned, None, checked)
}

/// Starts a runner on a task resumed in `state` with `container` (as after a restart).
fn start_from(state: TaskState, container: Option<ContainerStatus>, checked: bool) -> Harness {
    let health = watch::channel(Health::starting()).0;
    let exit = watch::channel(None).0;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let t = task(TaskState::Running);
    let (desired, rx) = watch::channel(Desired {
        task: Arc::new(t.clone()),
        remove: false,
    });
    let (events_tx, events) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let runner = Runner {
        task_id: "t1".into(),
        controller: Box::new(Scripted {
            health: checked.then(|| health.clone()),
            exit: exit.clone(),
            calls: Arc::clone(&calls),
        }),
        desired: rx,
        events: events_tx,
        state,
        container,
        cancel: cancel.clone(),
        health: None,
        health_looked_up: false,
        health_state: HealthState::None,
    };
    tokio::spawn(runner.run());
    Harness {
        health,
        exit,
        calls,
        desired,
        events,
        cancel,
        task: t,
    }
}

impl Harness {
    /// The next status the runner reports.
    async fn next(&mut self) -> TaskStatus {
        let ev = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("a status within 5 s")
            .expect("the runner is alive");
        match ev {
            Event::Status { status, .. } => status,
            other => panic!("expected a status, got {other:?}"),
        }
    }

    /// Skips statuses up to and including `state`.
    async fn until(&mut self, state: TaskState) -> TaskStatus {
        loop {
            let s = self.next().await;
            if s.state == state as i32 {
                return s;
            }
        }
    }

    /// No status arrives within `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(ev)) = tokio::time::timeout(d, self.events.recv()).await {
            panic!("expected no status, got {ev:?}");
        }
    }

    fn set_health(&self, status: HealthState) {
        self.health.send_modify(|h| h.status = status);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[tokio::test]
async fn a_checked_task_is_starting_until_healthy_then_running() {
    let mut h = start(true);
    let starting = h.until(TaskState::Starting).await;
    assert_eq!(starting.health, HealthState::Starting as i32);
    // Probes that do not decide (still starting) report nothing.
    h.health.send_modify(|x| x.failing_streak = 1);
    h.quiet_for(Duration::from_millis(100)).await;
    assert_eq!(*h.calls.lock().unwrap(), ["prepare", "start"]);
    h.set_health(HealthState::Healthy);
    let running = h.next().await;
    assert_eq!(running.state, TaskState::Running as i32);
    assert_eq!(running.health, HealthState::Healthy as i32);
    assert_eq!(running.container_status.map(|c| c.pid), Some(42));
}

#[tokio::test]
async fn unhealthy_while_starting_stops_the_container_and_fails_the_task() {
    let mut h = start(true);
    h.until(TaskState::Starting).await;
    h.set_health(HealthState::Unhealthy);
    let failed = h.next().await;
    assert_eq!(failed.state, TaskState::Failed as i32);
    assert_eq!(failed.err, "task: non-zero exit (143): unhealthy container");
    assert_eq!(failed.health, HealthState::Unhealthy as i32);
    assert_eq!(failed.container_status.map(|c| c.exit_code), Some(143));
    assert!(h.calls.lock().unwrap().contains(&"shutdown"));
}

#[tokio::test]
async fn unhealthy_while_running_stops_the_container_and_fails_the_task() {
    let mut h = start(true);
    h.set_health(HealthState::Healthy);
    h.until(TaskState::Running).await;
    // Back to healthy after failures that did not reach `retries`: nothing to report.
    h.health.send_modify(|x| x.failing_streak = 2);
    h.quiet_for(Duration::from_millis(100)).await;
    h.set_health(HealthState::Unhealthy);
    let failed = h.next().await;
    assert_eq!(failed.state, TaskState::Failed as i32);
    assert_eq!(failed.err, "task: non-zero exit (143): unhealthy container");
    assert_eq!(failed.health, HealthState::Unhealthy as i32);
}

#[tokio::test]
async fn a_task_without_a_check_runs_at_once_with_no_health() {
    let mut h = start(false);
    let starting = h.until(TaskState::Starting).await;
    assert_eq!(starting.health, HealthState::None as i32);
    let running = h.next().await;
    assert_eq!(running.state, TaskState::Running as i32);
    assert_eq!(running.health, HealthState::None as i32);
    // Its (unused) health channel turning unhealthy changes nothing.
    h.set_health(HealthState::Unhealthy);
    h.quiet_for(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_container_that_exits_before_healthy_fails_with_its_code() {
    let mut h = start(true);
    h.until(TaskState::Starting).await;
    h.exit.send_replace(Some(ExitStatus {
        code: 3,
        oom_killed: false,
    }));
    let failed = h.next().await;
    assert_eq!(failed.state, TaskState::Failed as i32);
    assert_eq!(failed.err, "task: non-zero exit (3)");
    assert_eq!(failed.health, HealthState::Starting as i32);
}

#[tokio::test]
async fn shutdown_while_waiting_for_health_stops_the_task() {
    let mut h = start(true);
    h.until(TaskState::Starting).await;
    let mut t = h.task.clone();
    t.desired_state = TaskState::Shutdown as i32;
    h.desired.send_replace(Desired {
        task: Arc::new(t),
        remove: false,
    });
    let shutdown = h.next().await;
    assert_eq!(shutdown.state, TaskState::Shutdown as i32);
    assert_eq!(*h.calls.lock().unwrap(), ["prepare", "start", "shutdown"]);
}

#[tokio::test]
async fn a_desired_state_change_that_keeps_running_does_not_restart_the_container() {
    let mut h = start(true);
    h.until(TaskState::Starting).await;
    let mut t = h.task.clone();
    t.spec_version = 2;
    h.desired.send_replace(Desired {
        task: Arc::new(t),
        remove: false,
    });
    h.quiet_for(Duration::from_millis(100)).await;
    h.set_health(HealthState::Healthy);
    assert_eq!(h.next().await.state, TaskState::Running as i32);
    assert_eq!(*h.calls.lock().unwrap(), ["prepare", "start"]);
}

#[tokio::test]
async fn an_adopted_starting_task_waits_for_health_without_restarting_its_container() {
    let running = ContainerStatus {
        pid: 7,
        ..Default::default()
    };
    let mut h = start_from(TaskState::Starting, Some(running.clone()), true);
    h.quiet_for(Duration::from_millis(100)).await;
    h.set_health(HealthState::Healthy);
    let status = h.next().await;
    assert_eq!(status.state, TaskState::Running as i32);
    assert_eq!(status.health, HealthState::Healthy as i32);
    assert!(h.calls.lock().unwrap().is_empty(), "no start: it runs");

    let mut h = start_from(TaskState::Starting, Some(running), false);
    let status = h.next().await;
    assert_eq!(status.state, TaskState::Running as i32);
    assert_eq!(status.health, HealthState::None as i32);
    assert!(h.calls.lock().unwrap().is_empty(), "no start: it runs");
}
