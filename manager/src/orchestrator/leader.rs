//! [`LeaderComponents`]: runs the leader-only loops — replicated and global orchestrators,
//! updater, task reaper, scheduler — while this manager is the Raft leader, and stops them
//! when it is not.
//!
//! Invariants:
//! - The loops run only between a "became leader" and the next "lost leadership" signal, under
//!   a child token of the caller's; on loss they are cancelled **and awaited** before the
//!   supervisor waits for leadership again, so two generations never overlap.
//! - When one loop ends early (for example a write found that leadership moved), it is logged
//!   and its siblings are cancelled and drained too; they start again if this manager still
//!   leads after a short pause.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::writer::Writer;
use super::{GlobalOrchestrator, OrchestratorConfig, ReplicatedOrchestrator, TaskReaper, Updater};
use crate::raft::Leadership;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::store::Store;

/// A leadership signal: `bool` ("is leader") or the Raft node's [`Leadership`].
pub trait IsLeader {
    /// Whether this manager is the leader.
    fn is_leader(&self) -> bool;
}

impl IsLeader for bool {
    fn is_leader(&self) -> bool {
        *self
    }
}

impl IsLeader for Leadership {
    fn is_leader(&self) -> bool {
        self.is_self
    }
}

/// Settings of every leader-only loop.
#[derive(Debug, Clone, Default)]
pub struct LeaderConfig {
    /// Orchestrators and task reaper.
    pub orchestrator: OrchestratorConfig,
    /// Scheduler.
    pub scheduler: SchedulerConfig,
}

/// Why the supervisor stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    /// The leadership signal's sender is gone (the Raft node shut down).
    #[error("leadership signal closed")]
    SignalClosed,
}

/// Pause before starting the loops again after one ended early while still leader.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Starts and stops the leader-only loops with leadership.
pub struct LeaderComponents {
    store: Store,
    writer: Arc<dyn Writer>,
    cfg: LeaderConfig,
}

enum Stop {
    Shutdown,
    Closed,
    LostLeadership,
    ComponentEnded,
}

impl LeaderComponents {
    /// Loops that will read `store` and write through `writer`.
    pub fn new(store: Store, writer: Arc<dyn Writer>, cfg: LeaderConfig) -> Self {
        LeaderComponents { store, writer, cfg }
    }

    /// Follows `leadership` until `cancel` fires (Ok, after the loops are drained) or the
    /// signal closes (Err, after the loops are drained).
    pub async fn run<L: IsLeader + Send + Sync + 'static>(
        self,
        mut leadership: watch::Receiver<L>,
        cancel: CancellationToken,
    ) -> Result<(), LeaderError> {
        loop {
            while !leadership.borrow_and_update().is_leader() {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    changed = leadership.changed() => {
                        if changed.is_err() {
                            return Err(LeaderError::SignalClosed);
                        }
                    }
                }
            }
            tracing::info!("leader: starting orchestrators, updater, task reaper and scheduler");
            let term = cancel.child_token();
            let mut set = self.spawn_all(&term);
            let stop = loop {
                tokio::select! {
                    _ = cancel.cancelled() => break Stop::Shutdown,
                    changed = leadership.changed() => match changed {
                        Err(_) => break Stop::Closed,
                        Ok(()) => {
                            if !leadership.borrow_and_update().is_leader() {
                                break Stop::LostLeadership;
                            }
                        }
                    },
                    Some(joined) = set.join_next() => {
                        log_end(joined, true);
                        break Stop::ComponentEnded;
                    }
                }
            };
            term.cancel();
            while let Some(joined) = set.join_next().await {
                log_end(joined, false);
            }
            tracing::info!("leader components stopped");
            match stop {
                Stop::Shutdown => return Ok(()),
                Stop::Closed => return Err(LeaderError::SignalClosed),
                Stop::LostLeadership => {}
                Stop::ComponentEnded => {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(RESTART_PAUSE) => {}
                    }
                }
            }
        }
    }

    fn spawn_all(&self, term: &CancellationToken) -> JoinSet<(&'static str, Result<(), String>)> {
        let mut set = JoinSet::new();
        let (store, writer, ocfg) = (&self.store, &self.writer, &self.cfg.orchestrator);
        let r = ReplicatedOrchestrator::new(store.clone(), writer.clone(), ocfg.clone());
        let t = term.clone();
        set.spawn(async move {
            (
                "replicated orchestrator",
                r.run(t).await.map_err(|e| e.to_string()),
            )
        });
        let g = GlobalOrchestrator::new(store.clone(), writer.clone(), ocfg.clone());
        let t = term.clone();
        set.spawn(async move {
            (
                "global orchestrator",
                g.run(t).await.map_err(|e| e.to_string()),
            )
        });
        let u = Updater::new(store.clone(), writer.clone(), ocfg.clone());
        let t = term.clone();
        set.spawn(async move { ("updater", u.run(t).await.map_err(|e| e.to_string())) });
        let reaper = TaskReaper::new(store.clone(), writer.clone(), ocfg.clone());
        let t = term.clone();
        set.spawn(async move {
            (
                "task reaper",
                reaper.run(t).await.map_err(|e| e.to_string()),
            )
        });
        let s = Scheduler::new(store.clone(), writer.clone(), self.cfg.scheduler.clone());
        let t = term.clone();
        set.spawn(async move { ("scheduler", s.run(t).await.map_err(|e| e.to_string())) });
        let a = crate::allocator::Allocator::new(
            store.clone(),
            writer.clone(),
            crate::allocator::AllocatorConfig::with_clock(ocfg.clock.clone()),
        );
        let t = term.clone();
        set.spawn(async move { ("allocator", a.run(t).await.map_err(|e| e.to_string())) });
        set
    }
}

fn log_end(
    joined: Result<(&'static str, Result<(), String>), tokio::task::JoinError>,
    early: bool,
) {
    match joined {
        Ok((name, Ok(()))) if early => {
            tracing::warn!(component = name, "leader component ended early")
        }
        Ok((name, Ok(()))) => tracing::debug!(component = name, "leader component stopped"),
        Ok((name, Err(e))) => {
            tracing::warn!(component = name, error = %e, "leader component failed")
        }
        Err(e) => tracing::error!(error = %e, "leader component panicked or was aborted"),
    }
}
