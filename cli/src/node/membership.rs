//! This node's swarm membership as saved in the state directory (`swarm.json`): who it is,
//! which cluster, which role, where it listens, and the managers it knows. Written atomically;
//! absent while the node is not in a swarm.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The saved membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// This node's id (its certificate's CN).
    pub node_id: String,
    /// The cluster's id (its certificates' O).
    pub cluster_id: String,
    /// Whether this node runs a manager.
    pub manager: bool,
    /// Address the cluster port listens on.
    pub listen_addr: String,
    /// Address other nodes reach this one at.
    pub advertise_addr: String,
    /// Cluster addresses of the managers this node knows.
    pub manager_addrs: Vec<String>,
}

fn path(state_root: &Path) -> PathBuf {
    state_root.join("swarm.json")
}

impl Membership {
    /// Reads the saved membership; `None` when the node is not in a swarm.
    pub fn load(state_root: &Path) -> anyhow::Result<Option<Membership>> {
        let path = path(state_root);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).with_context(|| format!("parsing {path:?}"))?,
            )),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {path:?}")),
        }
    }

    /// Saves it atomically (temp file, fsync, rename).
    pub fn save(&self, state_root: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let path = path(state_root);
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {tmp:?}"))?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {tmp:?} to {path:?}"))?;
        Ok(())
    }

    /// Forgets the membership (after `swarm leave`).
    pub fn remove(state_root: &Path) -> anyhow::Result<()> {
        let path = path(state_root);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing {path:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_membership_reads_back_and_can_be_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(Membership::load(tmp.path()).unwrap(), None);
        let m = Membership {
            node_id: "n".into(),
            cluster_id: "c".into(),
            manager: true,
            listen_addr: "10.0.0.1:4377".into(),
            advertise_addr: "10.0.0.1:4377".into(),
            manager_addrs: vec!["10.0.0.1:4377".into()],
        };
        m.save(tmp.path()).unwrap();
        assert_eq!(Membership::load(tmp.path()).unwrap(), Some(m));
        Membership::remove(tmp.path()).unwrap();
        assert_eq!(Membership::load(tmp.path()).unwrap(), None);
    }
}
