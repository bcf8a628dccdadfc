//! The manager's replicated object store: in-memory tables of the seven object kinds with
//! indexes, written only by applying Raft-committed batches, read through consistent
//! snapshots, watched through a bounded change stream.
//!
//! Architecture invariants:
//! - The store does no I/O and reads no clock: `apply` is deterministic (see [`Tables`]).
//! - Writes come only from [`Store::apply`] (the Raft state machine) and [`Store::restore`];
//!   components propose [`StoreActions`] through Raft instead of writing here.
//! - A batch is all or nothing; a refused batch changes nothing and publishes nothing.
//! - A subscriber sees a snapshot plus exactly the change sets applied after it, or a
//!   [`WatchError`] telling it to take a new snapshot; memory per subscriber is bounded.

mod action;
mod error;
mod object;
mod table;
mod tables;
mod watch;

use std::sync::{Arc, PoisonError, RwLock};

use prost_types::Timestamp;
use tokio::sync::broadcast;

pub use action::{StoreAction, StoreActions};
pub use error::{ActionError, ApplyError, ObjectKind, StoreError};
pub use object::{By, Object, StoreObject, timestamp};
pub use table::Table;
pub use tables::Tables;
pub use watch::{ChangeSet, Event, EventIndex, Watch, WatchError};

use watch::Published;

/// Default number of change sets a subscriber may fall behind before it lags.
pub const DEFAULT_WATCH_CAPACITY: usize = 1024;

/// A shared handle on the store (cheap to clone; all clones see the same state).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tables: RwLock<Tables>,
    events: broadcast::Sender<Published>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store with the default watch capacity.
    pub fn new() -> Self {
        Store::with_watch_capacity(DEFAULT_WATCH_CAPACITY)
    }

    /// An empty store whose subscribers lag after falling `capacity` change sets behind.
    pub fn with_watch_capacity(capacity: usize) -> Self {
        let (events, _) = broadcast::channel(capacity.max(1));
        Store {
            inner: Arc::new(Inner {
                tables: RwLock::new(Tables::default()),
                events,
            }),
        }
    }

    // Lock poisoning cannot leave the tables half-written: `Tables::apply` never panics on
    // data and restores on refusal, so a poisoned lock's contents are still consistent.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.inner
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.inner
            .tables
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A consistent snapshot of the whole store, in O(1); it never changes afterwards.
    pub fn snapshot(&self) -> Tables {
        self.read().clone()
    }

    /// Runs `f` on the current state under the read lock (keep it short; no `.await` inside).
    pub fn view<R>(&self, f: impl FnOnce(&Tables) -> R) -> R {
        f(&self.read())
    }

    /// The log index of the last applied batch.
    pub fn version(&self) -> u64 {
        self.read().version()
    }

    /// The object of kind `T` with this id.
    pub fn get<T: StoreObject>(&self, id: &str) -> Option<Arc<T>> {
        self.read().get(id)
    }

    /// The object of kind `T` with this unique name (case-insensitive).
    pub fn get_by_name<T: StoreObject>(&self, name: &str) -> Option<Arc<T>> {
        self.read().get_by_name(name)
    }

    /// Every object of kind `T`, in id order.
    pub fn list<T: StoreObject>(&self) -> Vec<Arc<T>> {
        self.read().list()
    }

    /// The objects of kind `T` carrying index key `by`, in id order.
    pub fn find<T: StoreObject>(&self, by: &By) -> Vec<Arc<T>> {
        self.read().find(by)
    }

    /// A snapshot and a watch that yields exactly the change sets applied after it.
    pub fn subscribe(&self) -> (Tables, Watch) {
        // Taken under the read lock: no apply can slip between the snapshot and the
        // subscription, because apply publishes while holding the write lock.
        let tables = self.read();
        let rx = self.inner.events.subscribe();
        (tables.clone(), Watch::new(rx))
    }

    /// Applies a Raft-committed batch (see [`Tables::apply`]) and publishes its change set.
    pub fn apply(
        &self,
        log_index: u64,
        timestamp: Timestamp,
        batch: StoreActions,
    ) -> Result<Arc<ChangeSet>, ApplyError> {
        let mut tables = self.write();
        let changes = Arc::new(tables.apply(log_index, timestamp, batch)?);
        // No subscriber is not an error.
        let _ = self.inner.events.send(Published::Changes(changes.clone()));
        Ok(changes)
    }

    /// The whole state, deterministically encoded (a Raft snapshot's data).
    pub fn dump(&self) -> Vec<u8> {
        self.snapshot().encode_dump()
    }

    /// Replaces the whole state from a dump; every watch gets [`WatchError::Reset`].
    pub fn restore(&self, dump: &[u8]) -> Result<(), StoreError> {
        let tables = Tables::decode_dump(dump)?;
        self.replace(tables);
        Ok(())
    }

    /// Replaces the whole state; every watch gets [`WatchError::Reset`].
    pub fn replace(&self, tables: Tables) {
        let mut guard = self.write();
        let version = tables.version();
        *guard = tables;
        let _ = self.inner.events.send(Published::Reset(version));
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::Task;

    use super::*;

    fn task(id: &str, slot: u64) -> Task {
        Task {
            id: id.into(),
            service_id: "s1".into(),
            slot,
            ..Default::default()
        }
    }

    fn create_task(store: &Store, index: u64, id: &str) -> Result<Arc<ChangeSet>, ApplyError> {
        let mut b = StoreActions::new();
        b.create(task(id, index));
        store.apply(index, timestamp(index as i64, 0), b)
    }

    #[tokio::test]
    async fn subscribe_sees_exactly_the_changes_after_its_snapshot() {
        let store = Store::new();
        create_task(&store, 1, "t1").expect("t1");
        let (snap, mut watch) = store.subscribe();
        assert_eq!(snap.list::<Task>().len(), 1);
        create_task(&store, 2, "t2").expect("t2");
        // A refused batch publishes nothing.
        create_task(&store, 3, "t2").expect_err("duplicate");
        create_task(&store, 4, "t3").expect("t3");
        let first = watch.recv().await.expect("first");
        let second = watch.recv().await.expect("second");
        assert_eq!((first.version, second.version), (2, 4));
        assert_eq!(first.events.len(), 1);
        assert_eq!(first.events[0].object().id(), "t2");
        assert_eq!(watch.try_recv(), Ok(None));
        // The snapshot did not move.
        assert_eq!(snap.list::<Task>().len(), 1);
        assert_eq!(store.list::<Task>().len(), 3);
        assert_eq!(store.version(), 4);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_to_resnapshot() {
        let store = Store::with_watch_capacity(4);
        let (_, mut watch) = store.subscribe();
        for i in 1..=10 {
            create_task(&store, i, &format!("t{i}")).expect("apply");
        }
        assert_eq!(watch.recv().await, Err(WatchError::Lagged { missed: 6 }));
        // Re-subscribing gives a snapshot with everything, and a clean stream.
        let (snap, mut watch) = store.subscribe();
        assert_eq!(snap.list::<Task>().len(), 10);
        create_task(&store, 11, "t11").expect("apply");
        assert_eq!(watch.recv().await.map(|c| c.version), Ok(11));
    }

    #[tokio::test]
    async fn restore_resets_watchers_and_replaces_state() {
        let source = Store::new();
        for i in 1..=3 {
            create_task(&source, i, &format!("t{i}")).expect("apply");
        }
        let target = Store::new();
        create_task(&target, 1, "other").expect("apply");
        let (_, mut watch) = target.subscribe();
        target.restore(&source.dump()).expect("restore");
        assert_eq!(watch.recv().await, Err(WatchError::Reset { version: 3 }));
        assert_eq!(target.dump(), source.dump());
        assert!(target.get::<Task>("other").is_none());
        assert_eq!(target.find::<Task>(&By::ServiceId("s1".into())).len(), 3);
        // A bad dump leaves the store as it was.
        assert!(target.restore(&[0xff, 0xff]).is_err());
        assert_eq!(target.version(), 3);
    }

    /// A subscriber that rebuilds state from snapshot + events while a writer runs on another
    /// thread ends with exactly the store's final state: no change is missed or seen twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_plus_stream_reconstructs_the_store_under_concurrent_writes() {
        let store = Store::with_watch_capacity(4096);
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 1..=2000u64 {
                    let mut b = StoreActions::new();
                    b.create(task(&format!("t{i}"), i));
                    if i > 1 && i % 3 == 0 {
                        b.remove(ObjectKind::Task, format!("t{}", i - 1));
                    }
                    store.apply(i, timestamp(0, 0), b).expect("apply");
                }
            })
        };
        // Subscribe somewhere in the middle of the writes.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let (snap, mut watch) = store.subscribe();
        let mut ids: std::collections::BTreeSet<String> =
            snap.list::<Task>().iter().map(|t| t.id.clone()).collect();
        let mut version = snap.version();
        while version < 2000 {
            let changes = watch.recv().await.expect("no lag at this capacity");
            assert_eq!(
                changes.version,
                version + 1,
                "a change set was skipped or repeated"
            );
            version = changes.version;
            for e in &changes.events {
                match e {
                    Event::Created(o) => assert!(ids.insert(o.id().to_owned())),
                    Event::Removed(o) => assert!(ids.remove(o.id())),
                    Event::Updated { .. } => {}
                }
            }
        }
        writer.join().expect("writer");
        let want: std::collections::BTreeSet<String> =
            store.list::<Task>().iter().map(|t| t.id.clone()).collect();
        assert_eq!(ids, want);
    }
}
