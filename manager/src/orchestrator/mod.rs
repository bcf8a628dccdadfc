//! The leader-only orchestration loops: the replicated and global orchestrators, the task
//! reaper, and [`LeaderComponents`], which runs them (with the scheduler) while this manager
//! leads.
//!
//! Components never call each other. Each reads a consistent snapshot of the store plus the
//! stream of changes after it, decides with a pure function (fixture in, decision table out:
//! [`reconcile_replicated`], [`reconcile_global`], [`reap`]), and writes its decisions back as
//! [`StoreActions`](crate::store::StoreActions) batches through a [`Writer`] — Raft in
//! production, [`LocalWriter`] in tests. Time comes from a [`Clock`] and tokio timers, so
//! tests run on paused time.
//!
//! Architecture invariants:
//! - A task is never restarted or moved: a new attempt is a new task in the same slot.
//! - At most one task per slot is runnable (desired ≤ RUNNING); see [`slot`] for how a slot
//!   never runs twice. The one exception is a start-first update, where the replacement runs
//!   beside the task it replaces until it is up (see [`update`]).
//! - The orchestrators write `desired_state` and create tasks; they write a task's observed
//!   state only to end a task that never reached a node. Only the scheduler writes
//!   `node_id`, except for global tasks, which are created on their node.
//! - Every decision is derived from the store (restart history included), so a new leader
//!   decides the same.
//!
//! New tasks on networks or with published ports start in state NEW; the allocator
//! ([`crate::allocator`], run here beside the other loops) gives them their addresses and the
//! service's endpoint and moves them to PENDING. Other tasks start in PENDING, for the
//! scheduler.

mod clock;
mod driver;
#[cfg(test)]
pub(crate) mod fixture;
mod global;
mod leader;
#[cfg(test)]
mod loop_tests;
mod reaper;
mod replicated;
pub mod restart;
pub mod slot;
pub mod task;
pub mod update;
mod writer;

use std::sync::Arc;
use std::time::Duration;

pub use clock::{Clock, SystemClock, TokioClock, from_timestamp, to_timestamp};
pub use global::{GlobalOrchestrator, reconcile_global};
pub use leader::{IsLeader, LeaderComponents, LeaderConfig, LeaderError};
pub use reaper::{DEFAULT_TASK_HISTORY_LIMIT, ReapDecision, TaskReaper, reap};
pub use replicated::{ReplicatedOrchestrator, reconcile_replicated};
pub use slot::{DecideConfig, Decision, Plan};
pub use update::{Updater, UpdaterSettings};
pub use writer::{LocalWriter, Unit, WriteFailure, Writer};

pub(crate) use driver::{Pace, Reconciler, drive};

/// Why an orchestration loop stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrchestratorError {
    /// A write found that this manager is no longer the leader.
    #[error("lost leadership: {0}")]
    NotLeader(String),
    /// Replication stopped for good.
    #[error("replication stopped: {0}")]
    Fatal(String),
    /// The store's change stream closed.
    #[error("store change stream closed")]
    StoreClosed,
}

/// Settings of the orchestrators and the task reaper.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Wall-clock time for decisions.
    pub clock: Arc<dyn Clock>,
    /// How long a replacement waits for its predecessor to stop before starting anyway
    /// (Swarm: 1 min).
    pub old_task_timeout: Duration,
    /// Full reconcile period, a safety net beside the change stream (default 30 s).
    pub resync_interval: Duration,
    /// Store actions per batch at most (default 500).
    pub max_batch: usize,
    /// Pause after a failed write (no quorum) before deciding again (default 1 s).
    pub retry_backoff: Duration,
    /// Task reaper period (Swarm: 250 ms).
    pub reaper_interval: Duration,
    /// Rolling updates (progress deadline).
    pub updater: UpdaterSettings,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            clock: Arc::new(SystemClock),
            old_task_timeout: Duration::from_secs(60),
            resync_interval: Duration::from_secs(30),
            max_batch: 500,
            retry_backoff: Duration::from_secs(1),
            reaper_interval: Duration::from_millis(250),
            updater: UpdaterSettings::default(),
        }
    }
}

impl OrchestratorConfig {
    /// The defaults with another clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        OrchestratorConfig {
            clock,
            ..Default::default()
        }
    }

    pub(crate) fn decide(&self) -> DecideConfig {
        DecideConfig {
            old_task_timeout: self.old_task_timeout,
        }
    }

    pub(crate) fn pace(&self) -> Pace {
        Pace {
            max_batch: self.max_batch,
            resync: self.resync_interval,
            gap: Duration::ZERO,
            max_delay: Duration::ZERO,
            min_interval: Duration::ZERO,
            backoff: self.retry_backoff,
        }
    }
}
