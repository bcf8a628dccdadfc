//! Which nodes hold the tasks a [`LogSelector`] names: the one question the broker asks the
//! store. Pure over a store snapshot, so it is unit-tested without a cluster.
//!
//! A task counts once it reached a node (`node_id` set and observed state ASSIGNED or later),
//! whatever its state now: a finished task's container (and its log) may still be on its node.

use std::collections::BTreeMap;

use berth_proto::v1::{LogSelector, Node, NodeState, Service, Task, TaskState};

use super::LogBrokerError;
use crate::store::{By, Tables};

/// A node holding selected tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name warnings use (host name, else node id).
    pub name: String,
    /// The dispatcher marked it DOWN: it will not answer, do not wait for it.
    pub down: bool,
}

/// The nodes holding selected tasks, by node id.
pub type Targets = BTreeMap<String, Target>;

/// Whether `task` reached a node.
fn on_a_node(task: &Task) -> bool {
    !task.node_id.is_empty()
        && task
            .status
            .as_ref()
            .is_some_and(|s| s.state >= TaskState::Assigned as i32)
}

/// Whether `task` is selected by `selector` (for agents and for follow-mode re-checks).
pub fn selects(selector: &LogSelector, task: &Task) -> bool {
    selector.service_ids.contains(&task.service_id)
        || selector.task_ids.contains(&task.id)
        || selector.node_ids.contains(&task.node_id)
}

/// The name warnings use for node `id`.
pub fn node_name(tables: &Tables, id: &str) -> String {
    tables
        .get::<Node>(id)
        .and_then(|n| n.description.as_ref().map(|d| d.hostname.clone()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

fn target(tables: &Tables, id: &str) -> Target {
    let down = tables
        .get::<Node>(id)
        .and_then(|n| n.status.as_ref().map(|s| s.state == NodeState::Down as i32))
        .unwrap_or(false);
    Target {
        name: node_name(tables, id),
        down,
    }
}

/// Checks that every id `selector` names exists; an empty selector is refused.
pub fn validate(tables: &Tables, selector: &LogSelector) -> Result<(), LogBrokerError> {
    if selector.service_ids.is_empty()
        && selector.task_ids.is_empty()
        && selector.node_ids.is_empty()
    {
        return Err(LogBrokerError::EmptySelector);
    }
    for id in &selector.service_ids {
        if tables.get::<Service>(id).is_none() {
            return Err(LogBrokerError::NoSuchService(id.clone()));
        }
    }
    for id in &selector.task_ids {
        if tables.get::<Task>(id).is_none() {
            return Err(LogBrokerError::NoSuchTask(id.clone()));
        }
    }
    for id in &selector.node_ids {
        if tables.get::<Node>(id).is_none() {
            return Err(LogBrokerError::NoSuchNode(id.clone()));
        }
    }
    Ok(())
}

/// The nodes holding the tasks `selector` names, as the store has them now.
pub fn nodes(tables: &Tables, selector: &LogSelector) -> Targets {
    let mut out = Targets::new();
    let mut add = |task: &Task| {
        if on_a_node(task) && !out.contains_key(&task.node_id) {
            out.insert(task.node_id.clone(), target(tables, &task.node_id));
        }
    };
    for id in &selector.service_ids {
        for task in tables.find::<Task>(&By::ServiceId(id.clone())) {
            add(&task);
        }
    }
    for id in &selector.task_ids {
        if let Some(task) = tables.get::<Task>(id) {
            add(&task);
        }
    }
    for id in &selector.node_ids {
        out.insert(id.clone(), target(tables, id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreActions};
    use berth_proto::v1::{Annotations, NodeDescription, ServiceSpec, TaskStatus};

    fn node(id: &str, host: &str) -> Node {
        Node {
            id: id.into(),
            description: Some(NodeDescription {
                hostname: host.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(id: &str, service: &str, node: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            slot: 1,
            node_id: node.into(),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn store() -> Store {
        let store = Store::new();
        let mut batch = StoreActions::new();
        batch
            .create(node("n1", "node-1"))
            .create(Node {
                status: Some(berth_proto::v1::NodeStatus {
                    state: NodeState::Down as i32,
                    ..Default::default()
                }),
                ..node("n2", "")
            })
            .create(node("n3", "node-3"))
            .create(Service {
                id: "s1".into(),
                spec: Some(ServiceSpec {
                    annotations: Some(Annotations {
                        name: "web".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .create(task("t1", "s1", "n1", TaskState::Running))
            .create(task("t2", "s1", "n2", TaskState::Failed))
            .create(task("t3", "s1", "", TaskState::Pending))
            .create(task("t4", "s1", "n3", TaskState::Pending));
        store
            .apply(1, crate::store::timestamp(1, 0), batch)
            .expect("fixture applies");
        store
    }

    #[test]
    fn a_service_selects_the_nodes_its_tasks_reached() {
        let tables = store().snapshot();
        let sel = LogSelector {
            service_ids: vec!["s1".into()],
            ..Default::default()
        };
        validate(&tables, &sel).unwrap();
        let nodes = nodes(&tables, &sel);
        // t3 has no node and t4 was never assigned; n2 has no host name and is down.
        assert_eq!(
            nodes
                .into_iter()
                .map(|(id, t)| (id, t.name, t.down))
                .collect::<Vec<_>>(),
            vec![
                ("n1".to_string(), "node-1".to_string(), false),
                ("n2".to_string(), "n2".to_string(), true)
            ]
        );
    }

    #[test]
    fn unknown_ids_and_empty_selectors_are_refused() {
        let tables = store().snapshot();
        let err = validate(&tables, &LogSelector::default()).unwrap_err();
        assert!(matches!(err, LogBrokerError::EmptySelector));
        let err = validate(
            &tables,
            &LogSelector {
                task_ids: vec!["nope".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no such task: nope");
        let sel = LogSelector {
            task_ids: vec!["t2".into()],
            ..Default::default()
        };
        assert_eq!(nodes(&tables, &sel).len(), 1);
        assert!(selects(&sel, &task("t2", "x", "y", TaskState::Running)));
        assert!(!selects(&sel, &task("t1", "s1", "n1", TaskState::Running)));
    }
}
