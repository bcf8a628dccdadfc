//! The Raft state machine: applies committed entries to the [`Store`], builds snapshots (a
//! full store dump) and installs them. The current snapshot is one file, `<dir>/current`,
//! replaced atomically (write `current.tmp`, fsync, rename, fsync the directory), so a
//! restarted manager starts from its last snapshot and re-applies only the log after it.
//! (Not in sled: sled 0.34 writes large values to blob files it never syncs.)
//!
//! Invariants:
//! - `last_applied`, the membership and the store move together under one lock, so a
//!   snapshot's metadata always describes exactly its data.
//! - A snapshot is durable before openraft learns of it (and may purge the log it covers);
//!   the stored snapshot is never replaced by an older one.
//! - A log entry whose batch is refused or undecodable is still applied (as a refusal in its
//!   [`ApplyResult`]); only storage failures are errors.

use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
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

type Meta = SnapshotMeta<NodeId, BasicNode>;

const CURRENT: &str = "current";
const TMP: &str = "current.tmp";

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
    dir: PathBuf,
    applied: Arc<Mutex<Applied>>,
    /// Metadata of the snapshot on disk; held while replacing it.
    stored: Arc<tokio::sync::Mutex<Option<Meta>>>,
    builds: Arc<AtomicU64>,
}

fn snapshot_err(
    meta: Option<&Meta>,
    verb: ErrorVerb,
    e: impl Into<AnyError>,
) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, e).into()
}

/// File header: 4-byte big-endian length of the JSON metadata, then the metadata.
fn encode_header(meta: &Meta) -> Result<Vec<u8>, serde_json::Error> {
    let meta_json = serde_json::to_vec(meta)?;
    let mut out = Vec::with_capacity(4 + meta_json.len());
    out.extend_from_slice(&(meta_json.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta_json);
    Ok(out)
}

/// Splits a snapshot file into its metadata and the store dump.
fn decode_file(mut bytes: Vec<u8>) -> Result<(Meta, Vec<u8>), String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("snapshot file shorter than its header")?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err("snapshot metadata truncated".into());
    }
    let meta = serde_json::from_slice(&rest[..len]).map_err(|e| e.to_string())?;
    Ok((meta, bytes.split_off(4 + len)))
}

/// Reads `<dir>/current`, if there is one.
fn read_current(dir: &Path) -> io::Result<Option<(Meta, Vec<u8>)>> {
    match fs::read(dir.join(CURRENT)) {
        Ok(bytes) => decode_file(bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `<dir>/current` durably and atomically.
fn write_current(dir: &Path, header: &[u8], data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(TMP);
    let mut file = File::create(&tmp)?;
    file.write_all(header)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(CURRENT))?;
    File::open(dir)?.sync_all()
}

impl StateMachine {
    /// Opens the snapshot directory `dir` (creating it) and loads its snapshot into `store`.
    pub fn open(dir: &Path, store: Store) -> StorageResult<StateMachine> {
        fs::create_dir_all(dir).map_err(|e| snapshot_err(None, ErrorVerb::Write, &e))?;
        let current = read_current(dir).map_err(|e| snapshot_err(None, ErrorVerb::Read, &e))?;
        let sm = StateMachine {
            store,
            dir: dir.to_owned(),
            applied: Arc::default(),
            stored: Arc::new(tokio::sync::Mutex::new(
                current.as_ref().map(|(m, _)| m.clone()),
            )),
            builds: Arc::default(),
        };
        if let Some((meta, data)) = current {
            let tables = Tables::decode_dump(&data)
                .map_err(|e| snapshot_err(Some(&meta), ErrorVerb::Read, &e))?;
            let mut applied = sm.lock();
            sm.store.replace(tables);
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership;
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

    /// Stores a snapshot durably unless a newer one is already stored; gives the data back.
    async fn persist(&self, meta: &Meta, data: Vec<u8>) -> StorageResult<Vec<u8>> {
        let header =
            encode_header(meta).map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, &e))?;
        let mut stored = self.stored.lock().await;
        if stored
            .as_ref()
            .is_some_and(|s| s.last_log_id > meta.last_log_id)
        {
            return Ok(data);
        }
        let dir = self.dir.clone();
        let data =
            tokio::task::spawn_blocking(move || write_current(&dir, &header, &data).map(|()| data))
                .await
                .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, &e))?
                .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Write, &e))?;
        *stored = Some(meta.clone());
        Ok(data)
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
        let data = self.persist(&meta, data).await?;
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
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let tables = Tables::decode_dump(&data)
            .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Read, &e))?;
        self.persist(meta, data).await?;
        let mut applied = self.lock();
        self.store.replace(tables);
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let dir = self.dir.clone();
        let current = tokio::task::spawn_blocking(move || read_current(&dir))
            .await
            .map_err(|e| snapshot_err(None, ErrorVerb::Read, &e))?
            .map_err(|e| snapshot_err(None, ErrorVerb::Read, &e))?;
        Ok(current.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_files_round_trip_and_truncation_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let meta = Meta {
            snapshot_id: "1-1-5-0".into(),
            ..Default::default()
        };
        write_current(dir.path(), &encode_header(&meta)?, b"dump bytes")?;
        let (read_meta, data) = read_current(dir.path())?.expect("a snapshot");
        assert_eq!((read_meta, data.as_slice()), (meta, &b"dump bytes"[..]));
        // A leftover temp file from a crash mid-write is ignored.
        fs::write(dir.path().join(TMP), b"partial")?;
        assert!(read_current(dir.path())?.is_some());
        // A damaged file is an error, never an empty store.
        fs::write(dir.path().join(CURRENT), [0, 0, 1, 0, b'{'])?;
        assert!(read_current(dir.path()).is_err());
        fs::write(dir.path().join(CURRENT), [0, 0])?;
        assert!(read_current(dir.path()).is_err());
        Ok(())
    }
}
