//! The filter pipeline: what a task needs from a node, the checks in Swarm's order, and the
//! explanation written into a task that fits nowhere.
//!
//! Order: available (READY and ACTIVE) → resources (reservations) → constraints → platform →
//! host-mode ports → max replicas per node. A node that fails counts once, for the first
//! check it fails. The explanation lists each reason with its node count, most frequent first:
//! `no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available)`.

use std::collections::BTreeMap;

use berth_proto::v1::placement_preference::Preference;
use berth_proto::v1::{Platform, Task};

use super::constraint::{Constraint, ConstraintError, normalize_arch};
use super::nodeinfo::{NodeInfo, host_ports, reservations};

/// Why a node cannot take a task. The order is the pipeline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// Not READY, or paused or drained.
    NotAvailable,
    /// Not enough CPU and memory left.
    InsufficientCpuAndMemory,
    /// Not enough memory left.
    InsufficientMemory,
    /// Not enough CPU left.
    InsufficientCpu,
    /// A placement constraint does not hold.
    Constraints,
    /// None of the image's platforms is the node's.
    Platform,
    /// A host-mode published port is taken on the node.
    HostPort,
    /// The node already runs `max_replicas` tasks of the service.
    MaxReplicas,
}

impl Rejection {
    /// The phrase for `n` nodes, e.g. "insufficient memory on 3 nodes".
    pub fn phrase(self, n: usize) -> String {
        let nodes = if n == 1 { "node" } else { "nodes" };
        match self {
            Rejection::NotAvailable => format!("{n} {nodes} not available"),
            Rejection::InsufficientCpuAndMemory => {
                format!("insufficient cpu and memory on {n} {nodes}")
            }
            Rejection::InsufficientMemory => format!("insufficient memory on {n} {nodes}"),
            Rejection::InsufficientCpu => format!("insufficient cpu on {n} {nodes}"),
            Rejection::Constraints => {
                format!("scheduling constraints not satisfied on {n} {nodes}")
            }
            Rejection::Platform => format!("unsupported platform on {n} {nodes}"),
            Rejection::HostPort => format!("host-mode port already in use on {n} {nodes}"),
            Rejection::MaxReplicas => {
                format!("max replicas per node limit exceeded on {n} {nodes}")
            }
        }
    }
}

/// The error of a task that fits no node, from the count of nodes per reason.
pub fn explain(counts: &BTreeMap<Rejection, usize>) -> String {
    if counts.is_empty() {
        return "no suitable node (the cluster has no nodes)".into();
    }
    let mut reasons: Vec<(Rejection, usize)> = counts.iter().map(|(r, n)| (*r, *n)).collect();
    // Most nodes first; ties in pipeline order.
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let parts: Vec<String> = reasons.iter().map(|(r, n)| r.phrase(*n)).collect();
    format!("no suitable node ({})", parts.join("; "))
}

/// What a task needs from a node. Tasks of one service and spec version need the same.
#[derive(Debug, Clone)]
pub struct Needs<'a> {
    /// The service, for spreading and max replicas.
    pub service: &'a str,
    /// Reserved nano CPUs.
    pub cpu: i64,
    /// Reserved memory bytes.
    pub memory: i64,
    /// Parsed constraints, or why they do not parse.
    pub constraints: Result<Vec<Constraint>, ConstraintError>,
    /// Platforms the image runs on (empty = any).
    pub platforms: &'a [Platform],
    /// Tasks of the service per node at most (0 = no limit).
    pub max_replicas: u64,
    /// Host-mode published ports.
    pub ports: Vec<(i32, u32)>,
    /// Spread descriptors of the placement preferences, in order.
    pub spread: Vec<&'a str>,
}

impl<'a> Needs<'a> {
    /// What `task` needs.
    pub fn of(task: &'a Task) -> Self {
        let placement = task.spec.as_ref().and_then(|s| s.placement.as_ref());
        let (cpu, memory) = reservations(task);
        Needs {
            service: &task.service_id,
            cpu,
            memory,
            constraints: Constraint::parse_all(placement.map_or(&[][..], |p| &p.constraints)),
            platforms: placement.map_or(&[][..], |p| &p.platforms),
            max_replicas: placement.map_or(0, |p| p.max_replicas),
            ports: host_ports(task).collect(),
            spread: placement
                .map(|p| {
                    p.preferences
                        .iter()
                        .filter_map(|pref| pref.preference.as_ref())
                        .map(|Preference::Spread(s)| s.spread_descriptor.as_str())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Checks that do not change while a round places tasks: availability, constraints,
    /// platform.
    pub fn static_check(&self, n: &NodeInfo<'_>) -> Result<(), Rejection> {
        if !n.available {
            return Err(Rejection::NotAvailable);
        }
        self.constraints_and_platform(n)
    }

    fn constraints_and_platform(&self, n: &NodeInfo<'_>) -> Result<(), Rejection> {
        match &self.constraints {
            Ok(cs) if Constraint::all_match(cs, n.node) => {}
            _ => return Err(Rejection::Constraints),
        }
        if !self.platform_ok(n) {
            return Err(Rejection::Platform);
        }
        Ok(())
    }

    /// Checks that only get harder as tasks are placed: resources, ports, max replicas.
    pub fn dynamic_check(&self, n: &NodeInfo<'_>) -> Result<(), Rejection> {
        self.resources(n)?;
        self.ports_and_replicas(n)
    }

    fn resources(&self, n: &NodeInfo<'_>) -> Result<(), Rejection> {
        let cpu_short = self.cpu > 0 && self.cpu > n.cpu;
        let memory_short = self.memory > 0 && self.memory > n.memory;
        match (cpu_short, memory_short) {
            (false, false) => Ok(()),
            (true, true) => Err(Rejection::InsufficientCpuAndMemory),
            (false, true) => Err(Rejection::InsufficientMemory),
            (true, false) => Err(Rejection::InsufficientCpu),
        }
    }

    fn ports_and_replicas(&self, n: &NodeInfo<'_>) -> Result<(), Rejection> {
        if self.ports.iter().any(|p| n.ports.contains(p)) {
            return Err(Rejection::HostPort);
        }
        if self.max_replicas > 0 && n.service_tasks(self.service) as u64 >= self.max_replicas {
            return Err(Rejection::MaxReplicas);
        }
        Ok(())
    }

    /// The first check `n` fails, in pipeline order.
    pub fn first_failure(&self, n: &NodeInfo<'_>) -> Option<Rejection> {
        if !n.available {
            return Some(Rejection::NotAvailable);
        }
        self.resources(n)
            .and_then(|()| self.constraints_and_platform(n))
            .and_then(|()| self.ports_and_replicas(n))
            .err()
    }

    fn platform_ok(&self, n: &NodeInfo<'_>) -> bool {
        if self.platforms.is_empty() {
            return true;
        }
        let have = n
            .node
            .description
            .as_ref()
            .and_then(|d| d.platform.as_ref());
        let (os, arch) = have.map_or(("", ""), |p| (p.os.as_str(), p.architecture.as_str()));
        self.platforms.iter().any(|want| {
            (want.os.is_empty() || want.os.eq_ignore_ascii_case(os))
                && (want.architecture.is_empty()
                    || normalize_arch(&want.architecture) == normalize_arch(arch))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_read_like_swarm() {
        let one = BTreeMap::from([(Rejection::InsufficientMemory, 3)]);
        assert_eq!(
            explain(&one),
            "no suitable node (insufficient memory on 3 nodes)"
        );
        let two = BTreeMap::from([(Rejection::NotAvailable, 1), (Rejection::Constraints, 2)]);
        assert_eq!(
            explain(&two),
            "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available)"
        );
        // Ties keep pipeline order.
        let tie = BTreeMap::from([(Rejection::MaxReplicas, 1), (Rejection::HostPort, 1)]);
        assert_eq!(
            explain(&tie),
            "no suitable node (host-mode port already in use on 1 node; max replicas per node limit exceeded on 1 node)"
        );
        assert_eq!(
            explain(&BTreeMap::new()),
            "no suitable node (the cluster has no nodes)"
        );
    }
}
