//! What the scheduler knows about each node for one round: the node, whether it takes new
//! tasks, the resources left after the reservations of the tasks on it, its task counts
//! (overall and per service), its host-mode ports in use and its recent failures.
//!
//! Counting rules: a task counts on its node from ASSIGNED to RUNNING (observed). Its
//! reservations and host ports count while it may still run, even if it is being shut down;
//! for spreading and max-replicas only tasks still wanted (desired ≤ RUNNING) count.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use berth_proto::v1::{Node, NodeAvailability, NodeState, PublishMode, Task, TaskState};

use crate::orchestrator::task::{desired, observed, updated_at};
use crate::store::Tables;

/// Failures of one service on one node within [`FAILURE_WINDOW`] that push the node last.
pub const MAX_FAILURES: usize = 5;

/// The window of [`MAX_FAILURES`] (Swarm: 5 min).
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// One node during a scheduling round.
#[derive(Debug, Clone)]
pub struct NodeInfo<'a> {
    /// The node.
    pub node: &'a Node,
    /// READY and ACTIVE: may take new tasks.
    pub available: bool,
    /// CPU left (nano CPUs) after reservations.
    pub cpu: i64,
    /// Memory left (bytes) after reservations.
    pub memory: i64,
    /// Tasks wanted on the node.
    pub tasks: usize,
    /// Tasks wanted on the node, per service id.
    pub by_service: HashMap<&'a str, usize>,
    /// Host-mode published ports in use: (protocol, port).
    pub ports: HashSet<(i32, u32)>,
    /// Recent failures per service id.
    pub failures: HashMap<&'a str, usize>,
}

impl<'a> NodeInfo<'a> {
    /// A node with nothing on it yet.
    pub fn new(node: &'a Node) -> Self {
        let state = node.status.as_ref().map_or(0, |s| s.state);
        let availability = node.spec.as_ref().map_or(0, |s| s.availability);
        let res = node.description.as_ref().and_then(|d| d.resources.as_ref());
        NodeInfo {
            node,
            available: state == NodeState::Ready as i32
                && availability == NodeAvailability::Active as i32,
            cpu: res.map_or(0, |r| r.nano_cpus),
            memory: res.map_or(0, |r| r.memory_bytes),
            tasks: 0,
            by_service: HashMap::new(),
            ports: HashSet::new(),
            failures: HashMap::new(),
        }
    }

    /// Accounts for `task`, placed on this node.
    pub fn add(&mut self, task: &'a Task) {
        let (cpu, memory) = reservations(task);
        self.cpu -= cpu;
        self.memory -= memory;
        self.ports.extend(host_ports(task));
        if desired(task) <= TaskState::Running {
            self.tasks += 1;
            *self.by_service.entry(task.service_id.as_str()).or_default() += 1;
        }
    }

    /// Tasks of `service` wanted on this node.
    pub fn service_tasks(&self, service: &str) -> usize {
        self.by_service.get(service).copied().unwrap_or(0)
    }

    /// Whether `service` failed here too often lately.
    pub fn is_faulty_for(&self, service: &str) -> bool {
        self.failures.get(service).copied().unwrap_or(0) >= MAX_FAILURES
    }
}

/// The reservations (nano CPUs, memory bytes) of a task.
pub fn reservations(task: &Task) -> (i64, i64) {
    task.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .map_or((0, 0), |r| (r.nano_cpus.max(0), r.memory_bytes.max(0)))
}

/// The host-mode published ports of a task that name a port (0 = any free port, no clash).
pub fn host_ports(task: &Task) -> impl Iterator<Item = (i32, u32)> + '_ {
    task.endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| p.publish_mode == PublishMode::Host as i32 && p.published_port != 0)
        .map(|p| (p.protocol, p.published_port))
}

/// Every node (in id order) with the tasks already on it, and an index by node id.
pub fn build(tables: &Tables, now: SystemTime) -> (Vec<NodeInfo<'_>>, HashMap<&str, usize>) {
    let nodes: Vec<NodeInfo<'_>> = tables
        .table::<Node>()
        .iter()
        .map(|n| NodeInfo::new(n))
        .collect();
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.id.as_str(), i))
        .collect();
    let mut nodes = nodes;
    let since = now
        .checked_sub(FAILURE_WINDOW)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    for task in tables.table::<Task>().iter() {
        if task.node_id.is_empty() {
            continue;
        }
        let Some(&i) = index.get(task.node_id.as_str()) else {
            continue;
        };
        let state = observed(task);
        if (TaskState::Assigned..=TaskState::Running).contains(&state) {
            nodes[i].add(task);
        } else if matches!(state, TaskState::Failed | TaskState::Rejected)
            && updated_at(task) >= since
        {
            *nodes[i]
                .failures
                .entry(task.service_id.as_str())
                .or_default() += 1;
        }
    }
    (nodes, index)
}
