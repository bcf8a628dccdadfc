//! The Raft log, vote and commit index on sled ([`LogStore`], openraft's `RaftLogStorage`).
//!
//! Layout of the sled database (a directory of its own):
//! - tree `logs`: an entry is its binary form ([`super::entry_codec`]) cut into chunks of at
//!   most [`CHUNK`] bytes, key = log index (8 bytes big-endian) + chunk number (4 bytes
//!   big-endian), so key order is log order;
//! - tree `raft_meta`: `vote`, `committed`, `last_purged` (JSON).
//!
//! Why chunks and an extra fsync: sled 0.34 writes its log with `sync_file_range`, which is
//! not a durable sync (no disk-cache flush, no metadata), and writes items larger than about
//! 128 KiB (a quarter segment) to separate blob files without any sync at all. Entries are
//! therefore cut into small values so every tree page stays inline in sled's main `db` file,
//! and every flush is followed by `fdatasync` of that file.
//!
//! Invariants:
//! - `append` returns once entries are readable; its `LogFlushed` callback fires only after a
//!   sled `flush_async` plus `fdatasync` that cover them. One flusher task completes the
//!   callbacks in append order and lets one sync cover every append queued behind it.
//! - The vote is durable before `save_vote` returns; `last_purged` is written before any
//!   entry is purged (sled persists in operation order), so no hole is ever visible.

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::entry_codec;
use super::types::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Largest value written to sled. A leaf page splits above 16 keys, so a page stays below
/// sled's ~128 KiB blob threshold with room to spare.
pub const CHUNK: usize = 4096;

/// Appends queued for one flush at most (the flusher drains up to this many per flush).
const FLUSH_QUEUE: usize = 1024;

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn logs_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    io_err(ErrorSubject::Logs, verb, e)
}

/// The sled records of `entry`: its binary form ([`entry_codec`]) cut into pieces of at most
/// [`CHUNK`] bytes, keyed by index and piece number. Also used by force-new-cluster, which
/// appends an entry while Raft is stopped.
pub fn entry_chunks(entry: &Entry<TypeConfig>) -> io::Result<Vec<([u8; 12], Vec<u8>)>> {
    let bytes = entry_codec::encode_entry(entry).map_err(io::Error::other)?;
    bytes
        .chunks(CHUNK)
        .enumerate()
        .map(|(n, piece)| {
            let n = u32::try_from(n).map_err(|_| io::Error::other("log entry too large"))?;
            Ok((chunk_key(entry.log_id.index, n), piece.to_vec()))
        })
        .collect()
}

fn chunk_key(index: u64, chunk: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(&chunk.to_be_bytes());
    key
}

fn parse_key(key: &[u8]) -> Option<(u64, u32)> {
    let (index, chunk) = key.split_first_chunk::<8>()?;
    let chunk: [u8; 4] = chunk.try_into().ok()?;
    Some((u64::from_be_bytes(*index), u32::from_be_bytes(chunk)))
}

/// Makes sled's writes durable: `flush_async`, then `fdatasync` of its main file.
#[derive(Debug, Clone)]
struct Syncer {
    db: sled::Db,
    file: Arc<File>,
}

impl Syncer {
    async fn sync(&self) -> io::Result<()> {
        self.db
            .flush_async()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(io::Error::other)?
    }
}

/// Reads log entries (openraft hands clones of this to replication tasks).
#[derive(Debug, Clone)]
pub struct LogReader {
    logs: sled::Tree,
}

/// The sled-backed Raft log storage.
#[derive(Debug, Clone)]
pub struct LogStore {
    syncer: Syncer,
    reader: LogReader,
    meta: sled::Tree,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// Opens (or creates) the sled database in directory `dir` and starts the flusher task,
    /// which ends once every clone of the returned store is dropped (await the handle to
    /// know the database is no longer written).
    pub fn open(dir: &Path) -> Result<(LogStore, JoinHandle<()>), sled::Error> {
        let db = sled::Config::new().path(dir).open()?;
        // sled 0.34 keeps its log in `<dir>/db`; fsync through any descriptor of the inode.
        let file = File::open(dir.join("db"))?;
        let logs = db.open_tree("logs")?;
        let meta = db.open_tree("raft_meta")?;
        let syncer = Syncer {
            db,
            file: Arc::new(file),
        };
        let (tx, rx) = mpsc::channel(FLUSH_QUEUE);
        let handle = tokio::spawn(flush_loop(syncer.clone(), rx));
        let store = LogStore {
            syncer,
            reader: LogReader { logs },
            meta,
            flusher: tx,
        };
        Ok((store, handle))
    }

    fn get_meta<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<Option<T>> {
        let value = self
            .meta
            .get(key)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
        let Some(bytes) = value else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_err(subject, ErrorVerb::Read, e))
    }

    fn put_meta<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> StorageResult<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn sync(&self, subject: ErrorSubject<NodeId>) -> StorageResult<()> {
        self.syncer
            .sync()
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }

    /// Removes every chunk whose key is in `range`.
    fn remove_range(&self, range: (Bound<[u8; 12]>, Bound<[u8; 12]>)) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.reader.logs.range(range) {
            let (key, _) = item.map_err(|e| logs_err(ErrorVerb::Read, e))?;
            batch.remove(key);
        }
        self.reader
            .logs
            .apply_batch(batch)
            .map_err(|e| logs_err(ErrorVerb::Write, e))
    }
}

/// Completes append callbacks in order, one durable sync for everything queued at that time.
async fn flush_loop(syncer: Syncer, mut rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut pending = Vec::new();
    while rx.recv_many(&mut pending, FLUSH_QUEUE).await > 0 {
        let result = syncer.sync().await.map_err(|e| e.to_string());
        for callback in pending.drain(..) {
            callback.log_io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

impl LogReader {
    /// Entries with index in `start..end` (`end` = None: to the end of the log).
    fn read(&self, start: u64, end: Option<u64>) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let lo = Bound::Included(chunk_key(start, 0));
        let hi = match end {
            Some(end) => Bound::Excluded(chunk_key(end, 0)),
            None => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        let mut current: Option<(u64, Vec<u8>)> = None;
        let mut next_chunk = 0u32;
        for item in self.logs.range((lo, hi)) {
            let (key, value) = item.map_err(|e| logs_err(ErrorVerb::Read, e))?;
            let corrupt = |what: String| logs_err(ErrorVerb::Read, io::Error::other(what));
            let (index, chunk) =
                parse_key(&key).ok_or_else(|| corrupt(format!("bad log key {key:?}")))?;
            if current.as_ref().is_none_or(|(i, _)| *i != index) {
                if let Some((i, bytes)) = current.take() {
                    entries.push(decode_entry(i, &bytes)?);
                }
                current = Some((index, Vec::with_capacity(value.len())));
                next_chunk = 0;
            }
            if chunk != next_chunk {
                return Err(corrupt(format!(
                    "log entry {index}: chunk {next_chunk} is missing"
                )));
            }
            next_chunk += 1;
            if let Some((_, bytes)) = current.as_mut() {
                bytes.extend_from_slice(&value);
            }
        }
        if let Some((i, bytes)) = current {
            entries.push(decode_entry(i, &bytes)?);
        }
        Ok(entries)
    }
}

fn decode_entry(index: u64, bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    let entry = entry_codec::decode_entry(bytes).map_err(|e| {
        io_err(
            ErrorSubject::LogIndex(index),
            ErrorVerb::Read,
            io::Error::other(e),
        )
    })?;
    if entry.log_id.index != index {
        let e = io::Error::other(format!(
            "entry stored at {index} has index {}",
            entry.log_id.index
        ));
        return Err(io_err(ErrorSubject::LogIndex(index), ErrorVerb::Read, e));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        self.read(start, end)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> =
            self.get_meta(KEY_LAST_PURGED, ErrorSubject::Store)?;
        let last_key = self
            .reader
            .logs
            .last()
            .map_err(|e| logs_err(ErrorVerb::Read, e))?;
        let last_index = last_key
            .and_then(|(key, _)| parse_key(&key))
            .map(|(index, _)| index);
        let last_log_id = match last_index {
            Some(index) => self
                .reader
                .read(index, index.checked_add(1))?
                .pop()
                .map(|e| e.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_log_id.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(KEY_VOTE, vote, ErrorSubject::Vote)?;
        self.sync(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not synced on its own: a stale commit index after a crash only means re-applying
        // less on start-up; the leader re-sends the commit index.
        self.put_meta(KEY_COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let index = entry.log_id.index;
            let write_err = |e: &(dyn std::error::Error + 'static)| {
                StorageError::from(StorageIOError::new(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Write,
                    AnyError::from_dyn(e, None),
                ))
            };
            let pieces = entry_chunks(&entry).map_err(|e| write_err(&e))?;
            let chunks = u32::try_from(pieces.len()).unwrap_or(u32::MAX);
            for (key, piece) in pieces {
                batch.insert(&key, piece);
            }
            // Chunks of an older, longer entry at this index must not survive.
            let stale_end = match index.checked_add(1) {
                Some(next) => Bound::Excluded(chunk_key(next, 0)),
                None => Bound::Unbounded,
            };
            for item in self
                .reader
                .logs
                .range((Bound::Included(chunk_key(index, chunks)), stale_end))
            {
                let (key, _) = item.map_err(|e| logs_err(ErrorVerb::Read, e))?;
                batch.remove(key);
            }
        }
        self.reader
            .logs
            .apply_batch(batch)
            .map_err(|e| logs_err(ErrorVerb::Write, e))?;
        if let Err(mpsc::error::SendError(callback)) = self.flusher.send(callback).await {
            // The flusher only stops once every store clone is gone, so this is not expected;
            // sync here rather than leave the callback unanswered.
            callback.log_io_completed(self.syncer.sync().await);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.remove_range((
            Bound::Included(chunk_key(log_id.index, 0)),
            Bound::Unbounded,
        ))?;
        self.sync(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.put_meta(KEY_LAST_PURGED, &log_id, ErrorSubject::Store)?;
        let end = match log_id.index.checked_add(1) {
            Some(next) => Bound::Excluded(chunk_key(next, 0)),
            None => Bound::Unbounded,
        };
        self.remove_range((Bound::Unbounded, end))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::types::RaftRequest;

    fn entry(index: u64, payload_len: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(RaftRequest {
                seconds: index as i64,
                nanos: 0,
                actions: (0..payload_len).map(|i| (i % 251) as u8).collect(),
            }),
        }
    }

    /// Appends and waits for the flush callback.
    async fn append(store: &mut LogStore, entries: Vec<Entry<TypeConfig>>) -> anyhow::Result<()> {
        store.blocking_append(entries).await?;
        Ok(())
    }

    #[tokio::test]
    async fn large_entries_are_chunked_and_read_back_whole() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (mut store, _flusher) = LogStore::open(dir.path())?;
        // Sizes around and far above one chunk, and a tiny one.
        let sizes = [10, CHUNK, CHUNK * 3 + 7, 300_000, 1];
        let entries: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| entry(i as u64 + 1, n))
            .collect();
        append(&mut store, entries.clone()).await?;
        assert!(
            store
                .reader
                .logs
                .iter()
                .values()
                .all(|v| v.is_ok_and(|v| v.len() <= CHUNK))
        );
        // Nothing went to sled's never-synced blob files.
        let blobs = std::fs::read_dir(dir.path().join("blobs"))?.count();
        assert_eq!(blobs, 0, "sled wrote {blobs} blob files");
        assert_eq!(store.try_get_log_entries(..).await?, entries);
        assert_eq!(
            store.try_get_log_entries(2..4).await?,
            entries[1..3].to_vec()
        );
        assert_eq!(
            store.try_get_log_entries(4..=4).await?,
            entries[3..4].to_vec()
        );
        assert_eq!(store.try_get_log_entries(9..).await?, vec![]);
        assert_eq!(
            store.get_log_state().await?.last_log_id,
            Some(entries[4].log_id)
        );

        // Truncating inside the log drops every chunk of the truncated entries.
        store.truncate(entries[3].log_id).await?;
        assert_eq!(store.try_get_log_entries(..).await?, entries[..3].to_vec());
        // Rewriting index 3 with a shorter entry leaves none of the longer one's chunks.
        let shorter = entry(3, 5);
        append(&mut store, vec![shorter.clone()]).await?;
        assert_eq!(store.try_get_log_entries(3..4).await?, vec![shorter]);
        store.purge(entries[1].log_id).await?;
        let state = store.get_log_state().await?;
        assert_eq!(state.last_purged_log_id, Some(entries[1].log_id));
        assert_eq!(
            store
                .try_get_log_entries(..)
                .await?
                .first()
                .map(|e| e.log_id.index),
            Some(3)
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_chunk_is_reported_not_glued_over() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (mut store, _flusher) = LogStore::open(dir.path())?;
        append(&mut store, vec![entry(1, CHUNK * 3)]).await?;
        store.reader.logs.remove(chunk_key(1, 1))?;
        let err = store
            .try_get_log_entries(..)
            .await
            .expect_err("corrupt entry");
        assert!(err.to_string().contains("chunk 1 is missing"), "{err}");
        Ok(())
    }
}
