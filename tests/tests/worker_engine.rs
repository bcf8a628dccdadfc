//! The worker on the real engine, as root: tasks assigned to a worker whose executor is
//! [`EngineExecutor`] run as real busybox containers (native runtime, `berth-runtime` as the
//! setup helper, the test image loaded into the engine's image store).
//!
//! Proves: a task runs and its exit code is reported (FAILED with the code, COMPLETE on 0);
//! desired SHUTDOWN stops a running container; leaving the set removes it; a missing image
//! rejects the task with Docker's message; a restarted worker on a reopened engine adopts a
//! running container and reports its end.
//!
//! Each test owns a data directory and a cgroup parent `berth-test-<pid>-<n>`; at the end it
//! proves no container, cgroup or process is left, and a panicking test still kills and
//! removes what it made (`Drop`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use berth_agent::engine::{Engine, EngineConfig};
use berth_agent::runtime::HelperBinary;
use berth_agent::worker::{EngineExecutor, Worker, WorkerConfig, WorkerHandle};
use berth_proto::v1::assignment_change::Assignment;
use berth_proto::v1::{
    Annotations, AssignmentAction, AssignmentChange, AssignmentsMessage, AssignmentsType,
    ContainerListRequest, ContainerSpec, ImageLoadChunk, Task, TaskSpec, TaskState, TaskStatus,
};
use berth_tests::bins;
use berth_tests::image::TestImage;
use tokio_util::sync::CancellationToken;

static N: AtomicU32 = AtomicU32::new(0);

const IMAGE: &str = "berth-test/worker-busybox:latest";

/// cgroup hierarchies the runtime may use on this machine.
const CGROUP_ROOTS: [&str; 10] = [
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/cpuacct",
    "/sys/fs/cgroup/pids",
    "/sys/fs/cgroup/cpuset",
    "/sys/fs/cgroup/blkio",
    "/sys/fs/cgroup/freezer",
    "/sys/fs/cgroup/devices",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

/// The test's directory and cgroup parent; kills and removes what is left when dropped.
struct Node {
    tmp: tempfile::TempDir,
    parent: String,
}

impl Node {
    fn new() -> anyhow::Result<Node> {
        anyhow::ensure!(
            nix::unistd::Uid::effective().is_root(),
            "this test runs containers and needs root"
        );
        Ok(Node {
            tmp: tempfile::Builder::new().prefix("berth-worker-").tempdir()?,
            parent: format!(
                "berth-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ),
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    async fn engine(&self) -> anyhow::Result<Engine> {
        let mut cfg = EngineConfig::new(self.data_dir(), self.parent.clone());
        cfg.helper = HelperBinary::Path(bins::binary("berth-runtime")?);
        Ok(Engine::open_with(cfg).await?)
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        CGROUP_ROOTS
            .iter()
            .map(|r| Path::new(r).join(&self.parent))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Pids of processes in the test's cgroups.
    fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cgroup = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if cgroup.contains(&self.parent) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Removes every container through the engine, then proves nothing is left.
    async fn finish(self, engine: &Engine) -> anyhow::Result<()> {
        let all = engine
            .container_list(ContainerListRequest { all: true })
            .await?;
        for c in all.containers {
            engine
                .container_remove(berth_proto::v1::ContainerRemoveRequest {
                    container: c.id,
                    force: true,
                })
                .await?;
        }
        let left = engine
            .container_list(ContainerListRequest { all: true })
            .await?;
        anyhow::ensure!(left.containers.is_empty(), "containers left: {left:?}");
        for dir in self.parent_dirs() {
            let children: Vec<PathBuf> = fs::read_dir(&dir)?
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect();
            anyhow::ensure!(children.is_empty(), "cgroups left: {children:?}");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.processes().is_empty() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "processes left: {:?}",
                self.processes()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        for dir in self.parent_dirs() {
            if let Ok(children) = fs::read_dir(&dir) {
                for c in children.flatten().filter(|e| e.path().is_dir()) {
                    let _ = fs::remove_dir(c.path());
                }
            }
            let _ = fs::remove_dir(dir);
        }
    }
}

async fn load_image(node: &Node, engine: &Engine) -> anyhow::Result<()> {
    let tar = node.tmp.path().join("image.tar");
    TestImage::busybox(IMAGE).write_docker_archive(&tar)?;
    let data = fs::read(&tar)?;
    let chunks = tokio_stream::iter(vec![Ok(ImageLoadChunk { data })]);
    engine.image_load(chunks).await?;
    Ok(())
}

fn task(id: &str, image: &str, args: &[&str], desired: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        node_id: "n1".into(),
        slot: 1,
        service_annotations: Some(Annotations {
            name: "web".into(),
            ..Default::default()
        }),
        desired_state: desired as i32,
        spec: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: image.into(),
                args: args.iter().map(|a| (*a).to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn msg(kind: AssignmentsType, changes: Vec<(Task, bool)>) -> AssignmentsMessage {
    AssignmentsMessage {
        r#type: kind as i32,
        changes: changes
            .into_iter()
            .map(|(t, remove)| AssignmentChange {
                action: if remove {
                    AssignmentAction::Remove
                } else {
                    AssignmentAction::Update
                } as i32,
                assignment: Some(Assignment::Task(t)),
            })
            .collect(),
        ..Default::default()
    }
}

struct RunningWorker {
    handle: WorkerHandle,
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<Result<(), berth_agent::worker::WorkerError>>,
}

impl RunningWorker {
    fn start(node: &Node, engine: &Engine) -> anyhow::Result<RunningWorker> {
        let worker = Worker::open(
            WorkerConfig::new(&node.tmp.path().join("agent")),
            Arc::new(EngineExecutor::new(engine.clone())),
        )?;
        let handle = worker.handle();
        let cancel = CancellationToken::new();
        let join = tokio::spawn(worker.run(cancel.clone()));
        Ok(RunningWorker {
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

    async fn wait_state(&self, id: &str, state: TaskState) -> anyhow::Result<TaskStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let tasks = self.handle.tasks().await?;
            let status = tasks
                .iter()
                .find(|t| t.id == id)
                .and_then(|t| t.status.clone())
                .unwrap_or_default();
            if status.state == state as i32 {
                return Ok(status);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "task {id} never reached {state:?}; it is {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_as_containers_and_report_exits_shutdowns_and_rejections() -> anyhow::Result<()> {
    let node = Node::new()?;
    let engine = node.engine().await?;
    load_image(&node, &engine).await?;
    let w = RunningWorker::start(&node, &engine)?;

    let fails = task("fails", IMAGE, &["sh", "-c", "exit 3"], TaskState::Running);
    let done = task("done", IMAGE, &["true"], TaskState::Running);
    let mut sleeper = task("sleeper", IMAGE, &["sleep", "300"], TaskState::Running);
    if let Some(c) = sleeper.spec.as_mut().and_then(|s| s.container.as_mut()) {
        c.stop_grace_period = Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        });
    }
    let missing = task("missing", "nope/missing:1", &["true"], TaskState::Running);
    w.handle
        .assign(msg(
            AssignmentsType::Complete,
            vec![
                (fails.clone(), false),
                (done.clone(), false),
                (sleeper.clone(), false),
                (missing.clone(), false),
            ],
        ))
        .await?;

    let failed = w.wait_state("fails", TaskState::Failed).await?;
    assert_eq!(failed.err, "task: non-zero exit (3)");
    assert_eq!(failed.container_status.map(|c| c.exit_code), Some(3));
    w.wait_state("done", TaskState::Complete).await?;
    let rejected = w.wait_state("missing", TaskState::Rejected).await?;
    assert_eq!(rejected.err, "No such image: nope/missing:1");
    let running = w.wait_state("sleeper", TaskState::Running).await?;
    let cs = running.container_status.context("container status")?;
    assert!(cs.pid > 0, "{cs:?}");
    assert_eq!(cs.container_id.len(), 64);

    // Desired SHUTDOWN: the container is stopped (SIGTERM; sleep as PID 1 ignores it, so
    // after the 1 s grace period set at creation comes SIGKILL) and the task is SHUTDOWN.
    let mut stop = sleeper.clone();
    stop.desired_state = TaskState::Shutdown as i32;
    w.handle
        .assign(msg(AssignmentsType::Incremental, vec![(stop, false)]))
        .await?;
    let down = w.wait_state("sleeper", TaskState::Shutdown).await?;
    let code = down.container_status.map(|c| c.exit_code);
    assert!(matches!(code, Some(137) | Some(143)), "{code:?}");

    // Leaving the set removes the containers.
    w.handle
        .assign(msg(AssignmentsType::Complete, vec![(done.clone(), false)]))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let names: Vec<String> = engine
            .container_list(ContainerListRequest { all: true })
            .await?
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect();
        if names == vec!["web.1.done".to_string()] {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "containers not removed: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await?;
    node.finish(&engine).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_adopts_a_running_container() -> anyhow::Result<()> {
    let node = Node::new()?;
    let engine = node.engine().await?;
    load_image(&node, &engine).await?;
    let w = RunningWorker::start(&node, &engine)?;
    let t = task("adoptee", IMAGE, &["sleep", "300"], TaskState::Running);
    w.handle
        .assign(msg(AssignmentsType::Complete, vec![(t, false)]))
        .await?;
    let before = w.wait_state("adoptee", TaskState::Running).await?;
    let pid = before.container_status.map(|c| c.pid).unwrap_or_default();
    assert!(pid > 0);
    // berthd stops: the worker goes, the engine is reopened (as after a restart), the
    // container keeps running.
    w.stop().await?;
    drop(engine);
    let engine = node.engine().await?;
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with the worker"
    );
    let w = RunningWorker::start(&node, &engine)?;
    let adopted = w.wait_state("adoptee", TaskState::Running).await?;
    assert_eq!(adopted.container_status.map(|c| c.pid), Some(pid));
    // The adopted container is watched: killing it is noticed and reported.
    engine
        .container_kill(berth_proto::v1::ContainerKillRequest {
            container: "web.1.adoptee".into(),
            signal: "SIGKILL".into(),
        })
        .await?;
    let failed = w.wait_state("adoptee", TaskState::Failed).await?;
    assert_eq!(failed.container_status.map(|c| c.exit_code), Some(137));
    w.stop().await?;
    node.finish(&engine).await
}
