//! The replicated orchestrator: keeps exactly N slots (1..=N) of every replicated service, each
//! with one runnable task.
//!
//! - Missing slots get a task (state PENDING, desired RUNNING).
//! - Scale down removes the highest slots: every task of a slot above N gets desired REMOVE
//!   (as in Swarm); the task reaper deletes them once they stopped. Slots stay numbered 1..=N,
//!   so task names stay `web.1` .. `web.N`.
//! - A task that ended is replaced by a new task in the same slot if its restart policy allows
//!   (see [`super::restart`]); the replacement waits in READY for the restart delay.
//! - A task on a DOWN or removed node is replaced at once; a task on a drained node is
//!   replaced by one that starts when the old one has stopped (see [`super::slot`] for why a
//!   slot never runs twice). PAUSE moves nothing.
//!
//! The decisions are [`reconcile_replicated`], a pure function of the store state and the
//! time; [`ReplicatedOrchestrator`] is the thin loop that feeds it and writes its decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::v1::{Service, Task, TaskState};
use tokio_util::sync::CancellationToken;

use super::driver::{Reconciler, drive};
use super::slot::{DecideConfig, Decision, Plan, SlotMode, decide_slot, to_unit};
use super::task::{SlotKey, by_age, desired, is_assigned, is_global, observed, replicas};
use super::update::orchestrator_view;
use super::writer::{Unit, Writer};
use super::{OrchestratorConfig, OrchestratorError};
use crate::store::{By, ChangeSet, Event, Object, Store, StoreAction, Tables};

/// The decisions for one replicated service (nothing for a global one).
pub fn reconcile_replicated(
    tables: &Tables,
    service: &Service,
    now: SystemTime,
    cfg: &DecideConfig,
) -> Plan {
    let mut plan = Plan::default();
    let Some(replicas) = replicas(service) else {
        return plan;
    };
    let mut slots: BTreeMap<u64, Vec<Arc<Task>>> = BTreeMap::new();
    for t in tables.find::<Task>(&By::ServiceId(service.id.clone())) {
        if t.slot > 0 {
            slots.entry(t.slot).or_default().push(t);
        }
    }
    for tasks in slots.values_mut() {
        tasks.sort_by(by_age);
    }
    for tasks in slots.range(replicas.saturating_add(1)..).map(|(_, v)| v) {
        for t in tasks {
            if desired(t) < TaskState::Remove {
                plan.decisions.push(Decision::Remove { task: t.id.clone() });
            }
        }
    }
    for slot in 1..=replicas {
        let tasks = slots.get(&slot).map_or(&[][..], Vec::as_slice);
        // A start-first update's old task is the updater's.
        let view = orchestrator_view(service, tasks);
        decide_slot(
            tables,
            &SlotKey::Replica(slot),
            view.as_deref().unwrap_or(tasks),
            SlotMode::Replicated,
            now,
            cfg,
            &mut plan,
        );
    }
    plan
}

/// The part of a task the orchestrators' decisions depend on: a status update that leaves it
/// unchanged (a new message, PREPARING → STARTING, ...) cannot change a decision.
fn decision_view(t: &Task) -> (&str, u64, &str, u64, TaskState, bool, Option<TaskState>) {
    let state = observed(t);
    (
        t.service_id.as_str(),
        t.slot,
        t.node_id.as_str(),
        t.spec_version,
        desired(t),
        is_assigned(t),
        state.is_terminal().then_some(state),
    )
}

/// Services to reconcile, and per-service timers. Shared by both orchestrators.
#[derive(Debug, Default)]
pub(crate) struct ServiceQueue {
    pub all: bool,
    pub services: BTreeSet<String>,
    pub nodes: BTreeSet<String>,
    pub timers: BTreeMap<String, SystemTime>,
}

impl ServiceQueue {
    pub fn observe(&mut self, changes: &ChangeSet) {
        for event in &changes.events {
            match event.object() {
                Object::Service(s) => {
                    self.services.insert(s.id.clone());
                }
                Object::Task(t) => {
                    if let Event::Updated {
                        old: Object::Task(o),
                        ..
                    } = event
                    {
                        if decision_view(o) == decision_view(t) {
                            continue;
                        }
                        if o.service_id != t.service_id {
                            self.services.insert(o.service_id.clone());
                        }
                    }
                    if !t.service_id.is_empty() {
                        self.services.insert(t.service_id.clone());
                    }
                }
                Object::Node(n) => {
                    self.nodes.insert(n.id.clone());
                }
                _ => {}
            }
        }
    }

    pub fn mark_refused(&mut self, unit: &Unit) {
        for action in unit {
            match action {
                StoreAction::Create(Object::Task(t)) | StoreAction::Update(Object::Task(t)) => {
                    self.services.insert(t.service_id.clone());
                }
                _ => self.all = true,
            }
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.all || !self.services.is_empty() || !self.nodes.is_empty()
    }

    pub fn next_wake(&self) -> Option<SystemTime> {
        self.timers.values().min().copied()
    }

    /// Takes the dirty services (and those whose timer is due), given how node changes map
    /// to services.
    pub fn take(
        &mut self,
        tables: &Tables,
        now: SystemTime,
        services_of_nodes: impl FnOnce(&Tables, &BTreeSet<String>) -> BTreeSet<String>,
    ) -> BTreeSet<String> {
        let mut ids = std::mem::take(&mut self.services);
        if std::mem::take(&mut self.all) {
            ids.extend(tables.list::<Service>().iter().map(|s| s.id.clone()));
            self.nodes.clear();
        }
        let nodes = std::mem::take(&mut self.nodes);
        if !nodes.is_empty() {
            ids.extend(services_of_nodes(tables, &nodes));
        }
        ids.extend(
            self.timers
                .iter()
                .filter(|(_, w)| **w <= now)
                .map(|(id, _)| id.clone()),
        );
        ids
    }

    pub fn set_timer(&mut self, service: &str, wake: Option<SystemTime>) {
        match wake {
            Some(w) => {
                self.timers.insert(service.to_owned(), w);
            }
            None => {
                self.timers.remove(service);
            }
        }
    }
}

struct ReplicatedLoop {
    queue: ServiceQueue,
    cfg: DecideConfig,
}

impl Reconciler for ReplicatedLoop {
    fn name(&self) -> &'static str {
        "replicated orchestrator"
    }

    fn observe(&mut self, changes: &ChangeSet) {
        self.queue.observe(changes);
    }

    fn mark_all(&mut self) {
        self.queue.all = true;
    }

    fn mark_refused(&mut self, unit: &Unit) {
        self.queue.mark_refused(unit);
    }

    fn is_dirty(&self) -> bool {
        self.queue.is_dirty()
    }

    fn decide(&mut self, tables: &Tables, now: SystemTime) -> Vec<Unit> {
        // A node change matters to the services with tasks on that node.
        let ids = self.queue.take(tables, now, |tables, nodes| {
            nodes
                .iter()
                .flat_map(|n| tables.find::<Task>(&By::NodeId(n.clone())))
                .map(|t| t.service_id.clone())
                .collect()
        });
        let mut units = Vec::new();
        for id in ids {
            let Some(service) = tables.get::<Service>(&id) else {
                self.queue.set_timer(&id, None);
                continue;
            };
            if is_global(&service) {
                continue;
            }
            let plan = reconcile_replicated(tables, &service, now, &self.cfg);
            self.queue.set_timer(&id, plan.wake_at);
            for d in &plan.decisions {
                tracing::debug!(service = %id, decision = ?d, "replicated orchestrator");
                units.extend(to_unit(tables, &service, d, now));
            }
        }
        units
    }

    fn next_wake(&self) -> Option<SystemTime> {
        self.queue.next_wake()
    }
}

/// Keeps every replicated service at its replica count (leader only).
pub struct ReplicatedOrchestrator {
    store: Store,
    writer: Arc<dyn Writer>,
    cfg: OrchestratorConfig,
}

impl ReplicatedOrchestrator {
    /// An orchestrator reading `store` and writing through `writer`.
    pub fn new(store: Store, writer: Arc<dyn Writer>, cfg: OrchestratorConfig) -> Self {
        ReplicatedOrchestrator { store, writer, cfg }
    }

    /// Runs until `cancel` fires (Ok) or this manager stops being the leader (Err).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), OrchestratorError> {
        let r = ReplicatedLoop {
            queue: ServiceQueue::default(),
            cfg: self.cfg.decide(),
        };
        drive(
            r,
            &self.store,
            self.writer.as_ref(),
            self.cfg.clock.as_ref(),
            &self.cfg.pace(),
            &cancel,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{NodeAvailability, NodeState, RestartCondition};

    use super::*;
    use crate::objs;
    use crate::orchestrator::fixture::*;

    use Decision::*;
    use TaskState::{Complete, Failed, Ready, Rejected, Remove as RemoveState, Running, Shutdown};

    fn decide(fx: &Fx, svc: &str, now: u64) -> Plan {
        let service = fx.tables.get::<Service>(svc).expect("service");
        let mut plan =
            reconcile_replicated(&fx.tables, &service, at(now), &DecideConfig::default());
        plan.decisions.sort();
        plan
    }

    fn create(slot: u64, desired: TaskState) -> Decision {
        Create {
            slot: SlotKey::Replica(slot),
            desired,
        }
    }

    fn id(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn scale_up_from_nothing_and_from_some() {
        let svc = replicated("s", 3, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        assert_eq!(
            decide(&fx, "s", 2).decisions,
            vec![create(1, Running), create(2, Running), create(3, Running)]
        );
        fx.create(
            2,
            objs![running("t1", &svc, 1, "n1"), running("t2", &svc, 2, "n1")],
        );
        assert_eq!(decide(&fx, "s", 3).decisions, vec![create(3, Running)]);
        fx.update(3, objs![scaled(svc.clone(), 5)]);
        assert_eq!(
            decide(&fx, "s", 4).decisions,
            vec![create(3, Running), create(4, Running), create(5, Running)]
        );
    }

    #[test]
    fn scale_down_removes_the_highest_slots() {
        let svc = replicated("s", 2, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            2,
            objs![
                running("t1", &svc, 1, "n1"),
                running("t2", &svc, 2, "n1"),
                running("t3", &svc, 3, "n1"),
                running("t4", &svc, 4, "n1"),
                // History of slot 4, and a task already being removed.
                desired_as(
                    observed_as(running("t4old", &svc, 4, "n1"), Failed),
                    Shutdown
                ),
                desired_as(running("t5", &svc, 5, "n1"), RemoveState),
            ],
        );
        assert_eq!(
            decide(&fx, "s", 3).decisions,
            vec![
                Remove { task: id("t3") },
                Remove { task: id("t4") },
                Remove { task: id("t4old") }
            ]
        );
    }

    #[test]
    fn scaling_back_up_waits_for_the_removed_task_to_stop() {
        let svc = replicated("s", 2, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            2,
            objs![
                running("t1", &svc, 1, "n1"),
                desired_as(running("t2", &svc, 2, "n1"), RemoveState),
            ],
        );
        assert_eq!(decide(&fx, "s", 3).decisions, vec![create(2, Ready)]);
        // Once it stopped, the new task may start at once.
        fx.update(
            3,
            objs![desired_as(
                observed_as(running("t2", &svc, 2, "n1"), Shutdown),
                RemoveState
            )],
        );
        assert_eq!(decide(&fx, "s", 4).decisions, vec![create(2, Running)]);
    }

    #[test]
    fn restart_conditions() {
        use RestartCondition as C;
        // (condition, how the task ended, decision)
        let table = [
            (
                C::Any,
                Complete,
                Restart {
                    task: id("t1"),
                    desired: Ready,
                },
            ),
            (
                C::Any,
                Failed,
                Restart {
                    task: id("t1"),
                    desired: Ready,
                },
            ),
            (
                C::OnFailure,
                Failed,
                Restart {
                    task: id("t1"),
                    desired: Ready,
                },
            ),
            (
                C::OnFailure,
                Rejected,
                Restart {
                    task: id("t1"),
                    desired: Ready,
                },
            ),
            (C::OnFailure, Complete, GiveUp { task: id("t1") }),
            (C::None, Failed, GiveUp { task: id("t1") }),
            (C::None, Complete, GiveUp { task: id("t1") }),
        ];
        for (cond, ended, want) in table {
            let svc = replicated("s", 1, Some(restart(cond, 5, 0, 0)));
            let mut fx = Fx::new();
            fx.create(1, objs![node("n1"), svc.clone()]);
            fx.create(2, objs![observed_as(running("t1", &svc, 1, "n1"), ended)]);
            let plan = decide(&fx, "s", 10);
            assert_eq!(plan.decisions, vec![want.clone()], "{cond:?} {ended:?}");
            let wake = matches!(want, Restart { .. }).then(|| at(15));
            assert_eq!(plan.wake_at, wake, "{cond:?} {ended:?}");
        }
    }

    #[test]
    fn restart_without_delay_starts_at_once() {
        let svc = replicated("s", 1, Some(restart(RestartCondition::Any, 0, 0, 0)));
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(2, objs![observed_as(running("t1", &svc, 1, "n1"), Failed)]);
        let plan = decide(&fx, "s", 3);
        assert_eq!(
            plan.decisions,
            vec![Restart {
                task: id("t1"),
                desired: Running
            }]
        );
        assert_eq!(plan.wake_at, None);
    }

    #[test]
    fn restart_delay_then_start() {
        let svc = replicated("s", 1, Some(restart(RestartCondition::Any, 5, 0, 0)));
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            2,
            objs![desired_as(
                observed_as(running("t1", &svc, 1, "n1"), Failed),
                Shutdown
            )],
        );
        // The replacement was created at 10 and was placed (READY on n2 is not needed).
        fx.create(
            10,
            objs![task("t2", &svc, 1, "", TaskState::Pending, Ready)],
        );
        let plan = decide(&fx, "s", 12);
        assert_eq!(plan.decisions, vec![]);
        assert_eq!(plan.wake_at, Some(at(15)));
        assert_eq!(
            decide(&fx, "s", 15).decisions,
            vec![Start { task: id("t2") }]
        );
    }

    #[test]
    fn max_attempts_then_give_up_and_stay_empty() {
        let svc = replicated("s", 1, Some(restart(RestartCondition::Any, 0, 2, 0)));
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        let failed =
            |id: &str| desired_as(observed_as(running(id, &svc, 1, "n1"), Failed), Shutdown);
        fx.create(2, objs![failed("t1")]);
        fx.create(3, objs![failed("t2")]);
        fx.create(4, objs![observed_as(running("t3", &svc, 1, "n1"), Failed)]);
        assert_eq!(
            decide(&fx, "s", 5).decisions,
            vec![GiveUp { task: id("t3") }]
        );
        // After giving up, the slot stays empty: no new task.
        fx.update(5, objs![failed("t3")]);
        assert_eq!(decide(&fx, "s", 6).decisions, vec![]);
        // One attempt fewer used: restart.
        let mut fx2 = Fx::new();
        fx2.create(1, objs![node("n1"), svc.clone()]);
        fx2.create(2, objs![failed("t1")]);
        fx2.create(4, objs![observed_as(running("t3", &svc, 1, "n1"), Failed)]);
        assert_eq!(
            decide(&fx2, "s", 5).decisions,
            vec![Restart {
                task: id("t3"),
                desired: Running
            }]
        );
    }

    #[test]
    fn window_counts_only_recent_restarts() {
        let svc = replicated("s", 1, Some(restart(RestartCondition::Any, 0, 1, 60)));
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            100,
            objs![desired_as(
                observed_as(running("t1", &svc, 1, "n1"), Failed),
                Shutdown
            )],
        );
        fx.create(
            120,
            objs![observed_as(running("t2", &svc, 1, "n1"), Failed)],
        );
        assert_eq!(
            decide(&fx, "s", 130).decisions,
            vec![GiveUp { task: id("t2") }]
        );
        assert_eq!(
            decide(&fx, "s", 161).decisions,
            vec![Restart {
                task: id("t2"),
                desired: Running
            }]
        );
    }

    #[test]
    fn tasks_on_down_or_removed_nodes_are_replaced_at_once() {
        let svc = replicated("s", 3, None);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                with_state(node("n1"), NodeState::Down),
                node("n2"),
                with_state(node("n3"), NodeState::Disconnected),
                svc.clone()
            ],
        );
        fx.create(
            2,
            objs![
                running("t1", &svc, 1, "n1"),
                running("t2", &svc, 2, "gone"),
                running("t3", &svc, 3, "n3"),
            ],
        );
        // Disconnected is not down yet: t3 stays.
        assert_eq!(
            decide(&fx, "s", 3).decisions,
            vec![
                Reschedule {
                    task: id("t1"),
                    desired: Running
                },
                Reschedule {
                    task: id("t2"),
                    desired: Running
                }
            ]
        );
    }

    #[test]
    fn drain_moves_tasks_and_the_replacement_waits_for_the_old_one() {
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                with_availability(node("n1"), NodeAvailability::Drain),
                node("n2"),
                svc.clone()
            ],
        );
        fx.create(2, objs![running("t1", &svc, 1, "n1")]);
        assert_eq!(
            decide(&fx, "s", 3).decisions,
            vec![Reschedule {
                task: id("t1"),
                desired: Ready
            }]
        );
        // After the move: t1 stopping, t2 waiting in READY.
        fx.update(
            10,
            objs![desired_as(running("t1", &svc, 1, "n1"), Shutdown)],
        );
        fx.create(
            10,
            objs![task("t2", &svc, 1, "n2", TaskState::Ready, Ready)],
        );
        let plan = decide(&fx, "s", 11);
        assert_eq!(plan.decisions, vec![]);
        assert_eq!(plan.wake_at, Some(at(70)));
        // No restart delay: it replaces a task stopped on request. It starts once t1 stopped...
        let mut stopped = fx.tables.clone();
        let mut b = crate::store::StoreActions::new();
        let mut t1 = (*stopped.get::<Task>("t1").expect("t1")).clone();
        t1.status.as_mut().expect("status").state = Shutdown as i32;
        b.update(t1);
        stopped
            .apply(
                stopped.version() + 1,
                crate::orchestrator::clock::to_timestamp(at(12)),
                b,
            )
            .expect("apply");
        let service = stopped.get::<Service>("s").expect("svc");
        assert_eq!(
            reconcile_replicated(&stopped, &service, at(12), &DecideConfig::default()).decisions,
            vec![Start { task: id("t2") }]
        );
        // ...or after the old-task timeout, whichever comes first.
        assert_eq!(
            decide(&fx, "s", 70).decisions,
            vec![Start { task: id("t2") }]
        );
        // A PAUSEd node keeps its tasks.
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                with_availability(node("n1"), NodeAvailability::Pause),
                svc.clone()
            ],
        );
        fx.create(2, objs![running("t1", &svc, 1, "n1")]);
        assert_eq!(decide(&fx, "s", 3).decisions, vec![]);
    }

    #[test]
    fn a_node_back_from_down_never_gets_its_slot_twice() {
        // t1 was moved off n1 while n1 was down; n1 is back and t1 still runs there until its
        // agent applies desired SHUTDOWN. The slot already has its one runnable task.
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), svc.clone()]);
        fx.create(2, objs![desired_as(running("t1", &svc, 1, "n1"), Shutdown)]);
        fx.create(3, objs![running("t2", &svc, 1, "n2")]);
        assert_eq!(decide(&fx, "s", 4).decisions, vec![]);
        // Two runnable tasks in one slot (never written by the orchestrator) are repaired:
        // the newest stays.
        fx.create(5, objs![running("t3", &svc, 1, "n1")]);
        assert_eq!(
            decide(&fx, "s", 6).decisions,
            vec![Decision::Shutdown { task: id("t2") }]
        );
    }

    #[test]
    fn unplaced_and_healthy_tasks_need_nothing() {
        let svc = replicated("s", 2, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            2,
            objs![
                task("t1", &svc, 1, "", TaskState::Pending, Running),
                running("t2", &svc, 2, "n1")
            ],
        );
        assert_eq!(decide(&fx, "s", 3), Plan::default());
    }

    #[test]
    fn decisions_become_units_that_keep_one_runnable_task_per_slot() {
        let svc = replicated("s", 2, Some(restart(RestartCondition::Any, 0, 0, 0)));
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                node("n1"),
                with_state(node("n2"), NodeState::Down),
                svc.clone()
            ],
        );
        fx.create(
            2,
            objs![
                observed_as(running("t1", &svc, 1, "n1"), Failed),
                running("t2", &svc, 2, "n2"),
            ],
        );
        let service = fx.tables.get::<Service>("s").expect("svc");
        let plan = reconcile_replicated(&fx.tables, &service, at(3), &DecideConfig::default());
        let mut b = crate::store::StoreActions::new();
        for d in &plan.decisions {
            let unit = to_unit(&fx.tables, &service, d, at(3)).expect("unit");
            assert_eq!(unit.len(), 2, "{d:?}: retire + create in one unit");
            b.actions.extend(unit);
        }
        fx.apply(3, b);
        for slot in 1..=2 {
            let tasks = fx.tables.find::<Task>(&By::Slot {
                service_id: "s".into(),
                slot,
            });
            let runnable: Vec<_> = tasks.iter().filter(|t| desired(t) <= Running).collect();
            assert_eq!(tasks.len(), 2, "slot {slot}");
            assert_eq!(runnable.len(), 1, "slot {slot}");
            assert_eq!(
                super::super::task::observed(runnable[0]),
                TaskState::Pending,
                "slot {slot}"
            );
        }
        // And deciding again on the result changes nothing.
        assert_eq!(decide(&fx, "s", 4).decisions, vec![]);
    }

    #[test]
    fn status_refreshes_do_not_wake_the_orchestrator() {
        use crate::store::{ChangeSet, Event, Object};
        let svc = replicated("s", 1, None);
        let assigned = task("t", &svc, 1, "n1", TaskState::Assigned, Running);
        let mut refreshed = observed_as(running("t", &svc, 1, "n1"), TaskState::Preparing);
        refreshed.status.as_mut().expect("status").message = "pulling".into();
        let change = |old: &Task, new: &Task| {
            ChangeSet::new(
                2,
                crate::store::timestamp(0, 0),
                vec![Event::Updated {
                    old: Object::Task(Arc::new(old.clone())),
                    new: Object::Task(Arc::new(new.clone())),
                }],
            )
        };
        let mut q = ServiceQueue::default();
        q.observe(&change(&assigned, &refreshed));
        assert!(!q.is_dirty());
        let pending = task("t", &svc, 1, "", TaskState::Pending, Running);
        for (old, new) in [
            (&pending, &assigned),
            (&refreshed, &observed_as(refreshed.clone(), Failed)),
            (&refreshed, &desired_as(refreshed.clone(), Shutdown)),
        ] {
            let mut q = ServiceQueue::default();
            q.observe(&change(old, new));
            assert_eq!(q.services, BTreeSet::from(["s".to_string()]));
        }
    }
}
