//! One node's assignment set: which tasks (and the secrets and configs they use) the node's
//! agent must know, and the changes to send it.
//!
//! Membership: a task is in the set when it is on this node, its observed state is ASSIGNED or
//! later, and it is not both ended and meant to be removed (terminal state with desired state
//! REMOVE: the managers and the agent agree it is over, so it leaves the set and the agent
//! removes its container). Ended tasks otherwise stay, like Swarm, so their stopped
//! containers (and logs) remain until the task reaper deletes the task.
//!
//! A task update the agent itself caused (only `status`/`meta` moved, and the task is past
//! ASSIGNED) is not echoed back. Secrets and configs are sent while at least one task in the
//! set that has not ended (state ≤ RUNNING) references them, and removed when the last one
//! ends or leaves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use berth_proto::v1::assignment_change::Assignment;
use berth_proto::v1::{
    AssignmentAction, AssignmentChange, AssignmentsMessage, AssignmentsType, Config, Secret, Task,
    TaskState,
};

use crate::store::{By, ChangeSet, Event, Object, Store, Tables};

/// Read access to secrets and configs (a snapshot or the live store).
pub(crate) trait Lookup {
    fn secret(&self, id: &str) -> Option<Arc<Secret>>;
    fn config(&self, id: &str) -> Option<Arc<Config>>;
}

impl Lookup for Tables {
    fn secret(&self, id: &str) -> Option<Arc<Secret>> {
        self.get(id)
    }
    fn config(&self, id: &str) -> Option<Arc<Config>> {
        self.get(id)
    }
}

impl Lookup for Store {
    fn secret(&self, id: &str) -> Option<Arc<Secret>> {
        self.get(id)
    }
    fn config(&self, id: &str) -> Option<Arc<Config>> {
        self.get(id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Secret,
    Config,
    Task,
}

fn state(t: &Task) -> TaskState {
    TaskState::try_from(t.status.as_ref().map_or(0, |s| s.state)).unwrap_or(TaskState::New)
}

/// Whether `task` belongs in `node_id`'s set (see the module docs).
pub(crate) fn in_set(task: &Task, node_id: &str) -> bool {
    let s = state(task);
    task.node_id == node_id
        && s >= TaskState::Assigned
        && !(s.is_terminal() && task.desired_state >= TaskState::Remove as i32)
}

/// Whether two versions of a task differ only in what the agent reports (status, meta).
fn same_but_status(a: &Task, b: &Task) -> bool {
    a.id == b.id
        && a.spec == b.spec
        && a.spec_version == b.spec_version
        && a.service_id == b.service_id
        && a.slot == b.slot
        && a.node_id == b.node_id
        && a.annotations == b.annotations
        && a.service_annotations == b.service_annotations
        && a.desired_state == b.desired_state
        && a.networks == b.networks
        && a.endpoint == b.endpoint
}

fn references(task: &Task) -> (Vec<String>, Vec<String>) {
    let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
        return (Vec::new(), Vec::new());
    };
    (
        c.secrets.iter().map(|r| r.secret_id.clone()).collect(),
        c.configs.iter().map(|r| r.config_id.clone()).collect(),
    )
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct AssignmentSet {
    node_id: String,
    tasks: HashMap<String, Arc<Task>>,
    /// Tasks holding references, by task: (secret ids, config ids).
    holds: HashMap<String, (Vec<String>, Vec<String>)>,
    secret_users: HashMap<String, HashSet<String>>,
    config_users: HashMap<String, HashSet<String>>,
    changes: BTreeMap<(Kind, String), AssignmentChange>,
    /// Sequence number of the last message sent.
    seq: u64,
}

fn change(action: AssignmentAction, assignment: Assignment) -> AssignmentChange {
    AssignmentChange {
        action: action as i32,
        assignment: Some(assignment),
    }
}

impl AssignmentSet {
    /// An empty set for `node_id`.
    pub fn new(node_id: &str) -> Self {
        AssignmentSet {
            node_id: node_id.to_owned(),
            tasks: HashMap::new(),
            holds: HashMap::new(),
            secret_users: HashMap::new(),
            config_users: HashMap::new(),
            changes: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Rebuilds the set from `tables` and returns the COMPLETE message.
    pub fn complete(&mut self, tables: &Tables) -> AssignmentsMessage {
        let seq = self.seq;
        *self = AssignmentSet::new(&self.node_id);
        self.seq = seq;
        for task in tables.find::<Task>(&By::NodeId(self.node_id.clone())) {
            if in_set(&task, &self.node_id) {
                self.upsert(task, tables);
            }
        }
        self.message(AssignmentsType::Complete)
    }

    /// Takes in the effects of one applied batch. Only this node's task events are looked at
    /// (through the change set's shared [`crate::store::EventIndex`]), and the other kinds'
    /// events only while a task here uses a secret or config.
    pub fn apply(&mut self, changes: &ChangeSet, lookup: &dyn Lookup) {
        let index = changes.index();
        for &i in index.tasks_of_node(&self.node_id) {
            match &changes.events[i] {
                Event::Created(Object::Task(t))
                | Event::Updated {
                    new: Object::Task(t),
                    ..
                } => {
                    if in_set(t, &self.node_id) {
                        self.upsert(t.clone(), lookup);
                    } else {
                        self.remove(&t.id);
                    }
                }
                Event::Removed(Object::Task(t)) => self.remove(&t.id),
                _ => {}
            }
        }
        if self.secret_users.is_empty() && self.config_users.is_empty() {
            return;
        }
        for &i in index.others() {
            match &changes.events[i] {
                Event::Updated {
                    new: Object::Secret(s),
                    ..
                } if self.secret_users.contains_key(&s.id) => {
                    self.changes.insert(
                        (Kind::Secret, s.id.clone()),
                        change(AssignmentAction::Update, Assignment::Secret((**s).clone())),
                    );
                }
                Event::Updated {
                    new: Object::Config(c),
                    ..
                } if self.config_users.contains_key(&c.id) => {
                    self.changes.insert(
                        (Kind::Config, c.id.clone()),
                        change(AssignmentAction::Update, Assignment::Config((**c).clone())),
                    );
                }
                _ => {}
            }
        }
    }

    /// Number of changes waiting to be sent.
    pub fn pending(&self) -> usize {
        self.changes.len()
    }

    /// The INCREMENTAL message of the waiting changes.
    pub fn increment(&mut self) -> AssignmentsMessage {
        self.message(AssignmentsType::Incremental)
    }

    fn message(&mut self, kind: AssignmentsType) -> AssignmentsMessage {
        let applies_to = match kind {
            AssignmentsType::Complete => String::new(),
            AssignmentsType::Incremental => self.seq.to_string(),
        };
        self.seq += 1;
        AssignmentsMessage {
            r#type: kind as i32,
            applies_to,
            results_in: self.seq.to_string(),
            changes: std::mem::take(&mut self.changes).into_values().collect(),
        }
    }

    fn upsert(&mut self, task: Arc<Task>, lookup: &dyn Lookup) {
        let s = state(&task);
        if let Some(old) = self.tasks.get(&task.id) {
            if s > TaskState::Assigned && same_but_status(old, &task) {
                // The agent's own report: nothing to tell it.
                self.tasks.insert(task.id.clone(), task.clone());
                if s > TaskState::Running {
                    self.release(&task.id);
                }
                return;
            }
        } else if s <= TaskState::Running {
            self.hold(&task, lookup);
        }
        if s > TaskState::Running {
            self.release(&task.id);
        }
        self.changes.insert(
            (Kind::Task, task.id.clone()),
            change(AssignmentAction::Update, Assignment::Task((*task).clone())),
        );
        self.tasks.insert(task.id.clone(), task);
    }

    fn remove(&mut self, task_id: &str) {
        if self.tasks.remove(task_id).is_none() {
            return;
        }
        self.release(task_id);
        self.changes.insert(
            (Kind::Task, task_id.to_owned()),
            change(
                AssignmentAction::Remove,
                Assignment::Task(Task {
                    id: task_id.to_owned(),
                    ..Default::default()
                }),
            ),
        );
    }

    fn hold(&mut self, task: &Task, lookup: &dyn Lookup) {
        let (secrets, configs) = references(task);
        for id in &secrets {
            let users = self.secret_users.entry(id.clone()).or_default();
            if users.is_empty() {
                match lookup.secret(id) {
                    Some(s) => {
                        self.changes.insert(
                            (Kind::Secret, id.clone()),
                            change(AssignmentAction::Update, Assignment::Secret((*s).clone())),
                        );
                    }
                    None => {
                        tracing::debug!(secret_id = %id, task_id = %task.id, "referenced secret not found")
                    }
                }
            }
            users.insert(task.id.clone());
        }
        for id in &configs {
            let users = self.config_users.entry(id.clone()).or_default();
            if users.is_empty() {
                match lookup.config(id) {
                    Some(c) => {
                        self.changes.insert(
                            (Kind::Config, id.clone()),
                            change(AssignmentAction::Update, Assignment::Config((*c).clone())),
                        );
                    }
                    None => {
                        tracing::debug!(config_id = %id, task_id = %task.id, "referenced config not found")
                    }
                }
            }
            users.insert(task.id.clone());
        }
        self.holds.insert(task.id.clone(), (secrets, configs));
    }

    fn release(&mut self, task_id: &str) {
        let Some((secrets, configs)) = self.holds.remove(task_id) else {
            return;
        };
        for id in secrets {
            if let Some(users) = self.secret_users.get_mut(&id) {
                users.remove(task_id);
                if users.is_empty() {
                    self.secret_users.remove(&id);
                    self.changes.insert(
                        (Kind::Secret, id.clone()),
                        change(
                            AssignmentAction::Remove,
                            Assignment::Secret(Secret {
                                id,
                                ..Default::default()
                            }),
                        ),
                    );
                }
            }
        }
        for id in configs {
            if let Some(users) = self.config_users.get_mut(&id) {
                users.remove(task_id);
                if users.is_empty() {
                    self.config_users.remove(&id);
                    self.changes.insert(
                        (Kind::Config, id.clone()),
                        change(
                            AssignmentAction::Remove,
                            Assignment::Config(Config {
                                id,
                                ..Default::default()
                            }),
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{ContainerSpec, SecretReference, TaskSpec, TaskStatus};

    use crate::store::{StoreActions, timestamp};

    use super::*;

    fn task(id: &str, node: &str, s: TaskState, desired: TaskState, secret: Option<&str>) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            desired_state: desired as i32,
            status: Some(TaskStatus {
                state: s as i32,
                ..Default::default()
            }),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    secrets: secret
                        .map(|id| SecretReference {
                            secret_id: id.into(),
                            ..Default::default()
                        })
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// (kind, action, id) of each change, sorted.
    fn summary(m: &AssignmentsMessage) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = m
            .changes
            .iter()
            .map(|c| {
                let verb = if c.action == AssignmentAction::Remove as i32 {
                    "-"
                } else {
                    "+"
                };
                let what = match &c.assignment {
                    Some(Assignment::Task(t)) => format!("task {}", t.id),
                    Some(Assignment::Secret(s)) => format!("secret {}", s.id),
                    Some(Assignment::Config(c)) => format!("config {}", c.id),
                    None => "none".into(),
                };
                (what, verb.to_string())
            })
            .collect();
        out.sort();
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
            .collect()
    }

    struct Fx {
        store: Store,
        index: u64,
    }

    impl Fx {
        fn apply(&mut self, f: impl FnOnce(&mut StoreActions)) -> Arc<ChangeSet> {
            let mut b = StoreActions::new();
            f(&mut b);
            self.index += 1;
            self.store
                .apply(self.index, timestamp(0, 0), b)
                .expect("apply")
        }

        fn get(&self, id: &str) -> Task {
            self.store
                .get::<Task>(id)
                .map(|t| (*t).clone())
                .unwrap_or_default()
        }
    }

    #[test]
    fn complete_then_increments_for_one_node_only() {
        use TaskState::*;
        let mut fx = Fx {
            store: Store::new(),
            index: 0,
        };
        fx.apply(|b| {
            b.create(Secret {
                id: "s1".into(),
                ..Default::default()
            });
            b.create(task("t1", "n1", Assigned, Running, None));
            b.create(task("t2", "n1", Pending, Running, None));
            b.create(task("t3", "n2", Assigned, Running, None));
            b.create(task("t4", "n1", Running, Running, Some("s1")));
            b.create(task("t5", "n1", Failed, Shutdown, None));
            b.create(task("t6", "n1", Shutdown, Remove, None));
        });
        let mut set = AssignmentSet::new("n1");
        let first = set.complete(&fx.store.snapshot());
        assert_eq!(first.r#type, AssignmentsType::Complete as i32);
        assert_eq!(
            (first.applies_to.as_str(), first.results_in.as_str()),
            ("", "1")
        );
        assert_eq!(
            summary(&first),
            pairs(&[
                ("secret s1", "+"),
                ("task t1", "+"),
                ("task t4", "+"),
                ("task t5", "+")
            ])
        );

        // The agent reports t1 running: not echoed. Another node's task: not sent.
        let mut t1 = with_state(&fx.get("t1"), Running);
        t1.status.get_or_insert_default().message = "started".into();
        let t3 = fx.get("t3");
        let cs = fx.apply(|b| {
            b.update(t1);
            b.update(t3);
        });
        set.apply(&cs, &fx.store);
        assert_eq!(set.pending(), 0);

        // The scheduler assigns t2; the orchestrator shuts t1 down.
        let t2 = with_state(&fx.get("t2"), Assigned);
        let mut t1 = fx.get("t1");
        t1.desired_state = Shutdown as i32;
        let cs = fx.apply(|b| {
            b.update(t2);
            b.update(t1);
        });
        set.apply(&cs, &fx.store);
        let inc = set.increment();
        assert_eq!(inc.r#type, AssignmentsType::Incremental as i32);
        assert_eq!(
            (inc.applies_to.as_str(), inc.results_in.as_str()),
            ("1", "2")
        );
        assert_eq!(summary(&inc), pairs(&[("task t1", "+"), ("task t2", "+")]));

        // t4 ends (agent report): its secret goes. t5 is marked REMOVE: it leaves the set.
        let t4 = with_state(&fx.get("t4"), Complete);
        let mut t5 = fx.get("t5");
        t5.desired_state = Remove as i32;
        let cs = fx.apply(|b| {
            b.update(t4);
            b.update(t5);
        });
        set.apply(&cs, &fx.store);
        assert_eq!(
            summary(&set.increment()),
            pairs(&[("secret s1", "-"), ("task t5", "-")])
        );

        // The reaper deletes t4.
        let cs = fx.apply(|b| {
            b.remove(crate::store::ObjectKind::Task, "t4");
        });
        set.apply(&cs, &fx.store);
        assert_eq!(summary(&set.increment()), pairs(&[("task t4", "-")]));
    }

    fn with_state(t: &Task, s: TaskState) -> Task {
        let mut t = t.clone();
        t.status.get_or_insert_default().state = s as i32;
        t
    }
}
