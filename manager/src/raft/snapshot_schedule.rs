//! Snapshots at the interval the cluster object sets (`berth swarm init|update
//! --snapshot-interval N`, Docker's default 10 000): every manager snapshots its own store
//! once N entries were applied since its last snapshot, and openraft then compacts the log
//! behind it. The interval is read from the replicated store, so a change reaches every
//! manager without a restart.

use berth_proto::v1::Cluster;
use openraft::Raft;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TypeConfig;
use crate::store::{Store, Tables};

/// The interval when the cluster object does not set one (Docker's `--snapshot-interval`).
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 10_000;

/// The interval the cluster object sets, or the default.
fn interval(tables: &Tables) -> u64 {
    tables
        .list::<Cluster>()
        .first()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.raft.as_ref())
        .map(|r| r.snapshot_interval)
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_SNAPSHOT_INTERVAL)
}

/// Whether a snapshot is due: `interval` entries applied since the last snapshot, or since the
/// last request when that one is still being built.
fn due(applied: u64, last_snapshot: u64, last_request: u64, interval: u64) -> bool {
    applied.saturating_sub(last_snapshot.max(last_request)) >= interval
}

/// Watches `raft`'s applied index and triggers a snapshot when one is due, until `cancel`.
pub fn spawn(tasks: &TaskTracker, cancel: CancellationToken, raft: Raft<TypeConfig>, store: Store) {
    let mut metrics = raft.metrics();
    tasks.spawn(async move {
        let mut last_request = 0u64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = metrics.changed() => if changed.is_err() { break },
            }
            let (applied, last_snapshot) = {
                let m = metrics.borrow_and_update();
                (
                    m.last_applied.map_or(0, |l| l.index),
                    m.snapshot.map_or(0, |l| l.index),
                )
            };
            let every = store.view(interval);
            if due(applied, last_snapshot, last_request, every) {
                tracing::debug!(applied, last_snapshot, every, "snapshot due");
                last_request = applied;
                if let Err(e) = raft.trigger().snapshot().await {
                    tracing::warn!(error = %e, "cannot trigger a raft snapshot");
                    break;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_every_interval_entries_and_not_twice() {
        assert!(!due(4, 0, 0, 5));
        assert!(due(5, 0, 0, 5));
        // Requested at 5, still building: not again at 6.
        assert!(!due(6, 0, 5, 5));
        assert!(due(10, 0, 5, 5));
        // The snapshot at 10 landed: the next is due at 15.
        assert!(!due(14, 10, 10, 5));
        assert!(due(15, 10, 10, 5));
    }
}
