//! The one way the control loops write: a [`Writer`] takes a [`StoreActions`] batch and returns
//! once it is committed and applied to the local store (so the next snapshot includes it).
//!
//! Production uses [`RaftNode`] (the batch becomes one Raft entry); unit tests and benchmarks
//! use [`LocalWriter`], which applies batches straight to a [`Store`] with sequential log
//! indexes. A loop never calls another component: it writes here and reads the store.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;

use super::clock::{Clock, to_timestamp};
use crate::raft::{ApplyResult, RaftNode, WriteError};
use crate::store::{ApplyError, Store, StoreAction, StoreActions};

/// Why a batch was not written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteFailure {
    /// The store refused the batch (nothing was written): usually an update carried a version
    /// that moved since it was read. Re-read a snapshot and decide again.
    #[error("batch refused: {0}")]
    Refused(ApplyError),
    /// This manager is not the leader any more; leader-only loops stop.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// No quorum right now; try again later.
    #[error("store write unavailable: {0}")]
    Unavailable(String),
    /// The replication layer stopped for good.
    #[error("replication stopped: {0}")]
    Fatal(String),
}

/// Commits batches to the replicated store.
pub trait Writer: Send + Sync + 'static {
    /// Commits `batch` as one transaction and waits until it is applied locally; returns the
    /// log index it was applied at.
    fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>>;
}

impl Writer for RaftNode {
    fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>> {
        Box::pin(async move {
            match RaftNode::write(self, &batch).await {
                Ok(ApplyResult {
                    log_index,
                    result: Ok(_),
                }) => Ok(log_index),
                Ok(ApplyResult { result: Err(e), .. }) => Err(WriteFailure::Refused(e)),
                Err(e @ WriteError::NotLeader { .. }) => {
                    Err(WriteFailure::NotLeader(e.to_string()))
                }
                Err(e @ (WriteError::NoQuorum { .. } | WriteError::Membership(_))) => {
                    Err(WriteFailure::Unavailable(e.to_string()))
                }
                Err(e @ WriteError::Fatal(_)) => Err(WriteFailure::Fatal(e.to_string())),
            }
        })
    }
}

/// Applies batches directly to a local [`Store`], standing in for Raft in tests and benchmarks:
/// log index = the store's version + 1, time from `clock`.
pub struct LocalWriter {
    store: Store,
    clock: Arc<dyn Clock>,
    // Serialises index allocation and apply (never held across an await).
    lock: Mutex<()>,
}

impl fmt::Debug for LocalWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalWriter")
            .field("version", &self.store.version())
            .finish_non_exhaustive()
    }
}

impl LocalWriter {
    /// A writer applying to `store`, stamping entries with `clock`'s time.
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        LocalWriter {
            store,
            clock,
            lock: Mutex::new(()),
        }
    }

    /// Applies `batch` now (the synchronous form of [`Writer::write`]).
    pub fn apply(&self, batch: StoreActions) -> Result<u64, WriteFailure> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let index = self.store.version() + 1;
        self.store
            .apply(index, to_timestamp(self.clock.now()), batch)
            .map(|_| index)
            .map_err(WriteFailure::Refused)
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Writer for LocalWriter {
    fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>> {
        let result = self.apply(batch);
        Box::pin(async move { result })
    }
}

/// A group of actions that must commit together (e.g. "retire the old task, create its
/// replacement"); batches are cut only between units.
pub type Unit = Vec<StoreAction>;

/// Packs units into batches of at most `max_actions` actions (a unit larger than that gets a
/// batch of its own), keeping their order.
pub(crate) fn pack(units: Vec<Unit>, max_actions: usize) -> Vec<(StoreActions, Vec<usize>)> {
    let max_actions = max_actions.max(1);
    let mut out: Vec<(StoreActions, Vec<usize>)> = Vec::new();
    for unit in units {
        let fits = out
            .last()
            .is_some_and(|(b, _)| b.len() + unit.len() <= max_actions);
        if !fits {
            out.push((StoreActions::new(), Vec::new()));
        }
        if let Some((batch, bounds)) = out.last_mut() {
            batch.actions.extend(unit);
            bounds.push(batch.len());
        }
    }
    out
}

/// Splits a refused batch: the units (given by their end offsets `bounds`) that contain no
/// refused action, rebuilt as one batch with their bounds, and the refused units.
pub(crate) fn without_refused(
    batch: StoreActions,
    bounds: &[usize],
    refused: &ApplyError,
) -> ((StoreActions, Vec<usize>), Vec<Unit>) {
    let bad: std::collections::BTreeSet<usize> = refused.errors.iter().map(|e| e.index).collect();
    let mut keep = StoreActions::new();
    let mut keep_bounds = Vec::new();
    let mut dropped = Vec::new();
    let mut actions = batch.actions.into_iter();
    let mut start = 0;
    for &end in bounds {
        let unit: Unit = actions.by_ref().take(end - start).collect();
        if (start..end).any(|i| bad.contains(&i)) {
            dropped.push(unit);
        } else {
            keep.actions.extend(unit);
            keep_bounds.push(keep.len());
        }
        start = end;
    }
    ((keep, keep_bounds), dropped)
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::Task;

    use super::*;
    use crate::orchestrator::clock::SystemClock;
    use crate::store::{ActionError, ObjectKind, StoreError};

    fn t(id: &str) -> StoreAction {
        StoreAction::Create(
            Task {
                id: id.into(),
                ..Default::default()
            }
            .into(),
        )
    }

    fn ids(b: &StoreActions) -> Vec<&str> {
        b.actions.iter().map(|a| a.id()).collect()
    }

    #[test]
    fn pack_never_splits_a_unit() {
        let units = vec![
            vec![t("a"), t("b")],
            vec![t("c")],
            vec![t("d"), t("e")],
            vec![t("f"), t("g"), t("h"), t("i")],
            vec![t("j")],
        ];
        let batches = pack(units, 3);
        let got: Vec<(Vec<&str>, Vec<usize>)> = batches
            .iter()
            .map(|(b, bounds)| (ids(b), bounds.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec!["a", "b", "c"], vec![2, 3]),
                (vec!["d", "e"], vec![2]),
                (vec!["f", "g", "h", "i"], vec![4]),
                (vec!["j"], vec![1]),
            ]
        );
    }

    #[test]
    fn refused_units_are_dropped_whole() {
        let mut batches = pack(vec![vec![t("a"), t("b")], vec![t("c")], vec![t("d")]], 10);
        let (batch, bounds) = batches.remove(0);
        let refused = ApplyError {
            errors: vec![ActionError {
                index: 1,
                error: StoreError::NotFound {
                    kind: ObjectKind::Task,
                    id: "b".into(),
                },
            }],
        };
        let ((keep, keep_bounds), dropped) = without_refused(batch, &bounds, &refused);
        assert_eq!(ids(&keep), vec!["c", "d"]);
        assert_eq!(keep_bounds, vec![1, 2]);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].len(), 2);
    }

    #[tokio::test]
    async fn local_writer_applies_with_sequential_indexes() {
        let store = Store::new();
        let w = LocalWriter::new(store.clone(), Arc::new(SystemClock));
        let mut b = StoreActions::new();
        b.create(Task {
            id: "t1".into(),
            ..Default::default()
        });
        assert_eq!(Writer::write(&w, b.clone()).await, Ok(1));
        assert!(matches!(
            Writer::write(&w, b).await,
            Err(WriteFailure::Refused(_))
        ));
        assert_eq!(store.version(), 1);
        assert!(store.get::<Task>("t1").is_some());
    }
}
