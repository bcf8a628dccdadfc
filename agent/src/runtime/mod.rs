//! Native container runtime: plans, launches, supervises and tears down containers.
//!
//! ```text
//! daemon (multi-threaded)                      helper (sealed memfd copy, single-threaded)
//!  Runtime::create ── plan.json, cgroup ──▶ spawn "create" ──fork──▶ supervisor (setsid, outlives
//!                   ◀──── Created{pids} ─────────────────────────────   the daemon)
//!                                                                    │ clone(NEWPID|NEWNS|NEWUTS|
//!                                                                    ▼       NEWIPC|NEWNET)
//!                                                                  container PID 1: mounts,
//!  Runtime::start ── byte on start.fifo ─▶ supervisor ── "S" ──▶      pivot_root, caps, seccomp,
//!                 ◀─ "ok" on reply.fifo ──                            waits for "S", execve
//!  Runtime::wait/state ◀── exit.json written by the supervisor after reaping PID 1
//! ```
//!
//! Modules: [`plan`] (pure policy), [`container`] (inside the container), [`supervisor`],
//! [`exec`], [`init`] (helper entry), [`helper`] (daemon side of the helper), [`cgroups`],
//! [`seccomp`], [`caps`], [`logs`], [`state`] (on-disk layout), [`sys`] (raw kernel calls).
//!
//! Architecture invariants:
//! - the daemon never forks itself; all setup runs in the single-threaded helper, executed
//!   from a sealed memfd (CVE-2019-5736), non-dumpable, with every other fd closed;
//! - the overlay root and every container mount exist only in the container's mount
//!   namespace, so nothing is left mounted on the host when the container ends;
//! - the supervisor, not the daemon, is PID 1's parent: exit codes survive daemon restarts;
//! - teardown (`delete`) is idempotent and works from any partial state on disk.

pub mod caps;
pub mod cgroups;
pub mod container;
pub mod exec;
pub mod helper;
pub mod init;
pub mod logs;
pub mod oci;
pub mod plan;
pub mod seccomp;
pub mod state;
pub mod supervisor;
pub mod sys;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use exec::ExecConfig;
pub use helper::HelperBinary;
pub use plan::{ContainerConfig, ContainerPlan, PlanContext, PlanError};
pub use state::{ContainerRecord, ExitInfo};

use cgroups::{Cgroup, CgroupError, CgroupManager};
use helper::{CreateRequest, ExecRequest, HelperReply, HelperRequest};
use seccomp::{SeccompCache, SeccompError};
use state::files;

/// Errors of runtime operations.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The request is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// No such container.
    #[error("no such container: {0}")]
    NotFound(String),
    /// A container with this id exists.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// The operation does not fit the container's state.
    #[error("container {id} is {status:?}: cannot {op}")]
    InvalidState {
        /// Container id.
        id: String,
        /// Its state.
        status: Status,
        /// The refused operation.
        op: &'static str,
    },
    /// The helper reported a setup failure (its message is the cause).
    #[error("{0}")]
    Setup(String),
    /// Cgroup handling failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Building the seccomp profile failed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// An I/O step failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// Where the runtime keeps state and puts cgroups.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Directory of per-container state directories (e.g. `/var/lib/berth/containers`).
    pub state_root: PathBuf,
    /// cgroup filesystem root (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// cgroup parent under every hierarchy (default `berth`).
    pub cgroup_parent: String,
    /// Binary re-executed as the setup helper.
    pub helper: HelperBinary,
}

impl RuntimeConfig {
    /// Production defaults under `state_root`.
    pub fn new(state_root: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            state_root: state_root.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: plan::DEFAULT_CGROUP_PARENT.to_string(),
            helper: HelperBinary::CurrentExe,
        }
    }
}

/// Lifecycle state of a container, as read from its state directory and processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Being created, or creation crashed half-way (only `delete` applies).
    Creating,
    /// Set up and waiting for `start`.
    Created,
    /// The container process has exec'd and PID 1 is alive.
    Running,
    /// PID 1 has exited (or its supervisor is gone).
    Stopped,
}

/// A container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Lifecycle state.
    pub status: Status,
    /// Pids and start times, once created.
    pub record: Option<ContainerRecord>,
    /// When the process exec'd (RFC 3339).
    pub started: Option<String>,
    /// How it ended, once stopped.
    pub exit: Option<ExitInfo>,
    /// State directory.
    pub state_dir: PathBuf,
}

/// A process started with [`Runtime::exec`]: the helper child (its exit status is the
/// process's) with its stdout/stderr pipes.
pub struct ExecProcess {
    /// The helper (kill it to kill the process).
    pub child: Child,
    /// Host pid of the process inside the container.
    pub pid: i32,
}

/// Result of [`Runtime::exec_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (128 + signal when killed; 137 after a timeout).
    pub exit_code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// The timeout fired and the process was killed.
    pub timed_out: bool,
}

/// The container runtime (see module docs).
pub struct Runtime {
    cfg: RuntimeConfig,
    cgroups: CgroupManager,
    seccomp: SeccompCache,
}

impl Runtime {
    /// Opens the runtime: creates `state_root` and detects the cgroup layout.
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&cfg.state_root)
            .map_err(io_err(format!("creating {:?}", cfg.state_root)))?;
        let cgroups = CgroupManager::detect(&cfg.cgroup_root)?;
        Ok(Runtime {
            cfg,
            cgroups,
            seccomp: SeccompCache::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The cgroup manager (layout, parent cleanup).
    pub fn cgroups(&self) -> &CgroupManager {
        &self.cgroups
    }

    /// State directory of container `id`.
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_root.join(id)
    }

    /// The JSON log file of container `id`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        plan::log_path(&self.state_dir(id), id)
    }

    /// The context `ContainerPlan::build` needs for container `id` on this runtime.
    pub fn plan_context(
        &self,
        id: &str,
        etc_passwd: Option<String>,
        etc_group: Option<String>,
    ) -> PlanContext {
        PlanContext {
            state_dir: self.state_dir(id),
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            etc_passwd,
            etc_group,
        }
    }

    fn filters(&self, process: &plan::ProcessPlan) -> Result<Arc<Vec<Vec<u8>>>, RuntimeError> {
        if process.seccomp {
            Ok(self.seccomp.docker_default(process.caps.bounding)?)
        } else {
            Ok(Arc::new(Vec::new()))
        }
    }

    /// Creates the container described by `plan` (built with [`Runtime::plan_context`]).
    /// On success the container's PID 1 is set up and waits for [`Runtime::start`].
    pub fn create(&self, plan: &ContainerPlan) -> Result<ContainerState, RuntimeError> {
        self.create_with(plan, false)
    }

    /// Creates and starts the container in one step (one helper round trip, no start
    /// FIFO); errors from the exec itself are reported here.
    pub fn run(&self, plan: &ContainerPlan) -> Result<ContainerState, RuntimeError> {
        self.create_with(plan, true)
    }

    fn create_with(
        &self,
        plan: &ContainerPlan,
        start: bool,
    ) -> Result<ContainerState, RuntimeError> {
        plan::validate_id(&plan.id)?;
        let id = plan.id.as_str();
        let dir = self.state_dir(id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(id.to_string()));
            }
            Err(e) => return Err(io_err(format!("creating {dir:?}"))(e)),
        }
        match self.create_in(plan, &dir, start) {
            Ok(()) => self.state(id),
            Err(e) => {
                let _ = self.cleanup(id);
                Err(e)
            }
        }
    }

    fn create_in(&self, plan: &ContainerPlan, dir: &Path, start: bool) -> Result<(), RuntimeError> {
        if plan.rootfs.mode == plan::RootfsMode::Overlay {
            for sub in [&plan.rootfs.upper, &plan.rootfs.work, &plan.rootfs.target] {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(sub)
                    .map_err(io_err(format!("creating {sub:?}")))?;
            }
        }
        state::write_json(&dir.join(files::PLAN), plan).map_err(io_err("writing plan.json"))?;
        let cgroup = self
            .cgroups
            .create(&plan.cgroup.path, &plan.cgroup.limits)?;
        let seccomp = self.filters(&plan.process)?;
        let (stdout, stderr) = match plan.stdio {
            plan::StdioMode::Inherit => (Stdio::inherit(), Stdio::inherit()),
            plan::StdioMode::Log => {
                let log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(files::SUPERVISOR_LOG))
                    .map_err(io_err("opening supervisor.log"))?;
                (Stdio::null(), Stdio::from(log))
            }
        };
        let mut spawned = helper::spawn(&self.cfg.helper, "create", stdout, stderr)
            .map_err(io_err("starting the runtime helper"))?;
        let req = HelperRequest::Create(Box::new(CreateRequest {
            plan: plan.clone(),
            state_dir: dir.to_path_buf(),
            cgroup,
            seccomp: seccomp.as_ref().clone(),
            start,
        }));
        let sent = helper::send(&mut spawned.sock, &req);
        let reply: io::Result<HelperReply> = sent.and_then(|()| helper::recv(&mut spawned.sock));
        let _ = spawned.child.wait();
        match reply {
            Ok(HelperReply::Created { .. }) => Ok(()),
            Ok(HelperReply::Error { message }) => Err(RuntimeError::Setup(message)),
            Ok(other) => Err(RuntimeError::Setup(format!(
                "unexpected helper reply {other:?}"
            ))),
            Err(e) => {
                let log = fs::read_to_string(dir.join(files::SUPERVISOR_LOG)).unwrap_or_default();
                Err(RuntimeError::Setup(format!(
                    "runtime helper failed: {e}; {}",
                    log.trim()
                )))
            }
        }
    }

    fn record(&self, id: &str) -> Result<Option<ContainerRecord>, RuntimeError> {
        state::read_json(&self.state_dir(id).join(files::STATE))
            .map_err(io_err(format!("reading state of {id}")))
    }

    /// The plan container `id` was created from (`None` if it never got that far).
    pub fn plan(&self, id: &str) -> Result<Option<ContainerPlan>, RuntimeError> {
        state::read_json(&self.state_dir(id).join(files::PLAN))
            .map_err(io_err(format!("reading plan of {id}")))
    }

    /// The current state of container `id`.
    pub fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        plan::validate_id(id)?;
        let dir = self.state_dir(id);
        if !dir.is_dir() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let record = self.record(id)?;
        let exit: Option<ExitInfo> =
            state::read_json(&dir.join(files::EXIT)).map_err(io_err("reading exit.json"))?;
        let started = record
            .as_ref()
            .and_then(|r| r.started.clone())
            .or_else(|| fs::read_to_string(dir.join(files::STARTED)).ok());
        let status = match (&record, &exit) {
            (_, Some(_)) => Status::Stopped,
            (None, None) => Status::Creating,
            (Some(r), None) => {
                if !alive(r.supervisor_pid, r.supervisor_start) {
                    // re-read: the supervisor writes exit.json right before it exits
                    if dir.join(files::EXIT).exists() {
                        return self.state(id);
                    }
                    Status::Stopped
                } else if started.is_some() {
                    Status::Running
                } else {
                    Status::Created
                }
            }
        };
        let exit = match (status, exit, &record) {
            (Status::Stopped, None, Some(_)) => Some(ExitInfo {
                exit_code: 255,
                signal: None,
                oom_killed: false,
                finished: String::new(),
                error: Some("supervisor exited without recording the exit status".into()),
            }),
            (_, e, _) => e,
        };
        Ok(ContainerState {
            id: id.to_string(),
            status,
            record,
            started,
            exit,
            state_dir: dir,
        })
    }

    /// Every container under the state root.
    pub fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.cfg.state_root)
            .map_err(io_err(format!("listing {:?}", self.cfg.state_root)))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if plan::validate_id(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            match self.state(&name) {
                Ok(s) => out.push(s),
                Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Starts a created container: its PID 1 execs the configured process.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        let record = match (&st.status, &st.record) {
            (Status::Created, Some(r)) => r.clone(),
            (status, _) => {
                return Err(RuntimeError::InvalidState {
                    id: id.into(),
                    status: *status,
                    op: "start",
                });
            }
        };
        let dir = &st.state_dir;
        let mut reply = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(dir.join(files::REPLY_FIFO))
            .map_err(io_err("opening reply.fifo"))?;
        let mut trigger = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(dir.join(files::START_FIFO))
            .map_err(io_err("opening start.fifo (is the supervisor alive?)"))?;
        trigger
            .write_all(b"s")
            .map_err(io_err("writing start.fifo"))?;
        drop(trigger);
        let sup = open_pidfd(record.supervisor_pid, record.supervisor_start);
        let mut answer = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut fds = vec![libc::pollfd {
                fd: reply.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(p) = &sup {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            if left <= 0 {
                return Err(RuntimeError::Setup(format!("timed out starting {id}")));
            }
            // SAFETY: valid pollfd array for the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, left) };
            if r < 0 {
                continue;
            }
            if fds[0].revents != 0 {
                let mut chunk = [0u8; 4096];
                match reply.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&chunk[..n]);
                        if answer.ends_with(b"\n") {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io_err("reading reply.fifo")(e)),
                }
            } else if fds.len() > 1 && fds[1].revents != 0 {
                return Err(RuntimeError::Setup(format!(
                    "supervisor of {id} exited while starting"
                )));
            }
        }
        let text = String::from_utf8_lossy(&answer);
        match text.trim() {
            "ok" => Ok(()),
            other => Err(RuntimeError::Setup(
                other.strip_prefix("error: ").unwrap_or(other).to_string(),
            )),
        }
    }

    /// Waits until the container stops (at most `timeout`; `None` waits forever).
    /// Returns `None` if it is still running at the deadline.
    pub fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitInfo>, RuntimeError> {
        let st = self.state(id)?;
        if st.status == Status::Stopped {
            return Ok(st.exit);
        }
        let Some(r) = st.record else {
            return Err(RuntimeError::InvalidState {
                id: id.into(),
                status: st.status,
                op: "wait",
            });
        };
        if let Some(pidfd) = open_pidfd(r.supervisor_pid, r.supervisor_start) {
            let ms = timeout
                .map(|t| t.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(-1);
            let exited = sys::poll_readable(pidfd.as_fd(), ms).map_err(io_err("waiting"))?;
            if !exited {
                return Ok(None);
            }
        }
        let st = self.state(id)?;
        Ok(st.exit)
    }

    /// Sends `signal` to the container's PID 1.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        let r = match (&st.status, &st.record) {
            (Status::Created | Status::Running, Some(r)) => r,
            (status, _) => {
                return Err(RuntimeError::InvalidState {
                    id: id.into(),
                    status: *status,
                    op: "kill",
                });
            }
        };
        let pidfd =
            open_pidfd(r.init_pid, r.init_start).ok_or_else(|| RuntimeError::InvalidState {
                id: id.into(),
                status: Status::Stopped,
                op: "kill",
            })?;
        sys::pidfd_send_signal(pidfd.as_fd(), signal).map_err(io_err(format!("signalling {id}")))
    }

    /// Stops the container: its stop signal, up to `grace`, then SIGKILL. Returns how it
    /// ended. Stopping a stopped container just returns its exit.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<ExitInfo, RuntimeError> {
        let st = self.state(id)?;
        if st.status == Status::Stopped {
            return st.exit.ok_or_else(|| RuntimeError::NotFound(id.into()));
        }
        let sig = self
            .plan(id)?
            .map(|p| p.stop_signal)
            .unwrap_or(libc::SIGTERM);
        let signal_sent = if st.status == Status::Running {
            self.kill(id, sig)
        } else {
            Ok(())
        };
        match signal_sent {
            Ok(()) | Err(RuntimeError::InvalidState { .. }) => {}
            Err(e) => return Err(e),
        }
        let waited = if st.status == Status::Running {
            self.wait(id, Some(grace))?
        } else {
            None
        };
        if let Some(exit) = waited {
            return Ok(exit);
        }
        match self.kill(id, libc::SIGKILL) {
            Ok(()) | Err(RuntimeError::InvalidState { .. }) => {}
            Err(e) => return Err(e),
        }
        self.wait(id, Some(Duration::from_secs(30)))?
            .ok_or_else(|| RuntimeError::Setup(format!("{id} did not die after SIGKILL")))
    }

    /// Removes the container and everything it left: processes (with `force`), cgroup,
    /// upper/work directories, logs, state. Idempotent for partial state after a crash.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let st = self.state(id)?;
        if matches!(st.status, Status::Created | Status::Running) {
            if !force {
                return Err(RuntimeError::InvalidState {
                    id: id.into(),
                    status: st.status,
                    op: "delete (stop it first or force)",
                });
            }
            match self.kill(id, libc::SIGKILL) {
                Ok(()) | Err(RuntimeError::InvalidState { .. }) => {}
                Err(e) => return Err(e),
            }
            self.wait(id, Some(Duration::from_secs(30)))?;
        }
        self.cleanup(id)
    }

    fn cleanup(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = self.state_dir(id);
        let cgroup: Option<Cgroup> = match self.record(id).ok().flatten() {
            Some(r) => Some(r.cgroup),
            None => self
                .plan(id)
                .ok()
                .flatten()
                .map(|p| self.cgroups.handle(&p.cgroup.path)),
        };
        if let Some(cg) = cgroup {
            cg.kill_all()?;
            cg.remove()?;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {dir:?}"))(e)),
        }
    }

    /// Starts `cfg` inside running container `id`; stdout/stderr are pipes on the returned
    /// child, stdin is `/dev/null`.
    pub fn exec(&self, id: &str, cfg: &ExecConfig) -> Result<ExecProcess, RuntimeError> {
        let st = self.state(id)?;
        let record = match (&st.status, st.record) {
            (Status::Running, Some(r)) => r,
            (status, _) => {
                return Err(RuntimeError::InvalidState {
                    id: id.into(),
                    status: *status,
                    op: "exec",
                });
            }
        };
        let plan = self
            .plan(id)?
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if cfg.args.is_empty() {
            return Err(RuntimeError::Plan(PlanError::NoCommand));
        }
        let mut process = plan.process.clone();
        process.args = cfg.args.clone();
        process.init = false;
        let mut env = process.env.clone();
        for e in &cfg.env {
            let key = e
                .split_once('=')
                .map(|(k, _)| k)
                .ok_or_else(|| PlanError::InvalidEnv(e.clone()))?;
            env.retain(|x| x.split_once('=').map(|(k, _)| k) != Some(key));
            env.push(e.clone());
        }
        process.env = env;
        if let Some(cwd) = &cfg.cwd {
            process.cwd = cwd.clone();
        }
        let seccomp = self.filters(&process)?;
        let mut spawned = helper::spawn(&self.cfg.helper, "exec", Stdio::piped(), Stdio::piped())
            .map_err(io_err("starting the exec helper"))?;
        let req = HelperRequest::Exec(Box::new(ExecRequest {
            init_pid: record.init_pid,
            init_start: record.init_start,
            namespaces: plan.namespaces.clone(),
            process,
            user: cfg.user.clone(),
            cgroup: record.cgroup.clone(),
            seccomp: seccomp.as_ref().clone(),
        }));
        let reply =
            helper::send(&mut spawned.sock, &req).and_then(|()| helper::recv(&mut spawned.sock));
        match reply {
            Ok(HelperReply::ExecStarted { pid }) => Ok(ExecProcess {
                child: spawned.child,
                pid,
            }),
            Ok(HelperReply::Error { message }) => {
                let _ = spawned.child.wait();
                Err(RuntimeError::Setup(message))
            }
            Ok(other) => {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
                Err(RuntimeError::Setup(format!(
                    "unexpected helper reply {other:?}"
                )))
            }
            Err(e) => {
                let _ = spawned.child.kill();
                let _ = spawned.child.wait();
                Err(io_err("talking to the exec helper")(e))
            }
        }
    }

    /// Runs `cfg` in container `id` to completion (or `timeout`, then kills it) and
    /// captures its output — what health checks use.
    pub fn exec_output(
        &self,
        id: &str,
        cfg: &ExecConfig,
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut p = self.exec(id, cfg)?;
        let mut out = p.child.stdout.take();
        let mut err = p.child.stderr.take();
        let t_out = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut v);
            }
            v
        });
        let t_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut v);
            }
            v
        });
        let pidfd = sys::pidfd_open(p.child.id() as i32).map_err(io_err("pidfd_open"))?;
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let finished = sys::poll_readable(pidfd.as_fd(), ms).map_err(io_err("waiting for exec"))?;
        if !finished {
            let _ = p.child.kill();
        }
        let status = p.child.wait().map_err(io_err("waiting for exec"))?;
        let stdout = t_out.join().unwrap_or_default();
        let stderr = t_err.join().unwrap_or_default();
        let exit_code = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        };
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
            timed_out: !finished,
        })
    }
}

/// Whether process `pid` is alive and is the one that started at `start`.
fn alive(pid: i32, start: u64) -> bool {
    pid > 0
        && sys::process_start_time(Path::new("/proc"), pid).ok() == Some(start)
        && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A pidfd for `pid` if it still is the process that started at `start`.
fn open_pidfd(pid: i32, start: u64) -> Option<OwnedFd> {
    let fd = sys::pidfd_open(pid).ok()?;
    // checked after opening: if the start time matches now, the pidfd names that process
    (sys::process_start_time(Path::new("/proc"), pid).ok() == Some(start)).then_some(fd)
}

/// Reads a file that may be missing (`None`).
pub fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)?;
            Ok(Some(s))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
