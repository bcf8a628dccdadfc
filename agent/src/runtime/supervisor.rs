//! The per-container supervisor: a small, single-threaded process that outlives the daemon.
//!
//! It is the parent of the container's PID 1, so it — not the daemon — receives the exit
//! status, and a daemon restart loses nothing. It clones PID 1 into the new namespaces,
//! attaches it to the cgroup before any container code runs, relays `start` (a byte on
//! `start.fifo`, answered on `reply.fifo`), copies stdout/stderr into the JSON log, and
//! when PID 1 is reaped writes `exit.json` (exit code, signal, OOM kill) and exits.
//!
//! Its only I/O with the daemon after creation is through the state directory, so any
//! process (the daemon after a restart, the `berth-runtime` CLI) can drive it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{SigHandler, Signal};
use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::container::{self, sync_recv, sync_send};
use super::helper::{CreateRequest, HelperReply, send};
use super::logs::{LogWriter, Stream, rfc3339_nanos};
use super::plan::{NetworkMode, StdioMode};
use super::state::{ContainerRecord, ExitInfo, files, write_json};
use super::sys::{self, Cloned};

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn now() -> String {
    rfc3339_nanos(SystemTime::now())
}

fn ignore(sig: Signal) {
    // SAFETY: installing SIG_IGN is always sound (no handler code runs).
    let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
}

/// Exit code Docker reports for a wait status.
pub fn exit_code_of(status: WaitStatus) -> (i32, Option<i32>) {
    match status {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    }
}

/// Entry of the supervisor (already forked off the first helper and `setsid`'d).
/// `reply` is the daemon's socket; it is answered exactly once and then closed.
pub(crate) fn run(req: CreateRequest, mut reply: UnixStream) -> i32 {
    ignore(Signal::SIGPIPE);
    ignore(Signal::SIGHUP);
    ignore(Signal::SIGINT);
    match prepare(&req).and_then(|(child, io)| start_now(&req, child, io)) {
        Ok((child, io, started)) => {
            let record = ContainerRecord {
                id: req.plan.id.clone(),
                supervisor_pid: std::process::id() as i32,
                supervisor_start: sys::process_start_time(
                    Path::new("/proc"),
                    std::process::id() as i32,
                )
                .unwrap_or(0),
                init_pid: child.pid,
                init_start: sys::process_start_time(Path::new("/proc"), child.pid).unwrap_or(0),
                created: now(),
                started,
                cgroup: req.cgroup.clone(),
            };
            if let Err(e) = write_json(&req.state_dir.join(files::STATE), &record) {
                let _ = send(
                    &mut reply,
                    &HelperReply::Error {
                        message: format!("writing state: {e}"),
                    },
                );
                kill_and_reap(&child);
                return 1;
            }
            let _ = send(
                &mut reply,
                &HelperReply::Created {
                    supervisor_pid: record.supervisor_pid,
                    init_pid: child.pid,
                },
            );
            drop(reply);
            // fd 0 was the reply socket: keep 0 pointing at something harmless
            if let Ok(null) = File::open("/dev/null") {
                let _ = nix::unistd::dup2_stdin(&null);
            }
            sys::release_free_heap();
            supervise(&req, child, io)
        }
        Err(message) => {
            let _ = send(&mut reply, &HelperReply::Error { message });
            1
        }
    }
}

/// The cloned container init, from the supervisor's side.
struct Child {
    pid: i32,
    pidfd: OwnedFd,
    sync: OwnedFd,
    /// The sync socket still has a peer (false once the process exec'd).
    sync_open: bool,
}

/// The supervisor's ends of the container's output and start channel.
struct Io {
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// `None` when the container was started right away (no `start` to wait for).
    start_fifo: Option<File>,
}

/// With `req.start`, releases PID 1 now and waits for its exec; returns when it started.
fn start_now(
    req: &CreateRequest,
    mut child: Child,
    io: Io,
) -> Result<(Child, Io, Option<String>), String> {
    if !req.start {
        return Ok((child, io, None));
    }
    sync_send(child.sync.as_fd(), b"S");
    let msg = sync_recv(child.sync.as_fd());
    match msg {
        Ok(m) if m.is_empty() => {
            // exec closed the close-on-exec socket: the process runs
            child.sync_open = false;
            Ok((child, io, Some(now())))
        }
        Ok(m) => {
            kill_and_reap(&child);
            Err(String::from_utf8_lossy(m.get(1..).unwrap_or_default()).into_owned())
        }
        Err(e) => {
            kill_and_reap(&child);
            Err(format!("waiting for the container to exec: {e}"))
        }
    }
}

fn kill_and_reap(child: &Child) {
    let _ = sys::pidfd_send_signal(child.pidfd.as_fd(), libc::SIGKILL);
    let _ = waitpid(Pid::from_raw(child.pid), None);
}

fn mkfifo(path: &Path) -> io::Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(nix_io(e)),
    }
}

/// Clones the container init and waits until it has joined its cgroup, set itself up and
/// is ready to exec.
fn prepare(req: &CreateRequest) -> Result<(Child, Io), String> {
    let plan = &req.plan;
    let e = |what: &str, err: io::Error| format!("{what}: {err}");
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|x| e("open /dev/null", x))?;
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|x| e("pipe", nix_io(x)))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|x| e("pipe", nix_io(x)))?;
    let (sync_parent, sync_child) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|x| e("socketpair", nix_io(x)))?;
    let netns = match &plan.namespaces.net {
        NetworkMode::Join(p) => {
            Some(OwnedFd::from(File::open(p).map_err(|x| {
                e(&format!("open network namespace {p:?}"), x)
            })?))
        }
        _ => None,
    };
    let start_fifo = if req.start {
        None
    } else {
        let start_path = req.state_dir.join(files::START_FIFO);
        mkfifo(&start_path).map_err(|x| e("mkfifo start", x))?;
        mkfifo(&req.state_dir.join(files::REPLY_FIFO)).map_err(|x| e("mkfifo reply", x))?;
        Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&start_path)
                .map_err(|x| e("open start fifo", x))?,
        )
    };

    let mut flags =
        libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if plan.namespaces.net == NetworkMode::New {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: the supervisor is single-threaded (it was forked from the single-threaded
    // helper); the child never returns from `init_main`.
    match unsafe { sys::clone_process(flags) } {
        Err(x) => Err(e("clone container init", x)),
        Ok(Cloned::Child) => {
            drop((out_r, err_r, sync_parent, start_fifo));
            // stdin /dev/null, stdout/stderr the log pipes; this also drops the copy of the
            // daemon socket that sits on fd 0.
            let _ = nix::unistd::dup2_stdin(&null);
            if plan.stdio == StdioMode::Log {
                let _ = nix::unistd::dup2_stdout(&out_w);
                let _ = nix::unistd::dup2_stderr(&err_w);
            }
            drop((out_w, err_w, null));
            container::init_main(plan, &req.cgroup, &req.seccomp, sync_child, netns)
        }
        Ok(Cloned::Parent { pid, pidfd }) => {
            drop((out_w, err_w, sync_child, netns));
            let child = Child {
                pid,
                pidfd,
                sync: sync_parent,
                sync_open: true,
            };
            // PID 1 joins its cgroup itself, first thing (Cgroup::attach_self)
            match sync_recv(child.sync.as_fd()) {
                Ok(m) if m == b"R" => Ok((
                    child,
                    Io {
                        stdout: out_r,
                        stderr: err_r,
                        start_fifo,
                    },
                )),
                Ok(m) if m.first() == Some(&b'E') => {
                    kill_and_reap(&child);
                    Err(String::from_utf8_lossy(&m[1..]).into_owned())
                }
                Ok(_) => {
                    kill_and_reap(&child);
                    Err("container init exited during setup".into())
                }
                Err(x) => {
                    kill_and_reap(&child);
                    Err(e("waiting for container init", x))
                }
            }
        }
    }
}

/// Answers a `start` request on `reply.fifo` (if anyone is listening).
fn answer_start(state_dir: &Path, result: &Result<(), String>) {
    let path = state_dir.join(files::REPLY_FIFO);
    let Ok(mut f) = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
    else {
        return;
    };
    let msg = match result {
        Ok(()) => "ok\n".to_string(),
        Err(m) => format!("error: {m}\n"),
    };
    let _ = f.write_all(msg.as_bytes());
}

fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(n),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(nix_io(e)),
        }
    }
}

/// The supervision loop: start relay, log copy, reaping, exit record.
fn supervise(req: &CreateRequest, child: Child, io: Io) -> i32 {
    let state_dir = &req.state_dir;
    let log_plan = &req.plan.log;
    let mut log = match req.plan.stdio {
        StdioMode::Log => {
            LogWriter::open(&log_plan.path, log_plan.max_size, log_plan.max_files).ok()
        }
        StdioMode::Inherit => None,
    };
    let mut out = Some(io.stdout);
    let mut err = Some(io.stderr);
    let mut started = !child.sync_open;
    let mut start_requested = started;
    let mut sync = child.sync_open.then_some(child.sync);
    let mut start_error: Option<String> = None;
    let mut buf = vec![0u8; 32 * 1024];
    let status;
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(5);
        let mut push = |fd: RawFdOpt| {
            if let Some(fd) = fd {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        };
        push(Some(child.pidfd.as_raw_fd()));
        push(io.start_fifo.as_ref().map(|f| f.as_raw_fd()));
        push(if start_requested {
            sync.as_ref().map(|s| s.as_raw_fd())
        } else {
            None
        });
        push(out.as_ref().map(|f| f.as_raw_fd()));
        push(err.as_ref().map(|f| f.as_raw_fd()));
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            continue; // EINTR
        }
        for p in &fds {
            if p.revents == 0 {
                continue;
            }
            if let Some(mut fifo) = io.start_fifo.as_ref().filter(|f| f.as_raw_fd() == p.fd) {
                let _ = fifo.read(&mut buf);
                if started || start_requested {
                    answer_start(state_dir, &Err("container already started".into()));
                } else if let Some(s) = &sync {
                    start_requested = true;
                    sync_send(s.as_fd(), b"S");
                }
            } else if Some(p.fd) == sync.as_ref().map(|s| s.as_raw_fd()) {
                let msg = sync
                    .as_ref()
                    .map(|s| sync_recv(s.as_fd()))
                    .unwrap_or(Ok(Vec::new()));
                sync = None;
                match msg {
                    Ok(m) if m.first() == Some(&b'E') => {
                        let text = String::from_utf8_lossy(&m[1..]).into_owned();
                        answer_start(state_dir, &Err(text.clone()));
                        start_error = Some(text);
                    }
                    _ => {
                        started = true;
                        // presence is what counts; no rename needed
                        let _ = fs::write(state_dir.join(files::STARTED), now());
                        answer_start(state_dir, &Ok(()));
                    }
                }
            } else if Some(p.fd) == out.as_ref().map(|f| f.as_raw_fd()) {
                copy_out(&mut out, Stream::Stdout, &mut log, &mut buf);
            } else if Some(p.fd) == err.as_ref().map(|f| f.as_raw_fd()) {
                copy_out(&mut err, Stream::Stderr, &mut log, &mut buf);
            }
        }
        if fds[0].revents != 0 {
            status = waitpid(Pid::from_raw(child.pid), None).unwrap_or(WaitStatus::StillAlive);
            break;
        }
    }
    if start_requested && !started && start_error.is_none() {
        answer_start(state_dir, &Err("container exited before it started".into()));
    }
    // PID 1 is gone, so is every process of its pid namespace: drain to EOF, bounded.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (out.is_some() || err.is_some()) && Instant::now() < deadline {
        for (slot, stream) in [(&mut out, Stream::Stdout), (&mut err, Stream::Stderr)] {
            let ready = slot
                .as_ref()
                .map(|f| sys::poll_readable(f.as_fd(), 50).unwrap_or(false));
            if ready == Some(true) {
                copy_out(slot, stream, &mut log, &mut buf);
            }
        }
    }
    if let Some(l) = log.as_mut() {
        let _ = l.flush();
    }
    let (exit_code, signal) = exit_code_of(status);
    let oom_killed = req.cgroup.oom_kill_count().unwrap_or(0) > 0;
    let info = ExitInfo {
        exit_code: if start_error.is_some() && !started {
            127
        } else {
            exit_code
        },
        signal,
        oom_killed,
        finished: now(),
        error: start_error,
    };
    let _ = write_json(&state_dir.join(files::EXIT), &info);
    if io.start_fifo.is_some() {
        let _ = fs::remove_file(state_dir.join(files::START_FIFO));
        let _ = fs::remove_file(state_dir.join(files::REPLY_FIFO));
    }
    0
}

type RawFdOpt = Option<std::os::fd::RawFd>;

fn copy_out(
    slot: &mut Option<OwnedFd>,
    stream: Stream,
    log: &mut Option<LogWriter>,
    buf: &mut [u8],
) {
    let Some(fd) = slot.as_ref() else { return };
    match read_some(fd.as_fd(), buf) {
        Ok(0) | Err(_) => *slot = None,
        Ok(n) => {
            if let Some(l) = log.as_mut() {
                let _ = l.write(stream, &buf[..n]);
            }
        }
    }
}
