//! Named network namespaces: entering them, and finding or killing the processes inside.
//!
//! A named namespace is the nsfs bind mount `/run/netns/NAME` that `ip netns add` creates.
//! Entering uses `setns(2)`, which moves only the calling thread, so callers enter on a thread
//! they own (a dedicated thread, or a child between fork and exec). The process scan compares
//! each `/proc/PID/ns/net` with the named mount by device and inode; it never counts the test
//! process itself.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Directory where `ip netns` keeps its named namespaces.
pub(crate) const NETNS_RUN_DIR: &str = "/run/netns";

/// Path of the named namespace `name`.
pub(crate) fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Opens the named namespace `name` (close-on-exec) for a later `setns`.
pub(crate) fn open(name: &str) -> anyhow::Result<OwnedFd> {
    let p = path(name);
    let file = File::open(&p).with_context(|| format!("opening network namespace {p:?}"))?;
    Ok(OwnedFd::from(file))
}

/// Moves the calling thread into the network namespace `fd` refers to.
///
/// Only the calling thread changes namespace; call it on a thread dedicated to that namespace.
pub(crate) fn enter(fd: &OwnedFd) -> std::io::Result<()> {
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Opens `name` and moves the calling thread into it.
pub(crate) fn enter_named(name: &str) -> anyhow::Result<()> {
    let fd = open(name)?;
    enter(&fd).with_context(|| format!("setns into network namespace {name:?}"))
}

/// Identity (device, inode) of the namespace behind an nsfs path.
fn identity(p: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(p)?;
    Ok((m.dev(), m.ino()))
}

/// Pids of the processes (other than this one) whose network namespace is one of `names`.
///
/// A process whose namespace cannot be read (it exited meanwhile, or is a zombie) is skipped.
pub(crate) fn pids_in(names: &[String]) -> anyhow::Result<Vec<i32>> {
    let mut wanted = Vec::with_capacity(names.len());
    for name in names {
        match identity(&path(name)) {
            Ok(id) => wanted.push(id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("stat of {:?}", path(name))),
        }
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let entry = entry.context("reading /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(id) = identity(&entry.path().join("ns/net")) else {
            continue;
        };
        if wanted.contains(&id) {
            found.push(pid as i32);
        }
    }
    Ok(found)
}

/// SIGKILLs every process inside the namespaces `names` until none is left or `patience`
/// has passed; returns the pids that were signalled.
pub(crate) fn kill_all_in(names: &[String], patience: Duration) -> anyhow::Result<Vec<i32>> {
    let start = Instant::now();
    let mut killed = Vec::new();
    loop {
        let pids = pids_in(names)?;
        if pids.is_empty() {
            return Ok(killed);
        }
        if start.elapsed() > patience {
            anyhow::bail!("processes {pids:?} are still inside {names:?} after SIGKILL");
        }
        for pid in pids {
            // ESRCH: it exited between the scan and the signal, which is what we want.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
