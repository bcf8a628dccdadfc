//! Exec into a running container (used by `berth exec` and health checks).
//!
//! The helper (started from the sealed binary like `create`) verifies the container's PID 1
//! by pid + start time, opens its namespace files, moves itself into the container's cgroup,
//! joins ipc/uts/net/pid/mnt, resolves `-u` against the container's own `/etc/passwd`, and
//! forks the process (a fork is needed for the pid namespace to apply). The child takes the
//! container's security settings (bounding set, capabilities, seccomp, no_new_privs) and
//! execs; it dies with the helper (`PR_SET_PDEATHSIG`, set after the credential change that
//! would clear it). The helper forwards signals and exits with the process's status.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use super::container::{SetupError, setup_process, sync_recv, sync_send};
use super::helper::{ExecRequest, HelperReply, send};
use super::plan::{self, NetworkMode, ProcessPlan};
use super::supervisor::exit_code_of;
use super::sys;

/// What to run inside a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecConfig {
    /// argv (argv\[0\] resolved through the container's PATH).
    pub args: Vec<String>,
    /// Extra environment (`KEY=VALUE`), overriding the container's by key.
    pub env: Vec<String>,
    /// Working directory (default: the container's).
    pub cwd: Option<String>,
    /// `-u` (default: the container's user).
    pub user: Option<String>,
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn fail(step: impl Into<String>, source: io::Error) -> SetupError {
    SetupError {
        step: step.into(),
        source,
    }
}

/// Joins the container: cgroup, then every namespace (mount last).
fn enter(req: &ExecRequest) -> Result<(), SetupError> {
    let start = sys::process_start_time(Path::new("/proc"), req.init_pid)
        .map_err(|e| fail("container is not running", e))?;
    if start != req.init_start {
        return Err(fail(
            "container is not running",
            io::Error::from_raw_os_error(libc::ESRCH),
        ));
    }
    let ns_dir = PathBuf::from(format!("/proc/{}/ns", req.init_pid));
    let mut wanted: Vec<(&str, CloneFlags)> = Vec::new();
    if req.namespaces.ipc {
        wanted.push(("ipc", CloneFlags::CLONE_NEWIPC));
    }
    if req.namespaces.uts {
        wanted.push(("uts", CloneFlags::CLONE_NEWUTS));
    }
    if req.namespaces.net != NetworkMode::Host {
        wanted.push(("net", CloneFlags::CLONE_NEWNET));
    }
    if req.namespaces.pid {
        wanted.push(("pid", CloneFlags::CLONE_NEWPID));
    }
    if req.namespaces.mount {
        wanted.push(("mnt", CloneFlags::CLONE_NEWNS));
    }
    // open everything first, while /proc is still the host's
    let mut fds: Vec<(OwnedFd, CloneFlags, &str)> = Vec::new();
    for (name, flag) in wanted {
        let f =
            File::open(ns_dir.join(name)).map_err(|e| fail(format!("open {name} namespace"), e))?;
        fds.push((OwnedFd::from(f), flag, name));
    }
    // the pid may have been reused between the check and the opens
    if sys::process_start_time(Path::new("/proc"), req.init_pid).ok() != Some(req.init_start) {
        return Err(fail(
            "container is not running",
            io::Error::from_raw_os_error(libc::ESRCH),
        ));
    }
    req.cgroup
        .attach_self()
        .map_err(|e| fail("join cgroup", io::Error::other(e.to_string())))?;
    for (fd, flag, name) in fds {
        nix::sched::setns(fd.as_fd(), flag)
            .map_err(|e| fail(format!("join {name} namespace"), nix_io(e)))?;
    }
    Ok(())
}

/// Resolves `user` inside the (joined) container.
fn resolve_user(process: &mut ProcessPlan, user: Option<&str>) -> Result<(), SetupError> {
    let Some(user) = user else { return Ok(()) };
    let passwd = fs::read_to_string("/etc/passwd").ok();
    let group = fs::read_to_string("/etc/group").ok();
    let (u, _) = plan::resolve_user(Some(user), passwd.as_deref(), group.as_deref())
        .map_err(|e| fail(e.to_string(), io::Error::from_raw_os_error(libc::ENOENT)))?;
    if u.uid != 0 {
        process.caps.effective = super::caps::CapSet::EMPTY;
        process.caps.permitted = super::caps::CapSet::EMPTY;
    }
    process.user = u;
    Ok(())
}

/// Entry of the exec helper. Returns the exit code for the helper process.
pub(crate) fn run(req: ExecRequest, mut reply: UnixStream) -> i32 {
    let null = match File::open("/dev/null") {
        Ok(f) => f,
        Err(e) => {
            let _ = send(
                &mut reply,
                &HelperReply::Error {
                    message: format!("open /dev/null: {e}"),
                },
            );
            return 126;
        }
    };
    let mut process = req.process.clone();
    if let Err(e) = enter(&req).and_then(|()| resolve_user(&mut process, req.user.as_deref())) {
        let _ = send(
            &mut reply,
            &HelperReply::Error {
                message: e.to_string(),
            },
        );
        return 126;
    }
    let (sync_parent, sync_child) = match nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    ) {
        Ok(p) => p,
        Err(e) => {
            let _ = send(
                &mut reply,
                &HelperReply::Error {
                    message: format!("socketpair: {e}"),
                },
            );
            return 126;
        }
    };
    let forwarded = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ];
    let mut mask = SigSet::empty();
    for s in forwarded {
        mask.add(s);
    }
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None);
    // SAFETY: the helper is single-threaded, so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            let _ = send(
                &mut reply,
                &HelperReply::Error {
                    message: format!("fork: {e}"),
                },
            );
            126
        }
        Ok(ForkResult::Child) => {
            drop(sync_parent);
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let _ = nix::unistd::dup2_stdin(&null);
            drop(reply);
            let r = setup_process(&process, &req.seccomp).and_then(|exe| {
                sys::set_parent_death_signal(libc::SIGKILL)
                    .map_err(|e| fail("PR_SET_PDEATHSIG", e))?;
                // the helper holds the other end: if it already died, stop here
                if sys::poll_readable(sync_child.as_fd(), 0).unwrap_or(true) {
                    return Err(fail(
                        "exec helper exited",
                        io::Error::from_raw_os_error(libc::ESRCH),
                    ));
                }
                Ok(exe)
            });
            let e = match r {
                Ok(exe) => super::container::exec(&exe, &process),
                Err(e) => e,
            };
            let mut m = b"E".to_vec();
            m.extend_from_slice(e.to_string().as_bytes());
            sync_send(sync_child.as_fd(), &m);
            std::process::exit(127);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(sync_child);
            let msg = sync_recv(sync_parent.as_fd()).unwrap_or_default();
            if msg.first() == Some(&b'E') {
                let message = String::from_utf8_lossy(&msg[1..]).into_owned();
                let _ = send(&mut reply, &HelperReply::Error { message });
                let _ = waitpid(child, None);
                return 127;
            }
            let _ = send(
                &mut reply,
                &HelperReply::ExecStarted {
                    pid: child.as_raw(),
                },
            );
            drop(reply);
            wait_forwarding(child, &mask)
        }
    }
}

/// Forwards signals to `child` until it exits; returns its Docker-style exit code.
fn wait_forwarding(child: Pid, mask: &SigSet) -> i32 {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return exit_code_of(status).0,
            Err(_) => return 255,
        }
        match mask.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}
