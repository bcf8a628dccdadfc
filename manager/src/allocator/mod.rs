//! The allocator (leader only): subnets and VXLAN ids of networks, one virtual IP per service
//! per attached network, published ingress ports, one address per task per attached network,
//! and each node's own address on its networks. It alone moves tasks NEW → PENDING.
//!
//! It runs the same loop as the orchestrators ([`crate::orchestrator::drive`]): a change that
//! can need an allocation marks it dirty, and a round ([`plan::decide`]) reads a fresh
//! snapshot and writes units (a service with its new tasks, a node, a network).
//!
//! Invariants:
//! - Allocation state is derived from the store each round (see [`plan`]); nothing but a
//!   cursor per network lives only in memory, so a new leader allocates the same way.
//! - A task copies only allocated networks, and only together with its service's endpoint in
//!   the same write, so its VIPs and ports are the service's.
//! - An address is held by exactly one live object (task that has not ended, service VIP,
//!   node attachment); ingress ports are unique cluster-wide (the control API refuses
//!   conflicting ones; dynamic ones are picked here).
//!
//! [`view`] turns the store into what each node's data path needs (the dispatcher's Networks
//! stream).

pub mod ipam;
pub mod plan;
pub mod ports;
pub mod view;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_proto::v1::{Network, NetworkSpec, Task, TaskState};
use tokio_util::sync::CancellationToken;

use crate::orchestrator::task::observed;
use crate::orchestrator::{
    Clock, OrchestratorError, Pace, Reconciler, SystemClock, Unit, Writer, drive,
};
use crate::store::{ChangeSet, Event, Object, Store, Tables};

pub use plan::{Cursors, Decision, decide, ingress_network, is_allocated, resolve_network};

/// Name of the routing-mesh network created with the cluster.
pub const INGRESS_NAME: &str = "ingress";

/// Settings of the allocator.
#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// Wall-clock time (status timestamps).
    pub clock: Arc<dyn Clock>,
    /// Full round period, a safety net beside the change stream (default 30 s).
    pub resync_interval: Duration,
    /// Actions per store batch at most (default 500).
    pub max_batch: usize,
    /// Pause after a failed write (no quorum) before trying again (default 1 s).
    pub retry_backoff: Duration,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            clock: Arc::new(SystemClock),
            resync_interval: Duration::from_secs(30),
            max_batch: 500,
            retry_backoff: Duration::from_secs(1),
        }
    }
}

impl AllocatorConfig {
    /// The defaults with another clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        AllocatorConfig {
            clock,
            ..Default::default()
        }
    }

    fn pace(&self) -> Pace {
        Pace {
            max_batch: self.max_batch,
            resync: self.resync_interval,
            // Gather a burst of new tasks (a service scaled up) into one round.
            gap: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            min_interval: Duration::ZERO,
            backoff: self.retry_backoff,
        }
    }
}

/// The spec of the ingress network `berth swarm init` creates.
pub fn ingress_spec() -> NetworkSpec {
    NetworkSpec {
        annotations: Some(berth_proto::v1::Annotations {
            name: INGRESS_NAME.into(),
            labels: Default::default(),
        }),
        driver: "overlay".into(),
        ingress: true,
        ..Default::default()
    }
}

/// The ingress network object for a new cluster (allocated by the allocator once it runs).
pub fn ingress_network_object() -> Network {
    Network {
        id: berth_proto::ids::new_id(),
        meta: None,
        spec: Some(ingress_spec()),
        ipam: Vec::new(),
        vxlan_id: 0,
    }
}

/// The allocation loop (see the module docs).
pub struct Allocator {
    store: Store,
    writer: Arc<dyn Writer>,
    cfg: AllocatorConfig,
}

impl std::fmt::Debug for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allocator")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

struct Loop {
    dirty: bool,
    cursors: Cursors,
}

/// Whether a task change can need an allocation: a new task, a task placed on a node (its
/// node needs an attachment), or a task that ended (its addresses are free again).
fn task_matters(old: Option<&Task>, new: &Task) -> bool {
    let Some(old) = old else {
        return observed(new) == TaskState::New;
    };
    observed(new) == TaskState::New
        || old.node_id != new.node_id
        || old.networks != new.networks
        || (observed(old) <= TaskState::Running) != (observed(new) <= TaskState::Running)
}

impl Reconciler for Loop {
    fn name(&self) -> &'static str {
        "allocator"
    }

    fn observe(&mut self, changes: &ChangeSet) {
        for e in &changes.events {
            let matters = match e {
                Event::Created(Object::Task(t)) => task_matters(None, t),
                Event::Updated {
                    old: Object::Task(o),
                    new: Object::Task(n),
                } => task_matters(Some(o), n),
                Event::Removed(Object::Task(_)) => false,
                // A node's status changes do not need allocations, its existence does.
                Event::Updated {
                    old: Object::Node(_),
                    new: Object::Node(_),
                } => false,
                _ => true,
            };
            if matters {
                self.dirty = true;
                return;
            }
        }
    }

    fn mark_all(&mut self) {
        self.dirty = true;
    }

    fn mark_refused(&mut self, _unit: &Unit) {
        self.dirty = true;
    }

    fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn decide(&mut self, tables: &Tables, now: SystemTime) -> Vec<Unit> {
        let d = decide(tables, &mut self.cursors, now);
        self.dirty = d.again;
        d.units
    }

    fn next_wake(&self) -> Option<SystemTime> {
        None
    }
}

impl Allocator {
    /// An allocator reading `store` and writing through `writer`.
    pub fn new(store: Store, writer: Arc<dyn Writer>, cfg: AllocatorConfig) -> Self {
        Allocator { store, writer, cfg }
    }

    /// Allocates until `cancel` (Ok) or until a write finds this manager no longer leads.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), OrchestratorError> {
        let r = Loop {
            dirty: true,
            cursors: Cursors::default(),
        };
        drive(
            r,
            &self.store,
            &*self.writer,
            &*self.cfg.clock,
            &self.cfg.pace(),
            &cancel,
        )
        .await
    }
}

#[cfg(test)]
mod tests;
