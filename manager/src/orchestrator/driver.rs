//! The one event loop every leader-only control loop runs: subscribe to the store, mark what
//! changes make dirty, decide over a fresh snapshot, write the decisions, and wait for the
//! next change, timer, periodic resync or cancellation. Components only supply the pure parts
//! through [`Reconciler`].
//!
//! Invariants:
//! - Decisions are made on a consistent snapshot taken after every change seen so far, and the
//!   snapshot is dropped before writing (a held snapshot would make each write copy tables).
//! - Units are never split: a refused batch is resubmitted without the refused units, which are
//!   marked dirty and decided again from fresh state.
//! - A decision's batches are written up to [`WRITES_IN_FLIGHT`] at a time (the log appends
//!   them together); each unit stands alone, so their commit order does not matter.
//! - A lagging or reset watch leads to a fresh subscription and a full reconcile; nothing
//!   queues without bound.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::OrchestratorError;
use super::writer::{Unit, WriteFailure, Writer, pack, without_refused};
use crate::store::{ApplyError, ChangeSet, Store, StoreActions, Tables, Watch, WatchError};

/// The pure side of a control loop.
pub(crate) trait Reconciler: Send {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Marks what `changes` make dirty.
    fn observe(&mut self, changes: &ChangeSet);
    /// Marks everything dirty (start, lag, resync).
    fn mark_all(&mut self);
    /// Marks dirty what a refused unit was about.
    fn mark_refused(&mut self, unit: &Unit);
    /// Whether anything is dirty.
    fn is_dirty(&self) -> bool;
    /// Decides over the dirty part of `tables` (clearing it) and any timer due at `now`.
    fn decide(&mut self, tables: &Tables, now: SystemTime) -> Vec<Unit>;
    /// When a timer next falls due.
    fn next_wake(&self) -> Option<SystemTime>;
}

/// How the loop paces itself.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    /// Actions per batch at most (units are never split).
    pub max_batch: usize,
    /// Full reconcile period.
    pub resync: Duration,
    /// After a change that follows a recent decision, wait this long for more before
    /// deciding (0 = decide at once). The first change after a quiet period never waits.
    pub gap: Duration,
    /// ...but no longer than this after the first change.
    pub max_delay: Duration,
    /// At least this long between two decisions.
    pub min_interval: Duration,
    /// Wait after the store could not be written (no quorum).
    pub backoff: Duration,
}

/// Runs `r` until `cancel` fires or a write says this manager is no longer leader.
pub(crate) async fn drive<R: Reconciler>(
    mut r: R,
    store: &Store,
    writer: &dyn Writer,
    clock: &dyn super::Clock,
    pace: &Pace,
    cancel: &CancellationToken,
) -> Result<(), OrchestratorError> {
    let mut watch = subscribe(store, &mut r);
    let mut next_resync = Instant::now() + pace.resync;
    let mut last_decide: Option<Instant> = None;
    tracing::debug!(component = r.name(), "control loop started");
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        drain(store, &mut watch, &mut r)?;
        let now = clock.now();
        let due = r.is_dirty() || r.next_wake().is_some_and(|w| w <= now);
        if due {
            if let Some(last) = last_decide {
                let ready_at = last + pace.min_interval;
                if Instant::now() < ready_at {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep_until(ready_at) => {}
                    }
                    continue;
                }
            }
            last_decide = Some(Instant::now());
            let units = {
                let snapshot = store.snapshot();
                r.decide(&snapshot, now)
            };
            if !units.is_empty() {
                write_all(&mut r, writer, units, pace, cancel).await?;
            }
            continue;
        }
        let wake = r
            .next_wake()
            .map(|w| Instant::now() + w.duration_since(clock.now()).unwrap_or(Duration::ZERO));
        let deadline = wake.map_or(next_resync, |w| w.min(next_resync));
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            res = watch.recv() => {
                take(store, &mut watch, &mut r, res)?;
                // Batching costs latency only when there is something to batch: the first
                // change after a quiet period (no decision within `max_delay`) is decided at
                // once; changes that follow a recent decision gather for `gap`.
                let quiet = last_decide.is_none_or(|t| t.elapsed() >= pace.max_delay);
                if !pace.gap.is_zero() && r.is_dirty() && !quiet {
                    gather(store, &mut watch, &mut r, pace, cancel).await?;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= next_resync {
                    r.mark_all();
                    next_resync = Instant::now() + pace.resync;
                }
            }
        }
    }
}

fn subscribe<R: Reconciler>(store: &Store, r: &mut R) -> Watch {
    // The snapshot is not kept: decisions read a fresh one, which is at least as new.
    let (_, watch) = store.subscribe();
    r.mark_all();
    watch
}

/// Handles one receive result.
fn take<R: Reconciler>(
    store: &Store,
    watch: &mut Watch,
    r: &mut R,
    res: Result<std::sync::Arc<ChangeSet>, WatchError>,
) -> Result<(), OrchestratorError> {
    match res {
        Ok(changes) => r.observe(&changes),
        Err(WatchError::Lagged { missed }) => {
            tracing::debug!(
                component = r.name(),
                missed,
                "watch lagged; re-reading the store"
            );
            *watch = subscribe(store, r);
        }
        Err(WatchError::Reset { version }) => {
            tracing::debug!(
                component = r.name(),
                version,
                "store reset; re-reading the store"
            );
            *watch = subscribe(store, r);
        }
        Err(WatchError::Closed) => return Err(OrchestratorError::StoreClosed),
    }
    Ok(())
}

/// Takes in every change set already published.
fn drain<R: Reconciler>(
    store: &Store,
    watch: &mut Watch,
    r: &mut R,
) -> Result<(), OrchestratorError> {
    loop {
        match watch.try_recv() {
            Ok(Some(changes)) => r.observe(&changes),
            Ok(None) => return Ok(()),
            Err(e) => take(store, watch, r, Err(e))?,
        }
    }
}

/// Collects further changes until `gap` passes without one, or `max_delay` after the first.
async fn gather<R: Reconciler>(
    store: &Store,
    watch: &mut Watch,
    r: &mut R,
    pace: &Pace,
    cancel: &CancellationToken,
) -> Result<(), OrchestratorError> {
    let limit = Instant::now() + pace.max_delay;
    loop {
        let until = (Instant::now() + pace.gap).min(limit);
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            res = watch.recv() => take(store, watch, r, res)?,
            _ = tokio::time::sleep_until(until) => return Ok(()),
        }
        if Instant::now() >= limit {
            return Ok(());
        }
    }
}

/// Writes `units` in batches. A refused batch is resubmitted without its refused units (each
/// refusal drops at least one unit, so this ends); on no quorum the rest is abandoned and
/// everything is decided again after a pause.
/// Batches of one decision in flight at once: the log appends them together (one fsync for
/// several), so a large decision (a 50 000-replica service) is committed in a fraction of the
/// time sequential writes take, and the loops after it see large batches, not a trickle.
const WRITES_IN_FLIGHT: usize = 8;

async fn write_all<R: Reconciler>(
    r: &mut R,
    writer: &dyn Writer,
    units: Vec<Unit>,
    pace: &Pace,
    cancel: &CancellationToken,
) -> Result<(), OrchestratorError> {
    let mut batches = pack(units, pace.max_batch)
        .into_iter()
        .filter(|(batch, _)| !batch.is_empty());
    let mut in_flight = FuturesOrdered::new();
    loop {
        while in_flight.len() < WRITES_IN_FLIGHT {
            let Some((batch, bounds)) = batches.next() else {
                break;
            };
            in_flight.push_back(async move {
                let result = writer.write(batch.clone()).await;
                (batch, bounds, result)
            });
        }
        let Some((batch, bounds, result)) = in_flight.next().await else {
            return Ok(());
        };
        let result = match result {
            Err(WriteFailure::Refused(e)) => {
                retry_without_refused(r, writer, batch, bounds, e).await
            }
            other => other.map(|_| ()),
        };
        match result {
            // (`retry_without_refused` settles refusals itself.)
            Ok(()) | Err(WriteFailure::Refused(_)) => {}
            Err(WriteFailure::NotLeader(m)) => return Err(OrchestratorError::NotLeader(m)),
            Err(WriteFailure::Fatal(m)) => return Err(OrchestratorError::Fatal(m)),
            Err(WriteFailure::Unavailable(m)) => {
                tracing::warn!(component = r.name(), error = %m, "store write failed; retrying later");
                // What was not written is decided again from the store once it answers.
                r.mark_all();
                drop(in_flight);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(pace.backoff) => {}
                }
                return Ok(());
            }
        }
    }
}

/// Writes a refused batch again without its refused units (marked for a fresh decision)
/// until what is left is written or empty; any other failure is returned as it came.
async fn retry_without_refused<R: Reconciler>(
    r: &mut R,
    writer: &dyn Writer,
    batch: StoreActions,
    bounds: Vec<usize>,
    error: ApplyError,
) -> Result<(), WriteFailure> {
    let (mut batch, mut bounds, mut error) = (batch, bounds, error);
    loop {
        let ((rest, rest_bounds), dropped) = without_refused(batch, &bounds, &error);
        tracing::debug!(
            component = r.name(),
            refused = dropped.len(),
            error = %error,
            "batch refused; retrying the rest"
        );
        for unit in &dropped {
            r.mark_refused(unit);
        }
        if dropped.is_empty() {
            r.mark_all();
            return Ok(());
        }
        if rest.is_empty() {
            return Ok(());
        }
        match writer.write(rest.clone()).await {
            Err(WriteFailure::Refused(e)) => (batch, bounds, error) = (rest, rest_bounds, e),
            other => return other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    use berth_proto::v1::Node;
    use futures::future::BoxFuture;

    use super::*;
    use crate::orchestrator::Clock;
    use crate::orchestrator::clock::TokioClock;
    use crate::orchestrator::fixture::{at, node};
    use crate::orchestrator::writer::LocalWriter;
    use crate::store::{Object, StoreAction};

    /// Applies to a local store after a pause, counting the writes in flight at once.
    struct SlowWriter {
        inner: LocalWriter,
        in_flight: AtomicUsize,
        peak: AtomicUsize,
        writes: AtomicUsize,
    }

    impl Writer for SlowWriter {
        fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>> {
            Box::pin(async move {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(now, Ordering::SeqCst);
                self.writes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.inner.apply(batch)
            })
        }
    }

    /// Records what the driver marks.
    #[derive(Default)]
    struct Marks {
        refused: Mutex<Vec<Unit>>,
        all: AtomicUsize,
    }

    impl Reconciler for &Marks {
        fn name(&self) -> &'static str {
            "test"
        }
        fn observe(&mut self, _changes: &ChangeSet) {}
        fn mark_all(&mut self) {
            self.all.fetch_add(1, Ordering::SeqCst);
        }
        fn mark_refused(&mut self, unit: &Unit) {
            self.refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(unit.clone());
        }
        fn is_dirty(&self) -> bool {
            false
        }
        fn decide(&mut self, _tables: &Tables, _now: SystemTime) -> Vec<Unit> {
            Vec::new()
        }
        fn next_wake(&self) -> Option<SystemTime> {
            None
        }
    }

    fn create_node(id: &str) -> Unit {
        let mut b = StoreActions::new();
        b.create(node(id));
        b.actions
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_decision_is_written_several_batches_at_a_time_and_refusals_stay_unit_wise() {
        let store = Store::new();
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(at(1_000)));
        let writer = SlowWriter {
            inner: LocalWriter::new(store.clone(), clock),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        };
        // n013 exists already: the batch that creates it again is refused.
        writer
            .inner
            .apply(StoreActions {
                actions: create_node("n013"),
            })
            .expect("setup");
        let units: Vec<Unit> = (0..100).map(|i| create_node(&format!("n{i:03}"))).collect();
        let pace = Pace {
            max_batch: 10,
            resync: Duration::from_secs(30),
            gap: Duration::ZERO,
            max_delay: Duration::ZERO,
            min_interval: Duration::ZERO,
            backoff: Duration::from_secs(1),
        };
        let marks = Marks::default();
        let mut r = &marks;
        let started = Instant::now();
        write_all(&mut r, &writer, units, &pace, &CancellationToken::new())
            .await
            .expect("written");

        // Ten batches, at most WRITES_IN_FLIGHT at once, plus the refused batch's rest.
        assert_eq!(writer.peak.load(Ordering::SeqCst), WRITES_IN_FLIGHT);
        assert_eq!(writer.writes.load(Ordering::SeqCst), 11);
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "pipelined, not ten sequential writes: {:?}",
            started.elapsed()
        );
        // Every other node is there; only the conflicting unit was handed back.
        assert_eq!(store.list::<Node>().len(), 100);
        let refused = marks
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(refused.len(), 1);
        match &refused[0][..] {
            [StoreAction::Create(Object::Node(n))] => assert_eq!(n.id, "n013"),
            other => panic!("unexpected refused unit {other:?}"),
        }
        assert_eq!(marks.all.load(Ordering::SeqCst), 0);
    }
}
