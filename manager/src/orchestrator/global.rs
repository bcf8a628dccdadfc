//! The global orchestrator: one task of every global service on every eligible node — ready,
//! active (not paused or drained) and satisfying the service's placement constraints —
//! including nodes that join later.
//!
//! - An eligible node without a runnable task of the service gets one, created with its
//!   `node_id` set; the scheduler still checks resources and ports before assigning it.
//! - Tasks on a node that is DOWN, removed, drained or no longer satisfies the constraints are
//!   shut down (desired SHUTDOWN) and not replaced; when the node is eligible again it gets a
//!   new task (READY until the old one has stopped, so the node never runs two).
//! - A PAUSEd, DISCONNECTED or UNKNOWN node keeps its task but gets no new one.
//! - Ended tasks follow the restart policy, per node, like replicated slots.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::v1::{Node, NodeAvailability, NodeState, Service, Task};
use tokio_util::sync::CancellationToken;

use super::driver::{Reconciler, drive};
use super::replicated::ServiceQueue;
use super::slot::{DecideConfig, Plan, SlotMode, decide_slot, to_unit};
use super::task::{SlotKey, by_age, is_global};
use super::update::orchestrator_view;
use super::writer::{Unit, Writer};
use super::{OrchestratorConfig, OrchestratorError};
use crate::scheduler::constraint::Constraint;
use crate::store::{By, ChangeSet, Store, Tables};

/// The decisions for one global service (nothing for a replicated one).
pub fn reconcile_global(
    tables: &Tables,
    service: &Service,
    now: SystemTime,
    cfg: &DecideConfig,
) -> Plan {
    let mut plan = Plan::default();
    if !is_global(service) {
        return plan;
    }
    let exprs = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map(|p| p.constraints.as_slice())
        .unwrap_or_default();
    // Invalid constraints (refused at create time; this is defence in depth) match no node
    // for new tasks but do not stop running ones. The scheduler reports the error.
    let constraints = Constraint::parse_all(exprs).ok();
    let mut by_node: BTreeMap<String, Vec<Arc<Task>>> = BTreeMap::new();
    for t in tables.find::<Task>(&By::ServiceId(service.id.clone())) {
        if t.slot == 0 && !t.node_id.is_empty() {
            by_node.entry(t.node_id.clone()).or_default().push(t);
        }
    }
    for tasks in by_node.values_mut() {
        tasks.sort_by(by_age);
    }
    let mut node_ids: BTreeSet<String> =
        tables.list::<Node>().iter().map(|n| n.id.clone()).collect();
    node_ids.extend(by_node.keys().cloned());
    for node_id in node_ids {
        let mode = match tables.get::<Node>(&node_id) {
            None => SlotMode::Global {
                create: false,
                retire: true,
            },
            Some(node) => {
                let state = node.status.as_ref().map_or(0, |s| s.state);
                let availability = node.spec.as_ref().map_or(0, |s| s.availability);
                let fits = constraints
                    .as_ref()
                    .map(|c| Constraint::all_match(c, &node));
                SlotMode::Global {
                    create: state == NodeState::Ready as i32
                        && availability == NodeAvailability::Active as i32
                        && fits == Some(true),
                    retire: state == NodeState::Down as i32
                        || availability == NodeAvailability::Drain as i32
                        || fits == Some(false),
                }
            }
        };
        let tasks = by_node.get(&node_id).map_or(&[][..], Vec::as_slice);
        // A start-first update's old task is the updater's.
        let view = orchestrator_view(service, tasks);
        decide_slot(
            tables,
            &SlotKey::Node(node_id.clone()),
            view.as_deref().unwrap_or(tasks),
            mode,
            now,
            cfg,
            &mut plan,
        );
    }
    plan
}

struct GlobalLoop {
    queue: ServiceQueue,
    cfg: DecideConfig,
}

impl Reconciler for GlobalLoop {
    fn name(&self) -> &'static str {
        "global orchestrator"
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
        // Any node change may concern every global service (a node joined, was drained...).
        let ids = self.queue.take(tables, now, |tables, _| {
            tables
                .list::<Service>()
                .iter()
                .filter(|s| is_global(s))
                .map(|s| s.id.clone())
                .collect()
        });
        let mut units = Vec::new();
        for id in ids {
            let Some(service) = tables.get::<Service>(&id) else {
                self.queue.set_timer(&id, None);
                continue;
            };
            if !is_global(&service) {
                continue;
            }
            let plan = reconcile_global(tables, &service, now, &self.cfg);
            self.queue.set_timer(&id, plan.wake_at);
            for d in &plan.decisions {
                tracing::debug!(service = %id, decision = ?d, "global orchestrator");
                units.extend(to_unit(tables, &service, d, now));
            }
        }
        units
    }

    fn next_wake(&self) -> Option<SystemTime> {
        self.queue.next_wake()
    }
}

/// Keeps one task of every global service on every eligible node (leader only).
pub struct GlobalOrchestrator {
    store: Store,
    writer: Arc<dyn Writer>,
    cfg: OrchestratorConfig,
}

impl GlobalOrchestrator {
    /// An orchestrator reading `store` and writing through `writer`.
    pub fn new(store: Store, writer: Arc<dyn Writer>, cfg: OrchestratorConfig) -> Self {
        GlobalOrchestrator { store, writer, cfg }
    }

    /// Runs until `cancel` fires (Ok) or this manager stops being the leader (Err).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), OrchestratorError> {
        let r = GlobalLoop {
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
    use berth_proto::v1::{Placement, RestartCondition, TaskState};

    use super::*;
    use crate::objs;
    use crate::orchestrator::fixture::*;
    use crate::orchestrator::slot::Decision::{self, *};

    use TaskState::{Failed, Ready, Running, Shutdown};

    fn decide(fx: &Fx, now: u64) -> Plan {
        let service = fx.tables.get::<Service>("g").expect("service");
        let mut plan = reconcile_global(&fx.tables, &service, at(now), &DecideConfig::default());
        plan.decisions.sort();
        plan
    }

    fn on(node: &str, desired: TaskState) -> Decision {
        Create {
            slot: SlotKey::Node(node.into()),
            desired,
        }
    }

    fn id(s: &str) -> String {
        s.to_string()
    }

    fn constrained(exprs: &[&str]) -> Service {
        let mut s = global("g", None);
        if let Some(t) = s.spec.as_mut().and_then(|s| s.task.as_mut()) {
            t.placement = Some(Placement {
                constraints: exprs.iter().map(|e| e.to_string()).collect(),
                ..Default::default()
            });
        }
        s
    }

    #[test]
    fn one_task_per_eligible_node() {
        let svc = global("g", None);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                node("n1"),
                node("n2"),
                with_state(node("n3"), NodeState::Down),
                with_availability(node("n4"), NodeAvailability::Drain),
                with_availability(node("n5"), NodeAvailability::Pause),
                with_state(node("n6"), NodeState::Unknown),
                svc.clone()
            ],
        );
        assert_eq!(
            decide(&fx, 2).decisions,
            vec![on("n1", Running), on("n2", Running)]
        );
        fx.create(
            2,
            objs![running("t1", &svc, 0, "n1"), running("t2", &svc, 0, "n2")],
        );
        assert_eq!(decide(&fx, 3).decisions, vec![]);
    }

    #[test]
    fn a_late_joining_node_gets_a_task() {
        let svc = global("g", None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(2, objs![running("t1", &svc, 0, "n1")]);
        assert_eq!(decide(&fx, 3).decisions, vec![]);
        fx.create(4, objs![node("n9")]);
        assert_eq!(decide(&fx, 5).decisions, vec![on("n9", Running)]);
    }

    #[test]
    fn ineligible_nodes_lose_their_tasks_without_replacement() {
        let svc = constrained(&["node.labels.zone==a"]);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                with_labels(node("n1"), &[("zone", "a")]),
                with_labels(with_state(node("n2"), NodeState::Down), &[("zone", "a")]),
                with_labels(
                    with_availability(node("n3"), NodeAvailability::Drain),
                    &[("zone", "a")]
                ),
                with_labels(node("n4"), &[("zone", "b")]),
                with_labels(
                    with_availability(node("n5"), NodeAvailability::Pause),
                    &[("zone", "a")]
                ),
                svc.clone()
            ],
        );
        fx.create(
            2,
            objs![
                running("t1", &svc, 0, "n1"),
                running("t2", &svc, 0, "n2"),
                running("t3", &svc, 0, "n3"),
                running("t4", &svc, 0, "n4"),
                running("t5", &svc, 0, "n5"),
                running("t6", &svc, 0, "removed-node"),
            ],
        );
        assert_eq!(
            decide(&fx, 3).decisions,
            vec![
                Decision::Shutdown { task: id("t2") },
                Decision::Shutdown { task: id("t3") },
                Decision::Shutdown { task: id("t4") },
                Decision::Shutdown { task: id("t6") }
            ]
        );
    }

    #[test]
    fn a_node_eligible_again_gets_a_new_task_after_the_old_one_stops() {
        let svc = global("g", None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        // n1 was down, its task was shut down but still runs until the agent hears of it.
        fx.create(2, objs![desired_as(running("t1", &svc, 0, "n1"), Shutdown)]);
        assert_eq!(decide(&fx, 3).decisions, vec![on("n1", Ready)]);
        fx.update(
            4,
            objs![desired_as(
                observed_as(running("t1", &svc, 0, "n1"), Shutdown),
                Shutdown
            )],
        );
        assert_eq!(decide(&fx, 5).decisions, vec![on("n1", Running)]);
    }

    #[test]
    fn restart_policy_applies_per_node() {
        let svc = global("g", Some(restart(RestartCondition::OnFailure, 0, 0, 0)));
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), svc.clone()]);
        fx.create(
            2,
            objs![
                observed_as(running("t1", &svc, 0, "n1"), Failed),
                observed_as(running("t2", &svc, 0, "n2"), TaskState::Complete),
            ],
        );
        assert_eq!(
            decide(&fx, 3).decisions,
            vec![
                Restart {
                    task: id("t1"),
                    desired: Running
                },
                GiveUp { task: id("t2") }
            ]
        );
        // The restart lands on the same node.
        let service = fx.tables.get::<Service>("g").expect("svc");
        let unit = to_unit(
            &fx.tables,
            &service,
            &Restart {
                task: id("t1"),
                desired: Running,
            },
            at(3),
        )
        .expect("unit");
        match &unit[1] {
            crate::store::StoreAction::Create(crate::store::Object::Task(t)) => {
                assert_eq!((t.node_id.as_str(), t.slot), ("n1", 0));
            }
            other => panic!("expected a task create, got {other:?}"),
        }
        // Given up on n2: no new task there.
        fx.update(
            3,
            objs![desired_as(
                observed_as(running("t2", &svc, 0, "n2"), TaskState::Complete),
                Shutdown
            )],
        );
        assert_eq!(
            decide(&fx, 4).decisions,
            vec![Restart {
                task: id("t1"),
                desired: Running
            }]
        );
    }
}
