//! Daemon side of the setup helper: the sealed copy of the helper binary, spawning it, and
//! the messages exchanged with it.
//!
//! The daemon is multi-threaded and never forks to set up a container. It starts the helper
//! with `std::process::Command` (fork+exec done safely by std) from a sealed memfd copy of
//! the helper binary, made once per process and binary (CVE-2019-5736), with the environment
//! variable [`INIT_ENV`] naming the mode and a socket as the helper's stdin. The helper reads
//! one length-prefixed JSON [`HelperRequest`] and answers with a [`HelperReply`].

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::cgroups::Cgroup;
use super::plan::{ContainerPlan, NamespacesPlan, ProcessPlan};
use super::sys;

/// Environment variable that turns a process into the helper (`create` or `exec`).
pub const INIT_ENV: &str = "_BERTH_INIT";
/// argv\[0\] of helper processes (visible in `ps`).
pub const HELPER_ARGV0: &str = "berth-init";
/// Largest message accepted (a plan with hundreds of layers is well below this).
const MAX_MESSAGE: u32 = 16 << 20;

/// Which binary is re-executed as the helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelperBinary {
    /// The running executable (`/proc/self/exe`); its `main` must call
    /// `runtime::init::maybe_run_init()` first thing.
    CurrentExe,
    /// Another binary that calls `maybe_run_init()` (e.g. `berth-runtime`; tests use it).
    Path(PathBuf),
}

/// File name of the runtime CLI, which doubles as the setup helper.
pub const RUNTIME_BINARY: &str = "berth-runtime";

impl HelperBinary {
    /// The helper a daemon should use: `berth-runtime` installed beside the running executable
    /// when it reports this build's version, else the running executable. Every container's
    /// supervisor is a fork of the helper and lives as long as the container, and a fork of a
    /// large executable carries its relocated data privately: ~700 KiB for `berthd`, ~40 KiB
    /// for `berth-runtime`. A `berth-runtime` of another version may speak another helper
    /// protocol, so it is not used.
    pub fn preferred() -> HelperBinary {
        match std::env::current_exe() {
            Ok(exe) => exe
                .parent()
                .map_or(HelperBinary::CurrentExe, HelperBinary::preferred_in),
            Err(_) => HelperBinary::CurrentExe,
        }
    }

    /// [`HelperBinary::preferred`] for a daemon installed in `dir`.
    pub fn preferred_in(dir: &Path) -> HelperBinary {
        let candidate = dir.join(RUNTIME_BINARY);
        let expected = format!("berth-runtime version {}", env!("CARGO_PKG_VERSION"));
        let reported = Command::new(&candidate)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        match reported {
            Ok(out)
                if out.status.success()
                    && String::from_utf8_lossy(&out.stdout).lines().next() == Some(&expected) =>
            {
                HelperBinary::Path(candidate)
            }
            Ok(out) => {
                if candidate.exists() {
                    tracing::warn!(
                        path = %candidate.display(),
                        reported = %String::from_utf8_lossy(&out.stdout).trim(),
                        expected = %expected,
                        "not using berth-runtime of another version as the setup helper"
                    );
                }
                HelperBinary::CurrentExe
            }
            Err(_) => HelperBinary::CurrentExe,
        }
    }
}

/// A request to the helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperRequest {
    /// Create a container and supervise it.
    Create(Box<CreateRequest>),
    /// Run a process inside a running container.
    Exec(Box<ExecRequest>),
}

/// Everything needed to create one container.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The plan.
    pub plan: ContainerPlan,
    /// The container's state directory.
    pub state_dir: PathBuf,
    /// Its cgroup (already created and limited by the daemon).
    pub cgroup: Cgroup,
    /// Compiled seccomp filters, loaded in order (empty: unconfined).
    pub seccomp: Vec<Vec<u8>>,
    /// Start the process right away (`run`): the reply then also reports the exec.
    #[serde(default)]
    pub start: bool,
}

/// Everything needed to exec into a container.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Host pid of the container's PID 1.
    pub init_pid: i32,
    /// Its start time (guards against pid reuse).
    pub init_start: u64,
    /// Which namespaces the container has (all of them are joined).
    pub namespaces: NamespacesPlan,
    /// The process to run (credentials resolved inside the container when `user` is set).
    pub process: ProcessPlan,
    /// `-u` for exec, resolved against the container's /etc/passwd.
    pub user: Option<String>,
    /// The container's cgroup, joined before the process starts.
    pub cgroup: Cgroup,
    /// Compiled seccomp filters.
    pub seccomp: Vec<Vec<u8>>,
}

/// The helper's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperReply {
    /// The container is created and waits for `start`.
    Created {
        /// Supervisor pid.
        supervisor_pid: i32,
        /// Container PID 1 (host pid).
        init_pid: i32,
    },
    /// The exec'd process is running.
    ExecStarted {
        /// Host pid of the process.
        pid: i32,
    },
    /// Setup failed.
    Error {
        /// Human-readable cause.
        message: String,
    },
}

/// Writes one length-prefixed JSON message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let data = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(data.len()).map_err(|_| io::Error::other("message too large"))?;
    let mut buf = Vec::with_capacity(4 + data.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&data);
    w.write_all(&buf)
}

/// Reads one length-prefixed JSON message.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too large",
        ));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    serde_json::from_slice(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

type SealedMap = Mutex<HashMap<PathBuf, Arc<OwnedFd>>>;

/// Sealed memfd copies, one per source binary for the life of the process.
fn sealed_cache() -> &'static SealedMap {
    static CACHE: OnceLock<SealedMap> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The sealed copy of `binary`, made on first use.
pub fn sealed_binary(binary: &HelperBinary) -> io::Result<Arc<OwnedFd>> {
    let path = match binary {
        HelperBinary::CurrentExe => PathBuf::from("/proc/self/exe"),
        HelperBinary::Path(p) => p.clone(),
    };
    let mut map = sealed_cache()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(fd) = map.get(&path) {
        return Ok(Arc::clone(fd));
    }
    let fd = Arc::new(sys::sealed_memfd_copy(&path, c"berth-init")?);
    map.insert(path, Arc::clone(&fd));
    Ok(fd)
}

/// A running helper and the daemon's end of its socket.
pub struct Spawned {
    /// The helper process (a direct child of the caller).
    pub child: Child,
    /// The request/reply socket.
    pub sock: UnixStream,
}

/// Starts the helper in `mode` with the given stdout/stderr.
pub fn spawn(
    binary: &HelperBinary,
    mode: &str,
    stdout: Stdio,
    stderr: Stdio,
) -> io::Result<Spawned> {
    let fd = sealed_binary(binary)?;
    let (ours, theirs) = UnixStream::pair()?;
    let mut cmd = Command::new(Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())));
    cmd.arg0(HELPER_ARGV0)
        .env_clear()
        .env(INIT_ENV, mode)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(stdout)
        .stderr(stderr);
    let child = cmd.spawn()?;
    drop(cmd);
    Ok(Spawned { child, sock: ours })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trip() {
        let mut buf = Vec::new();
        send(
            &mut buf,
            &HelperReply::Error {
                message: "boom".into(),
            },
        )
        .unwrap();
        let reply: HelperReply = recv(&mut buf.as_slice()).unwrap();
        assert!(matches!(reply, HelperReply::Error { message } if message == "boom"));
        let huge = (MAX_MESSAGE + 1).to_le_bytes();
        assert!(recv::<HelperReply>(&mut huge.as_slice()).is_err());
    }

    #[test]
    fn the_daemon_prefers_a_same_version_berth_runtime_beside_it() {
        use std::fs;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            HelperBinary::preferred_in(dir.path()),
            HelperBinary::CurrentExe
        );
        let fake = dir.path().join(RUNTIME_BINARY);
        let write = |version: &str| {
            let script = format!("#!/bin/sh\necho 'berth-runtime version {version}'\n");
            fs::write(&fake, script).unwrap();
            fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        };
        write("0.0.0-other");
        assert_eq!(
            HelperBinary::preferred_in(dir.path()),
            HelperBinary::CurrentExe
        );
        write(env!("CARGO_PKG_VERSION"));
        // Another test thread forking while the script was open for writing makes its exec
        // fail with ETXTBSY for a moment (then `CurrentExe` is the safe answer): retry.
        let mut chosen = HelperBinary::CurrentExe;
        for _ in 0..20 {
            chosen = HelperBinary::preferred_in(dir.path());
            if chosen != HelperBinary::CurrentExe {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(chosen, HelperBinary::Path(fake));
    }

    #[test]
    fn sealed_copy_is_cached_and_sealed() {
        let a = sealed_binary(&HelperBinary::CurrentExe).unwrap();
        let b = sealed_binary(&HelperBinary::CurrentExe).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // SAFETY: valid fd owned by `a`; F_GET_SEALS takes no argument.
        let seals = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_GET_SEALS) };
        assert!(seals & libc::F_SEAL_WRITE != 0 && seals & libc::F_SEAL_SEAL != 0);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", a.as_raw_fd()))
            .unwrap();
        assert!(f.write_all(b"x").is_err(), "sealed copy must refuse writes");
    }
}
