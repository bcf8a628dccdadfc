//! Reading and making tasks: observed and desired state, the slot a task fills, how a task is
//! created for a service and how one is retired.
//!
//! Invariant: a task is never restarted or moved; a new attempt is a new task (fresh id) in the
//! same slot, made by [`new_task`].

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::ids::new_id;
use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{Annotations, Endpoint, Service, Task, TaskState, TaskStatus};

use super::clock::{from_timestamp, to_timestamp};

/// Status message of a task waiting for the scheduler (Swarm's wording).
pub const MSG_PENDING: &str = "pending task scheduling";

/// Status message of a new task, before the allocator gave it its addresses (Swarm's wording).
pub const MSG_NEW: &str = "created";

/// Status message of a task retired before it ever reached a node.
pub const MSG_SHUTDOWN_UNASSIGNED: &str = "shut down before it was assigned to a node";

/// The slot a task fills: a replica number (replicated services) or a node (global services).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    /// Replica `n` (1-based) of a replicated service.
    Replica(u64),
    /// The task of a global service on this node.
    Node(String),
}

impl SlotKey {
    /// The slot of `task`: its replica number, or its node for tasks of global services
    /// (slot 0).
    pub fn of(task: &Task) -> SlotKey {
        if task.slot > 0 {
            SlotKey::Replica(task.slot)
        } else {
            SlotKey::Node(task.node_id.clone())
        }
    }
}

/// The observed state (`status.state`); NEW when unset or unknown.
pub fn observed(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .and_then(|s| TaskState::try_from(s.state).ok())
        .unwrap_or(TaskState::New)
}

/// The desired state; RUNNING when unset (0) or unknown, as a task is created to run.
pub fn desired(task: &Task) -> TaskState {
    match TaskState::try_from(task.desired_state) {
        Ok(TaskState::New) | Err(_) => TaskState::Running,
        Ok(s) => s,
    }
}

/// Whether the managers still want the task to run (desired READY or RUNNING): at most one
/// task per slot is runnable.
pub fn is_runnable(task: &Task) -> bool {
    desired(task) <= TaskState::Running
}

/// Whether the task ended on its own: the container completed, failed, or was rejected.
/// (SHUTDOWN is what a task reports when it was stopped on request.)
pub fn ended_by_itself(task: &Task) -> bool {
    matches!(
        observed(task),
        TaskState::Complete | TaskState::Failed | TaskState::Rejected
    )
}

/// Whether the task has reached a node's agent (ASSIGNED or later).
pub fn is_assigned(task: &Task) -> bool {
    observed(task) >= TaskState::Assigned
}

/// When the task was created (the Raft time of its creating entry; epoch if unset).
pub fn created_at(task: &Task) -> SystemTime {
    task.meta
        .as_ref()
        .and_then(|m| m.created_at.as_ref())
        .map_or(SystemTime::UNIX_EPOCH, from_timestamp)
}

/// When the task was last written (the Raft time of that entry; epoch if unset).
pub fn updated_at(task: &Task) -> SystemTime {
    task.meta
        .as_ref()
        .and_then(|m| m.updated_at.as_ref())
        .map_or(SystemTime::UNIX_EPOCH, from_timestamp)
}

/// Oldest first: by creation time, then id (tasks of one slot are never created in one entry).
pub fn by_age(a: &Arc<Task>, b: &Arc<Task>) -> Ordering {
    created_at(a)
        .cmp(&created_at(b))
        .then_with(|| a.id.cmp(&b.id))
}

/// The replica count of a replicated service (an unset mode is Docker's default, 1 replica);
/// `None` for global services.
pub fn replicas(service: &Service) -> Option<u64> {
    match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => Some(r.replicas),
        Some(Mode::Global(_)) => None,
        None => Some(1),
    }
}

/// Whether the service is global.
pub fn is_global(service: &Service) -> bool {
    replicas(service).is_none()
}

/// A new task of `service` for `slot`, in state NEW when it is attached to networks or
/// publishes ports (the allocator gives it its addresses and moves it to PENDING for the
/// scheduler), else straight in PENDING; wanting `desired` (RUNNING, or READY
/// for a start that must wait). Global tasks carry their node from the start.
pub fn new_task(service: &Service, slot: &SlotKey, desired: TaskState, now: SystemTime) -> Task {
    let spec = service.spec.clone().unwrap_or_default();
    let (slot_no, node_id) = match slot {
        SlotKey::Replica(n) => (*n, String::new()),
        SlotKey::Node(node) => (0, node.clone()),
    };
    let labels = spec
        .task
        .as_ref()
        .and_then(|t| t.container.as_ref())
        .map(|c| c.labels.clone())
        .unwrap_or_default();
    // Without an allocator the endpoint is the service's allocated one if any, else its spec's
    // ports as written (host-mode ports are what the scheduler checks).
    let endpoint = service.endpoint.clone().or_else(|| {
        spec.endpoint.as_ref().map(|e| Endpoint {
            spec: Some(e.clone()),
            ports: e.ports.clone(),
            virtual_ips: Vec::new(),
        })
    });
    // A task with nothing to allocate (no network, no published port) skips the allocator.
    let allocate = spec.task.as_ref().is_some_and(|t| !t.networks.is_empty())
        || endpoint.as_ref().is_some_and(|e| !e.ports.is_empty());
    let (state, message) = if allocate {
        (TaskState::New, MSG_NEW)
    } else {
        (TaskState::Pending, MSG_PENDING)
    };
    Task {
        id: new_id(),
        meta: None,
        spec: spec.task,
        spec_version: service.spec_version,
        service_id: service.id.clone(),
        slot: slot_no,
        node_id,
        annotations: Some(Annotations {
            name: String::new(),
            labels,
        }),
        service_annotations: spec.annotations,
        status: Some(TaskStatus {
            timestamp: Some(to_timestamp(now)),
            state: state as i32,
            message: message.into(),
            ..Default::default()
        }),
        desired_state: desired as i32,
        networks: Vec::new(),
        endpoint,
    }
}

/// `task` with desired state `want` (SHUTDOWN or REMOVE). A task that never reached a node is
/// also marked SHUTDOWN as observed: no agent will ever report on it.
pub fn retired(task: &Task, want: TaskState, now: SystemTime) -> Task {
    let mut t = task.clone();
    t.desired_state = want as i32;
    if want == TaskState::Shutdown && !is_assigned(task) {
        let status = t.status.get_or_insert_with(TaskStatus::default);
        status.state = TaskState::Shutdown as i32;
        status.message = MSG_SHUTDOWN_UNASSIGNED.into();
        status.timestamp = Some(to_timestamp(now));
    }
    t
}

/// `task` with desired state RUNNING (a delayed start released).
pub fn started(task: &Task) -> Task {
    let mut t = task.clone();
    t.desired_state = TaskState::Running as i32;
    t
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{
        ContainerSpec, EndpointSpec, GlobalService, PortConfig, ReplicatedService, ServiceSpec,
        TaskSpec,
    };

    use super::*;

    fn service(mode: Option<Mode>) -> Service {
        Service {
            id: "s1".into(),
            spec_version: 7,
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "busybox".into(),
                        labels: [("a".to_string(), "b".to_string())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode,
                endpoint: Some(EndpointSpec {
                    ports: vec![PortConfig {
                        target_port: 80,
                        published_port: 8080,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn modes_and_replica_counts() {
        assert_eq!(replicas(&service(None)), Some(1));
        assert_eq!(
            replicas(&service(Some(Mode::Replicated(ReplicatedService {
                replicas: 4
            })))),
            Some(4)
        );
        assert!(is_global(&service(Some(Mode::Global(GlobalService {})))));
    }

    #[test]
    fn new_tasks_copy_the_service_and_wait_for_the_allocator() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10);
        let svc = service(None);
        let t = new_task(&svc, &SlotKey::Replica(3), TaskState::Running, now);
        assert_eq!(t.id.len(), 25);
        assert_eq!((t.slot, t.node_id.as_str()), (3, ""));
        assert_eq!(t.spec_version, 7);
        assert_eq!(t.service_id, "s1");
        assert_eq!(observed(&t), TaskState::New);
        assert_eq!(desired(&t), TaskState::Running);
        assert_eq!(t.status.as_ref().map(|s| s.message.as_str()), Some(MSG_NEW));
        assert_eq!(t.spec, svc.spec.as_ref().and_then(|s| s.task.clone()));
        assert_eq!(t.annotations.as_ref().map(|a| a.labels.len()), Some(1));
        assert_eq!(
            t.endpoint.as_ref().map(|e| e.ports[0].published_port),
            Some(8080)
        );
        let mut plain = svc.clone();
        plain.spec.as_mut().expect("spec").endpoint = None;
        let p = new_task(&plain, &SlotKey::Replica(1), TaskState::Running, now);
        assert_eq!(observed(&p), TaskState::Pending, "nothing to allocate");
        assert_eq!(
            p.status.as_ref().map(|s| s.message.as_str()),
            Some(MSG_PENDING)
        );
        let g = new_task(&svc, &SlotKey::Node("n1".into()), TaskState::Ready, now);
        assert_eq!((g.slot, g.node_id.as_str()), (0, "n1"));
        assert_eq!(SlotKey::of(&g), SlotKey::Node("n1".into()));
        assert_eq!(desired(&g), TaskState::Ready);
    }

    #[test]
    fn retiring_an_unassigned_task_also_ends_it() {
        let now = SystemTime::UNIX_EPOCH;
        let t = new_task(
            &service(None),
            &SlotKey::Replica(1),
            TaskState::Running,
            now,
        );
        let r = retired(&t, TaskState::Shutdown, now);
        assert_eq!(
            (desired(&r), observed(&r)),
            (TaskState::Shutdown, TaskState::Shutdown)
        );
        // REMOVE leaves the state alone: the reaper deletes unassigned REMOVE tasks.
        let r = retired(&t, TaskState::Remove, now);
        assert_eq!(
            (desired(&r), observed(&r)),
            (TaskState::Remove, TaskState::New)
        );
        // An assigned task keeps its observed state: its agent reports the shutdown.
        let mut a = t.clone();
        a.status.as_mut().expect("status").state = TaskState::Running as i32;
        let r = retired(&a, TaskState::Shutdown, now);
        assert_eq!(
            (desired(&r), observed(&r)),
            (TaskState::Shutdown, TaskState::Running)
        );
        assert_eq!(desired(&started(&r)), TaskState::Running);
    }
}
