//! cgroup v1: one directory per controller hierarchy (`<root>/<controller>/<path>`).
//!
//! `cpuset` children start with empty `cpuset.cpus`/`cpuset.mems` and refuse tasks
//! (`ENOSPC`) until they are filled, so every level created copies its parent's values.
//! The `devices` controller gets Docker's allow-list (deny all, then the standard nodes and
//! ptys), which is what stops a container with `CAP_MKNOD` from opening host disks.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{CgroupError, ControllerDir, read_file, write_file};
use crate::runtime::plan::CgroupLimits;

/// Controllers a container cgroup is created in, when the host has them.
pub const CONTROLLERS: [&str; 8] = [
    "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "freezer", "devices",
];

/// Docker's default device allow-list (`devices.allow` lines).
pub const DEFAULT_DEVICE_RULES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// Finds the v1 hierarchies under `root`: `<root>/<controller>` directories that hold a
/// `cgroup.procs` file (co-mounted hierarchies reached through symlinks count once per name).
pub fn find_controllers(root: &Path) -> Vec<ControllerDir> {
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    let mut out = Vec::new();
    for name in CONTROLLERS {
        let dir = root.join(name);
        if !dir.join("cgroup.procs").is_file() {
            continue;
        }
        let canonical = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        // cpu and cpuacct co-mounted: keep both names (limits look controllers up by name)
        // but the same directory is only attached/removed once.
        if !seen.insert(canonical) {
            continue;
        }
        out.push(ControllerDir {
            controller: name.to_string(),
            path: dir,
        });
    }
    out
}

fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn copy_if_empty(parent: &Path, child: &Path, file: &str) -> Result<(), CgroupError> {
    let current = read_file(&child.join(file))?;
    if current.trim().is_empty() {
        let value = read_file(&parent.join(file))?;
        write_file(&child.join(file), value.trim())?;
    }
    Ok(())
}

/// Creates `rel` under every hierarchy in `ctrls`.
pub fn create(ctrls: &[ControllerDir], rel: &str) -> Result<(), CgroupError> {
    for c in ctrls {
        let mut dir = c.path.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let parent = dir.clone();
            dir.push(part);
            let created = mkdir(&dir)?;
            if c.controller == "cpuset" {
                copy_if_empty(&parent, &dir, "cpuset.cpus")?;
                copy_if_empty(&parent, &dir, "cpuset.mems")?;
            }
            if created && c.controller == "devices" && dir == c.path.join(rel) {
                write_file(&dir.join("devices.deny"), "a")?;
                for rule in DEFAULT_DEVICE_RULES {
                    write_file(&dir.join("devices.allow"), rule)?;
                }
            }
        }
    }
    Ok(())
}

fn dir_of<'a>(dirs: &'a [ControllerDir], controller: &str) -> Result<&'a Path, CgroupError> {
    dirs.iter()
        .find(|d| d.controller == controller)
        .map(|d| d.path.as_path())
        .ok_or_else(|| CgroupError::MissingController(controller.to_string()))
}

/// Writes `limits` into the v1 interface files.
pub fn apply(dirs: &[ControllerDir], l: &CgroupLimits) -> Result<(), CgroupError> {
    if let Some(mem) = l.memory {
        let d = dir_of(dirs, "memory")?;
        // fresh cgroup: memsw is unlimited, so memory first keeps mem <= memsw
        write_file(&d.join("memory.limit_in_bytes"), &mem.to_string())?;
        let memsw = d.join("memory.memsw.limit_in_bytes");
        if memsw.is_file() {
            if l.memory_swap_unlimited {
                write_file(&memsw, "-1")?;
            } else if let Some(sw) = l.memory_swap {
                write_file(&memsw, &sw.to_string())?;
            }
        }
    }
    if l.cpu_shares.is_some() || l.cpu_quota.is_some() {
        let d = dir_of(dirs, "cpu")?;
        if let Some(s) = l.cpu_shares {
            write_file(&d.join("cpu.shares"), &s.to_string())?;
        }
        if let Some(p) = l.cpu_period {
            write_file(&d.join("cpu.cfs_period_us"), &p.to_string())?;
        }
        if let Some(q) = l.cpu_quota {
            write_file(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
        }
    }
    if let Some(cpus) = &l.cpuset_cpus {
        write_file(&dir_of(dirs, "cpuset")?.join("cpuset.cpus"), cpus)?;
    }
    if let Some(p) = l.pids_max {
        write_file(&dir_of(dirs, "pids")?.join("pids.max"), &p.to_string())?;
    }
    if let Some(w) = l.blkio_weight {
        let d = dir_of(dirs, "blkio")?;
        // CFQ exposed blkio.weight; BFQ (the only proportional scheduler left) uses its own file.
        let file = ["blkio.weight", "blkio.bfq.weight"]
            .into_iter()
            .map(|f| d.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| CgroupError::MissingController("blkio weight (no CFQ/BFQ)".into()))?;
        write_file(&file, &w.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! These run against the host's real v1 hierarchies (root required, never skipped).
    use super::super::{CgroupManager, CgroupVersion};
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    static N: AtomicU32 = AtomicU32::new(0);

    /// Removes the test's parent cgroup in every hierarchy, even when the test panics.
    struct ParentGuard(CgroupManager, String);
    impl Drop for ParentGuard {
        fn drop(&mut self) {
            let _ = self.0.remove_dir(&self.1);
        }
    }

    fn setup() -> (CgroupManager, String, ParentGuard) {
        let m = CgroupManager::detect(Path::new("/sys/fs/cgroup")).expect("cgroups mounted");
        assert_eq!(m.version(), CgroupVersion::V1, "this host is v1 hybrid");
        let parent = format!(
            "berth-test-{}-cg{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let g = ParentGuard(m.clone(), parent.clone());
        (m, parent, g)
    }

    #[test]
    fn create_apply_attach_kill_remove() {
        let (m, parent, _g) = setup();
        let limits = CgroupLimits {
            memory: Some(64 << 20),
            memory_swap: Some(128 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(512),
            pids_max: Some(42),
            ..CgroupLimits::default()
        };
        let cg = m.create(&format!("{parent}/c1"), &limits).unwrap();
        let d = |c: &str| {
            cg.dirs
                .iter()
                .find(|d| d.controller == c)
                .unwrap()
                .path
                .clone()
        };
        let rd = |p: PathBuf| fs::read_to_string(p).unwrap().trim().to_string();
        assert_eq!(
            rd(d("memory").join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(rd(d("cpu").join("cpu.cfs_quota_us")), "50000");
        assert_eq!(rd(d("cpu").join("cpu.shares")), "512");
        assert_eq!(rd(d("pids").join("pids.max")), "42");
        // cpuset inherited, so attaching works
        assert!(!rd(d("cpuset").join("cpuset.cpus")).is_empty());
        assert!(!rd(d("cpuset").join("cpuset.mems")).is_empty());
        // devices allow-list: /dev/null yes, a disk no
        let list = rd(d("devices").join("devices.list"));
        assert!(list.contains("c 1:3 rwm"), "{list}");
        assert!(!list.contains("a *:* rwm"), "{list}");

        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.attach(child.id() as i32).unwrap();
        assert_eq!(cg.pids().unwrap(), vec![child.id() as i32]);
        assert_eq!(cg.oom_kill_count().unwrap(), 0);
        cg.kill_all().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        cg.remove().unwrap();
        assert!(!cg.exists());
        cg.remove().unwrap(); // idempotent
    }

    #[test]
    fn missing_interface_file_is_an_error_not_a_new_file() {
        let (m, parent, _g) = setup();
        let cg = m
            .create(&format!("{parent}/c2"), &CgroupLimits::default())
            .unwrap();
        let bogus = cg.dirs[0].path.join("no.such.file");
        assert!(write_file(&bogus, "1").is_err());
        assert!(!bogus.exists());
        cg.remove().unwrap();
    }
}
