//! What one node's data path needs, computed from the store ([`node_view`]), and the
//! dispatcher stream that keeps a node's agent up to date with it ([`stream`]).
//!
//! Service discovery and load balancing are driven from the replicated store, not gossip
//! (Swarm's stale-DNS pain point): an endpoint is *active* — in DNS answers and load-balancing
//! sets — exactly while its task is observed RUNNING, wanted RUNNING, not unhealthy, and its
//! node is not DOWN (READY, or UNKNOWN/DISCONNECTED: out of touch but still running its
//! tasks, e.g. while a restarted leader waits for the nodes to reconnect). A task that stops,
//! fails or turns unhealthy, or whose node goes down, leaves every node's view with the next
//! store change that says so.
//!
//! Invariants: each message is complete (it replaces the previous one); a node sees only the
//! networks it takes part in (the ingress network, and those of its tasks that have not
//! ended); a message is sent only when the view changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::{
    Cluster, HealthState, Network, NetworkEndpoint, NetworkPeer, NetworkView, NetworksMessage,
    Node, NodeState, ResolutionMode, Service, ServiceEndpoint, Task, TaskState,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::plan::{ingress_network, is_allocated};
use super::ports::is_ingress;
use crate::orchestrator::task::{desired, observed};
use crate::store::{Object, Store, Tables, WatchError};

/// Default VXLAN UDP port.
pub const DEFAULT_DATA_PATH_PORT: u32 = 4789;

/// How long changes gather before a new view is computed and sent.
pub const VIEW_BATCH_WAIT: Duration = Duration::from_millis(20);

/// The node's underlay address (IP): what it advertised, else what the dispatcher saw.
pub fn underlay_addr(n: &Node) -> Option<String> {
    let advertised = n
        .description
        .as_ref()
        .map(|d| d.addr.as_str())
        .filter(|a| !a.is_empty())
        .map(|a| match a.parse::<std::net::SocketAddr>() {
            Ok(sa) => sa.ip().to_string(),
            Err(_) => a.to_owned(),
        });
    advertised.or_else(|| {
        n.status
            .as_ref()
            .map(|s| s.addr.clone())
            .filter(|a| !a.is_empty())
    })
}

/// Whether the tasks of `node_id` may take traffic: its node is READY, or only out of touch
/// (UNKNOWN after a leader change, DISCONNECTED after its session dropped) and so still
/// running them until it is declared DOWN. A manager restart must not empty every VIP.
fn node_serves(t: &Tables, node_id: &str) -> bool {
    t.get::<Node>(node_id)
        .and_then(|n| n.status.clone())
        .and_then(|s| NodeState::try_from(s.state).ok())
        .is_some_and(|s| {
            matches!(
                s,
                NodeState::Ready | NodeState::Unknown | NodeState::Disconnected
            )
        })
}

/// Whether the task takes traffic (see the module docs).
pub fn is_active(t: &Tables, task: &Task) -> bool {
    observed(task) == TaskState::Running
        && desired(task) == TaskState::Running
        && task
            .status
            .as_ref()
            .is_none_or(|s| s.health != HealthState::Unhealthy as i32)
        && node_serves(t, &task.node_id)
}

/// Tasks placed on a node that have not ended, with their attachments.
fn live_placed(t: &Tables) -> impl Iterator<Item = &Arc<Task>> {
    t.table::<Task>()
        .iter()
        .filter(|task| !task.node_id.is_empty() && observed(task) <= TaskState::Running)
}

fn service_name(s: &Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map(|a| a.name.clone())
        .unwrap_or_default()
}

/// The node's own address on network `network_id`, if allocated.
fn attachment_addr(n: &Node, network_id: &str) -> Option<String> {
    n.attachments
        .iter()
        .find(|a| a.network.as_ref().is_some_and(|x| x.id == network_id))
        .and_then(|a| a.addresses.first().cloned())
}

fn network_view(t: &Tables, node_id: &str, net: &Network, is_ingress_net: bool) -> NetworkView {
    let node_addr = t
        .get::<Node>(node_id)
        .and_then(|n| attachment_addr(&n, &net.id))
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut peer_ids: BTreeSet<String> = BTreeSet::new();
    for task in live_placed(t) {
        for att in &task.networks {
            if att.network.as_ref().is_none_or(|n| n.id != net.id) {
                continue;
            }
            let Some(addr) = att.addresses.first() else {
                continue;
            };
            peer_ids.insert(task.node_id.clone());
            endpoints.push(NetworkEndpoint {
                task_id: task.id.clone(),
                service_id: task.service_id.clone(),
                node_id: task.node_id.clone(),
                addr: addr.clone(),
                aliases: att.aliases.clone(),
                active: is_active(t, task),
            });
        }
    }
    if is_ingress_net {
        // The routing mesh: any node may forward to any other.
        peer_ids.extend(t.table::<Node>().iter().map(|n| n.id.clone()));
    }
    peer_ids.remove(node_id);
    let peers = peer_ids
        .iter()
        .filter_map(|id| t.get::<Node>(id))
        .filter_map(|n| {
            Some(NetworkPeer {
                node_id: n.id.clone(),
                addr: underlay_addr(&n)?,
                network_addr: attachment_addr(&n, &net.id).unwrap_or_default(),
            })
        })
        .collect();
    let mut services = Vec::new();
    for s in t.table::<Service>().iter() {
        let endpoint = s.endpoint.clone().unwrap_or_default();
        let mode = endpoint.spec.as_ref().map_or(0, |e| e.mode);
        let vip = endpoint
            .virtual_ips
            .iter()
            .find(|v| v.network_id == net.id)
            .map(|v| v.addr.clone());
        let attached = vip.is_some()
            || endpoints.iter().any(|e| e.service_id == s.id)
            || s.spec
                .as_ref()
                .and_then(|sp| sp.task.as_ref())
                .is_some_and(|ts| {
                    ts.networks.iter().any(|c| {
                        c.target == net.id
                            || net
                                .spec
                                .as_ref()
                                .and_then(|ns| ns.annotations.as_ref())
                                .is_some_and(|a| a.name == c.target)
                    })
                });
        let ports: Vec<_> = if is_ingress_net {
            endpoint
                .ports
                .iter()
                .filter(|p| is_ingress(p))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if !attached && ports.is_empty() {
            continue;
        }
        services.push(ServiceEndpoint {
            service_id: s.id.clone(),
            name: service_name(s),
            vip: vip.unwrap_or_default(),
            mode: if mode == ResolutionMode::Dnsrr as i32 {
                ResolutionMode::Dnsrr as i32
            } else {
                ResolutionMode::Vip as i32
            },
            ports,
        });
    }
    NetworkView {
        network: Some(Network {
            meta: None,
            ..net.clone()
        }),
        node_addr,
        peers,
        endpoints,
        services,
    }
}

/// The view of node `node_id` (see the module docs).
pub fn node_view(t: &Tables, node_id: &str) -> NetworksMessage {
    let data_path_port = t
        .list::<Cluster>()
        .first()
        .map(|c| c.data_path_port)
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_DATA_PATH_PORT);
    let ingress = ingress_network(t).filter(|n| is_allocated(n));
    let mut ids: BTreeMap<String, bool> = BTreeMap::new();
    if let Some(i) = &ingress {
        ids.insert(i.id.clone(), true);
    }
    for task in live_placed(t).filter(|task| task.node_id == node_id) {
        for att in &task.networks {
            if let Some(n) = &att.network {
                ids.entry(n.id.clone()).or_insert(false);
            }
        }
    }
    let networks = ids
        .into_iter()
        .filter_map(|(id, is_ingress_net)| {
            let net = t.get::<Network>(&id).filter(|n| is_allocated(n))?;
            Some(network_view(t, node_id, &net, is_ingress_net))
        })
        .collect();
    NetworksMessage {
        data_path_port,
        networks,
    }
}

/// Whether a change to `obj` can change some node's view.
fn relevant(obj: &Object) -> bool {
    matches!(
        obj,
        Object::Task(_)
            | Object::Node(_)
            | Object::Service(_)
            | Object::Network(_)
            | Object::Cluster(_)
    )
}

/// Streams `node_id`'s view to `tx`: the current one at once, then a new one whenever it
/// changed (changes gather for [`VIEW_BATCH_WAIT`]). Ends when `tx` closes or `ended` fires
/// (the session ended: the agent is told to open a new one).
pub async fn stream(
    store: Store,
    node_id: String,
    ended: CancellationToken,
    tx: mpsc::Sender<Result<NetworksMessage, Status>>,
) {
    let (snap, mut watch) = store.subscribe();
    let mut last = node_view(&snap, &node_id);
    drop(snap);
    if tx.send(Ok(last.clone())).await.is_err() {
        return;
    }
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = ended.cancelled() => {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "the session ended (replaced, expired, or the dispatcher stopped); open a new session",
                    )))
                    .await;
                return;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                due = None;
                let view = store.view(|t| node_view(t, &node_id));
                if view != last {
                    last = view;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
            r = watch.recv() => match r {
                Ok(changes) => {
                    if due.is_none() && changes.events.iter().any(|e| relevant(e.object())) {
                        due = Some(tokio::time::Instant::now() + VIEW_BATCH_WAIT);
                    }
                }
                Err(WatchError::Closed) => return,
                Err(WatchError::Lagged { .. } | WatchError::Reset { .. }) => {
                    let (_, w) = store.subscribe();
                    watch = w;
                    due = Some(tokio::time::Instant::now());
                }
            },
        }
    }
}
