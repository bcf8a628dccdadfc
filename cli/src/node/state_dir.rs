//! The daemon's state directory: one root holding certificates, Raft data, agent data,
//! images and containers, locked so that two daemons never share it.

use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

/// An opened, exclusively locked state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl StateDir {
    /// Creates (mode 0700) and locks `root`; fails if another daemon holds it.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("creating the state directory {root:?}"))?;
        let lock_path = root.join("berthd.lock");
        let file = File::create(&lock_path).with_context(|| format!("creating {lock_path:?}"))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            anyhow::anyhow!(
                "state directory {root:?} is in use by another berthd ({errno}); give each daemon its own --data-dir"
            )
        })?;
        Ok(Self {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A subdirectory of the root (certificates, raft, agent, images, containers), created
    /// with mode 0700 when missing.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {dir:?}"))?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_cannot_open_the_same_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let first = StateDir::open(&root).unwrap();
        let err = StateDir::open(&root).unwrap_err().to_string();
        assert!(err.contains("in use by another berthd"), "{err}");
        drop(first);
        StateDir::open(&root).unwrap();
    }

    #[test]
    fn directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(&tmp.path().join("s")).unwrap();
        let sub = state.subdir("certificates").unwrap();
        for dir in [state.root(), sub.as_path()] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{dir:?}");
        }
    }
}
