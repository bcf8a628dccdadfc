//! Places PENDING tasks on nodes (leader only). Only this module writes `task.node_id`
//! (global tasks are created on their node, and the scheduler confirms them).
//!
//! A round ([`schedule`]) filters nodes — available, resources by reservation, constraints,
//! platform, host-mode ports, max replicas per node — then spreads tasks (placement
//! preferences first, then fewest tasks of the service, then fewest tasks overall). Placed
//! tasks become ASSIGNED with their node; all decisions of a round are written in batches of
//! many tasks. A task that fits nowhere stays PENDING with the reason in `status.err`, e.g.
//! `no suitable node (insufficient memory on 3 nodes)`, and is tried again:
//! - when anything that could make room changes: a node (state, availability, labels,
//!   resources) or a task (one ending frees its reservation and ports), and
//! - every [`SchedulerConfig::retry_interval`] (default 2 s) while any task is unplaced,
//!
//! so no task is ever stuck PENDING silently. The first change after a quiet period starts a
//! round at once; changes that follow a recent round settle for
//! [`SchedulerConfig::batch_gap`] (10 ms; at most [`SchedulerConfig::batch_max_delay`],
//! 100 ms), so a burst of new tasks is placed in few rounds.

pub mod constraint;
pub mod filter;
pub mod nodeinfo;
pub mod place;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_proto::v1::{Task, TaskState, TaskStatus};
use tokio_util::sync::CancellationToken;

use crate::orchestrator::task::{MSG_PENDING, is_runnable, observed};
use crate::orchestrator::{
    Clock, OrchestratorError, Pace, Reconciler, SystemClock, Unit, Writer, drive, to_timestamp,
};
use crate::store::{ChangeSet, Event, Object, Store, StoreAction, Tables};

pub use place::{Round, pending_tasks, schedule};

/// Status message of a task the scheduler placed (Swarm's wording).
pub const MSG_ASSIGNED: &str = "scheduler assigned task to node";

/// Why the scheduler stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
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

impl From<OrchestratorError> for SchedulerError {
    fn from(e: OrchestratorError) -> Self {
        match e {
            OrchestratorError::NotLeader(m) => SchedulerError::NotLeader(m),
            OrchestratorError::Fatal(m) => SchedulerError::Fatal(m),
            OrchestratorError::StoreClosed => SchedulerError::StoreClosed,
        }
    }
}

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Wall-clock time (status timestamps, recent failures).
    pub clock: Arc<dyn Clock>,
    /// After a change, wait this long for more before a round (default 10 ms).
    pub batch_gap: Duration,
    /// ...but no longer than this after the first change (default 100 ms).
    pub batch_max_delay: Duration,
    /// Retry unplaced tasks this often even when nothing changed (default 2 s).
    pub retry_interval: Duration,
    /// Task updates per store batch at most (default 1000).
    pub max_batch: usize,
    /// Pause after a failed write (no quorum) before trying again (default 1 s).
    pub retry_backoff: Duration,
    /// Full round period, a safety net beside the change stream (default 30 s).
    pub resync_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            clock: Arc::new(SystemClock),
            batch_gap: Duration::from_millis(10),
            batch_max_delay: Duration::from_millis(100),
            retry_interval: Duration::from_secs(2),
            max_batch: 1000,
            retry_backoff: Duration::from_secs(1),
            resync_interval: Duration::from_secs(30),
        }
    }
}

impl SchedulerConfig {
    /// The defaults with another clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        SchedulerConfig {
            clock,
            ..Default::default()
        }
    }
}

/// `task` placed on `node_id`.
fn assigned(task: &Task, node_id: &str, now: SystemTime) -> Task {
    let mut t = task.clone();
    t.node_id = node_id.to_owned();
    t.status = Some(TaskStatus {
        timestamp: Some(to_timestamp(now)),
        state: TaskState::Assigned as i32,
        message: MSG_ASSIGNED.into(),
        ..Default::default()
    });
    t
}

/// `task` with `reason` as its error, or `None` if it already says so.
fn unplaced(task: &Task, reason: &str, now: SystemTime) -> Option<Task> {
    if task.status.as_ref().is_some_and(|s| s.err == reason) {
        return None;
    }
    let mut t = task.clone();
    let status = t.status.get_or_insert_with(TaskStatus::default);
    status.err = reason.to_owned();
    status.message = MSG_PENDING.into();
    status.timestamp = Some(to_timestamp(now));
    Some(t)
}

/// The store actions of a round: one unit per task. Placements are written node by node, so
/// a batch holds whole nodes' tasks and each agent gets its share of a large round in one
/// assignment message rather than one message per batch.
pub fn round_units(tables: &Tables, round: &Round, now: SystemTime) -> Vec<Unit> {
    let mut units = Vec::with_capacity(round.assigned.len() + round.unplaced.len());
    let mut by_node: Vec<&(String, String)> = round.assigned.iter().collect();
    by_node.sort_by(|a, b| a.1.cmp(&b.1));
    for (task_id, node_id) in by_node {
        if let Some(t) = tables.get::<Task>(task_id) {
            units.push(vec![StoreAction::Update(assigned(&t, node_id, now).into())]);
        }
    }
    for (task_id, reason) in &round.unplaced {
        if let Some(t) = tables
            .get::<Task>(task_id)
            .and_then(|t| unplaced(&t, reason, now))
        {
            units.push(vec![StoreAction::Update(t.into())]);
        }
    }
    units
}

fn waiting(t: &Task) -> bool {
    observed(t) == TaskState::Pending && is_runnable(t)
}

struct SchedulerLoop {
    dirty: bool,
    unplaced: usize,
    retry_at: Option<SystemTime>,
    retry_interval: Duration,
}

impl SchedulerLoop {
    /// Whether an event may let a task be placed: a task newly waiting, or (while some are
    /// unplaced) any node change or a task change that may free room.
    fn matters(&self, event: &Event) -> bool {
        match event {
            Event::Created(Object::Task(t)) => waiting(t),
            Event::Updated {
                old: Object::Task(old),
                new: Object::Task(new),
            } => {
                if waiting(new) {
                    // A reason written by the last round changes nothing.
                    !waiting(old) || old.node_id != new.node_id || old.spec != new.spec
                } else {
                    self.unplaced > 0
                }
            }
            Event::Removed(Object::Task(_)) => self.unplaced > 0,
            e => matches!(e.object(), Object::Node(_)) && self.unplaced > 0,
        }
    }
}

impl Reconciler for SchedulerLoop {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn observe(&mut self, changes: &ChangeSet) {
        if !self.dirty {
            self.dirty = changes.events.iter().any(|e| self.matters(e));
        }
    }

    fn mark_all(&mut self) {
        self.dirty = true;
    }

    fn mark_refused(&mut self, _unit: &Unit) {
        self.dirty = true;
    }

    fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn decide(&mut self, tables: &Tables, now: SystemTime) -> Vec<Unit> {
        self.dirty = false;
        let round = schedule(tables, now);
        self.unplaced = round.unplaced.len();
        self.retry_at = (self.unplaced > 0).then(|| now + self.retry_interval);
        if !round.assigned.is_empty() || !round.unplaced.is_empty() {
            tracing::debug!(
                assigned = round.assigned.len(),
                unplaced = round.unplaced.len(),
                "scheduling round"
            );
        }
        round_units(tables, &round, now)
    }

    fn next_wake(&self) -> Option<SystemTime> {
        self.retry_at
    }
}

/// Places pending tasks (leader only).
pub struct Scheduler {
    store: Store,
    writer: Arc<dyn Writer>,
    cfg: SchedulerConfig,
}

impl Scheduler {
    /// A scheduler reading `store` and writing through `writer`.
    pub fn new(store: Store, writer: Arc<dyn Writer>, cfg: SchedulerConfig) -> Self {
        Scheduler { store, writer, cfg }
    }

    /// Runs until `cancel` fires (Ok) or this manager stops being the leader (Err).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), SchedulerError> {
        let pace = Pace {
            max_batch: self.cfg.max_batch,
            resync: self.cfg.resync_interval,
            gap: self.cfg.batch_gap,
            max_delay: self.cfg.batch_max_delay,
            min_interval: Duration::ZERO,
            backoff: self.cfg.retry_backoff,
        };
        let r = SchedulerLoop {
            dirty: true,
            unplaced: 0,
            retry_at: None,
            retry_interval: self.cfg.retry_interval,
        };
        drive(
            r,
            &self.store,
            self.writer.as_ref(),
            self.cfg.clock.as_ref(),
            &pace,
            &cancel,
        )
        .await
        .map_err(SchedulerError::from)
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{NodeState, TaskState};

    use super::*;
    use crate::objs;
    use crate::orchestrator::fixture::*;

    fn looped() -> SchedulerLoop {
        SchedulerLoop {
            dirty: true,
            unplaced: 0,
            retry_at: None,
            retry_interval: Duration::from_secs(2),
        }
    }

    #[test]
    fn unplaced_tasks_arm_the_retry_timer_and_get_their_reason_once() {
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![with_state(node("n1"), NodeState::Down), svc.clone()],
        );
        fx.create(
            2,
            objs![task(
                "t1",
                &svc,
                1,
                "",
                TaskState::Pending,
                TaskState::Running
            )],
        );
        let mut l = looped();
        let units = l.decide(&fx.tables, at(3));
        assert_eq!(units.len(), 1, "the reason is written");
        assert_eq!(l.next_wake(), Some(at(5)));
        assert!(!l.is_dirty());
        fx.apply(4, units.into_iter().flatten().collect::<Vec<_>>().into());
        assert_eq!(
            fx.tables
                .get::<Task>("t1")
                .and_then(|t| t.status.clone())
                .map(|s| s.err),
            Some("no suitable node (1 node not available)".to_string())
        );
        // The same reason is not written again; the timer stays armed.
        assert!(l.decide(&fx.tables, at(5)).is_empty());
        assert_eq!(l.next_wake(), Some(at(7)));
        // The node comes back: placed, timer off.
        fx.update(6, objs![node("n1")]);
        let units = l.decide(&fx.tables, at(6));
        assert_eq!(units.len(), 1);
        match &units[0][0] {
            StoreAction::Update(Object::Task(t)) => {
                assert_eq!(t.node_id, "n1");
                assert_eq!(observed(t), TaskState::Assigned);
                assert_eq!(t.status.as_ref().map(|s| s.err.as_str()), Some(""));
            }
            other => panic!("expected a task update, got {other:?}"),
        }
        assert_eq!(l.next_wake(), None);
    }

    #[test]
    fn a_rounds_placements_are_written_node_by_node() {
        let svc = replicated("s", 9, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), node("n3"), svc.clone()]);
        let tasks: Vec<Task> = (1..=9)
            .map(|i| {
                task(
                    &format!("t{i}"),
                    &svc,
                    i,
                    "",
                    TaskState::Pending,
                    TaskState::Running,
                )
            })
            .collect();
        fx.create(
            2,
            tasks
                .into_iter()
                .map(|t| Object::Task(Arc::new(t)))
                .collect(),
        );
        let mut l = looped();
        let nodes: Vec<String> = l
            .decide(&fx.tables, at(3))
            .into_iter()
            .flatten()
            .map(|a| match a {
                StoreAction::Update(Object::Task(t)) => t.node_id.clone(),
                other => panic!("expected a task update, got {other:?}"),
            })
            .collect();
        // Spread places them n1, n2, n3, n1, …; they are written grouped by node, so a batch
        // cut anywhere holds whole nodes' shares.
        assert_eq!(
            nodes,
            ["n1", "n1", "n1", "n2", "n2", "n2", "n3", "n3", "n3"]
        );
    }

    #[test]
    fn which_changes_start_a_round() {
        let svc = replicated("s", 1, None);
        let pending = task("t1", &svc, 1, "", TaskState::Pending, TaskState::Running);
        let mut with_reason = pending.clone();
        with_reason.status.as_mut().expect("status").err = "no suitable node (x)".into();
        let running = running("t2", &svc, 1, "n1");
        let task_obj = |t: &Task| Object::Task(Arc::new(t.clone()));
        let mut l = looped();
        // Nothing unplaced: only newly waiting tasks matter.
        assert!(l.matters(&Event::Created(task_obj(&pending))));
        assert!(!l.matters(&Event::Created(task_obj(&running))));
        assert!(!l.matters(&Event::Created(Object::Node(Arc::new(node("n1"))))));
        assert!(!l.matters(&Event::Updated {
            old: task_obj(&pending),
            new: task_obj(&with_reason)
        }));
        // With tasks unplaced, node changes and tasks ending matter too.
        l.unplaced = 1;
        assert!(l.matters(&Event::Created(Object::Node(Arc::new(node("n1"))))));
        assert!(l.matters(&Event::Removed(task_obj(&running))));
        assert!(l.matters(&Event::Updated {
            old: task_obj(&running),
            new: task_obj(&observed_as(running.clone(), TaskState::Failed))
        }));
    }
}
