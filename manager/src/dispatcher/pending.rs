//! Writes waiting for the next flush: task statuses reported by agents and node status
//! changes (READY on register, DISCONNECTED, DOWN, UNKNOWN), each coalesced per object
//! (latest wins), turned into store updates against the current store at flush time.
//!
//! The checks that make an update stale are made twice: when it is queued (against what is
//! queued) and when it is flushed (against the store), because the store may have moved in
//! between. A status never moves a task backwards ([`TaskState::can_move_to`]) and never
//! touches a task on another node.

use std::collections::HashMap;

use berth_proto::v1::{Node, NodeDescription, NodeState, NodeStatus, Task, TaskState, TaskStatus};
use tokio::sync::oneshot;

use crate::store::{StoreActions, Tables};

/// A change of a node's status (and, on register, its description).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeChange {
    pub state: NodeState,
    pub message: String,
    /// The description the agent sent, on register.
    pub description: Option<NodeDescription>,
    /// The address the session came from, on register.
    pub addr: Option<String>,
}

impl NodeChange {
    /// `self` followed by `later`: the later state wins, description and address are kept
    /// unless the later change brings new ones.
    fn then(self, later: NodeChange) -> NodeChange {
        NodeChange {
            state: later.state,
            message: later.message,
            description: later.description.or(self.description),
            addr: later.addr.or(self.addr),
        }
    }
}

/// Who waits for a flush: the outcome of the write (an error message when it failed).
pub(crate) type Waiter = oneshot::Sender<Result<(), String>>;

/// The queued writes (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// task id → (reporting node, status).
    tasks: HashMap<String, (String, TaskStatus)>,
    /// node id → change.
    nodes: HashMap<String, NodeChange>,
    waiters: Vec<Waiter>,
}

fn task_state(raw: i32) -> TaskState {
    TaskState::try_from(raw).unwrap_or(TaskState::New)
}

impl Pending {
    /// Queues a status of `task_id` reported by `node_id`; ignored when a later state is
    /// already queued.
    pub fn task_status(&mut self, node_id: &str, task_id: String, status: TaskStatus) {
        match self.tasks.get_mut(&task_id) {
            Some((_, queued)) => {
                if task_state(queued.state).can_move_to(task_state(status.state)) {
                    *queued = status;
                }
            }
            None => {
                self.tasks.insert(task_id, (node_id.to_owned(), status));
            }
        }
    }

    /// Queues a node change, merged with a queued one.
    pub fn node(&mut self, node_id: &str, change: NodeChange) {
        let merged = match self.nodes.remove(node_id) {
            Some(queued) => queued.then(change),
            None => change,
        };
        self.nodes.insert(node_id.to_owned(), merged);
    }

    /// Adds someone to tell when the next flush is done.
    pub fn wait(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
    }

    /// Number of queued task statuses.
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.nodes.is_empty() && self.waiters.is_empty()
    }

    /// Takes everything queued.
    pub fn take(&mut self) -> Pending {
        std::mem::take(self)
    }

    /// Puts back what a failed flush took; anything queued meanwhile wins where it is later.
    pub fn restore(&mut self, older: Pending) {
        for (task_id, (node_id, status)) in older.tasks {
            match self.tasks.get_mut(&task_id) {
                Some((_, newer)) => {
                    if !task_state(status.state).can_move_to(task_state(newer.state)) {
                        *newer = status;
                    }
                }
                None => {
                    self.tasks.insert(task_id, (node_id, status));
                }
            }
        }
        for (node_id, change) in older.nodes {
            let merged = match self.nodes.remove(&node_id) {
                Some(newer) => change.then(newer),
                None => change,
            };
            self.nodes.insert(node_id, merged);
        }
        self.waiters.extend(older.waiters);
    }

    /// Tells every waiter the outcome.
    pub fn notify(self, outcome: Result<(), String>) {
        for w in self.waiters {
            let _ = w.send(outcome.clone());
        }
    }

    /// The store updates the queued writes make against `tables`, at most `max_actions` per
    /// batch. Stale statuses, statuses of tasks that are gone or on another node, and changes
    /// that change nothing are left out (and logged at debug level).
    pub fn build(&self, tables: &Tables, max_actions: usize) -> Vec<StoreActions> {
        let max_actions = max_actions.max(1);
        let mut batches = vec![StoreActions::new()];
        let mut push = |obj: crate::store::Object| {
            if batches.last().is_some_and(|b| b.len() >= max_actions) {
                batches.push(StoreActions::new());
            }
            if let Some(b) = batches.last_mut() {
                b.update(obj);
            }
        };
        let mut ids: Vec<&String> = self.nodes.keys().collect();
        ids.sort();
        for node_id in ids {
            let change = &self.nodes[node_id];
            let Some(current) = tables.get::<Node>(node_id) else {
                tracing::debug!(%node_id, "node change dropped: the node is gone");
                continue;
            };
            let mut next = (*current).clone();
            let old_addr = current.status.as_ref().map(|s| s.addr.clone());
            next.status = Some(NodeStatus {
                state: change.state as i32,
                message: change.message.clone(),
                addr: change.addr.clone().or(old_addr).unwrap_or_default(),
            });
            if let Some(d) = &change.description {
                next.description = Some(d.clone());
            }
            if next != *current {
                push(next.into());
            }
        }
        let mut ids: Vec<&String> = self.tasks.keys().collect();
        ids.sort();
        for task_id in ids {
            let (node_id, status) = &self.tasks[task_id];
            let Some(current) = tables.get::<Task>(task_id) else {
                tracing::debug!(%task_id, "status dropped: the task is gone");
                continue;
            };
            if current.node_id != *node_id {
                tracing::debug!(%task_id, %node_id, "status dropped: the task is on another node");
                continue;
            }
            let from = task_state(current.status.as_ref().map_or(0, |s| s.state));
            let to = task_state(status.state);
            if !from.can_move_to(to) {
                tracing::debug!(%task_id, ?from, ?to, "status dropped: it would move the task backwards");
                continue;
            }
            if current.status.as_ref() == Some(status) {
                continue;
            }
            let mut next: Task = (*current).clone();
            next.status = Some(status.clone());
            push(next.into());
        }
        batches.retain(|b| !b.is_empty());
        batches
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::store::{Store, StoreAction, timestamp};

    use super::*;

    fn st(state: TaskState, message: &str) -> TaskStatus {
        TaskStatus {
            state: state as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    fn store_with(tasks: &[(&str, &str, TaskState)]) -> Store {
        let store = Store::new();
        let mut b = StoreActions::new();
        for (id, node, state) in tasks {
            b.create(Task {
                id: (*id).into(),
                node_id: (*node).into(),
                status: Some(st(*state, "")),
                ..Default::default()
            });
        }
        b.create(Node {
            id: "n1".into(),
            ..Default::default()
        });
        store.apply(1, timestamp(0, 0), b).expect("seed");
        store
    }

    fn updated_tasks(batches: &[StoreActions]) -> Vec<(String, TaskState)> {
        batches
            .iter()
            .flat_map(|b| b.actions.iter())
            .filter_map(|a| match a {
                StoreAction::Update(crate::store::Object::Task(t)) => Some((
                    t.id.clone(),
                    task_state(t.status.as_ref().map_or(0, |s| s.state)),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stale_foreign_and_missing_statuses_are_left_out() {
        let store = store_with(&[
            ("a", "n1", TaskState::Running),
            ("b", "n1", TaskState::Assigned),
            ("c", "n2", TaskState::Assigned),
            ("d", "n1", TaskState::Running),
        ]);
        let mut p = Pending::default();
        p.task_status("n1", "a".into(), st(TaskState::Starting, "late"));
        p.task_status("n1", "b".into(), st(TaskState::Preparing, ""));
        p.task_status("n1", "b".into(), st(TaskState::Running, ""));
        p.task_status("n1", "b".into(), st(TaskState::Accepted, "older"));
        p.task_status("n1", "c".into(), st(TaskState::Running, ""));
        p.task_status("n1", "gone".into(), st(TaskState::Running, ""));
        p.task_status("n1", "d".into(), st(TaskState::Running, ""));
        let batches = store.view(|t| p.build(t, 100));
        // a: backwards; c: another node's; gone: missing; d: nothing changes.
        assert_eq!(
            updated_tasks(&batches),
            vec![("b".into(), TaskState::Running)]
        );
        // The update carries the version it read, so a concurrent write makes it refused.
        let StoreAction::Update(crate::store::Object::Task(t)) = &batches[0].actions[0] else {
            panic!("expected a task update");
        };
        assert_eq!(t.meta.as_ref().map(|m| m.version), Some(1));
    }

    #[test]
    fn batches_are_bounded() {
        let tasks: Vec<(String, &str, TaskState)> = (0..25)
            .map(|i| (format!("t{i:02}"), "n1", TaskState::Assigned))
            .collect();
        let refs: Vec<(&str, &str, TaskState)> =
            tasks.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
        let store = store_with(&refs);
        let mut p = Pending::default();
        for (id, _, _) in &refs {
            p.task_status("n1", (*id).into(), st(TaskState::Running, ""));
        }
        let batches = store.view(|t| p.build(t, 10));
        let sizes: Vec<usize> = batches.iter().map(StoreActions::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
    }

    #[test]
    fn node_changes_merge_and_restore_keeps_newer() {
        let store = store_with(&[]);
        let mut p = Pending::default();
        p.node(
            "n1",
            NodeChange {
                state: NodeState::Ready,
                message: String::new(),
                description: Some(NodeDescription {
                    hostname: "host1".into(),
                    ..Default::default()
                }),
                addr: Some("127.0.0.1".into()),
            },
        );
        p.node(
            "n1",
            NodeChange {
                state: NodeState::Disconnected,
                message: "gone".into(),
                description: None,
                addr: None,
            },
        );
        let batches = store.view(|t| p.build(t, 10));
        let StoreAction::Update(crate::store::Object::Node(n)) = &batches[0].actions[0] else {
            panic!("expected a node update");
        };
        let n: &Arc<Node> = n;
        assert_eq!(
            n.status.as_ref().map(|s| s.state),
            Some(NodeState::Disconnected as i32)
        );
        assert_eq!(
            n.status.as_ref().map(|s| s.addr.as_str()),
            Some("127.0.0.1")
        );
        assert_eq!(
            n.description.as_ref().map(|d| d.hostname.as_str()),
            Some("host1")
        );

        // A failed flush is put back behind what was queued since.
        let mut q = Pending::default();
        q.task_status("n1", "x".into(), st(TaskState::Failed, "exit 1"));
        let taken = q.take();
        q.task_status("n1", "x".into(), st(TaskState::Running, "stale"));
        q.restore(taken);
        assert_eq!(q.tasks["x"].1.state, TaskState::Failed as i32);
    }
}
