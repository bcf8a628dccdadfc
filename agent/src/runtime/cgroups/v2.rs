//! cgroup v2: one unified tree. Controllers are enabled top-down through
//! `cgroup.subtree_control` of every ancestor; limits use the v2 files and units
//! (`memory.max`, `memory.swap.max` = swap only, `cpu.max`, `cpu.weight`, `pids.max`,
//! `io.weight`). `memory.oom.group` is set so an OOM kills the whole container.
//!
//! Not done on v2: device access control (needs a `BPF_PROG_TYPE_CGROUP_DEVICE` program).
//! Tested against a fake tree, since this host cannot mount v2 with controllers.

use std::fs;
use std::path::Path;

use super::{CgroupError, read_file, write_file};
use crate::runtime::plan::CgroupLimits;

/// Controllers enabled for container cgroups, when the parent offers them.
pub const CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

/// Converts v1 `cpu.shares` (2..262144) to v2 `cpu.weight` (1..10000), the linear mapping
/// of the OCI runtimes (1024 → 39).
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// Converts v1 `blkio.weight` (10..1000) to v2 `io.weight` (1..10000).
pub fn blkio_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + ((w - 10) * 9999) / 990
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = read_file(&dir.join("cgroup.controllers"))?;
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| CONTROLLERS.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    write_file(&dir.join("cgroup.subtree_control"), &wanted.join(" "))
}

/// Creates `rel` under the unified `root`, enabling controllers on the way down.
pub fn create(root: &Path, rel: &str) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        enable_controllers(&dir)?;
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: dir.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Writes `limits` into the v2 files of `dir`.
pub fn apply(dir: &Path, l: &CgroupLimits) -> Result<(), CgroupError> {
    if let Some(mem) = l.memory {
        write_file(&dir.join("memory.max"), &mem.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.is_file() {
            if l.memory_swap_unlimited {
                write_file(&swap, "max")?;
            } else if let Some(total) = l.memory_swap {
                write_file(&swap, &total.saturating_sub(mem).to_string())?;
            }
        }
        let group = dir.join("memory.oom.group");
        if group.is_file() {
            write_file(&group, "1")?;
        }
    }
    if let Some(q) = l.cpu_quota {
        let period = l.cpu_period.unwrap_or(crate::runtime::plan::CPU_PERIOD_US);
        write_file(&dir.join("cpu.max"), &format!("{q} {period}"))?;
    }
    if let Some(s) = l.cpu_shares {
        write_file(&dir.join("cpu.weight"), &shares_to_weight(s).to_string())?;
    }
    if let Some(cpus) = &l.cpuset_cpus {
        write_file(&dir.join("cpuset.cpus"), cpus)?;
    }
    if let Some(p) = l.pids_max {
        write_file(&dir.join("pids.max"), &p.to_string())?;
    }
    if let Some(w) = l.blkio_weight {
        write_file(
            &dir.join("io.weight"),
            &format!("default {}", blkio_to_io_weight(w)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{CgroupManager, CgroupVersion};
    use super::*;

    /// A fake unified tree: the files the kernel would provide, as empty regular files.
    fn fake_dir(dir: &Path, controllers: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        for f in [
            "cgroup.subtree_control",
            "cgroup.procs",
            "cgroup.kill",
            "memory.max",
            "memory.swap.max",
            "memory.oom.group",
            "memory.events",
            "cpu.max",
            "cpu.weight",
            "cpuset.cpus",
            "pids.max",
            "io.weight",
        ] {
            fs::write(dir.join(f), "").unwrap();
        }
    }

    #[test]
    fn weights_convert() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
        assert_eq!(blkio_to_io_weight(500), 4950);
    }

    #[test]
    fn create_enables_controllers_and_apply_writes_v2_units() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_dir(root, "cpuset cpu io memory hugetlb pids rdma\n");
        // the kernel would create the parent's files on mkdir; pre-create them
        fake_dir(&root.join("berth"), "cpuset cpu io memory pids\n");
        let m = CgroupManager::detect(root).unwrap();
        assert_eq!(m.version(), CgroupVersion::V2);
        create(root, "berth/c1").unwrap();
        fake_dir(&root.join("berth/c1"), "cpuset cpu io memory pids\n");
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+cpuset +cpu +io +memory +pids"
        );
        assert_eq!(
            fs::read_to_string(root.join("berth/cgroup.subtree_control")).unwrap(),
            "+cpuset +cpu +io +memory +pids"
        );
        let cg = m.handle("berth/c1");
        cg.apply(&CgroupLimits {
            memory: Some(100 << 20),
            memory_swap: Some(300 << 20),
            cpu_quota: Some(150_000),
            cpu_period: Some(100_000),
            cpu_shares: Some(1024),
            pids_max: Some(50),
            blkio_weight: Some(500),
            ..CgroupLimits::default()
        })
        .unwrap();
        let rd = |f: &str| fs::read_to_string(root.join("berth/c1").join(f)).unwrap();
        assert_eq!(rd("memory.max"), (100u64 << 20).to_string());
        assert_eq!(rd("memory.swap.max"), (200u64 << 20).to_string());
        assert_eq!(rd("memory.oom.group"), "1");
        assert_eq!(rd("cpu.max"), "150000 100000");
        assert_eq!(rd("cpu.weight"), "39");
        assert_eq!(rd("pids.max"), "50");
        assert_eq!(rd("io.weight"), "default 4950");

        fs::write(
            root.join("berth/c1/memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kill_count().unwrap(), 1);
        assert_eq!(cg.procs_files(), vec![root.join("berth/c1/cgroup.procs")]);
        fs::write(root.join("berth/c1/cgroup.procs"), "").unwrap();
        assert!(cg.pids().unwrap().is_empty());
        cg.kill_all().unwrap();
        assert_eq!(rd("cgroup.kill"), "1");
    }

    #[test]
    fn unlimited_swap_and_missing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        fake_dir(&dir, "memory\n");
        apply(
            &dir,
            &CgroupLimits {
                memory: Some(10 << 20),
                memory_swap_unlimited: true,
                ..CgroupLimits::default()
            },
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("memory.swap.max")).unwrap(),
            "max"
        );
        fs::remove_file(dir.join("pids.max")).unwrap();
        let err = apply(
            &dir,
            &CgroupLimits {
                pids_max: Some(5),
                ..CgroupLimits::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, CgroupError::Write { .. }));
        assert!(
            !dir.join("pids.max").exists(),
            "never creates interface files"
        );
    }
}
