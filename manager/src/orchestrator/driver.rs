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
//! - A lagging or reset watch leads to a fresh subscription and a full reconcile; nothing
//!   queues without bound.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::OrchestratorError;
use super::writer::{Unit, WriteFailure, Writer, pack, without_refused};
use crate::store::{ChangeSet, Store, Tables, Watch, WatchError};

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
async fn write_all<R: Reconciler>(
    r: &mut R,
    writer: &dyn Writer,
    units: Vec<Unit>,
    pace: &Pace,
    cancel: &CancellationToken,
) -> Result<(), OrchestratorError> {
    for (batch, bounds) in pack(units, pace.max_batch) {
        let mut next = Some((batch, bounds));
        while let Some((batch, bounds)) = next.take() {
            if batch.is_empty() {
                break;
            }
            match writer.write(batch.clone()).await {
                Ok(_) => {}
                Err(WriteFailure::Refused(e)) => {
                    let ((rest, rest_bounds), dropped) = without_refused(batch, &bounds, &e);
                    tracing::debug!(
                        component = r.name(),
                        refused = dropped.len(),
                        error = %e,
                        "batch refused; retrying the rest"
                    );
                    for unit in &dropped {
                        r.mark_refused(unit);
                    }
                    if dropped.is_empty() {
                        // The refusal named no action of the batch: decide everything again.
                        r.mark_all();
                    } else {
                        next = Some((rest, rest_bounds));
                    }
                }
                Err(WriteFailure::NotLeader(m)) => return Err(OrchestratorError::NotLeader(m)),
                Err(WriteFailure::Fatal(m)) => return Err(OrchestratorError::Fatal(m)),
                Err(WriteFailure::Unavailable(m)) => {
                    tracing::warn!(component = r.name(), error = %m, "store write failed; retrying later");
                    r.mark_all();
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(pace.backoff) => {}
                    }
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
