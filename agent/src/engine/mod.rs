//! The local container engine behind `berth run/ps/logs/exec/stop/kill/rm/inspect` and
//! `berth image load/pull/ls/inspect/rm`: it owns the node's image store and container runtime
//! and answers the LocalNode container and image calls, one async method per RPC.
//!
//! ```text
//! <data-dir>/images/                 the image store (ImageStore)
//! <data-dir>/containers/<id>/        the runtime's state directory of each container
//! <data-dir>/containers/<id>.container   the engine's record (name, request, image; see record)
//! <data-dir>/tmp/                    archives being uploaded by `image load` (swept on open)
//! ```
//!
//! Containers are named like Docker's: a random 64-hex-digit id (12 shown), a unique name
//! (`--name`, or a random `adjective_surname`), and are found by full id, name, or unique id
//! prefix. The container's configuration is the image's with the request's overrides,
//! following Docker's rules (the runtime's plan applies them: env by key, `--entrypoint`
//! resets the image's cmd, the working directory is created).
//!
//! Each container has a watcher task that waits (on a pidfd, without a thread) for its
//! supervisor to exit, publishes the exit to waiters and log followers, and removes the
//! container if it was created with `auto_remove` (`--rm`). A restarted daemon re-reads the
//! records, adopts running containers and reports the exits of those that ended meanwhile.
//! A container with a health check (its request's or its image's `HEALTHCHECK`) is probed
//! while it runs by a monitor task (see `health`); inspect and list show its health.
//!
//! Invariants:
//! - a record is written before the runtime creates the container and removed after the
//!   runtime deleted it; `open` drops records without a container and containers without a
//!   record, so neither outlives a crash;
//! - creating a container (resolving its image and registering it) and removing an image
//!   are serialised by one gate, so an image in use is never deleted;
//! - blocking work (runtime calls, unpacking, file I/O) runs in `spawn_blocking`; no lock
//!   is held across an `.await`.

mod convert;
mod error;
mod exec;
mod health;
mod logs;
mod names;
mod pull;
mod record;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use berth_proto::v1::{
    self, ContainerCreateRequest, ContainerCreateResponse, ContainerExecMessage,
    ContainerExecRequest, ContainerInfo, ContainerInspectRequest, ContainerInspectResponse,
    ContainerKillRequest, ContainerKillResponse, ContainerListRequest, ContainerListResponse,
    ContainerLogsMessage, ContainerLogsRequest, ContainerRemoveRequest, ContainerRemoveResponse,
    ContainerStartRequest, ContainerStartResponse, ContainerStopRequest, ContainerStopResponse,
    ContainerWaitRequest, ContainerWaitResponse, ImageInspectRequest, ImageInspectResponse,
    ImageListRequest, ImageListResponse, ImageLoadChunk, ImageLoadResponse, ImageRemoveRequest,
    ImageRemoveResponse,
};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};

pub use convert::parse_rfc3339;
pub use error::EngineError;

use crate::image::{Image, ImageError, ImageId, ImageStore};
use crate::runtime::plan::{DEFAULT_LOG_MAX_FILES, parse_signal};
use crate::runtime::{
    ContainerPlan, ExecConfig, ExitInfo, HelperBinary, Runtime, RuntimeConfig, RuntimeError,
    Status, sys,
};

/// A stream of messages as tonic's server-streaming methods return it.
pub type MessageStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// How long auto-removal waits for log streams to read the end of the log.
const FOLLOWER_GRACE: Duration = Duration::from_secs(5);

/// How many exits of auto-removed containers are remembered for late waiters.
const REMEMBERED_EXITS: usize = 256;

/// Grace period of `stop` when neither the request nor the container sets one (Docker's).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Where the engine keeps its state and puts its containers.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The daemon's state directory (`/var/lib/berth`).
    pub data_dir: PathBuf,
    /// cgroup parent of the containers (`--cgroup-parent`).
    pub cgroup_parent: String,
    /// cgroup filesystem root (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Binary run as the runtime's setup helper and, forked, every container's supervisor:
    /// by default `berth-runtime` beside the daemon, else the daemon itself (see
    /// [`HelperBinary::preferred`]; either `main` calls `runtime::init::maybe_run_init` first).
    pub helper: HelperBinary,
    /// Registry pulls: trusted CAs, credentials, plain-HTTP registries, Docker Hub (read
    /// from the daemon's environment by [`EngineConfig::new`]; see [`crate::image::pull`]).
    pub pull: crate::image::pull::PullConfig,
}

impl EngineConfig {
    /// Production defaults for `data_dir` and `cgroup_parent`.
    pub fn new(data_dir: impl Into<PathBuf>, cgroup_parent: impl Into<String>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            cgroup_parent: cgroup_parent.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            helper: HelperBinary::preferred(),
            pull: crate::image::pull::PullConfig::from_env(),
        }
    }
}

/// The local container engine (see module docs). Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("containers", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

struct Inner {
    images: ImageStore,
    /// Pulls from registries into `images`.
    puller: crate::image::pull::Puller,
    runtime: Runtime,
    /// `<data-dir>/containers`: runtime state root and engine records.
    dir: PathBuf,
    /// `<data-dir>/tmp`: uploads.
    upload_dir: PathBuf,
    containers: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Exits of recently auto-removed containers (id, name, exit), newest last, so that a
    /// `ContainerWait` that arrives after the removal still gets the exit code.
    removed: Mutex<VecDeque<(String, String, ExitInfo)>>,
    /// Serialises container creation with image removal.
    gate: Mutex<()>,
    /// Health checks of the containers that have one.
    health: health::Slots,
}

/// One known container.
struct Entry {
    /// The record (fields fixed at creation).
    info: ContainerInfo,
    /// `Some` once the container has exited.
    exit: watch::Sender<Option<ExitInfo>>,
    /// `true` once the watcher is done: the exit is published and, for `auto_remove`
    /// containers, the removal was attempted (`berth run --rm` returns after it).
    settled: watch::Sender<bool>,
    /// A removal is under way.
    removing: AtomicBool,
    /// Log streams reading the container's log; auto-removal waits for them to finish
    /// (up to [`FOLLOWER_GRACE`]), so `berth run --rm` never loses the last output.
    followers: watch::Sender<usize>,
}

/// Counts a log stream in [`Entry::followers`] while it lives.
struct Follower(Arc<Entry>);

impl Follower {
    fn new(entry: Arc<Entry>) -> Follower {
        entry.followers.send_modify(|n| *n += 1);
        Follower(entry)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unknown_exit(why: &str) -> ExitInfo {
    ExitInfo {
        exit_code: 255,
        signal: None,
        oom_killed: false,
        finished: crate::runtime::logs::rfc3339_nanos(SystemTime::now()),
        error: Some(why.to_string()),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

static UPLOADS: AtomicU64 = AtomicU64::new(0);

/// Removes a file when dropped (uploads, also on error paths).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Engine {
    /// Opens the engine under `data_dir` with the given cgroup parent and production defaults.
    pub async fn open(
        data_dir: impl Into<PathBuf>,
        cgroup_parent: impl Into<String>,
    ) -> Result<Engine, EngineError> {
        Self::open_with(EngineConfig::new(data_dir, cgroup_parent)).await
    }

    /// Opens the engine: the image store, the runtime, and the containers a previous daemon
    /// left (adopting running ones, removing half-created ones).
    pub async fn open_with(cfg: EngineConfig) -> Result<Engine, EngineError> {
        let inner = tokio::task::spawn_blocking(move || Inner::open(cfg))
            .await
            .map_err(|e| EngineError::Internal(format!("opening the engine: {e}")))??;
        let engine = Engine {
            inner: Arc::new(inner),
        };
        let entries: Vec<Arc<Entry>> = lock(&engine.inner.containers).values().cloned().collect();
        for entry in entries {
            engine.spawn_watcher(Arc::clone(&entry));
            engine.start_health_monitor(entry).await;
        }
        Ok(engine)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| EngineError::Internal(format!("worker task failed: {e}")))?
    }

    fn spawn_watcher(&self, entry: Arc<Entry>) {
        let engine = self.clone();
        tokio::spawn(async move { engine.watch(entry).await });
    }

    /// Publishes the container's exit when it happens; removes it afterwards if asked to.
    async fn watch(&self, entry: Arc<Entry>) {
        let settled = entry.settled.clone();
        if entry.exit.borrow().is_none() {
            let exit = self.wait_exit(&entry.info.id).await;
            entry.exit.send_replace(Some(exit));
        }
        if entry.info.config.as_ref().is_some_and(|c| c.auto_remove) {
            let mut followers = entry.followers.subscribe();
            let _ = tokio::time::timeout(FOLLOWER_GRACE, followers.wait_for(|n| *n == 0)).await;
            let id = entry.info.id.clone();
            match self
                .blocking(move |inner| inner.remove(&entry, true, true))
                .await
            {
                Ok(()) => tracing::debug!(%id, "auto-removed container"),
                Err(EngineError::Conflict(_)) => {} // someone else is removing it
                Err(e) => tracing::warn!(%id, error = %error::chain(&e), "auto-remove failed"),
            }
        }
        settled.send_replace(true);
    }

    async fn wait_exit(&self, id: &str) -> ExitInfo {
        let state = {
            let id = id.to_string();
            self.blocking(move |inner| Ok(inner.runtime.state(&id)?))
                .await
        };
        let st = match state {
            Ok(st) => st,
            Err(_) => return unknown_exit("container was removed"),
        };
        if st.status == Status::Stopped {
            return st
                .exit
                .unwrap_or_else(|| unknown_exit("exit status unknown"));
        }
        match &st.record {
            Some(r) => wait_process(r.supervisor_pid, r.supervisor_start).await,
            None => return unknown_exit("container was never created completely"),
        }
        let id = id.to_string();
        match self
            .blocking(move |inner| Ok(inner.runtime.state(&id)?))
            .await
        {
            Ok(st) => st
                .exit
                .unwrap_or_else(|| unknown_exit("exit status unknown")),
            Err(_) => unknown_exit("container was removed"),
        }
    }

    // ---- images ---------------------------------------------------------------------------

    /// `ImageLoad`: stores the uploaded archive in the work area and imports it.
    pub async fn image_load<S>(&self, mut chunks: S) -> Result<ImageLoadResponse, EngineError>
    where
        S: Stream<Item = Result<ImageLoadChunk, tonic::Status>> + Unpin + Send,
    {
        let path = self.inner.upload_dir.join(format!(
            "load-{}-{}.tar",
            std::process::id(),
            UPLOADS.fetch_add(1, Ordering::Relaxed)
        ));
        let guard = RemoveOnDrop(path.clone());
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(EngineError::io(format!("creating {path:?}")))?;
        let mut received = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|s| {
                EngineError::InvalidArgument(format!(
                    "receiving the image archive: {}",
                    s.message()
                ))
            })?;
            received += chunk.data.len() as u64;
            file.write_all(&chunk.data)
                .await
                .map_err(EngineError::io(format!("writing {path:?}")))?;
        }
        file.flush()
            .await
            .map_err(EngineError::io(format!("writing {path:?}")))?;
        drop(file);
        if received == 0 {
            return Err(EngineError::InvalidArgument(
                "requested load from stdin, but stdin is empty".into(),
            ));
        }
        let images = self
            .blocking(move |inner| {
                let _guard = guard;
                let before: BTreeMap<String, ImageId> = inner
                    .images
                    .list()
                    .into_iter()
                    .flat_map(|i| i.repo_tags.into_iter().map(move |t| (t, i.id.clone())))
                    .collect();
                let mut images = inner.images.import(&path).map_err(|e| match e {
                    ImageError::UnknownFormat { .. } => EngineError::InvalidArgument(
                        "the archive is neither a docker save archive nor an OCI image \
                         layout tar"
                            .into(),
                    ),
                    other => other.into(),
                })?;
                // report the names this archive gave, not older names of the same image
                for image in &mut images {
                    let new: Vec<String> = image
                        .repo_tags
                        .iter()
                        .filter(|t| before.get(*t) != Some(&image.id))
                        .cloned()
                        .collect();
                    if !new.is_empty() {
                        image.repo_tags = new;
                    }
                }
                Ok(images)
            })
            .await?;
        Ok(ImageLoadResponse {
            images: images.iter().map(convert::image_info).collect(),
        })
    }

    /// `ImageList`: every image, newest first.
    pub async fn image_list(
        &self,
        _req: ImageListRequest,
    ) -> Result<ImageListResponse, EngineError> {
        let mut images = self.inner.images.list();
        images.sort_by(|a, b| {
            let key = |i: &Image| {
                i.created
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(|t| (t.seconds, t.nanos))
            };
            key(b).cmp(&key(a)).then_with(|| a.id.hex().cmp(b.id.hex()))
        });
        Ok(ImageListResponse {
            images: images.iter().map(convert::image_info).collect(),
        })
    }

    /// `ImageInspect`.
    pub async fn image_inspect(
        &self,
        req: ImageInspectRequest,
    ) -> Result<ImageInspectResponse, EngineError> {
        let image = self.inner.find_image(&req.image)?;
        Ok(ImageInspectResponse {
            image: Some(convert::image_info(&image)),
        })
    }

    /// `ImageRemove`: refused while a container uses the image.
    pub async fn image_remove(
        &self,
        req: ImageRemoveRequest,
    ) -> Result<ImageRemoveResponse, EngineError> {
        self.blocking(move |inner| inner.remove_image(&req.image, req.force))
            .await
    }

    // ---- containers -----------------------------------------------------------------------

    /// `ContainerCreate`: sets the container up; it waits for `ContainerStart`.
    pub async fn container_create(
        &self,
        req: ContainerCreateRequest,
    ) -> Result<ContainerCreateResponse, EngineError> {
        let cfg = req.config.unwrap_or_default();
        let name = match req.name.as_str() {
            "" => None,
            n => Some(names::validate_name(n).map_err(EngineError::InvalidArgument)?),
        };
        let entry = self.blocking(move |inner| inner.create(cfg, name)).await?;
        let id = entry.info.id.clone();
        self.spawn_watcher(entry);
        Ok(ContainerCreateResponse {
            id,
            warnings: Vec::new(),
        })
    }

    /// `ContainerStart`: a no-op for a running container.
    pub async fn container_start(
        &self,
        req: ContainerStartRequest,
    ) -> Result<ContainerStartResponse, EngineError> {
        let key = req.container.clone();
        self.blocking(move |inner| {
            let entry = inner.resolve(&req.container)?;
            let id = &entry.info.id;
            match inner.runtime.state(id)?.status {
                Status::Running => Ok(()),
                Status::Created => Ok(inner.runtime.start(id)?),
                Status::Stopped => Err(EngineError::Conflict(format!(
                    "container {} has exited; restarting a stopped container is not supported",
                    entry.info.name
                ))),
                Status::Creating => Err(EngineError::Conflict(format!(
                    "container {} is still being created",
                    entry.info.name
                ))),
            }
        })
        .await?;
        if let Ok(entry) = self.inner.resolve(&key) {
            self.start_health_monitor(entry).await;
        }
        Ok(ContainerStartResponse {})
    }

    /// `ContainerWait`: the exit of the container, once it has exited.
    pub async fn container_wait(
        &self,
        req: ContainerWaitRequest,
    ) -> Result<ContainerWaitResponse, EngineError> {
        let entry = match self.inner.resolve(&req.container) {
            Ok(e) => e,
            Err(EngineError::NoSuchContainer(key)) => {
                let removed = lock(&self.inner.removed);
                let (_, _, exit) = removed
                    .iter()
                    .rev()
                    .find(|(id, name, _)| *id == key || *name == key)
                    .ok_or(EngineError::NoSuchContainer(key.clone()))?;
                return Ok(ContainerWaitResponse {
                    exit_code: exit.exit_code,
                    oom_killed: exit.oom_killed,
                    error: exit.error.clone().unwrap_or_default(),
                });
            }
            Err(e) => return Err(e),
        };
        let mut rx = entry.exit.subscribe();
        let mut settled = entry.settled.subscribe();
        drop(entry);
        let waited = rx.wait_for(Option::is_some).await.map(|e| e.clone());
        let exit = match waited {
            Ok(e) => e,
            Err(_) => rx.borrow().clone(),
        }
        .unwrap_or_else(|| unknown_exit("container was removed"));
        let _ = settled.wait_for(|s| *s).await;
        Ok(ContainerWaitResponse {
            exit_code: exit.exit_code,
            oom_killed: exit.oom_killed,
            error: exit.error.unwrap_or_default(),
        })
    }

    /// `ContainerList`: running containers (all with `all`), newest first.
    pub async fn container_list(
        &self,
        req: ContainerListRequest,
    ) -> Result<ContainerListResponse, EngineError> {
        self.blocking(move |inner| {
            let entries: Vec<Arc<Entry>> = lock(&inner.containers).values().cloned().collect();
            let mut containers: Vec<ContainerInfo> = entries
                .iter()
                .map(|e| inner.live(e))
                .filter(|c| req.all || c.state == v1::ContainerState::Running as i32)
                .collect();
            containers.sort_by(|a, b| {
                let key = |c: &ContainerInfo| c.created.as_ref().map(|t| (t.seconds, t.nanos));
                key(b).cmp(&key(a)).then_with(|| a.id.cmp(&b.id))
            });
            Ok(ContainerListResponse { containers })
        })
        .await
    }

    /// `ContainerInspect`.
    pub async fn container_inspect(
        &self,
        req: ContainerInspectRequest,
    ) -> Result<ContainerInspectResponse, EngineError> {
        self.blocking(move |inner| {
            let entry = inner.resolve(&req.container)?;
            Ok(ContainerInspectResponse {
                container: Some(inner.live(&entry)),
            })
        })
        .await
    }

    /// `ContainerLogs`: the log so far (`tail`, `since`), then, with `follow`, new output
    /// until the container exits.
    pub async fn container_logs(
        &self,
        req: ContainerLogsRequest,
    ) -> Result<MessageStream<ContainerLogsMessage>, EngineError> {
        let entry = self.inner.resolve(&req.container)?;
        let query = logs::LogQuery {
            path: self.inner.runtime.log_path(&entry.info.id),
            max_files: DEFAULT_LOG_MAX_FILES,
            follow: req.follow,
            tail: req.tail.and_then(|t| usize::try_from(t).ok()),
            since: req.since,
        };
        let (tx, rx) = mpsc::channel(256);
        let exit = entry.exit.subscribe();
        let follower = Follower::new(entry);
        tokio::spawn(async move {
            logs::stream(query, exit, tx).await;
            drop(follower);
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// `ContainerStop`: stop signal, grace period, SIGKILL. A no-op unless it runs.
    pub async fn container_stop(
        &self,
        req: ContainerStopRequest,
    ) -> Result<ContainerStopResponse, EngineError> {
        self.blocking(move |inner| {
            let entry = inner.resolve(&req.container)?;
            let configured = entry.info.config.as_ref().and_then(|c| c.stop_grace_period);
            let grace = req
                .timeout
                .or(configured)
                .map(|d| {
                    Duration::new(
                        u64::try_from(d.seconds).unwrap_or(0),
                        u32::try_from(d.nanos).unwrap_or(0),
                    )
                })
                .unwrap_or(DEFAULT_STOP_GRACE);
            let id = &entry.info.id;
            if inner.runtime.state(id)?.status == Status::Running {
                inner.health.stopping(id);
                match inner.runtime.stop(id, grace) {
                    Ok(_) | Err(RuntimeError::InvalidState { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(ContainerStopResponse {})
        })
        .await
    }

    /// `ContainerKill`: sends a signal (SIGKILL by default) to a running container.
    pub async fn container_kill(
        &self,
        req: ContainerKillRequest,
    ) -> Result<ContainerKillResponse, EngineError> {
        let signal = match req.signal.as_str() {
            "" => libc::SIGKILL,
            s => parse_signal(s)
                .map_err(|_| EngineError::InvalidArgument(format!("Invalid signal: {s}")))?,
        };
        self.blocking(move |inner| {
            let entry = inner.resolve(&req.container)?;
            let id = &entry.info.id;
            let not_running = || {
                EngineError::Conflict(format!(
                    "cannot kill container: {}: container {id} is not running",
                    req.container
                ))
            };
            if inner.runtime.state(id)?.status != Status::Running {
                return Err(not_running());
            }
            match inner.runtime.kill(id, signal) {
                Ok(()) => Ok(ContainerKillResponse {}),
                Err(RuntimeError::InvalidState { .. }) => Err(not_running()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// `ContainerRemove`: refused for a running container unless `force`.
    pub async fn container_remove(
        &self,
        req: ContainerRemoveRequest,
    ) -> Result<ContainerRemoveResponse, EngineError> {
        self.blocking(move |inner| {
            let entry = inner.resolve(&req.container)?;
            inner.remove(&entry, req.force, false)
        })
        .await?;
        Ok(ContainerRemoveResponse {})
    }

    /// `ContainerExec`: runs a command in a running container; streams its output, then its
    /// exit code.
    pub async fn container_exec(
        &self,
        req: ContainerExecRequest,
    ) -> Result<MessageStream<ContainerExecMessage>, EngineError> {
        if req.cmd.is_empty() {
            return Err(EngineError::InvalidArgument(
                "no exec command specified".into(),
            ));
        }
        let process = self
            .blocking(move |inner| {
                let entry = inner.resolve(&req.container)?;
                let id = &entry.info.id;
                if inner.runtime.state(id)?.status != Status::Running {
                    return Err(EngineError::Conflict(format!(
                        "container {id} is not running"
                    )));
                }
                let cfg = ExecConfig {
                    args: req.cmd,
                    env: req.env,
                    cwd: non_empty(req.workdir),
                    user: non_empty(req.user),
                };
                Ok(inner.runtime.exec(id, &cfg)?)
            })
            .await?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(exec::stream(process, tx));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Waits until process `pid` (started at `start`) has exited, without holding a thread.
async fn wait_process(pid: i32, start: u64) {
    let Ok(fd) = sys::pidfd_open(pid) else {
        return; // already gone
    };
    if sys::process_start_time(Path::new("/proc"), pid).ok() != Some(start) {
        return; // the pid names another process now: ours is gone
    }
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and names the same
    // pidfd until the AsyncFd is dropped, and OwnedFd::as_raw_fd always returns it.
    let registered = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(e) => {
            tracing::warn!(pid, error = %e, "cannot poll a pidfd; polling /proc instead");
            while sys::process_start_time(Path::new("/proc"), pid).ok() == Some(start) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Inner {
    fn open(cfg: EngineConfig) -> Result<Inner, EngineError> {
        let dir = cfg.data_dir.join("containers");
        let upload_dir = cfg.data_dir.join("tmp");
        for d in [&dir, &upload_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(EngineError::io(format!("creating {d:?}")))?;
        }
        for entry in fs::read_dir(&upload_dir)
            .map_err(EngineError::io(format!("listing {upload_dir:?}")))?
            .flatten()
        {
            let _ = fs::remove_file(entry.path());
        }
        let images = ImageStore::open(&cfg.data_dir.join("images"))?;
        let runtime = Runtime::new(RuntimeConfig {
            state_root: dir.clone(),
            cgroup_root: cfg.cgroup_root,
            cgroup_parent: cfg.cgroup_parent,
            helper: cfg.helper,
        })?;
        let inner = Inner {
            puller: crate::image::pull::Puller::new(cfg.pull),
            images,
            runtime,
            dir,
            upload_dir,
            containers: Mutex::new(BTreeMap::new()),
            removed: Mutex::new(VecDeque::new()),
            gate: Mutex::new(()),
            health: health::Slots::default(),
        };
        inner.adopt()?;
        Ok(inner)
    }

    /// Re-reads the records of a previous daemon and reconciles them with the runtime.
    fn adopt(&self) -> Result<(), EngineError> {
        let records = record::read_all(&self.dir).map_err(EngineError::io(format!(
            "reading records in {:?}",
            self.dir
        )))?;
        let mut known = BTreeSet::new();
        let mut map = lock(&self.containers);
        for info in records {
            let id = info.id.clone();
            let exit = match self.runtime.state(&id) {
                Err(RuntimeError::NotFound(_)) => {
                    tracing::info!(%id, "dropping the record of a container that no longer exists");
                    let _ = record::remove(&self.dir, &id);
                    continue;
                }
                Ok(st) if st.status == Status::Creating => {
                    tracing::info!(%id, "removing a container whose creation was interrupted");
                    let _ = self.runtime.delete(&id, true);
                    let _ = record::remove(&self.dir, &id);
                    continue;
                }
                Ok(st) if st.status == Status::Stopped => st.exit,
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(%id, error = %error::chain(&e), "cannot read container state");
                    None
                }
            };
            known.insert(id.clone());
            self.health.register(&id, self.adopted_check(&info));
            let (tx, _) = watch::channel(exit);
            map.insert(
                id,
                Arc::new(Entry {
                    info,
                    exit: tx,
                    settled: watch::channel(false).0,
                    removing: AtomicBool::new(false),
                    followers: watch::channel(0).0,
                }),
            );
        }
        drop(map);
        if let Ok(states) = self.runtime.list() {
            for st in states {
                if !known.contains(&st.id) {
                    tracing::info!(id = %st.id, "removing a container without a record");
                    let _ = self.runtime.delete(&st.id, true);
                }
            }
        }
        Ok(())
    }

    /// Finds a container by full id, name, or unique id prefix (Docker's order).
    fn resolve(&self, key: &str) -> Result<Arc<Entry>, EngineError> {
        let map = lock(&self.containers);
        if key.is_empty() {
            return Err(EngineError::NoSuchContainer(key.to_string()));
        }
        if let Some(e) = map.get(key) {
            return Ok(Arc::clone(e));
        }
        let name = key.strip_prefix('/').unwrap_or(key);
        if let Some(e) = map.values().find(|e| e.info.name == name) {
            return Ok(Arc::clone(e));
        }
        let mut found = map
            .range(key.to_string()..)
            .take_while(|(id, _)| id.starts_with(key));
        match (found.next(), found.next()) {
            (Some((_, e)), None) => Ok(Arc::clone(e)),
            (None, _) => Err(EngineError::NoSuchContainer(key.to_string())),
            (Some(_), Some(_)) => Err(EngineError::Ambiguous(key.to_string())),
        }
    }

    fn find_image(&self, reference: &str) -> Result<Image, EngineError> {
        self.images.inspect(reference).map_err(|e| match e {
            ImageError::NotFound { .. } => EngineError::NoSuchImage(reference.to_string()),
            other => other.into(),
        })
    }

    fn create(
        &self,
        cfg: v1::ContainerConfig,
        name: Option<String>,
    ) -> Result<Arc<Entry>, EngineError> {
        if cfg.image.is_empty() {
            return Err(EngineError::InvalidArgument("no image specified".into()));
        }
        let (entry, plan) = {
            let _gate = lock(&self.gate);
            let image = self.find_image(&cfg.image)?;
            let layers: Vec<PathBuf> = image
                .layers
                .iter()
                .map(|l| self.images.layer_dir(&l.chain_id))
                .collect();
            let request = convert::container_config(&cfg, &image, layers.clone())?;
            let check = health::check_of(&cfg, &image.config)?;
            let top_first: Vec<PathBuf> = layers.into_iter().rev().collect();
            let passwd = read_image_file(&top_first, "etc/passwd");
            let group = read_image_file(&top_first, "etc/group");

            let mut map = lock(&self.containers);
            let taken = |n: &str| {
                map.values()
                    .find(|e| e.info.name == n)
                    .map(|e| e.info.id.clone())
            };
            let name = match name {
                Some(n) => {
                    if let Some(id) = taken(&n) {
                        return Err(EngineError::NameInUse { name: n, id });
                    }
                    n
                }
                None => {
                    let mut retry = 0;
                    loop {
                        let n = names::random_name(retry)
                            .map_err(EngineError::io("reading /dev/urandom"))?;
                        if taken(&n).is_none() {
                            break n;
                        }
                        retry += 1;
                    }
                }
            };
            let id = loop {
                let id =
                    names::new_container_id().map_err(EngineError::io("reading /dev/urandom"))?;
                if !map.contains_key(&id) {
                    break id;
                }
            };
            let plan = ContainerPlan::build(
                &id,
                &request,
                &self.runtime.plan_context(&id, passwd, group),
            )
            .map_err(RuntimeError::Plan)?;
            let info = ContainerInfo {
                id: id.clone(),
                name,
                image_id: image.id.to_string(),
                created: Some(convert::timestamp(SystemTime::now())),
                log_path: self.runtime.log_path(&id).display().to_string(),
                args: plan.process.args.clone(),
                env: plan.process.env.clone(),
                hostname: plan.hostname.clone(),
                working_dir: plan.process.cwd.clone(),
                user: request
                    .user
                    .clone()
                    .or_else(|| request.image.user.clone())
                    .unwrap_or_default(),
                stop_signal: request
                    .stop_signal
                    .clone()
                    .or_else(|| request.image.stop_signal.clone())
                    .unwrap_or_default(),
                config: Some(cfg),
                ..ContainerInfo::default()
            };
            record::write(&self.dir, &info)
                .map_err(EngineError::io(format!("writing the record of {id}")))?;
            self.health.register(&id, check);
            let (tx, _) = watch::channel(None);
            let entry = Arc::new(Entry {
                info,
                exit: tx,
                settled: watch::channel(false).0,
                removing: AtomicBool::new(false),
                followers: watch::channel(0).0,
            });
            map.insert(id, Arc::clone(&entry));
            (entry, plan)
        };
        match self.runtime.create(&plan) {
            Ok(_) => Ok(entry),
            Err(e) => {
                let id = &entry.info.id;
                let _ = record::remove(&self.dir, id);
                lock(&self.containers).remove(id);
                self.health.remove(id);
                Err(e.into())
            }
        }
    }

    /// The record plus the live state.
    fn live(&self, entry: &Entry) -> ContainerInfo {
        use v1::ContainerState as S;
        let mut info = entry.info.clone();
        match self.runtime.state(&info.id) {
            Ok(st) => {
                info.started_at = st.started.as_deref().and_then(parse_rfc3339);
                info.state = match st.status {
                    Status::Creating | Status::Created => S::Created,
                    Status::Running => {
                        info.pid = st.record.as_ref().map_or(0, |r| r.init_pid);
                        S::Running
                    }
                    Status::Stopped => {
                        if let Some(x) = &st.exit {
                            info.exit_code = x.exit_code;
                            info.oom_killed = x.oom_killed;
                            info.finished_at = parse_rfc3339(&x.finished);
                            info.error = x.error.clone().unwrap_or_default();
                        }
                        S::Exited
                    }
                } as i32;
            }
            Err(e) => {
                info.state = S::Dead as i32;
                info.error = error::chain(&e);
            }
        }
        if entry.removing.load(Ordering::SeqCst) {
            info.state = S::Removing as i32;
        }
        self.health.fill(&mut info);
        info
    }

    /// Removes the container; `remember` keeps its exit for late waiters (auto-remove).
    fn remove(&self, entry: &Entry, force: bool, remember: bool) -> Result<(), EngineError> {
        let id = &entry.info.id;
        if !force
            && let Ok(st) = self.runtime.state(id)
            && st.status == Status::Running
        {
            return Err(EngineError::Conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container \
                 before removing or force remove",
                entry.info.name
            )));
        }
        if entry.removing.swap(true, Ordering::SeqCst) {
            return Err(EngineError::Conflict(format!(
                "removal of container {} is already in progress",
                entry.info.name
            )));
        }
        self.health.stopping(id);
        match self.runtime.delete(id, true) {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => {
                entry.removing.store(false, Ordering::SeqCst);
                return Err(e.into());
            }
        }
        record::remove(&self.dir, id)
            .map_err(EngineError::io(format!("removing the record of {id}")))?;
        let exit = entry.exit.borrow().clone();
        if let (true, Some(exit)) = (remember, exit) {
            let mut removed = lock(&self.removed);
            if removed.len() >= REMEMBERED_EXITS {
                removed.pop_front();
            }
            removed.push_back((id.clone(), entry.info.name.clone(), exit));
        }
        lock(&self.containers).remove(id);
        self.health.remove(id);
        Ok(())
    }

    fn remove_image(
        &self,
        reference: &str,
        force: bool,
    ) -> Result<ImageRemoveResponse, EngineError> {
        let _gate = lock(&self.gate);
        let image = self.find_image(reference)?;
        let user: Mutex<Option<String>> = Mutex::new(None);
        let in_use = |img: &ImageId| {
            let wanted = img.to_string();
            let map = lock(&self.containers);
            match map.values().find(|e| e.info.image_id == wanted) {
                Some(e) => {
                    *lock(&user) = Some(e.info.id.clone());
                    true
                }
                None => false,
            }
        };
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let by_id = hex.len() >= 4 && image.id.hex().starts_with(hex);
        let mut response = ImageRemoveResponse::default();
        let result = if by_id && force && image.repo_tags.len() > 1 {
            // -f by id: untag every name; the last one deletes the image
            let mut last = Ok(Default::default());
            for name in &image.repo_tags {
                last = self.images.remove(name, &in_use);
                match &last {
                    Ok(r) => {
                        response.untagged.extend(r.untagged.iter().cloned());
                        response
                            .deleted
                            .extend(r.deleted.iter().map(ToString::to_string));
                    }
                    Err(_) => break,
                }
            }
            last.map(|_| Default::default())
        } else {
            self.images.remove(reference, &in_use)
        };
        match result {
            Ok(report) => {
                response.untagged.extend(report.untagged);
                response
                    .deleted
                    .extend(report.deleted.iter().map(ToString::to_string));
                Ok(response)
            }
            Err(ImageError::InUse { id, .. }) => {
                let cid = lock(&user).clone().unwrap_or_default();
                let running = self
                    .runtime
                    .state(&cid)
                    .is_ok_and(|s| s.status == Status::Running);
                Err(EngineError::Conflict(if by_id || force {
                    format!(
                        "conflict: unable to delete {} ({}) - image is being used by {} container {}",
                        short(id.hex()),
                        if running || force {
                            "cannot be forced"
                        } else {
                            "must be forced"
                        },
                        if running { "running" } else { "stopped" },
                        short(&cid)
                    )
                } else {
                    format!(
                        "conflict: unable to remove repository reference \"{reference}\" (must \
                         force) - container {} is using its referenced image {}",
                        short(&cid),
                        short(id.hex())
                    )
                }))
            }
            Err(ImageError::MultipleNames { id, .. }) => Err(EngineError::Conflict(format!(
                "conflict: unable to delete {} (must be forced) - image is referenced in \
                 multiple repositories",
                short(id.hex())
            ))),
            Err(ImageError::NotFound { .. }) => {
                Err(EngineError::NoSuchImage(reference.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Whether directory `dir` of a layer is an overlay opaque directory (hides lower layers).
fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 4];
    // SAFETY: `path` and the attribute name are NUL-terminated; `value` is a writable buffer
    // of the length passed; lgetxattr does not follow symlinks and writes at most that much.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

/// Reads a small regular file of the image (`etc/passwd`) from its layer directories, top
/// first, honouring whiteouts and opaque parents. Symlinks are not followed: `None`.
fn read_image_file(layers_top_first: &[PathBuf], rel: &str) -> Option<String> {
    const MAX: u64 = 4 << 20;
    let parent = Path::new(rel)
        .parent()
        .filter(|p| !p.as_os_str().is_empty());
    for layer in layers_top_first {
        let path = layer.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() <= MAX => return fs::read_to_string(&path).ok(),
            Ok(_) => return None, // a whiteout, a directory, a symlink or a huge file
            Err(_) => {}
        }
        if let Some(p) = parent {
            let dir = layer.join(p);
            match fs::symlink_metadata(&dir) {
                Ok(m) if !m.is_dir() => return None,
                Ok(_) if is_opaque(&dir) => return None,
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_files_are_read_top_first_and_whiteouts_hide_lower_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let (low, mid, top) = (
            tmp.path().join("0"),
            tmp.path().join("1"),
            tmp.path().join("2"),
        );
        for d in [&low, &mid, &top] {
            fs::create_dir_all(d.join("etc")).unwrap();
        }
        fs::write(low.join("etc/passwd"), "low\n").unwrap();
        let layers = vec![top.clone(), mid.clone(), low.clone()];
        assert_eq!(
            read_image_file(&layers, "etc/passwd").as_deref(),
            Some("low\n")
        );
        fs::write(mid.join("etc/passwd"), "mid\n").unwrap();
        assert_eq!(
            read_image_file(&layers, "etc/passwd").as_deref(),
            Some("mid\n")
        );
        std::os::unix::fs::symlink("/etc/shadow", top.join("etc/passwd")).unwrap();
        assert_eq!(
            read_image_file(&layers, "etc/passwd"),
            None,
            "symlinks are not followed"
        );
        fs::remove_file(top.join("etc/passwd")).unwrap();
        fs::remove_dir(top.join("etc")).unwrap();
        fs::write(top.join("etc"), "").unwrap();
        assert_eq!(
            read_image_file(&layers, "etc/passwd"),
            None,
            "a file hides etc/"
        );
        assert_eq!(read_image_file(&layers, "etc/group"), None);
    }
}
