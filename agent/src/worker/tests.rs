//! Worker tests on the fake executor: the task state machine, desired states, set
//! reconciliation, rejection, persistence and adoption after a restart.

use std::time::Duration;

use berth_proto::v1::{AssignmentChange, ContainerSpec, SecretReference, SecretSpec, TaskSpec};

use super::fake::{FakeExecutor, FakeState, SIGTERM_EXIT};
use super::*;

fn task(id: &str, image: &str, desired: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        node_id: "node1".into(),
        spec: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        desired_state: desired as i32,
        status: Some(TaskStatus {
            state: TaskState::Assigned as i32,
            message: "scheduler assigned task to node".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn update(t: Task) -> AssignmentChange {
    AssignmentChange {
        action: AssignmentAction::Update as i32,
        assignment: Some(Assignment::Task(t)),
    }
}

fn remove(id: &str) -> AssignmentChange {
    AssignmentChange {
        action: AssignmentAction::Remove as i32,
        assignment: Some(Assignment::Task(Task {
            id: id.into(),
            ..Default::default()
        })),
    }
}

fn msg(kind: AssignmentsType, changes: Vec<AssignmentChange>) -> AssignmentsMessage {
    AssignmentsMessage {
        r#type: kind as i32,
        changes,
        ..Default::default()
    }
}

struct Running {
    handle: WorkerHandle,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl Running {
    fn start(cfg: WorkerConfig, fake: &FakeExecutor) -> anyhow::Result<Running> {
        let worker = Worker::open(cfg, Arc::new(fake.clone()))?;
        let handle = worker.handle();
        let cancel = CancellationToken::new();
        let join = tokio::spawn(worker.run(cancel.clone()));
        Ok(Running {
            handle,
            cancel,
            join,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.join.await??;
        Ok(())
    }
}

/// Polls the worker until `id`'s observed state is `state`; returns the task.
async fn wait_state(handle: &WorkerHandle, id: &str, state: TaskState) -> anyhow::Result<Task> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = handle.tasks().await?;
        let found = tasks.iter().find(|t| t.id == id);
        if let Some(t) = found
            && t.status.as_ref().map(|s| s.state) == Some(state as i32)
        {
            return Ok(t.clone());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("task {id} never reached {state:?}; worker has {tasks:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_gone(handle: &WorkerHandle, id: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.tasks().await?.iter().any(|t| t.id == id) {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("task {id} was never forgotten");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The statuses queued for the managers, by task.
fn drain(handle: &WorkerHandle) -> HashMap<String, TaskStatus> {
    handle
        .reporter()
        .take(usize::MAX)
        .into_iter()
        .filter_map(|u| u.status.map(|s| (u.task_id, s)))
        .collect()
}

#[tokio::test]
async fn a_task_goes_through_its_states_and_reports_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = FakeExecutor::new();
    let w = Running::start(WorkerConfig::new(dir.path()), &fake)?;

    // Desired READY: prepared, not started.
    let t1 = task("t1", "busybox", TaskState::Ready);
    w.handle
        .assign(msg(AssignmentsType::Complete, vec![update(t1.clone())]))
        .await?;
    wait_state(&w.handle, "t1", TaskState::Ready).await?;
    assert_eq!(fake.calls("t1"), vec!["prepare"]);
    assert_eq!(fake.state("t1"), Some(FakeState::Created));
    let sent = drain(&w.handle);
    assert_eq!(sent["t1"].state, TaskState::Ready as i32);
    assert_eq!(sent["t1"].message, "prepared");

    // Desired RUNNING: started, RUNNING with the container's pid.
    let mut t1_run = t1.clone();
    t1_run.desired_state = TaskState::Running as i32;
    w.handle
        .assign(msg(
            AssignmentsType::Incremental,
            vec![update(t1_run.clone())],
        ))
        .await?;
    let running = wait_state(&w.handle, "t1", TaskState::Running).await?;
    let cs = running
        .status
        .and_then(|s| s.container_status)
        .unwrap_or_default();
    assert!(cs.pid > 0, "{cs:?}");
    assert_eq!(cs.container_id, "t1");
    let sent = drain(&w.handle);
    assert_eq!(sent["t1"].state, TaskState::Running as i32);

    // The container exits 0: COMPLETE with the exit code, persisted durably.
    assert!(fake.exit("t1", 0));
    let done = wait_state(&w.handle, "t1", TaskState::Complete).await?;
    assert_eq!(done.status.clone().unwrap_or_default().message, "finished");
    assert_eq!(drain(&w.handle)["t1"].state, TaskState::Complete as i32);
    assert_eq!(fake.calls("t1"), vec!["prepare", "start", "wait"]);
    let (_, stored) = TaskDb::open(Some(&dir.path().join(TASK_DB_DIR)))?;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].status.clone().unwrap_or_default().state,
        TaskState::Complete as i32
    );

    // A stale manager copy (state ASSIGNED) does not move the observed state back.
    w.handle
        .assign(msg(AssignmentsType::Incremental, vec![update(t1_run)]))
        .await?;
    wait_state(&w.handle, "t1", TaskState::Complete).await?;

    // Removed from the set: the container is removed and the record forgotten.
    w.handle
        .assign(msg(AssignmentsType::Incremental, vec![remove("t1")]))
        .await?;
    wait_gone(&w.handle, "t1").await?;
    assert_eq!(fake.state("t1"), None);
    assert_eq!(fake.calls("t1").last(), Some(&"remove"));
    let (_, stored) = TaskDb::open(Some(&dir.path().join(TASK_DB_DIR)))?;
    assert!(stored.is_empty());
    w.stop().await
}

/// A stop-first update creates the new task desired READY and flips it to RUNNING once the
/// old task stopped, often while the new one is still being prepared. The prepare must run to
/// its end once: dropping it mid-way left the container creation running in the background
/// while a second attempt and the start raced it ("still being created").
#[tokio::test]
async fn a_desired_state_change_mid_prepare_does_not_restart_the_prepare() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = FakeExecutor::new().with_prepare_delay(std::time::Duration::from_millis(300));
    let w = Running::start(WorkerConfig::new(dir.path()), &fake)?;
    let t1 = task("t1", "busybox", TaskState::Ready);
    w.handle
        .assign(msg(AssignmentsType::Complete, vec![update(t1.clone())]))
        .await?;
    wait_state(&w.handle, "t1", TaskState::Preparing).await?;
    let mut run = t1.clone();
    run.desired_state = TaskState::Running as i32;
    w.handle
        .assign(msg(AssignmentsType::Incremental, vec![update(run)]))
        .await?;
    wait_state(&w.handle, "t1", TaskState::Running).await?;
    assert_eq!(fake.calls("t1"), vec!["prepare", "start", "wait"]);
    w.stop().await
}

#[tokio::test]
async fn a_failing_container_is_failed_with_its_exit_code() -> anyhow::Result<()> {
    let fake = FakeExecutor::new();
    let w = Running::start(WorkerConfig::in_memory(), &fake)?;
    w.handle
        .assign(msg(
            AssignmentsType::Complete,
            vec![update(task("t1", "busybox", TaskState::Running))],
        ))
        .await?;
    wait_state(&w.handle, "t1", TaskState::Running).await?;
    fake.exit("t1", 3);
    let failed = wait_state(&w.handle, "t1", TaskState::Failed).await?;
    let status = failed.status.unwrap_or_default();
    assert_eq!(status.err, "task: non-zero exit (3)");
    assert_eq!(status.container_status.unwrap_or_default().exit_code, 3);
    w.stop().await
}

#[tokio::test]
async fn desired_shutdown_stops_and_remove_deletes() -> anyhow::Result<()> {
    let fake = FakeExecutor::new();
    let w = Running::start(WorkerConfig::in_memory(), &fake)?;
    let t = task("t1", "busybox", TaskState::Running);
    w.handle
        .assign(msg(AssignmentsType::Complete, vec![update(t.clone())]))
        .await?;
    wait_state(&w.handle, "t1", TaskState::Running).await?;

    let mut stop = t.clone();
    stop.desired_state = TaskState::Shutdown as i32;
    w.handle
        .assign(msg(AssignmentsType::Incremental, vec![update(stop)]))
        .await?;
    let down = wait_state(&w.handle, "t1", TaskState::Shutdown).await?;
    let status = down.status.unwrap_or_default();
    assert_eq!(status.message, "shutdown");
    assert_eq!(
        status.container_status.unwrap_or_default().exit_code,
        SIGTERM_EXIT
    );
    // Stopped, not removed: the container stays for logs until the task goes away.
    assert!(matches!(fake.state("t1"), Some(FakeState::Exited(_))));

    let mut rm = t.clone();
    rm.desired_state = TaskState::Remove as i32;
    w.handle
        .assign(msg(AssignmentsType::Incremental, vec![update(rm)]))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fake.state("t1").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Still known (the managers keep the task until they delete it), state unchanged.
    wait_state(&w.handle, "t1", TaskState::Shutdown).await?;
    w.stop().await
}

#[tokio::test]
async fn a_complete_set_removes_tasks_it_does_not_list() -> anyhow::Result<()> {
    let fake = FakeExecutor::new();
    let w = Running::start(WorkerConfig::in_memory(), &fake)?;
    w.handle
        .assign(msg(
            AssignmentsType::Complete,
            vec![
                update(task("a", "busybox", TaskState::Running)),
                update(task("b", "busybox", TaskState::Running)),
            ],
        ))
        .await?;
    wait_state(&w.handle, "a", TaskState::Running).await?;
    wait_state(&w.handle, "b", TaskState::Running).await?;
    w.handle
        .assign(msg(
            AssignmentsType::Complete,
            vec![update(task("b", "busybox", TaskState::Running))],
        ))
        .await?;
    wait_gone(&w.handle, "a").await?;
    assert_eq!(fake.state("a"), None);
    assert_eq!(
        fake.calls("a"),
        vec!["prepare", "start", "wait", "shutdown", "remove"]
    );
    assert_eq!(fake.running(), vec!["b".to_string()]);
    w.stop().await
}

#[tokio::test]
async fn a_missing_image_rejects_the_task_with_the_reason() -> anyhow::Result<()> {
    let fake = FakeExecutor::with_images(["busybox"]);
    let w = Running::start(WorkerConfig::in_memory(), &fake)?;
    w.handle
        .assign(msg(
            AssignmentsType::Complete,
            vec![update(task("t1", "nginx:missing", TaskState::Running))],
        ))
        .await?;
    let rejected = wait_state(&w.handle, "t1", TaskState::Rejected).await?;
    let status = rejected.status.unwrap_or_default();
    assert_eq!(status.err, "No such image: nginx:missing");
    assert_eq!(drain(&w.handle)["t1"].state, TaskState::Rejected as i32);
    assert!(fake.calls("t1").iter().all(|c| *c != "start"));
    w.stop().await
}

#[tokio::test]
async fn secrets_reach_the_controller_of_the_task_that_uses_them() -> anyhow::Result<()> {
    let fake = FakeExecutor::new();
    let w = Running::start(WorkerConfig::in_memory(), &fake)?;
    let mut t = task("t1", "busybox", TaskState::Running);
    if let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) {
        c.secrets.push(SecretReference {
            secret_id: "s1".into(),
            secret_name: "pw".into(),
            target: None,
        });
    }
    let secret = Secret {
        id: "s1".into(),
        spec: Some(SecretSpec {
            data: b"hunter2".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    w.handle
        .assign(msg(
            AssignmentsType::Complete,
            vec![
                AssignmentChange {
                    action: AssignmentAction::Update as i32,
                    assignment: Some(Assignment::Secret(secret.clone())),
                },
                update(t),
            ],
        ))
        .await?;
    wait_state(&w.handle, "t1", TaskState::Running).await?;
    let deps = fake.dependencies("t1").unwrap_or_default();
    assert_eq!(deps.secrets, vec![secret]);
    w.stop().await
}

#[tokio::test]
async fn a_restarted_worker_adopts_running_tasks_and_reports_ended_ones() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = FakeExecutor::new();
    let w = Running::start(WorkerConfig::new(dir.path()), &fake)?;
    w.handle
        .assign(msg(
            AssignmentsType::Complete,
            vec![
                update(task("keep", "busybox", TaskState::Running)),
                update(task("ends", "busybox", TaskState::Running)),
            ],
        ))
        .await?;
    wait_state(&w.handle, "keep", TaskState::Running).await?;
    wait_state(&w.handle, "ends", TaskState::Running).await?;
    w.stop().await?;
    // The worker stopped; the containers did not.
    assert_eq!(fake.running(), vec!["ends".to_string(), "keep".to_string()]);

    // One container ends while berthd is down.
    fake.exit("ends", 7);

    let w = Running::start(WorkerConfig::new(dir.path()), &fake)?;
    let ended = wait_state(&w.handle, "ends", TaskState::Failed).await?;
    let status = ended.status.unwrap_or_default();
    assert_eq!(status.container_status.unwrap_or_default().exit_code, 7);
    assert_eq!(status.err, "task: non-zero exit (7)");
    wait_state(&w.handle, "keep", TaskState::Running).await?;
    // Adopted, not restarted: no second prepare or start.
    assert_eq!(
        fake.calls("keep"),
        vec!["prepare", "start", "wait", "adopt", "wait"]
    );
    // The ended task's status is queued for the managers right away.
    assert_eq!(drain(&w.handle)["ends"].state, TaskState::Failed as i32);
    // report_all re-sends the adopted running one too.
    w.handle.report_all().await?;
    let sent = drain(&w.handle);
    assert_eq!(sent["keep"].state, TaskState::Running as i32);
    assert_eq!(sent["ends"].state, TaskState::Failed as i32);

    // The adopted task is watched: its exit is noticed.
    fake.exit("keep", 0);
    wait_state(&w.handle, "keep", TaskState::Complete).await?;
    w.stop().await
}

#[test]
fn resume_table() {
    use TaskState::*;
    let exit = |code| {
        Observed::Exited(ExitStatus {
            code,
            oom_killed: false,
        })
    };
    let cases: Vec<(TaskState, Observed, TaskState, bool)> = vec![
        // (stored, observed, resumes in, reports a new status)
        (Accepted, Observed::Missing, Accepted, false),
        (Preparing, Observed::Missing, Preparing, false),
        (Preparing, Observed::Created, Ready, true),
        (Ready, Observed::Created, Ready, false),
        (Ready, Observed::Missing, Rejected, true),
        (Starting, Observed::Created, Starting, false),
        (Starting, Observed::Running { pid: 9 }, Starting, false),
        (Running, Observed::Running { pid: 9 }, Running, false),
        (Running, exit(0), Complete, true),
        (Running, exit(2), Failed, true),
        (Running, Observed::Missing, Failed, true),
        (Running, Observed::Created, Failed, true),
        (Complete, Observed::Missing, Complete, false),
        (Failed, Observed::Running { pid: 9 }, Failed, false),
        (Shutdown, exit(143), Shutdown, false),
    ];
    for (stored, observed, want, reports) in cases {
        let r = resume(stored, observed);
        assert_eq!(r.state, want, "{stored:?} + {observed:?}");
        assert_eq!(r.report.is_some(), reports, "{stored:?} + {observed:?}");
        assert!(stored.can_move_to(r.state), "{stored:?} went backwards");
    }
}
