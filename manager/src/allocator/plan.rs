//! One allocation round as a pure function of a store snapshot: [`decide`].
//!
//! In order:
//! 1. networks without subnets or VXLAN id get them (the user's subnets, else the next free
//!    one of the cluster's default address pools; VXLAN ids from 4096 up) — when any does, the
//!    round ends there and runs again on the written state, so that tasks only ever copy
//!    allocated networks;
//! 2. every service's endpoint is brought in line with its spec: published ingress ports
//!    (dynamic ones from 30000-32767, kept across updates) and one virtual IP per attached
//!    network in VIP mode;
//! 3. every NEW task that is wanted gets one address per attached network (plus the ingress
//!    network when its service publishes ports) and a copy of its service's endpoint, and
//!    moves to PENDING; a task that cannot be allocated stays NEW with the reason in
//!    `status.err` (Swarm leaves it silently stuck);
//! 4. every node gets its own address on the ingress network and on each network one of its
//!    tasks is attached to (the node's end of the overlay: bridge address, source address of
//!    the routing mesh).
//!
//! What is in use is derived from the snapshot every round — task addresses of tasks that
//! have not ended, VIPs of existing services, node attachments — so an address is free again
//! as soon as its holder ended or is gone. Only the per-network cursors carry over (see
//! [`super::ipam`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::v1::{
    Cluster, Endpoint, IpamConfig, Network, NetworkAttachment, Node, ResolutionMode, Service, Task,
    TaskState, VirtualIp,
};

use super::ipam::{AddressRange, IpamError, Subnet, parse_addr, pick_subnet};
use super::ports::{PortKey, allocate_ports, ingress_ports_in_use};
use crate::orchestrator::task::{MSG_PENDING, is_runnable, observed};
use crate::orchestrator::{Unit, to_timestamp};
use crate::store::{StoreAction, Tables};

/// First VXLAN network identifier handed out (Swarm's).
pub const FIRST_VXLAN_ID: u32 = 4096;

/// Largest VXLAN network identifier (24 bits).
pub const MAX_VXLAN_ID: u32 = (1 << 24) - 1;

/// Default address pool when the cluster object names none.
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";

/// Default prefix length of subnets taken from the pools.
pub const DEFAULT_SUBNET_SIZE: u32 = 24;

/// Status message of a task waiting for its addresses.
pub const MSG_WAITING: &str = "waiting for network allocation";

/// Where the last address of each network was handed out (see [`super::ipam`]).
#[derive(Debug, Default, Clone)]
pub struct Cursors(HashMap<String, u32>);

/// The writes of one round.
#[derive(Debug, Default)]
pub struct Decision {
    /// Units to write, in order.
    pub units: Vec<Unit>,
    /// Run another round once these are written (networks were allocated).
    pub again: bool,
}

/// The network a task or service names (`target` is an id or a name).
pub fn resolve_network(t: &Tables, target: &str) -> Option<Arc<Network>> {
    t.get::<Network>(target)
        .or_else(|| t.get_by_name::<Network>(target))
}

/// The ingress network (the one whose spec says so), if there is one.
pub fn ingress_network(t: &Tables) -> Option<Arc<Network>> {
    t.table::<Network>()
        .iter()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
        .cloned()
}

/// The network's name.
pub fn network_name(n: &Network) -> &str {
    n.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

/// Whether the network has its subnet and VXLAN id.
pub fn is_allocated(n: &Network) -> bool {
    !n.ipam.is_empty() && n.vxlan_id != 0
}

/// The subnets a network has (allocated) or asks for (spec).
pub fn subnets_of(n: &Network) -> Vec<Subnet> {
    let asked = n
        .spec
        .as_ref()
        .and_then(|s| s.ipam.as_ref())
        .map(|i| i.configs.as_slice())
        .unwrap_or_default();
    n.ipam
        .iter()
        .chain(asked)
        .filter_map(|c| Subnet::parse(&c.subnet).ok())
        .collect()
}

/// The addresses a network hands out, from its first allocated subnet.
pub fn address_range(n: &Network) -> Result<AddressRange, IpamError> {
    let c = n
        .ipam
        .first()
        .ok_or_else(|| IpamError::BadSubnet(String::new()))?;
    let subnet = Subnet::parse(&c.subnet)?;
    let range = match c.range.as_str() {
        "" => None,
        r => Some(Subnet::parse(r)?),
    };
    let gateway = match c.gateway.as_str() {
        "" => subnet.default_gateway(),
        g => parse_addr(g)?,
    };
    AddressRange::new(subnet, range, gateway)
}

fn service_name(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

/// Pools and subnet size from the cluster object (Swarm's defaults without one).
fn pools(t: &Tables) -> (Vec<Subnet>, u8) {
    let cluster = t.list::<Cluster>().into_iter().next();
    let mut pools: Vec<Subnet> = cluster
        .as_ref()
        .map(|c| {
            c.default_addr_pool
                .iter()
                .filter_map(|p| Subnet::parse(p).ok())
                .collect()
        })
        .unwrap_or_default();
    if pools.is_empty() {
        pools = Subnet::parse(DEFAULT_ADDR_POOL).into_iter().collect();
    }
    let size = cluster
        .as_ref()
        .map(|c| c.subnet_size)
        .filter(|s| (1..=30).contains(s))
        .unwrap_or(DEFAULT_SUBNET_SIZE);
    (pools, size as u8)
}

/// Step 1: subnets and VXLAN ids for networks that lack them.
fn allocate_networks(t: &Tables) -> Vec<Unit> {
    let (pools, size) = pools(t);
    let networks = t.list::<Network>();
    let mut used_subnets: Vec<Subnet> = networks
        .iter()
        .filter(|n| is_allocated(n) || n.spec.as_ref().and_then(|s| s.ipam.as_ref()).is_some())
        .flat_map(|n| subnets_of(n))
        .collect();
    let mut used_vni: BTreeSet<u32> = networks.iter().map(|n| n.vxlan_id).collect();
    let mut units = Vec::new();
    for net in networks.iter().filter(|n| !is_allocated(n)) {
        let mut n = (**net).clone();
        if n.ipam.is_empty() {
            let asked: Vec<IpamConfig> = n
                .spec
                .as_ref()
                .and_then(|s| s.ipam.as_ref())
                .map(|i| i.configs.clone())
                .unwrap_or_default();
            if asked.is_empty() {
                let Some(subnet) = pick_subnet(&pools, size, &used_subnets) else {
                    tracing::warn!(
                        network = network_name(&n),
                        "the default address pools are exhausted"
                    );
                    continue;
                };
                used_subnets.push(subnet);
                n.ipam = vec![IpamConfig {
                    subnet: subnet.to_string(),
                    range: String::new(),
                    gateway: subnet.default_gateway().to_string(),
                }];
            } else {
                let mut configs = Vec::new();
                for c in asked {
                    let Ok(subnet) = Subnet::parse(&c.subnet) else {
                        continue;
                    };
                    let gateway = if c.gateway.is_empty() {
                        subnet.default_gateway().to_string()
                    } else {
                        c.gateway.clone()
                    };
                    configs.push(IpamConfig { gateway, ..c });
                }
                if configs.is_empty() {
                    tracing::warn!(
                        network = network_name(&n),
                        "no usable subnet in the network's spec"
                    );
                    continue;
                }
                n.ipam = configs;
            }
        }
        if n.vxlan_id == 0 {
            let Some(vni) = (FIRST_VXLAN_ID..=MAX_VXLAN_ID).find(|v| !used_vni.contains(v)) else {
                continue;
            };
            used_vni.insert(vni);
            n.vxlan_id = vni;
        }
        units.push(vec![StoreAction::Update(n.into())]);
    }
    units
}

/// Addresses in use per network id, and the networks' address ranges.
struct Pool<'a> {
    ranges: HashMap<String, AddressRange>,
    used: HashMap<String, HashSet<Ipv4Addr>>,
    cursors: &'a mut Cursors,
}

impl Pool<'_> {
    fn take(&mut self, network_id: &str, addr: &str) {
        if let Ok(ip) = parse_addr(addr) {
            self.used
                .entry(network_id.to_owned())
                .or_default()
                .insert(ip);
        }
    }

    /// A free address on `net` in CIDR notation.
    fn allocate(&mut self, net: &Network) -> Option<String> {
        let range = self.ranges.get(&net.id)?;
        let cursor = self.cursors.0.entry(net.id.clone()).or_insert(0);
        let used = self.used.entry(net.id.clone()).or_default();
        let ip = range.allocate(used, cursor)?;
        used.insert(ip);
        Some(range.subnet().cidr_of(ip))
    }

    fn release(&mut self, network_id: &str, addr: &str) {
        if let (Ok(ip), Some(used)) = (parse_addr(addr), self.used.get_mut(network_id)) {
            used.remove(&ip);
        }
    }

    /// Whether `addr` is inside `net`'s subnet.
    fn fits(&self, net: &Network, addr: &str) -> bool {
        match (self.ranges.get(&net.id), parse_addr(addr)) {
            (Some(r), Ok(ip)) => r.subnet().contains(ip),
            _ => false,
        }
    }
}

fn build_pool<'a>(t: &Tables, cursors: &'a mut Cursors) -> Pool<'a> {
    let mut pool = Pool {
        ranges: HashMap::new(),
        used: HashMap::new(),
        cursors,
    };
    for n in t.table::<Network>().iter().filter(|n| is_allocated(n)) {
        if let Ok(r) = address_range(n) {
            pool.ranges.insert(n.id.clone(), r);
        }
    }
    for task in t.table::<Task>().iter() {
        if observed(task) > TaskState::Running {
            continue;
        }
        for att in &task.networks {
            let Some(net) = &att.network else { continue };
            for a in &att.addresses {
                pool.take(&net.id, a);
            }
        }
    }
    for s in t.table::<Service>().iter() {
        for vip in s.endpoint.iter().flat_map(|e| e.virtual_ips.iter()) {
            pool.take(&vip.network_id, &vip.addr);
        }
    }
    for node in t.table::<Node>().iter() {
        for att in &node.attachments {
            let Some(net) = &att.network else { continue };
            for a in &att.addresses {
                pool.take(&net.id, a);
            }
        }
    }
    pool
}

/// A network to attach to, with the task's aliases on it.
type Attach = (Arc<Network>, Vec<String>);

/// The networks a service's tasks attach to, resolved, in spec order without repeats, each
/// with its aliases; an error names the first that is missing or not allocated yet.
fn task_networks(t: &Tables, service: &Service) -> Result<Vec<Attach>, String> {
    let configs = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .map(|t| t.networks.as_slice())
        .unwrap_or_default();
    let mut out: Vec<Attach> = Vec::new();
    for c in configs {
        let net = resolve_network(t, &c.target)
            .ok_or_else(|| format!("network {} not found", c.target))?;
        if !is_allocated(&net) {
            return Err(format!(
                "network {} is not allocated yet",
                network_name(&net)
            ));
        }
        if !out.iter().any(|(n, _)| n.id == net.id) {
            out.push((net, c.aliases.clone()));
        }
    }
    Ok(out)
}

fn publishes(endpoint: &Endpoint) -> bool {
    !endpoint.ports.is_empty()
}

/// Step 2: the endpoint `service` should have; `None` when its ports cannot be allocated.
fn wanted_endpoint(
    t: &Tables,
    service: &Service,
    taken: &mut HashSet<PortKey>,
    pool: &mut Pool<'_>,
) -> Option<Endpoint> {
    let spec = service
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .unwrap_or_default();
    let previous = service.endpoint.clone().unwrap_or_default();
    let ports = allocate_ports(&spec.ports, &previous.ports, taken)?;
    let mut virtual_ips = Vec::new();
    if spec.mode == ResolutionMode::Vip as i32 {
        let configs = service
            .spec
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .map(|t| t.networks.clone())
            .unwrap_or_default();
        let mut seen = HashSet::new();
        for c in configs {
            let Some(net) = resolve_network(t, &c.target).filter(|n| is_allocated(n)) else {
                continue;
            };
            if !seen.insert(net.id.clone()) {
                continue;
            }
            let kept = previous
                .virtual_ips
                .iter()
                .find(|v| v.network_id == net.id && pool.fits(&net, &v.addr))
                .map(|v| v.addr.clone());
            let addr = match kept {
                Some(a) => a,
                None => pool.allocate(&net)?,
            };
            virtual_ips.push(VirtualIp {
                network_id: net.id.clone(),
                addr,
            });
        }
    }
    // VIPs the service no longer needs stay taken until the update is written: the next
    // round's snapshot frees them.
    Some(Endpoint {
        spec: Some(spec),
        ports,
        virtual_ips,
    })
}

/// Step 3 for one task: its attachments, or why it cannot have them.
fn allocate_task(
    t: &Tables,
    service: &Service,
    endpoint: &Endpoint,
    pool: &mut Pool<'_>,
) -> Result<Vec<NetworkAttachment>, String> {
    let mut nets = task_networks(t, service)?;
    if publishes(endpoint) {
        let ingress = ingress_network(t)
            .ok_or_else(|| "the ingress network is missing: published ports need it".to_string())?;
        if !is_allocated(&ingress) {
            return Err("the ingress network is not allocated yet".into());
        }
        if !nets.iter().any(|(n, _)| n.id == ingress.id) {
            nets.push((ingress, Vec::new()));
        }
    }
    let mut out: Vec<NetworkAttachment> = Vec::with_capacity(nets.len());
    for (net, aliases) in nets {
        let Some(addr) = pool.allocate(&net) else {
            for att in &out {
                if let Some(n) = &att.network {
                    for a in &att.addresses {
                        pool.release(&n.id, a);
                    }
                }
            }
            let subnet = net.ipam.first().map_or("", |c| c.subnet.as_str());
            return Err(format!(
                "no free address on network {} ({subnet})",
                network_name(&net)
            ));
        };
        out.push(NetworkAttachment {
            network: Some(network_copy(&net)),
            addresses: vec![addr],
            aliases,
        });
    }
    Ok(out)
}

/// The network as tasks and nodes carry it: without store bookkeeping.
fn network_copy(n: &Network) -> Network {
    Network {
        meta: None,
        ..n.clone()
    }
}

/// Steps 2 and 3: one unit per service with something to write.
fn allocate_services(t: &Tables, pool: &mut Pool<'_>, now: SystemTime) -> Vec<Unit> {
    let services = t.list::<Service>();
    let mut taken: HashSet<PortKey> = ingress_ports_in_use(services.iter().map(|s| s.as_ref()))
        .into_keys()
        .collect();
    let mut new_tasks: BTreeMap<String, Vec<Arc<Task>>> = BTreeMap::new();
    for task in t.table::<Task>().iter() {
        if observed(task) == TaskState::New && is_runnable(task) {
            new_tasks
                .entry(task.service_id.clone())
                .or_default()
                .push(task.clone());
        }
    }
    let mut units = Vec::new();
    for service in &services {
        let mut unit: Unit = Vec::new();
        let endpoint = wanted_endpoint(t, service, &mut taken, pool);
        let tasks = new_tasks.remove(&service.id).unwrap_or_default();
        match &endpoint {
            Some(e) if service.endpoint.as_ref() != Some(e) => {
                let mut s = (**service).clone();
                s.endpoint = Some(e.clone());
                unit.push(StoreAction::Update(s.into()));
            }
            _ => {}
        }
        for task in tasks {
            let result = match &endpoint {
                Some(e) => allocate_task(t, service, e, pool).map(|atts| (atts, e)),
                None => Err(format!(
                    "no free dynamic port for service {} (30000-32767 are all in use)",
                    service_name(service)
                )),
            };
            let mut next = (*task).clone();
            let status = next.status.get_or_insert_with(Default::default);
            match result {
                Ok((atts, e)) => {
                    next.networks = atts;
                    next.endpoint = Some(e.clone());
                    status.state = TaskState::Pending as i32;
                    status.message = MSG_PENDING.into();
                    status.err.clear();
                    status.timestamp = Some(to_timestamp(now));
                }
                Err(err) => {
                    if status.err == err {
                        continue;
                    }
                    tracing::info!(task_id = %task.id, %err, "task cannot be allocated yet");
                    status.message = MSG_WAITING.into();
                    status.err = err;
                    status.timestamp = Some(to_timestamp(now));
                }
            }
            unit.push(StoreAction::Update(next.into()));
        }
        if !unit.is_empty() {
            units.push(unit);
        }
    }
    units
}

/// Step 4: node attachments.
fn allocate_nodes(t: &Tables, pool: &mut Pool<'_>) -> Vec<Unit> {
    let ingress = ingress_network(t).filter(|n| is_allocated(n));
    let mut wanted: HashMap<String, BTreeSet<String>> = HashMap::new();
    for task in t.table::<Task>().iter() {
        if task.node_id.is_empty() || observed(task) > TaskState::Running {
            continue;
        }
        for att in &task.networks {
            if let Some(n) = &att.network {
                wanted
                    .entry(task.node_id.clone())
                    .or_default()
                    .insert(n.id.clone());
            }
        }
    }
    let mut units = Vec::new();
    for node in t.table::<Node>().iter() {
        let mut want = wanted.remove(&node.id).unwrap_or_default();
        if let Some(i) = &ingress {
            want.insert(i.id.clone());
        }
        let mut atts: Vec<NetworkAttachment> = node
            .attachments
            .iter()
            .filter(|a| {
                a.network
                    .as_ref()
                    .and_then(|n| t.get::<Network>(&n.id))
                    .is_some_and(|n| a.addresses.iter().all(|addr| pool.fits(&n, addr)))
            })
            .cloned()
            .collect();
        let mut changed = atts.len() != node.attachments.len();
        for id in want {
            if atts
                .iter()
                .any(|a| a.network.as_ref().is_some_and(|n| n.id == id))
            {
                continue;
            }
            let Some(net) = t.get::<Network>(&id).filter(|n| is_allocated(n)) else {
                continue;
            };
            let Some(addr) = pool.allocate(&net) else {
                tracing::warn!(node_id = %node.id, network = network_name(&net), "no free address for the node");
                continue;
            };
            atts.push(NetworkAttachment {
                network: Some(network_copy(&net)),
                addresses: vec![addr],
                aliases: Vec::new(),
            });
            changed = true;
        }
        if changed {
            let mut n = (**node).clone();
            n.attachments = atts;
            units.push(vec![StoreAction::Update(n.into())]);
        }
    }
    units
}

/// One round over `t` (see the module docs).
pub fn decide(t: &Tables, cursors: &mut Cursors, now: SystemTime) -> Decision {
    let networks = allocate_networks(t);
    if !networks.is_empty() {
        return Decision {
            units: networks,
            again: true,
        };
    }
    let mut pool = build_pool(t, cursors);
    let mut units = allocate_services(t, &mut pool, now);
    units.extend(allocate_nodes(t, &mut pool));
    Decision {
        units,
        again: false,
    }
}

/// Object ids written by a unit (for logs and tests).
pub fn unit_ids(unit: &Unit) -> Vec<&str> {
    unit.iter().map(|a| a.id()).collect()
}
