//! The Raft state machine: applies committed entries to the [`Store`], builds snapshots (a
//! full store dump) and installs them. Snapshots are kept in sled tree `snapshot` so that a
//! restarted manager starts from its last snapshot and re-applies only the log after it.
//!
//! Invariants:
//! - `last_applied`, the membership and the store move together under one lock, so a
//!   snapshot's metadata always describes exactly its data.
//! - A snapshot is flushed to disk before openraft learns of it (and may purge the log it
//!   covers); a stored snapshot is never replaced by an older one.
//! - A log entry whose batch is refused or undecodable is still applied (as a refusal in its
//!   [`ApplyResult`]); only storage failures are errors.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use super::types::{ApplyResult, NodeId, TypeConfig};
use crate::store::{ApplyError, Store, StoreActions, Tables};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// A stored snapshot: its metadata and the store dump.
type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

const KEY_CURRENT: &[u8] = b"current";

/// What has been applied, besides the store contents.
#[derive(Debug, Clone, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

/// The state machine (also its own snapshot builder; clones share everything).
#[derive(Debug, Clone)]
pub struct StateMachine {
    store: Store,
    db: sled::Db,
    snapshots: sled::Tree,
    applied: Arc<Mutex<Applied>>,
    /// Serialises "compare with the stored snapshot, then replace it".
    persist: Arc<Mutex<()>>,
    builds: Arc<AtomicU64>,
}

fn snapshot_err(
    meta: Option<&SnapshotMeta<NodeId, BasicNode>>,
    verb: ErrorVerb,
    e: impl Into<AnyError>,
) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e).into()
}

/// Stored form: 4-byte big-endian length of the JSON metadata, the metadata, the dump.
fn encode_stored(
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<Vec<u8>, serde_json::Error> {
    let meta_json = serde_json::to_vec(meta)?;
    let mut out = Vec::with_capacity(4 + meta_json.len() + data.len());
    out.extend_from_slice(&(meta_json.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta_json);
    out.extend_from_slice(data);
    Ok(out)
}

fn decode_stored(bytes: &[u8]) -> Result<StoredSnapshot, String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("stored snapshot shorter than its header")?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err("stored snapshot metadata truncated".into());
    }
    let (meta_json, data) = rest.split_at(len);
    let meta = serde_json::from_slice(meta_json).map_err(|e| e.to_string())?;
    Ok((meta, data.to_vec()))
}

impl StateMachine {
    /// Opens the snapshot tree in `db` and loads the last stored snapshot into `store`.
    pub fn open(db: &sled::Db, store: Store) -> StorageResult<StateMachine> {
        let snapshots = db
            .open_tree("snapshot")
            .map_err(|e| snapshot_err(None, ErrorVerb::Read, &e))?;
        let sm = StateMachine {
            store,
            db: db.clone(),
            snapshots,
            applied: Arc::default(),
            persist: Arc::default(),
            builds: Arc::default(),
        };
        if let Some((meta, data)) = sm.read_stored()? {
            let tables = Tables::decode_dump(&data)
                .map_err(|e| snapshot_err(Some(&meta), ErrorVerb::Read, &e))?;
            let mut applied = sm.lock();
            sm.store.replace(tables);
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        Ok(sm)
    }

    /// The store this state machine applies to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Applied> {
        // Nothing panics while holding this lock; a poisoned guard's data is still whole.
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_stored(&self) -> StorageResult<Option<StoredSnapshot>> {
        let Some(bytes) = self
            .snapshots
            .get(KEY_CURRENT)
            .map_err(|e| snapshot_err(None, ErrorVerb::Read, &e))?
        else {
            return Ok(None);
        };
        decode_stored(&bytes)
            .map(Some)
            .map_err(|e| snapshot_err(None, ErrorVerb::Read, AnyError::error(e)))
    }

    /// Stores a snapshot durably unless a newer one is already stored; returns whether it did.
    async fn persist(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> StorageResult<bool> {
        let bytes = encode_stored(meta, data)
            .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, &e))?;
        {
            let _guard = self.persist.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((stored, _)) = self.read_stored()?
                && stored.last_log_id > meta.last_log_id
            {
                return Ok(false);
            }
            self.snapshots
                .insert(KEY_CURRENT, bytes)
                .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, &e))?;
        }
        self.db
            .flush_async()
            .await
            .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, &e))?;
        Ok(true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (applied, tables) = {
            let applied = self.lock();
            (applied.clone(), self.store.snapshot())
        };
        // Encoding walks every object: keep it off the async workers.
        let data = tokio::task::spawn_blocking(move || tables.encode_dump())
            .await
            .map_err(|e| snapshot_err(None, ErrorVerb::Write, &e))?;
        let n = self.builds.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        self.persist(&meta, &data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let applied = self.lock();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ApplyResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        for entry in entries {
            let log_index = entry.log_id.index;
            let mut applied = self.lock();
            let result = match entry.payload {
                EntryPayload::Blank => Ok(0),
                EntryPayload::Normal(req) => match StoreActions::decode(&req.actions) {
                    Ok(batch) => self
                        .store
                        .apply(log_index, req.timestamp(), batch)
                        .map(|c| c.events.len()),
                    Err(e) => Err(ApplyError::whole(e)),
                },
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(0)
                }
            };
            applied.last_applied = Some(entry.log_id);
            results.push(ApplyResult { log_index, result });
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let tables = Tables::decode_dump(&data)
            .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Read, &e))?;
        self.persist(meta, &data).await?;
        let mut applied = self.lock();
        self.store.replace(tables);
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.read_stored()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
