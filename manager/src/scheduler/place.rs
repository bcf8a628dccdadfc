//! One scheduling round as a pure function: the PENDING tasks of a store state, placed.
//!
//! Tasks of one service and spec version form a group with identical needs. For a group, the
//! nodes passing the static checks are arranged in a tree by the placement preferences
//! (`spread=node.labels.X`: one branch per label value, nodes without the label under ""), and
//! each task goes down the branch with the fewest tasks of the service, then to the leaf node
//! with (nodes with ≥ 5 recent failures of the service last) the fewest tasks of the service,
//! then the fewest tasks overall, then the smallest id. A node that fails a dynamic check
//! (resources, ports, max replicas) is dropped for the rest of the group: those checks only
//! get harder as tasks are placed. Tasks left over get the explanation of why every node
//! refused. Global tasks (node preset) only go through the pipeline for their node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::v1::{Task, TaskState};

use super::constraint::strip_prefix_ci;
use super::filter::{Needs, Rejection, explain};
use super::nodeinfo::{NodeInfo, build};
use crate::orchestrator::task::is_runnable;
use crate::store::{By, Tables};

/// The outcome of a round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// (task id, node id) for every task placed.
    pub assigned: Vec<(String, String)>,
    /// (task id, reason) for every task that fits nowhere.
    pub unplaced: Vec<(String, String)>,
}

/// The tasks waiting for a node: PENDING and still wanted.
pub fn pending_tasks(tables: &Tables) -> Vec<Arc<Task>> {
    tables
        .find::<Task>(&By::State(TaskState::Pending as i32))
        .into_iter()
        .filter(|t| is_runnable(t))
        .collect()
}

/// Places every pending task of `tables`.
pub fn schedule(tables: &Tables, now: SystemTime) -> Round {
    let pending = pending_tasks(tables);
    let mut round = Round::default();
    if pending.is_empty() {
        return round;
    }
    let (mut nodes, index) = build(tables, now);
    let mut groups: BTreeMap<(&str, u64), Vec<&Arc<Task>>> = BTreeMap::new();
    let mut preset = Vec::new();
    for t in &pending {
        if t.node_id.is_empty() {
            groups
                .entry((t.service_id.as_str(), t.spec_version))
                .or_default()
                .push(t);
        } else {
            preset.push(t);
        }
    }
    for t in preset {
        let needs = Needs::of(t);
        if let Err(e) = &needs.constraints {
            round.unplaced.push((t.id.clone(), e.to_string()));
            continue;
        }
        let verdict = match index.get(t.node_id.as_str()) {
            None => Some(Rejection::NotAvailable),
            Some(&i) => needs.first_failure(&nodes[i]),
        };
        match (verdict, index.get(t.node_id.as_str())) {
            (None, Some(&i)) => {
                nodes[i].add(t);
                round.assigned.push((t.id.clone(), t.node_id.clone()));
            }
            (reason, _) => {
                let reason = reason.unwrap_or(Rejection::NotAvailable);
                round
                    .unplaced
                    .push((t.id.clone(), explain(&BTreeMap::from([(reason, 1)]))));
            }
        }
    }
    for (_, mut tasks) in groups {
        tasks.sort_by(|a, b| a.slot.cmp(&b.slot).then_with(|| a.id.cmp(&b.id)));
        place_group(&mut nodes, &tasks, &mut round);
    }
    round
}

fn place_group<'a>(nodes: &mut [NodeInfo<'a>], tasks: &[&'a Arc<Task>], round: &mut Round) {
    let Some(first) = tasks.first() else {
        return;
    };
    let needs = Needs::of(first);
    if let Err(e) = &needs.constraints {
        for t in tasks {
            round.unplaced.push((t.id.clone(), e.to_string()));
        }
        return;
    }
    let eligible: Vec<usize> = (0..nodes.len())
        .filter(|&i| needs.static_check(&nodes[i]).is_ok())
        .collect();
    let mut tree = Tree::build(nodes, &eligible, &needs, 0);
    let mut rest = tasks.iter();
    for t in rest.by_ref() {
        match tree.place(nodes, &needs) {
            Some(i) => {
                nodes[i].add(t);
                round
                    .assigned
                    .push((t.id.clone(), nodes[i].node.id.clone()));
            }
            None => {
                let reason = why_not(nodes, &needs);
                round.unplaced.push((t.id.clone(), reason.clone()));
                for t in rest {
                    round.unplaced.push((t.id.clone(), reason.clone()));
                }
                return;
            }
        }
    }
}

fn why_not(nodes: &[NodeInfo<'_>], needs: &Needs<'_>) -> String {
    let mut counts: BTreeMap<Rejection, usize> = BTreeMap::new();
    for n in nodes {
        if let Some(r) = needs.first_failure(n) {
            *counts.entry(r).or_default() += 1;
        }
    }
    explain(&counts)
}

/// Heap key of a leaf node: faulty last, then fewest of the service, fewest overall, id order.
type Key = Reverse<(bool, usize, usize, usize)>;

fn key(n: &NodeInfo<'_>, service: &str, i: usize) -> Key {
    Reverse((
        n.is_faulty_for(service),
        n.service_tasks(service),
        n.tasks,
        i,
    ))
}

enum Tree {
    Leaf(BinaryHeap<Key>),
    Branch(Vec<Branch>),
}

struct Branch {
    value: String,
    /// Tasks of the service under this branch.
    count: usize,
    tree: Tree,
    full: bool,
}

/// The value of a spread descriptor on a node ("" when the label is missing).
fn label_value<'a>(n: &NodeInfo<'a>, descriptor: &str) -> &'a str {
    if let Some(name) = strip_prefix_ci(descriptor, "node.labels.") {
        return n
            .node
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .and_then(|a| a.labels.get(name))
            .map_or("", String::as_str);
    }
    if let Some(name) = strip_prefix_ci(descriptor, "engine.labels.") {
        return n
            .node
            .description
            .as_ref()
            .and_then(|d| d.engine_labels.get(name))
            .map_or("", String::as_str);
    }
    ""
}

impl Tree {
    fn build(nodes: &[NodeInfo<'_>], members: &[usize], needs: &Needs<'_>, depth: usize) -> Tree {
        let Some(descriptor) = needs.spread.get(depth) else {
            return Tree::Leaf(
                members
                    .iter()
                    .map(|&i| key(&nodes[i], needs.service, i))
                    .collect(),
            );
        };
        let mut by_value: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in members {
            by_value
                .entry(label_value(&nodes[i], descriptor))
                .or_default()
                .push(i);
        }
        Tree::Branch(
            by_value
                .into_iter()
                .map(|(value, idx)| Branch {
                    value: value.to_owned(),
                    count: idx
                        .iter()
                        .map(|&i| nodes[i].service_tasks(needs.service))
                        .sum(),
                    tree: Tree::build(nodes, &idx, needs, depth + 1),
                    full: false,
                })
                .collect(),
        )
    }

    /// Picks a node for one task and re-files it with its new counts; `None` when no node
    /// under this tree can take it.
    fn place(&mut self, nodes: &mut [NodeInfo<'_>], needs: &Needs<'_>) -> Option<usize> {
        match self {
            Tree::Leaf(heap) => {
                while let Some(Reverse((_, _, _, i))) = heap.pop() {
                    if needs.dynamic_check(&nodes[i]).is_ok() {
                        // The caller adds the task; file the node under its counts after that.
                        let n = &nodes[i];
                        heap.push(Reverse((
                            n.is_faulty_for(needs.service),
                            n.service_tasks(needs.service) + 1,
                            n.tasks + 1,
                            i,
                        )));
                        return Some(i);
                    }
                }
                None
            }
            Tree::Branch(branches) => loop {
                let best = branches
                    .iter_mut()
                    .filter(|b| !b.full)
                    .min_by(|a, b| a.count.cmp(&b.count).then_with(|| a.value.cmp(&b.value)))?;
                match best.tree.place(nodes, needs) {
                    Some(i) => {
                        best.count += 1;
                        return Some(i);
                    }
                    None => best.full = true,
                }
            },
        }
    }
}

/// Node ids by number of tasks placed on them in `round` (for tests and benchmarks).
pub fn placements_per_node(round: &Round) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for (_, n) in &round.assigned {
        *m.entry(n.as_str()).or_default() += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::placement_preference::Preference;
    use berth_proto::v1::{
        Endpoint, NodeAvailability, NodeState, Placement, PlacementPreference, Platform,
        PortConfig, PublishMode, ResourceRequirements, Resources, Service, SpreadOver,
    };

    use super::*;
    use crate::objs;
    use crate::orchestrator::fixture::*;

    const GIB: i64 = 1 << 30;
    const MIB: i64 = 1 << 20;

    fn pending(id: &str, svc: &Service, slot: u64) -> Task {
        task(id, svc, slot, "", TaskState::Pending, TaskState::Running)
    }

    fn with_placement(mut s: Service, f: impl FnOnce(&mut Placement)) -> Service {
        if let Some(t) = s.spec.as_mut().and_then(|s| s.task.as_mut()) {
            f(t.placement.get_or_insert_with(Default::default));
        }
        s
    }

    fn reserving(mut s: Service, cpus: i64, memory: i64) -> Service {
        if let Some(t) = s.spec.as_mut().and_then(|s| s.task.as_mut()) {
            t.resources = Some(ResourceRequirements {
                limits: None,
                reservations: Some(Resources {
                    nano_cpus: cpus,
                    memory_bytes: memory,
                    pids: 0,
                }),
            });
        }
        s
    }

    /// `n` pending tasks p1..pn of `svc`.
    fn pendings(svc: &Service, n: u64) -> Vec<crate::store::Object> {
        (1..=n)
            .map(|i| pending(&format!("p{i}"), svc, i).into())
            .collect()
    }

    fn per_node(round: &Round) -> BTreeMap<String, usize> {
        placements_per_node(round)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn reasons(round: &Round) -> Vec<&str> {
        round.unplaced.iter().map(|(_, r)| r.as_str()).collect()
    }

    #[test]
    fn six_replicas_spread_two_two_two() {
        let svc = replicated("s", 6, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), node("n3"), svc.clone()]);
        fx.create(2, pendings(&svc, 6));
        let round = schedule(&fx.tables, at(3));
        assert_eq!(per_node(&round), counts(&[("n1", 2), ("n2", 2), ("n3", 2)]));
        assert!(round.unplaced.is_empty());
    }

    #[test]
    fn spread_counts_tasks_already_there_then_all_tasks() {
        let svc = replicated("s", 6, None);
        let other = replicated("o", 1, None);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                node("n1"),
                node("n2"),
                node("n3"),
                svc.clone(),
                other.clone()
            ],
        );
        fx.create(
            2,
            objs![
                running("r1", &svc, 1, "n1"),
                running("r2", &svc, 2, "n1"),
                running("o1", &other, 1, "n2"),
            ],
        );
        fx.create(
            3,
            vec![pending("p3", &svc, 3).into(), pending("p4", &svc, 4).into()],
        );
        // n2 and n3 have no task of s; n3 has fewer tasks overall, so it goes first.
        let round = schedule(&fx.tables, at(4));
        assert_eq!(
            round.assigned,
            vec![
                ("p3".to_string(), "n3".to_string()),
                ("p4".to_string(), "n2".to_string())
            ]
        );
    }

    #[test]
    fn unavailable_nodes_take_nothing() {
        let svc = replicated("s", 4, None);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                node("n1"),
                with_state(node("n2"), NodeState::Down),
                with_availability(node("n3"), NodeAvailability::Drain),
                with_availability(node("n4"), NodeAvailability::Pause),
                with_state(node("n5"), NodeState::Disconnected),
                svc.clone()
            ],
        );
        fx.create(2, pendings(&svc, 4));
        let round = schedule(&fx.tables, at(3));
        assert_eq!(per_node(&round), counts(&[("n1", 4)]));
    }

    #[test]
    fn unsatisfiable_constraint_stays_pending_with_the_reason_until_a_label_appears() {
        let svc = with_placement(replicated("s", 2, None), |p| {
            p.constraints = vec!["node.labels.disk==ssd".into()];
        });
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                node("n1"),
                node("n2"),
                with_state(node("n3"), NodeState::Down),
                svc.clone()
            ],
        );
        fx.create(2, pendings(&svc, 2));
        let round = schedule(&fx.tables, at(3));
        assert!(round.assigned.is_empty());
        assert_eq!(
            reasons(&round),
            vec![
                "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available)";
                2
            ]
        );
        fx.update(4, objs![with_labels(node("n2"), &[("disk", "ssd")])]);
        let round = schedule(&fx.tables, at(5));
        assert_eq!(per_node(&round), counts(&[("n2", 2)]));
    }

    #[test]
    fn reservations_count_tasks_already_placed() {
        let svc = reserving(replicated("s", 6, None), 0, 600 * MIB);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                with_resources(node("n1"), 4_000_000_000, GIB),
                with_resources(node("n2"), 4_000_000_000, GIB),
                with_resources(node("n3"), 4_000_000_000, 2 * GIB),
                svc.clone()
            ],
        );
        // n3 already has one reserving task: 2 GiB - 600 MiB leaves room for two more.
        fx.create(2, objs![running("r1", &svc, 1, "n3")]);
        // A stopped task's reservation is free again.
        fx.create(
            2,
            objs![observed_as(
                running("old", &svc, 7, "n1"),
                TaskState::Shutdown
            )],
        );
        fx.create(3, pendings(&svc, 6));
        let round = schedule(&fx.tables, at(4));
        assert_eq!(per_node(&round), counts(&[("n1", 1), ("n2", 1), ("n3", 2)]));
        assert_eq!(
            reasons(&round),
            vec!["no suitable node (insufficient memory on 3 nodes)"; 2]
        );
        // CPU too.
        let cpu = reserving(replicated("c", 1, None), 5_000_000_000, 0);
        fx.create(5, objs![cpu.clone(), pending("c1", &cpu, 1)]);
        let round = schedule(&fx.tables, at(6));
        assert!(round.unplaced.contains(&(
            "c1".to_string(),
            "no suitable node (insufficient cpu on 3 nodes)".to_string()
        )));
    }

    #[test]
    fn max_replicas_per_node() {
        let svc = with_placement(replicated("s", 5, None), |p| p.max_replicas = 1);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), node("n3"), svc.clone()]);
        fx.create(2, pendings(&svc, 5));
        let round = schedule(&fx.tables, at(3));
        assert_eq!(per_node(&round), counts(&[("n1", 1), ("n2", 1), ("n3", 1)]));
        assert_eq!(
            reasons(&round),
            vec!["no suitable node (max replicas per node limit exceeded on 3 nodes)"; 2]
        );
    }

    #[test]
    fn placement_preference_spreads_over_label_values_first() {
        let svc = with_placement(replicated("s", 4, None), |p| {
            p.preferences = vec![PlacementPreference {
                preference: Some(Preference::Spread(SpreadOver {
                    spread_descriptor: "node.labels.az".into(),
                })),
            }];
        });
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                with_labels(node("a1"), &[("az", "a")]),
                with_labels(node("a2"), &[("az", "a")]),
                with_labels(node("a3"), &[("az", "a")]),
                with_labels(node("b1"), &[("az", "b")]),
                svc.clone()
            ],
        );
        fx.create(2, pendings(&svc, 4));
        let round = schedule(&fx.tables, at(3));
        // Two per zone: b's only node takes both of b's.
        assert_eq!(per_node(&round), counts(&[("a1", 1), ("a2", 1), ("b1", 2)]));
        // A node without the label is its own group "".
        let mut fx2 = Fx::new();
        fx2.create(
            1,
            objs![
                with_labels(node("a1"), &[("az", "a")]),
                node("x"),
                with_labels(node("b1"), &[("az", "b")]),
                svc.clone()
            ],
        );
        fx2.create(2, pendings(&svc, 3));
        assert_eq!(
            per_node(&schedule(&fx2.tables, at(3))),
            counts(&[("a1", 1), ("b1", 1), ("x", 1)])
        );
    }

    #[test]
    fn preference_branch_without_room_is_skipped() {
        let svc = with_placement(reserving(replicated("s", 4, None), 0, 600 * MIB), |p| {
            p.preferences = vec![PlacementPreference {
                preference: Some(Preference::Spread(SpreadOver {
                    spread_descriptor: "node.labels.az".into(),
                })),
            }];
        });
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                with_resources(with_labels(node("a1"), &[("az", "a")]), 1, GIB),
                with_labels(node("b1"), &[("az", "b")]),
                svc.clone()
            ],
        );
        fx.create(2, pendings(&svc, 4));
        let round = schedule(&fx.tables, at(3));
        assert_eq!(per_node(&round), counts(&[("a1", 1), ("b1", 3)]));
    }

    #[test]
    fn host_mode_ports_do_not_clash() {
        let mut svc = replicated("s", 4, None);
        let port = PortConfig {
            target_port: 80,
            published_port: 8080,
            publish_mode: PublishMode::Host as i32,
            ..Default::default()
        };
        svc.endpoint = Some(Endpoint {
            ports: vec![port],
            ..Default::default()
        });
        let with_port = |mut t: Task| {
            t.endpoint = svc.endpoint.clone();
            t
        };
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), node("n3"), svc.clone()]);
        fx.create(2, objs![with_port(running("r1", &svc, 1, "n1"))]);
        fx.create(
            3,
            (2..=4)
                .map(|i| with_port(pending(&format!("p{i}"), &svc, i)).into())
                .collect(),
        );
        let round = schedule(&fx.tables, at(4));
        assert_eq!(per_node(&round), counts(&[("n2", 1), ("n3", 1)]));
        assert_eq!(
            reasons(&round),
            vec!["no suitable node (host-mode port already in use on 3 nodes)"]
        );
    }

    #[test]
    fn global_tasks_are_checked_on_their_node_only() {
        let svc = reserving(global("g", None), 0, 2 * GIB);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                node("n1"),
                with_resources(node("small"), 1, GIB),
                svc.clone()
            ],
        );
        fx.create(
            2,
            objs![
                task("g1", &svc, 0, "n1", TaskState::Pending, TaskState::Running),
                task(
                    "g2",
                    &svc,
                    0,
                    "small",
                    TaskState::Pending,
                    TaskState::Running
                ),
                task(
                    "g3",
                    &svc,
                    0,
                    "gone",
                    TaskState::Pending,
                    TaskState::Running
                ),
            ],
        );
        let round = schedule(&fx.tables, at(3));
        assert_eq!(round.assigned, vec![("g1".to_string(), "n1".to_string())]);
        assert_eq!(
            round.unplaced,
            vec![
                (
                    "g2".to_string(),
                    "no suitable node (insufficient memory on 1 node)".to_string()
                ),
                (
                    "g3".to_string(),
                    "no suitable node (1 node not available)".to_string()
                ),
            ]
        );
    }

    #[test]
    fn platforms_invalid_constraints_and_no_nodes() {
        let arm = with_placement(replicated("arm", 1, None), |p| {
            p.platforms = vec![Platform {
                architecture: "arm64".into(),
                os: "linux".into(),
            }];
        });
        let amd = with_placement(replicated("amd", 1, None), |p| {
            p.platforms = vec![Platform {
                architecture: "amd64".into(),
                os: String::new(),
            }];
        });
        let bad = with_placement(replicated("bad", 1, None), |p| {
            p.constraints = vec!["node.role=manager".into()];
        });
        let mut empty = Fx::new();
        empty.create(1, objs![arm.clone(), pending("x", &arm, 1)]);
        assert_eq!(
            reasons(&schedule(&empty.tables, at(2))),
            vec!["no suitable node (the cluster has no nodes)"]
        );
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), arm.clone(), amd.clone(), bad.clone()]);
        fx.create(
            2,
            objs![
                pending("a", &arm, 1),
                pending("b", &amd, 1),
                pending("c", &bad, 1)
            ],
        );
        let round = schedule(&fx.tables, at(3));
        assert_eq!(round.assigned, vec![("b".to_string(), "n1".to_string())]);
        assert_eq!(
            round.unplaced,
            vec![
                (
                    "a".to_string(),
                    "no suitable node (unsupported platform on 1 node)".to_string()
                ),
                (
                    "c".to_string(),
                    "invalid constraint \"node.role=manager\": expected KEY==VALUE or KEY!=VALUE"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_node_where_the_service_keeps_failing_goes_last() {
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(
            1,
            objs![
                node("n1"),
                node("n2"),
                svc.clone(),
                replicated("o", 1, None)
            ],
        );
        let other = replicated("o", 1, None);
        // n2 is busier, but n1 saw 5 failures of s in the last 5 minutes.
        fx.create(2, objs![running("o1", &other, 1, "n2")]);
        fx.create(
            100,
            (0..5)
                .map(|i| {
                    desired_as(
                        observed_as(running(&format!("f{i}"), &svc, 1, "n1"), TaskState::Failed),
                        TaskState::Shutdown,
                    )
                    .into()
                })
                .collect(),
        );
        fx.create(101, objs![pending("p", &svc, 1)]);
        assert_eq!(
            schedule(&fx.tables, at(102)).assigned,
            vec![("p".into(), "n2".into())]
        );
        // Five minutes later the failures are forgotten and n1 (fewer tasks) wins again.
        assert_eq!(
            schedule(&fx.tables, at(401)).assigned,
            vec![("p".into(), "n1".into())]
        );
    }

    #[test]
    fn tasks_no_longer_wanted_are_not_placed() {
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            2,
            objs![
                task("gone", &svc, 2, "", TaskState::Pending, TaskState::Remove),
                task("ready", &svc, 1, "", TaskState::Pending, TaskState::Ready),
            ],
        );
        assert_eq!(
            schedule(&fx.tables, at(3)).assigned,
            vec![("ready".into(), "n1".into())]
        );
    }

    #[test]
    fn a_global_task_with_an_invalid_constraint_says_so() {
        let svc = with_placement(global("g", None), |p| {
            p.constraints = vec!["node.colour==red".into()];
        });
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(
            2,
            objs![task(
                "g1",
                &svc,
                0,
                "n1",
                TaskState::Pending,
                TaskState::Running
            )],
        );
        assert_eq!(
            reasons(&schedule(&fx.tables, at(3))),
            vec!["invalid constraint \"node.colour==red\": unknown key \"node.colour\""]
        );
    }
}
