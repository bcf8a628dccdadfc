//! The task reaper: keeps each slot's history (per node for global services) to the
//! cluster's `task_history_retention_limit`, deletes tasks removed by scale-down once they
//! stopped, and cleans up after deleted services.
//!
//! Rules (Swarm's, with one addition):
//! - a slot keeps at most `limit` tasks (default 5; 0 keeps none; negative keeps all). When
//!   the restart policy has `max_attempts > 0`, at least `max_attempts + 1` are kept so that
//!   restart history (derived from the tasks) stays exact;
//! - only ended tasks (after RUNNING), or tasks that never reached a node and are no longer
//!   wanted, are deleted, oldest first;
//! - the newest task of a slot is never deleted unless it is desired REMOVE: a slot whose
//!   restart policy gave up keeps its last task, which is what keeps the slot empty;
//! - tasks desired REMOVE are deleted once they stopped or if they never reached a node;
//! - tasks of a deleted service get desired REMOVE (their agents stop them) and are deleted
//!   once stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_proto::v1::{Cluster, Service, Task, TaskState};
use tokio_util::sync::CancellationToken;

use super::driver::{Pace, Reconciler, drive};
use super::restart::RestartPolicy;
use super::task::{SlotKey, by_age, desired, observed, retired};
use super::writer::{Unit, Writer};
use super::{OrchestratorConfig, OrchestratorError};
use crate::store::{By, ChangeSet, Object, ObjectKind, Store, StoreAction, Tables};

/// Tasks kept per slot when the cluster does not say (Docker's default).
pub const DEFAULT_TASK_HISTORY_LIMIT: i64 = 5;

/// What the reaper does to one task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReapDecision {
    /// Delete the task from the store.
    Delete(String),
    /// Its service is gone: desired REMOVE, so that its agent stops it.
    MarkRemove(String),
}

/// The cluster's task history limit (default 5 when there is no cluster or no setting).
pub fn history_limit(tables: &Tables) -> i64 {
    let cluster = tables
        .get_by_name::<Cluster>("default")
        .or_else(|| tables.list::<Cluster>().into_iter().next());
    cluster
        .and_then(|c| c.spec.as_ref().and_then(|s| s.orchestration))
        .map_or(DEFAULT_TASK_HISTORY_LIMIT, |o| {
            o.task_history_retention_limit
        })
}

fn never_assigned(t: &Task) -> bool {
    observed(t) < TaskState::Assigned
}

/// The reaper's decisions for the tasks of `services` (every service when `None`), keeping
/// `limit` tasks per slot.
pub fn reap(tables: &Tables, services: Option<&BTreeSet<String>>, limit: i64) -> Vec<ReapDecision> {
    let mut by_service: BTreeMap<String, Vec<Arc<Task>>> = BTreeMap::new();
    match services {
        None => {
            for t in tables.table::<Task>().iter() {
                if !t.service_id.is_empty() {
                    by_service
                        .entry(t.service_id.clone())
                        .or_default()
                        .push(t.clone());
                }
            }
        }
        Some(ids) => {
            for id in ids {
                let tasks = tables.find::<Task>(&By::ServiceId(id.clone()));
                if !tasks.is_empty() {
                    by_service.insert(id.clone(), tasks);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (service_id, tasks) in by_service {
        if tables.get::<Service>(&service_id).is_none() {
            for t in tasks {
                if never_assigned(&t) || observed(&t).is_terminal() {
                    out.push(ReapDecision::Delete(t.id.clone()));
                } else if desired(&t) < TaskState::Remove {
                    out.push(ReapDecision::MarkRemove(t.id.clone()));
                }
            }
            continue;
        }
        let mut slots: BTreeMap<SlotKey, Vec<Arc<Task>>> = BTreeMap::new();
        for t in tasks {
            slots.entry(SlotKey::of(&t)).or_default().push(t);
        }
        for mut slot in slots.into_values() {
            slot.sort_by(by_age);
            reap_slot(&slot, limit, &mut out);
        }
    }
    out
}

/// The reaper's decisions for the given slots only (by service), keeping `limit` tasks per
/// slot: what a task change needs looked at, without walking every task of a large service.
/// A service that is gone is reaped whole.
pub fn reap_slots(
    tables: &Tables,
    slots: &BTreeMap<String, BTreeSet<SlotKey>>,
    limit: i64,
) -> Vec<ReapDecision> {
    let mut out = Vec::new();
    let mut gone = BTreeSet::new();
    for (service_id, keys) in slots {
        if tables.get::<Service>(service_id).is_none() {
            gone.insert(service_id.clone());
            continue;
        }
        for key in keys {
            let mut slot: Vec<Arc<Task>> = match key {
                SlotKey::Replica(n) => tables.find::<Task>(&By::Slot {
                    service_id: service_id.clone(),
                    slot: *n,
                }),
                SlotKey::Node(node) => tables
                    .table::<Task>()
                    .find(&By::NodeId(node.clone()))
                    .filter(|t| &t.service_id == service_id && t.slot == 0)
                    .cloned()
                    .collect(),
            };
            slot.sort_by(by_age);
            reap_slot(&slot, limit, &mut out);
        }
    }
    if !gone.is_empty() {
        out.extend(reap(tables, Some(&gone), limit));
    }
    out
}

fn reap_slot(slot: &[Arc<Task>], limit: i64, out: &mut Vec<ReapDecision>) {
    let mut kept: Vec<&Arc<Task>> = Vec::with_capacity(slot.len());
    for t in slot {
        if desired(t) == TaskState::Remove && (never_assigned(t) || observed(t).is_terminal()) {
            out.push(ReapDecision::Delete(t.id.clone()));
        } else {
            kept.push(t);
        }
    }
    let Ok(limit) = usize::try_from(limit) else {
        return; // negative: keep everything
    };
    let attempts = kept
        .last()
        .map(|t| RestartPolicy::of(t).max_attempts)
        .filter(|&m| m > 0)
        .map_or(0, |m| {
            usize::try_from(m).unwrap_or(usize::MAX).saturating_add(1)
        });
    let keep = limit.max(attempts);
    if kept.len() <= keep {
        return;
    }
    let mut excess = kept.len() - keep;
    let newest = kept.last().map(|t| t.id.clone());
    for t in &kept {
        if excess == 0 {
            break;
        }
        if Some(&t.id) == newest.as_ref() {
            continue;
        }
        let ended = observed(t).is_terminal();
        let abandoned = never_assigned(t) && desired(t) > TaskState::Running;
        if ended || abandoned {
            out.push(ReapDecision::Delete(t.id.clone()));
            excess -= 1;
        }
    }
}

struct ReaperLoop {
    all: bool,
    /// Services to look at whole (created, updated or removed).
    services: BTreeSet<String>,
    /// Slots whose tasks changed, by service.
    slots: BTreeMap<String, BTreeSet<SlotKey>>,
}

impl Reconciler for ReaperLoop {
    fn name(&self) -> &'static str {
        "task reaper"
    }

    fn observe(&mut self, changes: &ChangeSet) {
        for event in &changes.events {
            match event.object() {
                Object::Task(t) if !t.service_id.is_empty() => {
                    self.slots
                        .entry(t.service_id.clone())
                        .or_default()
                        .insert(SlotKey::of(t));
                }
                Object::Service(s) => {
                    self.services.insert(s.id.clone());
                }
                Object::Cluster(_) => self.all = true,
                _ => {}
            }
        }
    }

    fn mark_all(&mut self) {
        self.all = true;
    }

    fn mark_refused(&mut self, _unit: &Unit) {
        self.all = true;
    }

    fn is_dirty(&self) -> bool {
        self.all || !self.services.is_empty() || !self.slots.is_empty()
    }

    fn decide(&mut self, tables: &Tables, now: SystemTime) -> Vec<Unit> {
        let services = std::mem::take(&mut self.services);
        let mut slots = std::mem::take(&mut self.slots);
        let all = std::mem::take(&mut self.all);
        let limit = history_limit(tables);
        let decisions = if all {
            reap(tables, None, limit)
        } else {
            slots.retain(|service, _| !services.contains(service));
            let mut d = reap(tables, Some(&services), limit);
            d.extend(reap_slots(tables, &slots, limit));
            d
        };
        decisions
            .into_iter()
            .filter_map(|d| match d {
                ReapDecision::Delete(id) => Some(vec![StoreAction::Remove {
                    kind: ObjectKind::Task,
                    id,
                }]),
                ReapDecision::MarkRemove(id) => tables.get::<Task>(&id).map(|t| {
                    vec![StoreAction::Update(
                        retired(&t, TaskState::Remove, now).into(),
                    )]
                }),
            })
            .collect()
    }

    fn next_wake(&self) -> Option<SystemTime> {
        None
    }
}

/// Deletes old and removed tasks (leader only).
pub struct TaskReaper {
    store: Store,
    writer: Arc<dyn Writer>,
    cfg: OrchestratorConfig,
}

impl TaskReaper {
    /// A reaper reading `store` and writing through `writer`.
    pub fn new(store: Store, writer: Arc<dyn Writer>, cfg: OrchestratorConfig) -> Self {
        TaskReaper { store, writer, cfg }
    }

    /// Runs until `cancel` fires (Ok) or this manager stops being the leader (Err).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), OrchestratorError> {
        let pace = Pace {
            min_interval: self.cfg.reaper_interval,
            resync: self.cfg.resync_interval.max(Duration::from_secs(1)),
            ..self.cfg.pace()
        };
        let r = ReaperLoop {
            all: true,
            services: BTreeSet::new(),
            slots: BTreeMap::new(),
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
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::RestartCondition;

    use super::*;
    use crate::objs;
    use crate::orchestrator::fixture::*;

    use ReapDecision::*;
    use TaskState::{Assigned, Complete, Failed, Pending, Remove, Running, Shutdown};

    /// The decisions of a full pass; asserts that reaping slot by slot (what the loop does
    /// after task changes) decides exactly the same.
    fn reaped(fx: &Fx) -> Vec<ReapDecision> {
        let limit = history_limit(&fx.tables);
        let mut d = reap(&fx.tables, None, limit);
        d.sort();
        let mut slots: BTreeMap<String, BTreeSet<SlotKey>> = BTreeMap::new();
        for t in fx.tables.table::<Task>().iter() {
            if !t.service_id.is_empty() {
                slots
                    .entry(t.service_id.clone())
                    .or_default()
                    .insert(SlotKey::of(t));
            }
        }
        let mut by_slot = reap_slots(&fx.tables, &slots, limit);
        by_slot.sort();
        assert_eq!(by_slot, d, "reaping slot by slot decides differently");
        d
    }

    fn id(s: &str) -> String {
        s.to_string()
    }

    /// Slot 1 of `svc` with `n` ended tasks t1..tn (t1 oldest), then a running one.
    fn history(fx: &mut Fx, svc: &berth_proto::v1::Service, n: u64) {
        for i in 1..=n {
            fx.create(
                10 + i,
                objs![desired_as(
                    observed_as(running(&format!("t{i}"), svc, 1, "n1"), Failed),
                    Shutdown
                )],
            );
        }
        fx.create(100, objs![running("live", svc, 1, "n1")]);
    }

    #[test]
    fn default_limit_keeps_five_per_slot() {
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        history(&mut fx, &svc, 6);
        // 7 tasks, keep 5: the two oldest go.
        assert_eq!(reaped(&fx), vec![Delete(id("t1")), Delete(id("t2"))]);
    }

    #[test]
    fn cluster_limit_and_negative_and_zero() {
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone(), cluster(2)]);
        history(&mut fx, &svc, 3);
        assert_eq!(reaped(&fx), vec![Delete(id("t1")), Delete(id("t2"))]);
        fx.update(200, objs![cluster(-1)]);
        assert_eq!(reaped(&fx), vec![]);
        fx.update(201, objs![cluster(0)]);
        assert_eq!(
            reaped(&fx),
            vec![Delete(id("t1")), Delete(id("t2")), Delete(id("t3"))]
        );
    }

    #[test]
    fn a_given_up_slot_keeps_its_last_task() {
        let svc = replicated("s", 1, Some(restart(RestartCondition::None, 0, 0, 0)));
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone(), cluster(0)]);
        fx.create(
            2,
            objs![desired_as(
                observed_as(running("old", &svc, 1, "n1"), Complete),
                Shutdown
            )],
        );
        fx.create(
            3,
            objs![desired_as(
                observed_as(running("last", &svc, 1, "n1"), Complete),
                Shutdown
            )],
        );
        assert_eq!(reaped(&fx), vec![Delete(id("old"))]);
    }

    #[test]
    fn max_attempts_raise_the_limit() {
        let svc = replicated("s", 1, Some(restart(RestartCondition::Any, 0, 6, 0)));
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        history(&mut fx, &svc, 7);
        // 8 tasks, keep max(5, 6 + 1) = 7.
        assert_eq!(reaped(&fx), vec![Delete(id("t1"))]);
    }

    #[test]
    fn removed_tasks_go_once_stopped_and_running_ones_stay() {
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            2,
            objs![
                desired_as(running("stopping", &svc, 2, "n1"), Remove),
                desired_as(
                    observed_as(running("stopped", &svc, 3, "n1"), Shutdown),
                    Remove
                ),
                desired_as(task("unplaced", &svc, 4, "", Pending, Running), Remove),
                desired_as(task("assigned", &svc, 5, "n1", Assigned, Running), Remove),
                running("live", &svc, 1, "n1"),
            ],
        );
        assert_eq!(
            reaped(&fx),
            vec![Delete(id("stopped")), Delete(id("unplaced"))]
        );
    }

    #[test]
    fn tasks_of_deleted_services_are_stopped_then_deleted() {
        let svc = replicated("gone", 2, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1")]);
        fx.create(
            2,
            objs![
                running("r", &svc, 1, "n1"),
                observed_as(running("f", &svc, 2, "n1"), Failed),
                task("p", &svc, 3, "", Pending, Running),
                desired_as(running("already", &svc, 4, "n1"), Remove),
            ],
        );
        assert_eq!(
            reaped(&fx),
            vec![Delete(id("f")), Delete(id("p")), MarkRemove(id("r"))]
        );
        // Scoped to a set of services, others are left alone.
        let only: BTreeSet<String> = ["other".to_string()].into();
        assert_eq!(reap(&fx.tables, Some(&only), 5), vec![]);
    }

    #[test]
    fn global_history_is_per_node() {
        let svc = global("g", None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), svc.clone(), cluster(1)]);
        fx.create(
            2,
            objs![desired_as(
                observed_as(running("a1", &svc, 0, "n1"), Failed),
                Shutdown
            )],
        );
        fx.create(3, objs![running("a2", &svc, 0, "n1")]);
        fx.create(4, objs![running("b1", &svc, 0, "n2")]);
        assert_eq!(reaped(&fx), vec![Delete(id("a1"))]);
    }
}
