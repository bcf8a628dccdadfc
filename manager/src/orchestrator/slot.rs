//! The decision for one slot (a replica number, or a node of a global service), shared by the
//! replicated and global orchestrators: a pure function from the slot's tasks, the nodes and
//! the time to a list of [`Decision`]s.
//!
//! Invariant, "a slot never runs twice":
//! - at most one task per slot is runnable (desired READY or RUNNING). A replacement is created
//!   in the same batch that retires its predecessor (one [`Unit`]), and any extra runnable task
//!   is retired;
//! - a replacement whose predecessor may still be running on a live node (drained node, scaled
//!   back up, node back from DOWN) is created with desired READY and released to RUNNING only
//!   when every other task of the slot has stopped, its node is DOWN or gone, or
//!   [`DecideConfig::old_task_timeout`] has passed (Swarm's 1 min);
//! - a task on a DOWN node is retired (desired SHUTDOWN) when it is replaced; when the node
//!   comes back, its agent gets that desired state from the dispatcher and stops the task.
//!   While a node is cut off it may keep running its copy (agents keep tasks running without a
//!   manager), as in Swarm; the store never holds two runnable tasks for one slot.
//!
//! A slot stays empty only while the restart policy refuses to restart its newest task: the
//! "given up" state is derived from the store (newest task ended on its own, desired
//! SHUTDOWN, policy says no), never kept in memory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_proto::v1::{Node, NodeAvailability, NodeState, Service, Task, TaskState};

use super::restart::RestartPolicy;
use super::task::{
    SlotKey, created_at, desired, ended_by_itself, is_assigned, is_runnable, new_task, observed,
    retired, started,
};
use super::writer::Unit;
use crate::store::{StoreAction, Tables};

/// One decision about one slot. Each becomes one [`Unit`] of store actions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    /// The slot has no runnable task: create one wanting `desired`.
    Create {
        /// The slot.
        slot: SlotKey,
        /// RUNNING, or READY while an older task of the slot may still run.
        desired: TaskState,
    },
    /// `task` ended and its restart policy allows another attempt: retire it and create its
    /// replacement in the same slot (desired READY while the restart delay runs).
    Restart {
        /// The ended task.
        task: String,
        /// The replacement's desired state.
        desired: TaskState,
    },
    /// `task`'s node is down, gone or drained: retire it and create a replacement that the
    /// scheduler places elsewhere (replicated services only).
    Reschedule {
        /// The task to move.
        task: String,
        /// The replacement's desired state (READY while `task` may still run).
        desired: TaskState,
    },
    /// `task` ended and its restart policy refuses another attempt: retire it; the slot stays
    /// empty.
    GiveUp {
        /// The ended task.
        task: String,
    },
    /// A replacement waiting in READY may start now (desired RUNNING).
    Start {
        /// The waiting task.
        task: String,
    },
    /// Stop `task` without replacement: its global node is no longer eligible, or it is an
    /// extra runnable task of its slot.
    Shutdown {
        /// The task.
        task: String,
    },
    /// The slot is beyond the replica count (scale down): desired REMOVE, and the task reaper
    /// deletes the task once it stopped.
    Remove {
        /// The task.
        task: String,
    },
}

/// Settings of the pure decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideConfig {
    /// How long a replacement waits for its predecessor to stop before starting anyway.
    pub old_task_timeout: Duration,
}

impl Default for DecideConfig {
    fn default() -> Self {
        DecideConfig {
            old_task_timeout: Duration::from_secs(60),
        }
    }
}

/// The decisions for a service, and when to look again if nothing else changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The decisions, one per slot change.
    pub decisions: Vec<Decision>,
    /// The earliest time a decision may change with time alone (restart delay, old-task wait).
    pub wake_at: Option<SystemTime>,
}

impl Plan {
    pub(crate) fn wake(&mut self, at: SystemTime) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// What the slot's service mode says about its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotMode {
    /// Replicated: tasks on DOWN, gone or drained nodes move elsewhere.
    Replicated,
    /// Global: whether the node may get a new task, and whether its tasks must stop.
    Global {
        /// The node is ready, active and satisfies the constraints.
        create: bool,
        /// The node is down, gone, drained or no longer satisfies the constraints.
        retire: bool,
    },
}

/// Why a replicated task must leave its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// The node is DOWN or was removed: the task cannot be reached.
    Down,
    /// The node is drained: the task is stopped there.
    Drain,
}

fn leave_reason(node: Option<&Arc<Node>>) -> Option<Leave> {
    match node {
        None => Some(Leave::Down),
        Some(n) => {
            let state = n.status.as_ref().map_or(0, |s| s.state);
            let availability = n.spec.as_ref().map_or(0, |s| s.availability);
            if state == NodeState::Down as i32 {
                Some(Leave::Down)
            } else if availability == NodeAvailability::Drain as i32 {
                Some(Leave::Drain)
            } else {
                None
            }
        }
    }
}

/// Whether `task` may be running right now: it reached a node, has not ended, and its node
/// is neither gone nor DOWN.
pub(crate) fn may_run(tables: &Tables, task: &Task) -> bool {
    if !is_assigned(task) || observed(task).is_terminal() || task.node_id.is_empty() {
        return false;
    }
    tables
        .get::<Node>(&task.node_id)
        .is_some_and(|n| n.status.as_ref().map_or(0, |s| s.state) != NodeState::Down as i32)
}

/// Decides one slot. `tasks` are all the slot's tasks, oldest first.
pub(crate) fn decide_slot(
    tables: &Tables,
    key: &SlotKey,
    tasks: &[Arc<Task>],
    mode: SlotMode,
    now: SystemTime,
    cfg: &DecideConfig,
    plan: &mut Plan,
) {
    let runnable: Vec<&Arc<Task>> = tasks.iter().filter(|t| is_runnable(t)).collect();
    let Some((current, extras)) = runnable.split_last() else {
        let wanted = match mode {
            SlotMode::Replicated => true,
            SlotMode::Global { create, .. } => create,
        };
        if !wanted {
            return;
        }
        if let Some(head) = tasks.last()
            && desired(head) == TaskState::Shutdown
            && ended_by_itself(head)
            && !RestartPolicy::of(head).allows_restart(head, tasks, now)
        {
            // Given up by the restart policy.
            return;
        }
        let desired = if tasks.iter().any(|t| may_run(tables, t)) {
            TaskState::Ready
        } else {
            TaskState::Running
        };
        plan.decisions.push(Decision::Create {
            slot: key.clone(),
            desired,
        });
        return;
    };
    for extra in extras {
        plan.decisions.push(Decision::Shutdown {
            task: extra.id.clone(),
        });
    }
    let t = *current;
    let others_may_run = tasks.iter().any(|o| o.id != t.id && may_run(tables, o));
    if let SlotMode::Global { retire: true, .. } = mode {
        plan.decisions
            .push(Decision::Shutdown { task: t.id.clone() });
        return;
    }
    if observed(t).is_terminal() {
        let policy = RestartPolicy::of(t);
        if policy.allows_restart(t, tasks, now) {
            let delayed = !policy.delay.is_zero();
            let desired = if delayed || others_may_run {
                TaskState::Ready
            } else {
                TaskState::Running
            };
            plan.decisions.push(Decision::Restart {
                task: t.id.clone(),
                desired,
            });
            if delayed {
                plan.wake(now + policy.delay);
            }
        } else {
            plan.decisions.push(Decision::GiveUp { task: t.id.clone() });
        }
        return;
    }
    if mode == SlotMode::Replicated && !t.node_id.is_empty() {
        match leave_reason(tables.get::<Node>(&t.node_id).as_ref()) {
            Some(Leave::Down) => {
                let desired = if others_may_run {
                    TaskState::Ready
                } else {
                    TaskState::Running
                };
                plan.decisions.push(Decision::Reschedule {
                    task: t.id.clone(),
                    desired,
                });
                return;
            }
            Some(Leave::Drain) => {
                let desired = if others_may_run || may_run(tables, t) {
                    TaskState::Ready
                } else {
                    TaskState::Running
                };
                plan.decisions.push(Decision::Reschedule {
                    task: t.id.clone(),
                    desired,
                });
                return;
            }
            None => {}
        }
    }
    if desired(t) == TaskState::Ready {
        decide_start(t, tasks, others_may_run, now, cfg, plan);
    }
}

/// A task waiting in READY starts once its restart delay (if it replaces a task that ended
/// on its own) has passed and no other task of the slot may still run (or the wait timed out).
fn decide_start(
    t: &Arc<Task>,
    tasks: &[Arc<Task>],
    others_may_run: bool,
    now: SystemTime,
    cfg: &DecideConfig,
    plan: &mut Plan,
) {
    let created = created_at(t);
    let predecessor = tasks
        .iter()
        .take_while(|o| o.id != t.id)
        .filter(|o| created_at(o) <= created)
        .last();
    let delay_until = if predecessor.is_some_and(|p| ended_by_itself(p)) {
        created + RestartPolicy::of(t).delay
    } else {
        created
    };
    let stop_deadline = created + cfg.old_task_timeout;
    let waiting_for_stop = others_may_run && now < stop_deadline;
    if now < delay_until {
        plan.wake(delay_until);
    } else if waiting_for_stop {
        plan.wake(stop_deadline);
    } else {
        plan.decisions.push(Decision::Start { task: t.id.clone() });
    }
}

/// The store actions of `decision` about a task of `service`, as one unit.
pub(crate) fn to_unit(
    tables: &Tables,
    service: &Service,
    decision: &Decision,
    now: SystemTime,
) -> Option<Unit> {
    let task = |id: &str| tables.get::<Task>(id);
    let unit = match decision {
        Decision::Create { slot, desired } => {
            vec![StoreAction::Create(
                new_task(service, slot, *desired, now).into(),
            )]
        }
        Decision::Restart { task: id, desired } | Decision::Reschedule { task: id, desired } => {
            let old = task(id)?;
            let slot = SlotKey::of(&old);
            vec![
                StoreAction::Update(retired(&old, TaskState::Shutdown, now).into()),
                StoreAction::Create(new_task(service, &slot, *desired, now).into()),
            ]
        }
        Decision::GiveUp { task: id } | Decision::Shutdown { task: id } => {
            let t = task(id)?;
            vec![StoreAction::Update(
                retired(&t, TaskState::Shutdown, now).into(),
            )]
        }
        Decision::Remove { task: id } => {
            let t = task(id)?;
            vec![StoreAction::Update(
                retired(&t, TaskState::Remove, now).into(),
            )]
        }
        Decision::Start { task: id } => {
            let t = task(id)?;
            vec![StoreAction::Update(started(&t).into())]
        }
    };
    Some(unit)
}
