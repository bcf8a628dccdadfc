//! Processes started inside a test host: [`HostProcess`] guards and the registry that lets a
//! [`TestNet`](super::TestNet) kill whatever its hosts still run when it is dropped.
//!
//! Signals go through a pidfd opened right after spawn (before anyone can reap the child), so a
//! signal can never hit an unrelated process that reused the pid. A guard kills and reaps its
//! process on drop; the net's registry only holds weak references, so it signals exactly the
//! guards that are still alive (for example leaked with `mem::forget`).

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use super::Host;

/// A pidfd: a file descriptor naming one process, immune to pid reuse.
#[derive(Debug)]
pub(crate) struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid`, which must be an unreaped child of this process.
    fn open(pid: u32) -> std::io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and a flags word and returns a new descriptor or -1;
        // it reads and writes no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the syscall just returned this descriptor to us; nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
    }

    /// Sends `signal` to the process (fails with ESRCH once it has been reaped).
    pub(crate) fn signal(&self, signal: Signal) -> std::io::Result<()> {
        // SAFETY: the descriptor is a live pidfd owned by self; a null siginfo is documented
        // as "behave like kill(2)", and flags must be 0.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; true once it has.
    fn wait_exit(&self, timeout: Duration) -> std::io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as u32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(0) if left.is_zero() => return Ok(false),
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Live processes started in one test net, held weakly.
#[derive(Debug, Default)]
pub(crate) struct Registry(Mutex<Vec<Weak<PidFd>>>);

impl Registry {
    fn add(&self, pidfd: &Arc<PidFd>) {
        let mut list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(pidfd));
    }

    /// SIGKILLs every process whose guard is still alive; returns how many were signalled.
    pub(crate) fn kill_all(&self) -> usize {
        let list = self.0.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter_map(Weak::upgrade)
            .filter(|fd| fd.signal(Signal::SIGKILL).is_ok())
            .count()
    }
}

/// Adjusts a [`Command`] before each (re)start; see [`Host::spawn_with`].
pub(crate) type Configure = Arc<dyn Fn(&mut Command) + Send + Sync>;

/// A process running inside a test host. Dropping it SIGKILLs and reaps the process.
///
/// The pid is the program itself (the host's namespace is entered between fork and exec), so
/// signals reach exactly it. Stdout and stderr go, unless the configure closure says otherwise,
/// to [`log_path`](Self::log_path), appended across restarts.
pub struct HostProcess {
    host: Host,
    label: String,
    program: OsString,
    configure: Configure,
    log_path: PathBuf,
    child: Child,
    pidfd: Arc<PidFd>,
    status: Option<ExitStatus>,
    starts: u32,
}

impl std::fmt::Debug for HostProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostProcess")
            .field("host", &self.host.name())
            .field("label", &self.label)
            .field("program", &self.program)
            .field("pid", &self.child.id())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl HostProcess {
    pub(crate) fn start(
        host: &Host,
        label: &str,
        program: &OsStr,
        configure: Configure,
    ) -> anyhow::Result<HostProcess> {
        let log_path = host.log_dir().join(format!("{}.{label}.log", host.name()));
        let (child, pidfd) = launch(host, program, &configure, &log_path, 1)?;
        tracing::info!(
            host = host.name(),
            label,
            pid = child.id(),
            "started {program:?}"
        );
        Ok(HostProcess {
            host: host.clone(),
            label: label.to_owned(),
            program: program.to_owned(),
            configure,
            log_path,
            child,
            pidfd,
            status: None,
            starts: 1,
        })
    }

    /// Pid of the current incarnation (the program itself, not a wrapper).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The host this process runs in.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// How many times it has been started (1 + restarts).
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// File collecting stdout and stderr (unless the configure closure redirected them).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log so far, lossily decoded; empty if there is none.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends `signal`. Fails if the process has already been reaped.
    pub fn kill(&mut self, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.status {
            bail!(
                "{} already exited ({status}); not sending {signal}",
                self.describe()
            );
        }
        self.pidfd
            .signal(signal)
            .with_context(|| format!("sending {signal} to {}", self.describe()))
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        // ESRCH cannot happen before we reap; any other failure shows up in wait() below.
        let _ = self.pidfd.signal(Signal::SIGKILL);
        self.wait()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; returns its exit status.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.kill(Signal::SIGTERM)?;
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.kill9(),
        }
    }

    /// Blocks until the process exits and reaps it.
    pub fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .with_context(|| format!("waiting for {}", self.describe()))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Reaps the process if it has exited, without blocking.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("polling {}", self.describe()))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let exited = self
            .pidfd
            .wait_exit(timeout)
            .with_context(|| format!("waiting for {}", self.describe()))?;
        if exited {
            self.wait().map(Some)
        } else {
            Ok(None)
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        Ok(self.try_wait()?.is_none())
    }

    /// Starts the same command again in the same host, SIGKILLing the current incarnation
    /// first if it is still running (a crash-restart; use [`stop`](Self::stop) first for a
    /// graceful one).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        let starts = self.starts + 1;
        let (child, pidfd) = launch(
            &self.host,
            &self.program,
            &self.configure,
            &self.log_path,
            starts,
        )?;
        tracing::info!(
            host = self.host.name(),
            label = self.label,
            pid = child.id(),
            starts,
            "restarted {:?}",
            self.program
        );
        self.child = child;
        self.pidfd = pidfd;
        self.status = None;
        self.starts = starts;
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "{} {:?} (pid {}) on {}",
            self.label,
            self.program,
            self.child.id(),
            self.host.name()
        )
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Err(e) = self.kill9() {
            tracing::warn!("dropping {}: {e:#}", self.describe());
        }
    }
}

/// Spawns one incarnation: host command, stdio to the log, the caller's adjustments, then
/// registration with the net so that dropping the net kills it.
fn launch(
    host: &Host,
    program: &OsStr,
    configure: &Configure,
    log_path: &Path,
    start: u32,
) -> anyhow::Result<(Child, Arc<PidFd>)> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening log {log_path:?}"))?;
    writeln!(
        log,
        "--- start {start} of {program:?} on {} ---",
        host.name()
    )
    .with_context(|| format!("writing {log_path:?}"))?;
    let log_err = log
        .try_clone()
        .with_context(|| format!("duplicating {log_path:?}"))?;
    let mut cmd = host.command(program)?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
    configure(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {program:?} in {}", host.name()))?;
    let pidfd = match PidFd::open(child.id()) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("pidfd_open of a fresh child");
        }
    };
    host.registry().add(&pidfd);
    Ok((child, pidfd))
}
