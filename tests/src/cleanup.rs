//! Last-resort cleanup of what a test's daemons may leave on the machine: processes and
//! cgroups under a cgroup parent, and mounts under a directory. Used by test teardown after
//! the daemons themselves were asked to clean up.

use std::path::Path;

/// Every cgroup hierarchy root (v1 controllers and the unified tree).
fn hierarchies() -> Vec<std::path::PathBuf> {
    let mut roots = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                roots.push(path);
            }
        }
    }
    roots.push("/sys/fs/cgroup".into());
    roots
}

/// Directories of `parent` in every hierarchy, deepest first.
fn cgroup_dirs(parent: &str) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    for root in hierarchies() {
        let top = root.join(parent);
        if top.is_dir() {
            collect(&top, &mut dirs);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// SIGKILLs every process in any cgroup under `parent`.
pub fn kill_cgroup(parent: &str) {
    for dir in cgroup_dirs(parent) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Removes the (emptied) cgroups under `parent`, retrying briefly while killed tasks exit.
pub fn remove_cgroup(parent: &str) {
    for _ in 0..50 {
        let dirs = cgroup_dirs(parent);
        if dirs.is_empty() {
            return;
        }
        for dir in dirs {
            let _ = std::fs::remove_dir(&dir);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}
