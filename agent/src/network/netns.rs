//! Network namespaces bound to files: create one for a container (kept alive by its bind
//! mount, joined by the runtime), remove it, and run code on a thread inside one (sockets a
//! thread creates belong to the namespace it is in).
//!
//! Invariant: only short-lived dedicated threads ever change namespace; the daemon's own
//! threads (tokio's) never do, so everything else keeps running in the node's namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// `statfs` magic of nsfs (a bound namespace file).
const NSFS_MAGIC: i64 = 0x6e73_6673;

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Whether `path` is a bound namespace.
pub fn is_bound(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// Creates a new, empty network namespace bound at `path` (nothing to do when one is bound
/// there already).
pub fn create(path: &Path) -> io::Result<()> {
    if is_bound(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let target: PathBuf = path.to_owned();
    let thread = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || -> io::Result<()> {
            // This thread only: unshare affects the calling thread, which ends right after.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(nix_io)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(nix_io)
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Unbinds and deletes the namespace file at `path` (the namespace itself goes when its last
/// process does). Missing is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(nix_io(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `f` on a new thread inside the namespace bound at `path` (`None`: the caller's own
/// namespace, still on a new thread), and waits for it.
pub fn run_in<T: Send + 'static>(
    path: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = path.map(File::open).transpose()?;
    let thread = std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(move || -> io::Result<T> {
            if let Some(ns) = ns {
                nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(nix_io)?;
            }
            f()
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_namespace_is_created_once_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ns/one");
        create(&path).expect("create");
        assert!(is_bound(&path));
        create(&path).expect("create again");
        // Code run inside sees only the new namespace's loopback.
        let p = path.clone();
        let names = run_in(Some(&p), || {
            let addrs = nix::ifaddrs::getifaddrs().map_err(nix_io)?;
            let mut names: Vec<String> = addrs.map(|a| a.interface_name).collect();
            names.dedup();
            Ok(names)
        })
        .expect("run inside");
        assert_eq!(names, vec!["lo".to_string()]);
        remove(&path).expect("remove");
        assert!(!path.exists());
        remove(&path).expect("remove twice");
    }
}
