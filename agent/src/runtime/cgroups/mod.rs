//! Container cgroups over a kernel root given as a parameter (`/sys/fs/cgroup` in
//! production, a temporary tree in unit tests).
//!
//! `CgroupManager::detect` decides the layout: a unified v2 tree, or v1 per-controller
//! hierarchies. Hybrid hosts (v1 controllers plus a cgroup2 mount at `unified`, like this
//! machine, where only `hugetlb` sits on v2) are driven through v1, which is authoritative.
//! A `Cgroup` is a plain, serialisable handle (one directory per v1 controller, or one v2
//! directory), so the supervisor process can use it without re-detecting.
//!
//! Invariants: cgroup files are only ever opened without `O_CREAT` (a missing interface file
//! is an error or a skipped optional knob, never a new regular file); removal is idempotent.

pub mod v1;
pub mod v2;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::plan::CgroupLimits;

/// Errors of cgroup handling, with the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable cgroup hierarchy under the root.
    #[error("no cgroup v1 controllers or v2 tree found under {0:?}")]
    NotFound(PathBuf),
    /// A limit was requested whose controller is not mounted.
    #[error("cgroup controller {0:?} is not available")]
    MissingController(String),
    /// Creating a directory failed.
    #[error("failed to create cgroup {path:?}")]
    Create {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing a value failed.
    #[error("failed to write {value:?} to {path:?}")]
    Write {
        /// File.
        path: PathBuf,
        /// Value written.
        value: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading a file failed.
    #[error("failed to read {path:?}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The cgroup still has processes or children after retries.
    #[error("failed to remove cgroup {path:?}")]
    Remove {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Which cgroup API a handle speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// Legacy per-controller hierarchies.
    V1,
    /// Unified hierarchy.
    V2,
}

/// One directory of a cgroup: for v1 one per controller, for v2 a single `unified` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerDir {
    /// Controller name (`memory`, `cpu`, …; `unified` for v2).
    pub controller: String,
    /// Absolute directory.
    pub path: PathBuf,
}

/// A container's cgroup: plain data, usable from any process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// API version.
    pub version: CgroupVersion,
    /// Directories (v1: per controller).
    pub dirs: Vec<ControllerDir>,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// v1 hierarchies by controller name (hybrid hosts included).
    V1(Vec<ControllerDir>),
    /// v2 unified tree root.
    V2(PathBuf),
}

/// Creates, configures and removes container cgroups under one kernel root.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    root: PathBuf,
    layout: Layout,
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    let res = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| io::Write::write_all(&mut f, value.as_bytes()));
    res.map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

pub(crate) fn read_file(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Value of `key` in a flat-keyed file (`oom_kill 3`).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

impl CgroupManager {
    /// Detects the layout under `root` (see module docs).
    pub fn detect(root: &Path) -> Result<CgroupManager, CgroupError> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(CgroupManager {
                root: root.to_path_buf(),
                layout: Layout::V2(root.to_path_buf()),
            });
        }
        let found = v1::find_controllers(root);
        if !found.is_empty() {
            return Ok(CgroupManager {
                root: root.to_path_buf(),
                layout: Layout::V1(found),
            });
        }
        let unified = root.join("unified");
        if unified.join("cgroup.controllers").is_file() {
            return Ok(CgroupManager {
                root: root.to_path_buf(),
                layout: Layout::V2(unified),
            });
        }
        Err(CgroupError::NotFound(root.to_path_buf()))
    }

    /// The kernel root this manager works under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The detected layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// API version in use.
    pub fn version(&self) -> CgroupVersion {
        match self.layout {
            Layout::V1(_) => CgroupVersion::V1,
            Layout::V2(_) => CgroupVersion::V2,
        }
    }

    /// The handle for `rel` (e.g. `berth/<id>`) without touching the filesystem.
    pub fn handle(&self, rel: &str) -> Cgroup {
        let rel = rel.trim_matches('/');
        match &self.layout {
            Layout::V1(ctrls) => Cgroup {
                version: CgroupVersion::V1,
                dirs: ctrls
                    .iter()
                    .map(|c| ControllerDir {
                        controller: c.controller.clone(),
                        path: c.path.join(rel),
                    })
                    .collect(),
            },
            Layout::V2(root) => Cgroup {
                version: CgroupVersion::V2,
                dirs: vec![ControllerDir {
                    controller: "unified".into(),
                    path: root.join(rel),
                }],
            },
        }
    }

    /// Creates the cgroup `rel` (parents included) in every controller and applies `limits`.
    pub fn create(&self, rel: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        let rel = rel.trim_matches('/');
        match &self.layout {
            Layout::V1(ctrls) => v1::create(ctrls, rel)?,
            Layout::V2(root) => v2::create(root, rel)?,
        }
        let cg = self.handle(rel);
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Removes the directory `rel` from every hierarchy if it exists (used for parents).
    pub fn remove_dir(&self, rel: &str) -> Result<(), CgroupError> {
        self.handle(rel).remove()
    }
}

impl Cgroup {
    /// Writes `limits` into the cgroup's interface files.
    pub fn apply(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V1 => v1::apply(&self.dirs, limits),
            CgroupVersion::V2 => v2::apply(&self.dirs[0].path, limits),
        }
    }

    /// The `cgroup.procs` files a process is attached through.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// Moves process `pid` into the cgroup (every controller).
    pub fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        for f in self.procs_files() {
            write_file(&f, &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup. The caller must be single-threaded.
    ///
    /// On v1 this writes `0` to each `tasks` file: moving only the current thread skips the
    /// kernel's global threadgroup lock, whose first writer waits for an RCU grace period
    /// (milliseconds; `cgroup.procs` writes pay it). For a single-threaded process, moving its
    /// one thread moves the whole process.
    pub fn attach_self(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            match self.version {
                CgroupVersion::V1 => write_file(&d.path.join("tasks"), "0")?,
                CgroupVersion::V2 => write_file(&d.path.join("cgroup.procs"), "0")?,
            }
        }
        Ok(())
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|d| d.controller == controller || d.controller == "unified")
            .map(|d| d.path.as_path())
    }

    /// How many times the kernel OOM-killed a process in this cgroup.
    pub fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        let (file, key) = match self.version {
            CgroupVersion::V1 => ("memory.oom_control", "oom_kill"),
            CgroupVersion::V2 => ("memory.events", "oom_kill"),
        };
        let dir = self
            .dir("memory")
            .ok_or_else(|| CgroupError::MissingController("memory".into()))?;
        let path = dir.join(file);
        Ok(keyed_value(&read_file(&path)?, key).unwrap_or(0))
    }

    /// Pids currently in the cgroup (empty when it does not exist).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = self
            .dir("pids")
            .or_else(|| self.dir("memory"))
            .or_else(|| self.dirs.first().map(|d| d.path.as_path()));
        let Some(dir) = dir else { return Ok(vec![]) };
        let path = dir.join("cgroup.procs");
        match fs::read_to_string(&path) {
            Ok(t) => Ok(t.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
            Err(source) => Err(CgroupError::Read { path, source }),
        }
    }

    /// Whether any directory of the cgroup still exists.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.path.is_dir())
    }

    /// SIGKILLs every process in the cgroup until it is empty (bounded retries).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if self.version == CgroupVersion::V2 {
            let kill = self.dirs[0].path.join("cgroup.kill");
            if kill.is_file() {
                write_file(&kill, "1")?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids()?;
            if pids.is_empty() || Instant::now() > deadline {
                return Ok(());
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from the cgroup and a constant signal.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes every directory, retrying while exiting tasks keep it busy. Missing
    /// directories are fine (idempotent).
    pub fn remove(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let mut delay = Duration::from_millis(2);
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs::remove_dir(&d.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_millis(100));
                    }
                    Err(source) => {
                        return Err(CgroupError::Remove {
                            path: d.path.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(t, "oom_kill"), Some(3));
        assert_eq!(keyed_value(t, "missing"), None);
    }

    #[test]
    fn detect_prefers_unified_root_and_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupManager::detect(tmp.path()),
            Err(CgroupError::NotFound(_))
        ));
        // hybrid: v1 controllers plus a cgroup2 mount with controllers → v1 wins
        fs::create_dir_all(tmp.path().join("memory")).unwrap();
        fs::write(tmp.path().join("memory/cgroup.procs"), "").unwrap();
        fs::create_dir_all(tmp.path().join("unified")).unwrap();
        fs::write(tmp.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        let m = CgroupManager::detect(tmp.path()).unwrap();
        assert_eq!(m.version(), CgroupVersion::V1);
        let h = m.handle("berth/x");
        assert_eq!(h.dirs[0].path, tmp.path().join("memory/berth/x"));
        // pure unified
        let tmp2 = tempfile::tempdir().unwrap();
        fs::write(tmp2.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let m = CgroupManager::detect(tmp2.path()).unwrap();
        assert_eq!(m.version(), CgroupVersion::V2);
        assert_eq!(m.handle("/a/b/").dirs[0].path, tmp2.path().join("a/b"));
    }
}
