//! The node's data path for overlay networks: each task container gets a network namespace
//! attached to its networks; networks span nodes over VXLAN; service VIPs are load-balanced
//! over the service's active tasks (nftables in each container's namespace); an embedded DNS
//! answers service names and `tasks.<service>`; published ports answer on the node (routing
//! mesh for ingress ports, the task's own node for host-mode ports).
//!
//! ```text
//!  node namespace                                   container namespace (one per task)
//!  ┌───────────────────────────────────────────┐    ┌──────────────────────────────┐
//!  │ bnb<vni> bridge (node's address) ── bnv…  ─┼────┼─ eth0 (task address, MAC 02:42:ip)│
//!  │     └── bnx<vni> VXLAN (UDP 4789) ── peers │    │ lo: embedded DNS 127.0.0.11:53 │
//!  │ nft table berth: mesh, host ports,         │    │ nft table berth: VIP → tasks   │
//!  │   isolation, egress                        │    └──────────────────────────────┘
//!  └───────────────────────────────────────────┘
//! ```
//!
//! Everything is driven by the managers' network view ([`NetworkAgent::set_view`], from the
//! dispatcher's Networks stream): forwarding entries, load-balancing sets and DNS answers
//! follow the replicated store, not gossip. [`plan`] computes the wanted state; [`netlink`],
//! [`nft`] and [`netns`] apply it.
//!
//! Invariants:
//! - Kernel changes are serialized (one lock); every step is idempotent, so a restarted
//!   daemon converges on what it finds.
//! - All interfaces are created in the node's namespace (the daemon's own, or the one named
//!   by [`NetworkConfig::node_netns`]) or in the task's namespace, never elsewhere.
//! - [`NetworkAgent::detach`] leaves no interface, rule, namespace or file of the task.

pub mod dns;
pub mod follow;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod plan;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::{ContainerConfig, Mount, MountType, NetworksMessage, Task};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use netlink::Netlink;
use plan::{OVERLAY_MTU, TaskNet};

/// Most attachments one task may have (bounds the cleanup of veth names).
pub const MAX_ATTACHMENTS: usize = 16;

/// Why a data-path step failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request was refused.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A file, namespace or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `nft` refused a ruleset.
    #[error("nft refused the ruleset: {stderr}")]
    Nft {
        /// What nft said.
        stderr: String,
        /// The script it refused.
        script: String,
    },
    /// Something that should exist does not.
    #[error("{0} is missing")]
    Missing(String),
    /// The task carries no network attachments.
    #[error("task {0} has no network attachments")]
    NotAttached(String),
    /// The managers' view did not include what the task needs in time.
    #[error("the managers' network view does not include {missing} yet (waited {waited:?})")]
    ViewTimeout {
        /// What is missing.
        missing: String,
        /// How long it waited.
        waited: Duration,
    },
}

/// Settings of the data path.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// State directory: bound namespaces (`netns/<task>`) and per-task files
    /// (`tasks/<task>/resolv.conf`, `hosts`).
    pub dir: PathBuf,
    /// The node's namespace; `None` = the daemon's own.
    pub node_netns: Option<PathBuf>,
    /// This node's underlay address (the local end of VXLAN tunnels); `None` = any.
    pub data_addr: Option<Ipv4Addr>,
    /// How long attaching a task waits for the view to include its networks (30 s).
    pub attach_timeout: Duration,
}

impl NetworkConfig {
    /// Defaults with state under `dir`, in the daemon's own namespace.
    pub fn new(dir: impl Into<PathBuf>, data_addr: Option<Ipv4Addr>) -> Self {
        NetworkConfig {
            dir: dir.into(),
            node_netns: None,
            data_addr,
            attach_timeout: Duration::from_secs(30),
        }
    }
}

/// What a task's container needs from its attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The bound namespace to join.
    pub netns: PathBuf,
    /// The file to bind at `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The file to bind at `/etc/hosts`.
    pub hosts: PathBuf,
}

struct Container {
    net: TaskNet,
    netns: PathBuf,
    rules: Option<String>,
    dns: CancellationToken,
}

#[derive(Default)]
struct State {
    node: Option<Netlink>,
    forwarding: bool,
    containers: BTreeMap<String, Container>,
    node_rules: Option<String>,
    fdb: BTreeMap<u32, BTreeSet<([u8; 6], Ipv4Addr)>>,
}

struct Inner {
    cfg: NetworkConfig,
    view: watch::Sender<Option<Arc<NetworksMessage>>>,
    state: Mutex<State>,
}

/// The node's data path (cheap to clone; clones share it). See the module docs.
#[derive(Clone)]
pub struct NetworkAgent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NetworkAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkAgent")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

const ZERO_MAC: [u8; 6] = [0; 6];

impl NetworkAgent {
    /// A data path keeping its state under `cfg.dir`.
    pub fn new(cfg: NetworkConfig) -> Result<NetworkAgent, NetworkError> {
        for sub in ["netns", "tasks"] {
            let d = cfg.dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(format!("creating {d:?}")))?;
        }
        Ok(NetworkAgent {
            inner: Arc::new(Inner {
                cfg,
                view: watch::Sender::new(None),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Takes a new view from the managers (each replaces the previous one).
    pub fn set_view(&self, view: NetworksMessage) {
        self.inner.view.send_replace(Some(Arc::new(view)));
    }

    /// Follows the views taken.
    pub fn views(&self) -> watch::Receiver<Option<Arc<NetworksMessage>>> {
        self.inner.view.subscribe()
    }

    /// Applies every new view until `cancel` (containers keep their data path after it).
    pub async fn run(&self, cancel: CancellationToken) {
        let mut views = self.views();
        loop {
            let view = views.borrow_and_update().clone();
            if let Some(view) = view {
                let mut state = self.inner.state.lock().await;
                if let Err(e) = self.reconcile(&mut state, &view).await {
                    tracing::warn!(error = %e, "applying the network view failed; retrying with the next one");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = views.changed() => if changed.is_err() { return },
                // A failed step is retried even when no new view comes.
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    fn node(&self, state: &mut State) -> Result<Netlink, NetworkError> {
        if let Some(n) = &state.node {
            return Ok(n.clone());
        }
        let n = Netlink::open(self.inner.cfg.node_netns.as_deref())?;
        state.node = Some(n.clone());
        Ok(n)
    }

    fn netns_path(&self, task_id: &str) -> PathBuf {
        self.inner.cfg.dir.join("netns").join(task_id)
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.inner.cfg.dir.join("tasks").join(task_id)
    }

    fn enable_forwarding(&self, state: &mut State) -> Result<(), NetworkError> {
        if state.forwarding {
            return Ok(());
        }
        netns::run_in(self.inner.cfg.node_netns.as_deref(), || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })
        .map_err(io_err("enabling IPv4 forwarding in the node's namespace"))?;
        state.forwarding = true;
        Ok(())
    }

    /// Brings the node and every attached container in line with `view`.
    async fn reconcile(
        &self,
        state: &mut State,
        view: &NetworksMessage,
    ) -> Result<(), NetworkError> {
        let node = self.node(state)?;
        self.enable_forwarding(state)?;
        let port = u16::try_from(view.data_path_port).unwrap_or(4789);
        let mut wanted: BTreeSet<u32> = BTreeSet::new();
        for c in state.containers.values() {
            wanted.extend(c.net.attachments.iter().map(|a| a.vni));
        }
        for n in &view.networks {
            let vni = plan::vni(n);
            let Some((ip, prefix)) = plan::parse_cidr(&n.node_addr) else {
                continue;
            };
            wanted.insert(vni);
            let bridge = node
                .ensure_bridge(
                    &plan::bridge_name(vni),
                    plan::mac_of(ip),
                    Some((ip, prefix)),
                    OVERLAY_MTU,
                )
                .await?;
            let vx = node
                .ensure_vxlan(
                    &plan::vxlan_name(vni),
                    vni,
                    port,
                    self.inner.cfg.data_addr,
                    bridge,
                    OVERLAY_MTU,
                )
                .await?;
            let underlay: BTreeMap<&str, Ipv4Addr> = n
                .peers
                .iter()
                .filter_map(|p| Some((p.node_id.as_str(), p.addr.parse().ok()?)))
                .collect();
            let mut want: BTreeSet<([u8; 6], Ipv4Addr)> =
                underlay.values().map(|a| (ZERO_MAC, *a)).collect();
            for e in &n.endpoints {
                if let (Some(dst), Some((ip, _))) =
                    (underlay.get(e.node_id.as_str()), plan::parse_cidr(&e.addr))
                {
                    want.insert((plan::mac_of(ip), *dst));
                }
            }
            // The peers' own bridges (their address on the network).
            for p in &n.peers {
                if let (Some(dst), Some((ip, _))) = (
                    underlay.get(p.node_id.as_str()),
                    plan::parse_cidr(&p.network_addr),
                ) {
                    want.insert((plan::mac_of(ip), *dst));
                }
            }
            let have = state.fdb.entry(vni).or_default();
            let gone: Vec<_> = have.difference(&want).cloned().collect();
            let new: Vec<_> = want.difference(have).cloned().collect();
            for (mac, dst) in gone {
                node.fdb_delete(vx, mac, dst).await?;
                have.remove(&(mac, dst));
            }
            for (mac, dst) in new {
                node.fdb_append(vx, mac, dst).await?;
                have.insert((mac, dst));
            }
        }
        // Networks nothing here needs any more.
        for (name, _) in node.links_with_prefix(plan::IFACE_PREFIX).await? {
            if let Some((kind, vni)) = plan::vni_of(&name)
                && kind == 'x'
                && !wanted.contains(&vni)
            {
                node.delete(&name).await?;
                node.delete(&plan::bridge_name(vni)).await?;
                state.fdb.remove(&vni);
            }
        }
        let active: BTreeSet<&str> = view
            .networks
            .iter()
            .flat_map(|n| n.endpoints.iter())
            .filter(|e| e.active)
            .map(|e| e.task_id.as_str())
            .collect();
        let locals: Vec<plan::LocalTask<'_>> = state
            .containers
            .values()
            .map(|c| plan::LocalTask {
                net: &c.net,
                active: active.contains(c.net.task_id.as_str()),
            })
            .collect();
        let rules = plan::node_rules(view, &locals);
        if state.node_rules.as_deref() != Some(rules.as_str()) {
            nft::apply(self.inner.cfg.node_netns.as_deref(), &rules).await?;
            state.node_rules = Some(rules);
        }
        for c in state.containers.values_mut() {
            let rules = plan::container_rules(view, &c.net);
            if c.rules.as_deref() != Some(rules.as_str()) {
                nft::apply(Some(&c.netns), &rules).await?;
                c.rules = Some(rules);
            }
        }
        Ok(())
    }

    /// Waits until the view has every network of `net` with this node's address on it.
    async fn view_for(&self, net: &TaskNet) -> Result<Arc<NetworksMessage>, NetworkError> {
        let timeout = self.inner.cfg.attach_timeout;
        let mut views = self.views();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing = match views.borrow_and_update().clone() {
                Some(view) => {
                    let missing: Vec<&str> = net
                        .attachments
                        .iter()
                        .filter(|a| {
                            plan::network(&view, &a.network_id)
                                .is_none_or(|n| plan::parse_cidr(&n.node_addr).is_none())
                        })
                        .map(|a| a.network_id.as_str())
                        .collect();
                    if missing.is_empty() {
                        return Ok(view);
                    }
                    format!("network {}", missing.join(", "))
                }
                None => "any network".to_owned(),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(NetworkError::ViewTimeout { missing, waited: timeout });
                }
                changed = views.changed() => if changed.is_err() {
                    return Err(NetworkError::ViewTimeout { missing, waited: timeout });
                },
            }
        }
    }

    /// Attaches `task`'s container namespace to its networks (creating the namespace, the
    /// node's bridges and tunnels as needed), starts its embedded DNS and load balancing, and
    /// returns what the container must use. Idempotent: attaching a task again (a restarted
    /// daemon adopting its container) completes what is missing and restarts its DNS.
    pub async fn attach(&self, task: &Task, hostname: &str) -> Result<Attached, NetworkError> {
        let net = plan::task_net(task).ok_or_else(|| NetworkError::NotAttached(task.id.clone()))?;
        let view = self.view_for(&net).await?;
        let mut state = self.inner.state.lock().await;
        self.reconcile(&mut state, &view).await?;
        let node = self.node(&mut state)?;
        let path = self.netns_path(&task.id);
        netns::create(&path).map_err(io_err(format!("creating namespace {path:?}")))?;
        let inside = Netlink::open(Some(&path))?;
        let lo = inside
            .index("lo")
            .await?
            .ok_or_else(|| NetworkError::Missing("loopback".into()))?;
        inside.up(lo).await?;
        let mut ifindex = Vec::with_capacity(net.attachments.len());
        for (i, att) in net.attachments.iter().enumerate() {
            let name = format!("eth{i}");
            if inside.index(&name).await?.is_none() {
                let (host, peer) = plan::veth_names(&task.id, i);
                let bridge = node
                    .index(&plan::bridge_name(att.vni))
                    .await?
                    .ok_or_else(|| NetworkError::Missing(plan::bridge_name(att.vni)))?;
                node.create_veth(&host, &peer, OVERLAY_MTU, Some(bridge), &path)
                    .await?;
                inside
                    .rename_up(&peer, &name, plan::mac_of(att.addr), OVERLAY_MTU)
                    .await?;
            }
            let index = inside
                .index(&name)
                .await?
                .ok_or_else(|| NetworkError::Missing(name.clone()))?;
            inside.add_address(index, att.addr, att.prefix).await?;
            ifindex.push(index);
        }
        if let Some((i, att)) = net
            .gateway_attachment()
            .and_then(|g| net.attachments.iter().position(|a| a == g).map(|i| (i, g)))
            && let Some((gw, _)) =
                plan::network(&view, &att.network_id).and_then(|n| plan::parse_cidr(&n.node_addr))
        {
            inside.default_route(gw, ifindex[i]).await?;
        }
        drop(inside);
        let dir = self.task_dir(&task.id);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {dir:?}")))?;
        let attached = Attached {
            netns: path.clone(),
            resolv_conf: dir.join("resolv.conf"),
            hosts: dir.join("hosts"),
        };
        std::fs::write(&attached.resolv_conf, plan::resolv_conf())
            .map_err(io_err("writing resolv.conf"))?;
        std::fs::write(&attached.hosts, plan::hosts(&net, hostname))
            .map_err(io_err("writing hosts"))?;
        if let Some(old) = state.containers.remove(&task.id) {
            old.dns.cancel();
        }
        let socket = dns::bind(&path)?;
        let cancel = CancellationToken::new();
        tokio::spawn(dns::serve(
            socket,
            self.views(),
            net.clone(),
            cancel.clone(),
        ));
        state.containers.insert(
            task.id.clone(),
            Container {
                net,
                netns: path,
                rules: None,
                dns: cancel,
            },
        );
        self.reconcile(&mut state, &view).await?;
        tracing::info!(task_id = %task.id, "task attached to its networks");
        Ok(attached)
    }

    /// Detaches task `task_id`: stops its DNS, deletes its interfaces, namespace and files,
    /// and drops the node's rules and networks it alone needed. Nothing attached is fine.
    pub async fn detach(&self, task_id: &str) -> Result<(), NetworkError> {
        let mut state = self.inner.state.lock().await;
        if let Some(c) = state.containers.remove(task_id) {
            c.dns.cancel();
        }
        let node = self.node(&mut state)?;
        for i in 0..MAX_ATTACHMENTS {
            node.delete(&plan::veth_names(task_id, i).0).await?;
        }
        let path = self.netns_path(task_id);
        netns::remove(&path).map_err(io_err(format!("removing namespace {path:?}")))?;
        let dir = self.task_dir(task_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {dir:?}"))(e)),
        }
        let view = self.inner.view.borrow().clone();
        if let Some(view) = view {
            self.reconcile(&mut state, &view).await?;
        }
        tracing::info!(%task_id, "task detached from its networks");
        Ok(())
    }

    /// Removes what this data path made on the node once its containers are detached: the
    /// overlay bridges and tunnels and Berth's nftables table (`swarm leave`). Networks a
    /// container still attached needs are kept.
    pub async fn clear(&self) -> Result<(), NetworkError> {
        let empty = Arc::new(NetworksMessage::default());
        self.inner.view.send_replace(Some(empty.clone()));
        let mut state = self.inner.state.lock().await;
        self.reconcile(&mut state, &empty).await
    }

    /// Whether `task` is attached to networks (the allocator gave it addresses).
    pub fn wants(task: &Task) -> bool {
        plan::task_net(task).is_some()
    }

    /// For a task on networks: attaches it ([`Self::attach`]) and points its container's
    /// `config` at the namespace, and at the resolv.conf and hosts files (bound read-only).
    /// Other tasks keep their configuration.
    pub async fn prepare_container(
        &self,
        task: &Task,
        config: &mut ContainerConfig,
    ) -> Result<(), NetworkError> {
        if !Self::wants(task) {
            return Ok(());
        }
        let attached = self.attach(task, &config.hostname).await?;
        config.network_namespace = attached.netns.display().to_string();
        for (source, target) in [
            (&attached.resolv_conf, "/etc/resolv.conf"),
            (&attached.hosts, "/etc/hosts"),
        ] {
            config.mounts.retain(|m| m.target != target);
            config.mounts.push(Mount {
                r#type: MountType::Bind as i32,
                source: source.display().to_string(),
                target: target.into(),
                read_only: true,
                ..Default::default()
            });
        }
        Ok(())
    }

    /// Where the namespace of `task_id` is bound (whether or not it exists).
    pub fn netns_of(&self, task_id: &str) -> PathBuf {
        self.netns_path(task_id)
    }

    /// Whether `path` holds a bound namespace.
    pub fn is_bound(path: &Path) -> bool {
        netns::is_bound(path)
    }
}
