//! Force-new-cluster: turning a manager's Raft data into a single-member cluster that keeps
//! all of its state.
//!
//! openraft 0.9 can only `initialize` an empty log, and changing membership needs a leader,
//! which a minority cannot elect. So before the Raft core starts, we append to the local log
//! one membership entry whose only voter is this manager (and with no other node). openraft
//! takes the last membership entry in the log as the effective configuration, even
//! uncommitted, so on startup this manager is the only voter: it elects itself, and its first
//! entry as leader commits everything before it, the new membership included.
//!
//! The appended entry carries the leader id of the last log entry (or of the last purged
//! one), so log ids stay ordered. Entries that were in the local log but never committed by
//! the old cluster become committed, as with etcd's (and Swarm's) force-new-cluster.
//!
//! The last log id is read through the log store's own `RaftLogStorage::get_log_state`; the
//! entry is then written in the layout documented in [`crate::raft::LogStore`] (sled database
//! `<raft dir>/log`, tree `logs`, key = big-endian index + big-endian chunk number, value =
//! the entry's JSON cut into chunks), followed by a flush and an fdatasync. The end-to-end
//! test `force_new_cluster_recovers_a_lone_survivor_with_all_its_state` breaks loudly should
//! that layout change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Entry, EntryPayload, LogId, Membership};

use super::ManagerError;
use crate::raft::{LogStore, NodeId, TypeConfig, entry_chunks};

fn err(what: &str, e: impl std::fmt::Display) -> ManagerError {
    ManagerError::Recovery(format!("{what}: {e}"))
}

/// Appends a membership entry making `self_id` at `addr` the only member (see module docs).
/// `raft_dir` is the directory given to `RaftNode::open`.
pub(crate) async fn reset_membership(
    raft_dir: &Path,
    self_id: NodeId,
    addr: &str,
) -> Result<(), ManagerError> {
    let log_dir = raft_dir.join("log");
    let last = {
        let (mut store, flusher) =
            LogStore::open(&log_dir).map_err(|e| err("opening the raft log", e))?;
        let state = store
            .get_log_state()
            .await
            .map_err(|e| err("reading the raft log", e))?;
        drop(store);
        let _ = flusher.await;
        state
            .last_log_id
            .ok_or_else(|| err("raft data", "the log is empty; nothing to recover"))?
    };
    let log_id = LogId {
        leader_id: last.leader_id,
        index: last.index + 1,
    };
    let membership = Membership::new(
        vec![BTreeSet::from([self_id])],
        BTreeMap::from([(self_id, BasicNode::new(addr))]),
    );
    let entry: Entry<TypeConfig> = Entry {
        log_id,
        payload: EntryPayload::Membership(membership),
    };
    let records = entry_chunks(&entry).map_err(|e| err("encoding the membership entry", e))?;

    let db = sled::Config::new()
        .path(&log_dir)
        .open()
        .map_err(|e| err("opening the raft log", e))?;
    let logs = db
        .open_tree("logs")
        .map_err(|e| err("opening the log", e))?;
    let mut batch = sled::Batch::default();
    for (key, piece) in records {
        batch.insert(&key[..], piece);
    }
    logs.apply_batch(batch)
        .map_err(|e| err("appending the membership entry", e))?;
    db.flush().map_err(|e| err("flushing the raft log", e))?;
    drop(logs);
    drop(db);
    std::fs::File::open(log_dir.join("db"))
        .and_then(|f| f.sync_data())
        .map_err(|e| err("syncing the raft log", e))?;
    tracing::warn!(
        index = log_id.index,
        raft_id = self_id,
        "appended single-member membership for force-new-cluster"
    );
    Ok(())
}
