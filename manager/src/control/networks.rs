//! Network calls: create, get, list, remove; and what service calls check about networks and
//! published ports ([`resolve_service`]).
//!
//! - Create validates the spec (a DNS-label name, the overlay driver, IPv4 subnets that
//!   overlap no other network, a gateway inside its subnet, at most one ingress network),
//!   writes the network unallocated, and waits (briefly) for the allocator to give it its
//!   subnet and VXLAN id, so the answer shows them.
//! - Remove is refused while a service uses the network (its spec names it, or it is the
//!   ingress network and the service publishes ingress ports) or a task still attached to it
//!   has not ended.
//! - Service specs name networks by id or name; they are stored by id. Published ingress
//!   ports must not be held by another service.

use std::time::Duration;

use berth_proto::ids;
use berth_proto::naming::validate_network_name;
use berth_proto::v1::list_networks_request::Filters;
use berth_proto::v1::{
    CreateNetworkRequest, Network, NetworkSpec, Service, ServiceSpec, Task, TaskState,
};

use super::filters::{id_matches, labels_match, name_matches};
use super::status::ControlError;
use crate::allocator::ipam::{Subnet, parse_addr};
use crate::allocator::plan::{is_allocated, network_name, resolve_network, subnets_of};
use crate::allocator::ports::{conflicts, ingress_ports_in_use, is_ingress, protocol_name};
use crate::orchestrator::task::observed;
use crate::raft_net::Replica;
use crate::store::{ObjectKind, StoreActions, Tables};

/// How long create waits for the allocator before answering with the network as it is.
const ALLOCATION_WAIT: Duration = Duration::from_secs(5);

/// The only driver: bridge + VXLAN spanning the nodes.
pub const OVERLAY: &str = "overlay";

/// Checks a network spec against the networks in `t` (see the module docs).
pub fn validate(t: &Tables, spec: &NetworkSpec) -> Result<(), ControlError> {
    let invalid = ControlError::InvalidArgument;
    let name = spec.annotations.as_ref().map_or("", |a| a.name.as_str());
    validate_network_name(name).map_err(|e| invalid(e.to_string()))?;
    if !spec.driver.is_empty() && spec.driver != OVERLAY {
        return Err(invalid(format!(
            "network driver {:?} is not supported: only \"overlay\" is",
            spec.driver
        )));
    }
    let mut mine: Vec<Subnet> = Vec::new();
    for c in spec.ipam.iter().flat_map(|i| i.configs.iter()) {
        let subnet = Subnet::parse(&c.subnet).map_err(|e| invalid(e.to_string()))?;
        if subnet.prefix() > 30 {
            return Err(invalid(format!(
                "subnet {subnet} is too small (at most /30)"
            )));
        }
        if !c.gateway.is_empty() {
            let gw = parse_addr(&c.gateway).map_err(|e| invalid(e.to_string()))?;
            if !subnet.contains(gw) {
                return Err(invalid(format!(
                    "gateway {gw} is not inside subnet {subnet}"
                )));
            }
        }
        if !c.range.is_empty() {
            let range = Subnet::parse(&c.range).map_err(|e| invalid(e.to_string()))?;
            if !subnet.contains(range.network()) || range.prefix() < subnet.prefix() {
                return Err(invalid(format!(
                    "ip range {range} is not inside subnet {subnet}"
                )));
            }
        }
        if let Some(other) = mine.iter().find(|m| m.overlaps(&subnet)) {
            return Err(invalid(format!("subnets {other} and {subnet} overlap")));
        }
        mine.push(subnet);
    }
    for n in t.table::<Network>().iter() {
        for theirs in subnets_of(n) {
            if let Some(m) = mine.iter().find(|m| m.overlaps(&theirs)) {
                return Err(ControlError::FailedPrecondition(format!(
                    "subnet {m} overlaps with network {} ({theirs})",
                    network_name(n)
                )));
            }
        }
        if spec.ingress && n.spec.as_ref().is_some_and(|s| s.ingress) {
            return Err(ControlError::FailedPrecondition(format!(
                "an ingress network already exists: {}",
                network_name(n)
            )));
        }
    }
    Ok(())
}

/// Creates a network; answers it allocated (or as it is after [`ALLOCATION_WAIT`]).
pub async fn create(replica: &Replica, req: CreateNetworkRequest) -> Result<Network, ControlError> {
    let mut spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("network spec is required".into()))?;
    replica.store().view(|t| validate(t, &spec))?;
    if spec.driver.is_empty() {
        spec.driver = OVERLAY.into();
    }
    let id = ids::try_new_id().map_err(|e| ControlError::Internal(e.to_string()))?;
    let mut batch = StoreActions::new();
    batch.create(Network {
        id: id.clone(),
        meta: None,
        spec: Some(spec),
        ipam: Vec::new(),
        vxlan_id: 0,
    });
    replica.propose_and_wait(&batch).await?;
    let deadline = tokio::time::Instant::now() + ALLOCATION_WAIT;
    loop {
        let n = get(replica, &id)?;
        if is_allocated(&n) || tokio::time::Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The network with this id.
pub fn get(replica: &Replica, id: &str) -> Result<Network, ControlError> {
    replica
        .store()
        .get::<Network>(id)
        .map(|n| (*n).clone())
        .ok_or_else(|| ControlError::not_found("network", id))
}

/// The networks matching `f`, sorted by name.
pub fn list(replica: &Replica, f: &Filters) -> Vec<Network> {
    let mut nets: Vec<Network> = replica
        .store()
        .list::<Network>()
        .iter()
        .filter(|n| {
            let labels = n
                .spec
                .as_ref()
                .and_then(|s| s.annotations.as_ref())
                .map(|a| a.labels.clone())
                .unwrap_or_default();
            id_matches(&n.id, &f.id_prefixes)
                && name_matches(network_name(n), &f.names, &f.name_prefixes)
                && labels_match(&labels, &f.labels)
        })
        .map(|n| (**n).clone())
        .collect();
    nets.sort_by(|a, b| network_name(a).cmp(network_name(b)));
    nets
}

fn service_name(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

/// Why `net` cannot be removed now, if it cannot.
fn in_use(t: &Tables, net: &Network) -> Option<String> {
    let name = network_name(net);
    let ingress = net.spec.as_ref().is_some_and(|s| s.ingress);
    for s in t.table::<Service>().iter() {
        let Some(spec) = &s.spec else { continue };
        let names_it = spec.task.as_ref().is_some_and(|ts| {
            ts.networks
                .iter()
                .any(|c| c.target == net.id || c.target == name)
        });
        let publishes = ingress
            && spec
                .endpoint
                .as_ref()
                .is_some_and(|e| e.ports.iter().any(is_ingress));
        if names_it || publishes {
            return Some(format!(
                "network {name} is in use by service {}",
                service_name(s)
            ));
        }
    }
    let attached = t.table::<Task>().iter().find(|task| {
        observed(task) <= TaskState::Running
            && task
                .networks
                .iter()
                .any(|a| a.network.as_ref().is_some_and(|n| n.id == net.id))
    });
    attached.map(|task| format!("network {name} is in use by task {}", task.id))
}

/// Removes a network that nothing uses.
pub async fn remove(replica: &Replica, id: &str) -> Result<(), ControlError> {
    let net = replica
        .store()
        .get::<Network>(id)
        .ok_or_else(|| ControlError::not_found("network", id))?;
    if let Some(why) = replica.store().view(|t| in_use(t, &net)) {
        return Err(ControlError::FailedPrecondition(why));
    }
    let mut batch = StoreActions::new();
    batch.remove(ObjectKind::Network, id);
    replica.propose_and_wait(&batch).await?;
    Ok(())
}

/// Prepares a service spec for the store: every network it names must exist (stored by id),
/// and none of its ingress ports may be held by another service (`own_id`: the service being
/// updated, "" on create).
pub fn resolve_service(
    t: &Tables,
    spec: &mut ServiceSpec,
    own_id: &str,
) -> Result<(), ControlError> {
    if let Some(task) = spec.task.as_mut() {
        for c in &mut task.networks {
            let net = resolve_network(t, &c.target)
                .ok_or_else(|| ControlError::not_found("network", c.target.clone()))?;
            if net.spec.as_ref().is_some_and(|s| s.ingress) {
                return Err(ControlError::InvalidArgument(format!(
                    "service cannot be explicitly attached to the ingress network {:?}",
                    network_name(&net)
                )));
            }
            c.target = net.id.clone();
        }
    }
    let ports = spec
        .endpoint
        .as_ref()
        .map(|e| e.ports.clone())
        .unwrap_or_default();
    let used = ingress_ports_in_use(t.table::<Service>().iter().map(|s| s.as_ref()));
    if let Some((p, holder)) = conflicts(&ports, &used, own_id).into_iter().next() {
        let holder = t
            .get::<Service>(&holder)
            .map(|s| service_name(&s).to_owned())
            .unwrap_or(holder);
        return Err(ControlError::InvalidArgument(format!(
            "port '{}' ({}) is already in use by service '{holder}' as an ingress port",
            p.published_port,
            protocol_name(p.protocol)
        )));
    }
    Ok(())
}
