//! The data path as plain data, from the managers' network view: interface names and MAC
//! addresses, what a container is attached to, the nftables rulesets of the node (routing
//! mesh, host-mode ports, isolation between networks, egress) and of each container (VIP
//! load balancing), the embedded DNS's answers, and the container's resolv.conf and hosts.
//!
//! Everything here is a pure function of its inputs, so it is unit-tested without a kernel;
//! [`super`] applies it.
//!
//! Invariants:
//! - Only *active* endpoints (running, wanted running, healthy, node up — decided by the
//!   managers) are load-balancing backends or DNS answers.
//! - A MAC address is derived from the IPv4 address it carries (`02:42:a:b:c:d`, like
//!   Docker), so forwarding entries can be programmed from the store without learning.
//! - Every interface Berth creates starts with [`IFACE_PREFIX`]; every nftables table is
//!   named [`NFT_TABLE`]; nothing else is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use berth_proto::v1::{
    NetworkView, NetworksMessage, PortConfig, PortProtocol, PublishMode, ResolutionMode, Task,
};

/// First characters of every interface Berth creates.
pub const IFACE_PREFIX: &str = "bn";

/// The nftables table Berth owns in the node's and in each container's namespace.
pub const NFT_TABLE: &str = "berth";

/// Address of the embedded DNS inside every container on a network (Docker's).
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// MTU of overlay interfaces: 1500 minus the VXLAN encapsulation (50 bytes).
pub const OVERLAY_MTU: u32 = 1450;

/// Packet mark of connections the routing mesh forwards (they are masqueraded).
pub const MESH_MARK: u32 = 0x6265_7274;

/// Name of the bridge of network `vni` in the node's namespace.
pub fn bridge_name(vni: u32) -> String {
    format!("{IFACE_PREFIX}b{vni}")
}

/// Name of the VXLAN device of network `vni` in the node's namespace.
pub fn vxlan_name(vni: u32) -> String {
    format!("{IFACE_PREFIX}x{vni}")
}

/// The VNI a Berth bridge or VXLAN device name carries.
pub fn vni_of(name: &str) -> Option<(char, u32)> {
    let rest = name.strip_prefix(IFACE_PREFIX)?;
    let mut chars = rest.chars();
    let kind = chars.next()?;
    if kind != 'b' && kind != 'x' {
        return None;
    }
    Some((kind, chars.as_str().parse().ok()?))
}

/// FNV-1a, for short stable interface names.
fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Names of the veth pair of attachment `index` of `task_id`: the node's end, and the
/// temporary name of the container's end (renamed `eth<index>` inside the container).
pub fn veth_names(task_id: &str, index: usize) -> (String, String) {
    let h = fnv(&format!("{task_id}/{index}"));
    (
        format!("{IFACE_PREFIX}v{h:08x}"),
        format!("{IFACE_PREFIX}p{h:08x}"),
    )
}

/// The MAC address carried with `ip`.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// `a.b.c.d/len` → address and prefix length.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((ip.parse().ok()?, len))
}

/// The subnet of `ip/len` in CIDR notation.
pub fn subnet_of(ip: Ipv4Addr, len: u8) -> String {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    format!("{}/{len}", Ipv4Addr::from(u32::from(ip) & mask))
}

/// One network attachment of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The network's id.
    pub network_id: String,
    /// Its VXLAN id (names the node's bridge).
    pub vni: u32,
    /// The container's address on it.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The network is internal (no route out).
    pub internal: bool,
    /// The network is the ingress network.
    pub ingress: bool,
}

/// What a container of a task is attached to, in the task's order (`eth0`, `eth1`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskNet {
    /// The task.
    pub task_id: String,
    /// Its service.
    pub service_id: String,
    /// Its attachments.
    pub attachments: Vec<Attachment>,
    /// Its host-mode published ports.
    pub host_ports: Vec<PortConfig>,
}

/// The attachments of `task` as the allocator gave them; `None` when it has none.
pub fn task_net(task: &Task) -> Option<TaskNet> {
    let mut attachments = Vec::new();
    for att in &task.networks {
        let net = att.network.as_ref()?;
        let (addr, prefix) = att.addresses.first().and_then(|a| parse_cidr(a))?;
        let spec = net.spec.clone().unwrap_or_default();
        attachments.push(Attachment {
            network_id: net.id.clone(),
            vni: net.vxlan_id,
            addr,
            prefix,
            internal: spec.internal,
            ingress: spec.ingress,
        });
    }
    if attachments.is_empty() {
        return None;
    }
    let host_ports = task
        .endpoint
        .as_ref()
        .map(|e| {
            e.ports
                .iter()
                .filter(|p| p.publish_mode == PublishMode::Host as i32)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Some(TaskNet {
        task_id: task.id.clone(),
        service_id: task.service_id.clone(),
        attachments,
        host_ports,
    })
}

impl TaskNet {
    /// The attachment the default route goes through: the first that is not internal (and
    /// not the ingress network, unless it is the only one).
    pub fn gateway_attachment(&self) -> Option<&Attachment> {
        self.attachments
            .iter()
            .find(|a| !a.internal && !a.ingress)
            .or_else(|| self.attachments.iter().find(|a| !a.internal))
    }
}

/// The view of one network by id.
pub fn network<'a>(view: &'a NetworksMessage, id: &str) -> Option<&'a NetworkView> {
    view.networks
        .iter()
        .find(|n| n.network.as_ref().is_some_and(|x| x.id == id))
}

/// The VNI of a network view.
pub fn vni(n: &NetworkView) -> u32 {
    n.network.as_ref().map_or(0, |x| x.vxlan_id)
}

fn is_internal(n: &NetworkView) -> bool {
    n.network
        .as_ref()
        .and_then(|x| x.spec.as_ref())
        .is_some_and(|s| s.internal)
}

fn is_ingress(n: &NetworkView) -> bool {
    n.network
        .as_ref()
        .and_then(|x| x.spec.as_ref())
        .is_some_and(|s| s.ingress)
}

/// Active endpoint addresses of `service_id` on `n`, sorted.
fn backends(n: &NetworkView, service_id: &str) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = n
        .endpoints
        .iter()
        .filter(|e| e.active && e.service_id == service_id)
        .filter_map(|e| parse_cidr(&e.addr).map(|(ip, _)| ip))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn proto_name(p: &PortConfig) -> &'static str {
    if p.protocol == PortProtocol::Udp as i32 {
        "udp"
    } else {
        "tcp"
    }
}

fn dnat_map(backends: &[Ipv4Addr]) -> String {
    if backends.len() == 1 {
        return backends[0].to_string();
    }
    let entries: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{i} : {ip}"))
        .collect();
    format!(
        "numgen inc mod {} map {{ {} }}",
        backends.len(),
        entries.join(", ")
    )
}

/// An nftables script that replaces [`NFT_TABLE`] with `body` atomically (an empty body
/// removes the table).
pub fn replace_table(body: &str) -> String {
    let mut s = format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n");
    if !body.is_empty() {
        let _ = write!(s, "table ip {NFT_TABLE} {{\n{body}}}\n");
    }
    s
}

/// The container's ruleset: each VIP of a service on one of its networks is DNATed to the
/// service's active tasks, round robin per connection; a VIP without any is refused at once.
pub fn container_rules(view: &NetworksMessage, net: &TaskNet) -> String {
    let mut nat = String::new();
    let mut reject = String::new();
    let mut seen = BTreeSet::new();
    for att in &net.attachments {
        let Some(n) = network(view, &att.network_id) else {
            continue;
        };
        if is_ingress(n) {
            continue;
        }
        for s in &n.services {
            if s.mode != ResolutionMode::Vip as i32 || s.vip.is_empty() {
                continue;
            }
            let Some((vip, _)) = parse_cidr(&s.vip) else {
                continue;
            };
            if !seen.insert(vip) {
                continue;
            }
            let b = backends(n, &s.service_id);
            if b.is_empty() {
                let _ = writeln!(
                    reject,
                    "    ip daddr {vip} ip protocol tcp reject with tcp reset\n    ip daddr {vip} reject"
                );
            } else {
                let _ = writeln!(nat, "    ip daddr {vip} dnat to {}", dnat_map(&b));
            }
        }
    }
    let mut body = String::new();
    if !nat.is_empty() {
        let _ = write!(
            body,
            "  chain vip {{\n    type nat hook output priority -100; policy accept;\n{nat}  }}\n"
        );
    }
    if !reject.is_empty() {
        let _ = write!(
            body,
            "  chain novip {{\n    type filter hook output priority 0; policy accept;\n{reject}  }}\n"
        );
    }
    replace_table(&body)
}

/// A local container as the node's ruleset sees it.
#[derive(Debug, Clone)]
pub struct LocalTask<'a> {
    /// Its attachments and host ports.
    pub net: &'a TaskNet,
    /// Whether the managers count it active (host ports answer only then).
    pub active: bool,
}

/// The node's ruleset:
/// - routing mesh: every ingress port of the view DNATed (on any local address) to the
///   service's active tasks on the ingress network, marked and masqueraded out of the
///   ingress bridge (the task answers the node that forwarded);
/// - host-mode ports of active local tasks DNATed to the task (source address kept);
/// - no forwarding between two Berth bridges, nor in or out of an internal network's;
/// - egress: traffic from a non-internal overlay subnet leaving the node is masqueraded.
pub fn node_rules(view: &NetworksMessage, local: &[LocalTask<'_>]) -> String {
    let mut dnat = String::new();
    for n in view.networks.iter().filter(|n| is_ingress(n)) {
        for s in &n.services {
            let b = backends(n, &s.service_id);
            for p in &s.ports {
                if p.published_port == 0 || b.is_empty() {
                    continue;
                }
                let _ = writeln!(
                    dnat,
                    "    fib daddr type local {} dport {} meta mark set {MESH_MARK:#x} dnat to {}:{}",
                    proto_name(p),
                    p.published_port,
                    dnat_map(&b),
                    p.target_port
                );
            }
        }
    }
    for t in local.iter().filter(|t| t.active) {
        let Some(att) = t.net.gateway_attachment() else {
            continue;
        };
        for p in &t.net.host_ports {
            let published = if p.published_port == 0 {
                p.target_port
            } else {
                p.published_port
            };
            let _ = writeln!(
                dnat,
                "    fib daddr type local {} dport {published} dnat to {}:{}",
                proto_name(p),
                att.addr,
                p.target_port
            );
        }
    }
    let mut forward = String::new();
    let mut post = String::new();
    let mut bridges: BTreeMap<String, &NetworkView> = BTreeMap::new();
    for n in &view.networks {
        bridges.insert(bridge_name(vni(n)), n);
    }
    let all = format!("{IFACE_PREFIX}b*");
    for (br, n) in &bridges {
        if is_internal(n) {
            let _ = writeln!(forward, "    iifname \"{br}\" oifname != \"{br}\" drop");
            let _ = writeln!(forward, "    oifname \"{br}\" iifname != \"{br}\" drop");
        } else {
            let _ = writeln!(
                forward,
                "    iifname \"{br}\" oifname \"{all}\" oifname != \"{br}\" drop"
            );
            if let Some((ip, len)) = parse_cidr(&n.node_addr) {
                let _ = writeln!(
                    post,
                    "    ip saddr {} oifname != \"{all}\" masquerade",
                    subnet_of(ip, len)
                );
            }
        }
        if is_ingress(n) {
            let _ = writeln!(
                post,
                "    oifname \"{br}\" meta mark {MESH_MARK:#x} masquerade"
            );
        }
    }
    let mut body = String::new();
    if !dnat.is_empty() {
        let _ = write!(
            body,
            "  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{dnat}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n"
        );
    }
    if !post.is_empty() {
        let _ = write!(
            body,
            "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n{post}  }}\n"
        );
    }
    if !forward.is_empty() {
        let _ = write!(
            body,
            "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{forward}  }}\n"
        );
    }
    replace_table(&body)
}

/// What the embedded DNS answers for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name is known; its IPv4 addresses (possibly none right now).
    Known(Vec<Ipv4Addr>),
    /// Not a name on the container's networks.
    Unknown,
}

/// Resolves `name` for a container on `net`'s networks:
/// - `<service>`: its VIP (VIP mode) or its active tasks' addresses (DNSRR);
/// - `tasks.<service>`: its active tasks' addresses;
/// - a task alias: the active tasks carrying it.
///
/// Names are case-insensitive; a trailing dot is ignored.
pub fn resolve(view: &NetworksMessage, net: &TaskNet, name: &str) -> Answer {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let (tasks_only, wanted) = match name.strip_prefix("tasks.") {
        Some(rest) => (true, rest.to_owned()),
        None => (false, name.clone()),
    };
    let mut known = false;
    let mut addrs: Vec<Ipv4Addr> = Vec::new();
    for att in &net.attachments {
        let Some(n) = network(view, &att.network_id) else {
            continue;
        };
        if is_ingress(n) {
            continue;
        }
        for s in n
            .services
            .iter()
            .filter(|s| s.name.eq_ignore_ascii_case(&wanted))
        {
            known = true;
            let vip = parse_cidr(&s.vip).map(|(ip, _)| ip);
            match vip {
                Some(ip) if !tasks_only && s.mode == ResolutionMode::Vip as i32 => addrs.push(ip),
                _ => addrs.extend(backends(n, &s.service_id)),
            }
        }
        if !tasks_only {
            for e in &n.endpoints {
                if e.aliases.iter().any(|a| a.eq_ignore_ascii_case(&wanted)) {
                    known = true;
                    if e.active
                        && let Some((ip, _)) = parse_cidr(&e.addr)
                    {
                        addrs.push(ip);
                    }
                }
            }
        }
    }
    if !known {
        return Answer::Unknown;
    }
    let mut seen = BTreeSet::new();
    addrs.retain(|a| seen.insert(*a));
    Answer::Known(addrs)
}

/// The container's `/etc/resolv.conf`: the embedded DNS only.
pub fn resolv_conf() -> String {
    format!("nameserver {DNS_ADDR}\noptions ndots:0\n")
}

/// The container's `/etc/hosts`: loopback and its own addresses under `hostname`.
pub fn hosts(net: &TaskNet, hostname: &str) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(a) = net.attachments.first()
        && !hostname.is_empty()
    {
        let _ = writeln!(s, "{}\t{hostname}", a.addr);
    }
    s
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{
        Endpoint, Network, NetworkAttachment, NetworkEndpoint, NetworkSpec, ServiceEndpoint,
    };

    use super::*;

    fn net_view(id: &str, vni: u32, node_addr: &str, ingress: bool) -> NetworkView {
        NetworkView {
            network: Some(Network {
                id: id.into(),
                vxlan_id: vni,
                spec: Some(NetworkSpec {
                    ingress,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            node_addr: node_addr.into(),
            ..Default::default()
        }
    }

    fn ep(task: &str, svc: &str, addr: &str, active: bool) -> NetworkEndpoint {
        NetworkEndpoint {
            task_id: task.into(),
            service_id: svc.into(),
            node_id: "n".into(),
            addr: addr.into(),
            aliases: vec![],
            active,
        }
    }

    fn svc(id: &str, name: &str, vip: &str, mode: ResolutionMode) -> ServiceEndpoint {
        ServiceEndpoint {
            service_id: id.into(),
            name: name.into(),
            vip: vip.into(),
            mode: mode as i32,
            ports: vec![],
        }
    }

    fn fixture() -> (NetworksMessage, TaskNet) {
        let mut front = net_view("front", 4097, "10.0.1.10/24", false);
        front.endpoints = vec![
            ep("w1", "web", "10.0.1.3/24", true),
            ep("w2", "web", "10.0.1.4/24", true),
            ep("w3", "web", "10.0.1.5/24", false),
            ep("r1", "rr", "10.0.1.7/24", true),
            NetworkEndpoint {
                aliases: vec!["db-main".into()],
                ..ep("d1", "db", "10.0.1.8/24", true)
            },
            ep("c1", "cli", "10.0.1.9/24", true),
        ];
        front.services = vec![
            svc("web", "web", "10.0.1.2/24", ResolutionMode::Vip),
            svc("rr", "rr", "", ResolutionMode::Dnsrr),
            svc("db", "db", "10.0.1.6/24", ResolutionMode::Vip),
            svc("idle", "idle", "10.0.1.11/24", ResolutionMode::Vip),
        ];
        let mut ingress = net_view("ing", 4096, "10.0.0.10/24", true);
        ingress.endpoints = vec![
            ep("w1", "web", "10.0.0.3/24", true),
            ep("w2", "web", "10.0.0.4/24", true),
        ];
        ingress.services = vec![ServiceEndpoint {
            ports: vec![PortConfig {
                published_port: 8080,
                target_port: 80,
                ..Default::default()
            }],
            ..svc("web", "web", "", ResolutionMode::Vip)
        }];
        let view = NetworksMessage {
            data_path_port: 4789,
            networks: vec![ingress, front],
        };
        let net = TaskNet {
            task_id: "c1".into(),
            service_id: "cli".into(),
            attachments: vec![Attachment {
                network_id: "front".into(),
                vni: 4097,
                addr: "10.0.1.9".parse().expect("ip"),
                prefix: 24,
                internal: false,
                ingress: false,
            }],
            host_ports: vec![],
        };
        (view, net)
    }

    #[test]
    fn names_and_macs() {
        assert_eq!(bridge_name(4097), "bnb4097");
        assert_eq!(vxlan_name(16_777_215), "bnx16777215");
        assert!(vxlan_name(16_777_215).len() <= 15);
        assert_eq!(vni_of("bnb4097"), Some(('b', 4097)));
        assert_eq!(vni_of("bnx12"), Some(('x', 12)));
        assert_eq!(vni_of("bnv0000abcd"), None);
        assert_eq!(vni_of("eth0"), None);
        let (h, p) = veth_names("task1", 0);
        assert!(h.starts_with("bnv") && p.starts_with("bnp") && h.len() == 11);
        assert_eq!(h[3..], p[3..]);
        assert_ne!(veth_names("task1", 1).0, h);
        assert_eq!(
            mac_of("10.0.1.5".parse().expect("ip")),
            [2, 0x42, 10, 0, 1, 5]
        );
        assert_eq!(
            parse_cidr("10.0.1.5/24"),
            Some(("10.0.1.5".parse().expect("ip"), 24))
        );
        assert_eq!(
            subnet_of("10.0.1.5".parse().expect("ip"), 24),
            "10.0.1.0/24"
        );
    }

    #[test]
    fn dns_answers_from_active_endpoints_only() {
        let (view, net) = fixture();
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert_eq!(
            resolve(&view, &net, "web"),
            Answer::Known(vec![ip("10.0.1.2")])
        );
        assert_eq!(
            resolve(&view, &net, "WEB."),
            Answer::Known(vec![ip("10.0.1.2")])
        );
        assert_eq!(
            resolve(&view, &net, "tasks.web"),
            Answer::Known(vec![ip("10.0.1.3"), ip("10.0.1.4")])
        );
        assert_eq!(
            resolve(&view, &net, "rr"),
            Answer::Known(vec![ip("10.0.1.7")])
        );
        assert_eq!(
            resolve(&view, &net, "db-main"),
            Answer::Known(vec![ip("10.0.1.8")])
        );
        assert_eq!(resolve(&view, &net, "tasks.idle"), Answer::Known(vec![]));
        assert_eq!(resolve(&view, &net, "example.com"), Answer::Unknown);
        assert_eq!(resolve(&view, &net, "tasks.nothing"), Answer::Unknown);
        // The ingress network is not for discovery.
        let mut on_ingress = net.clone();
        on_ingress.attachments[0].network_id = "ing".into();
        assert_eq!(resolve(&view, &on_ingress, "web"), Answer::Unknown);
    }

    #[test]
    fn vips_balance_over_active_tasks_and_empty_vips_refuse() {
        let (view, net) = fixture();
        let rules = container_rules(&view, &net);
        assert!(
            rules.starts_with("table ip berth\ndelete table ip berth\n"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ip daddr 10.0.1.2 dnat to numgen inc mod 2 map { 0 : 10.0.1.3, 1 : 10.0.1.4 }"
            ),
            "{rules}"
        );
        assert!(
            rules.contains("ip daddr 10.0.1.6 dnat to 10.0.1.8\n"),
            "{rules}"
        );
        assert!(
            rules.contains("ip daddr 10.0.1.11 ip protocol tcp reject with tcp reset"),
            "{rules}"
        );
        assert!(
            !rules.contains("10.0.1.5"),
            "inactive task balanced: {rules}"
        );
        // No VIP at all: the table is only removed.
        let empty = NetworksMessage::default();
        assert_eq!(
            container_rules(&empty, &net),
            "table ip berth\ndelete table ip berth\n"
        );
    }

    #[test]
    fn the_node_publishes_ingress_and_host_ports_and_isolates_networks() {
        let (view, _) = fixture();
        let host = TaskNet {
            task_id: "h1".into(),
            service_id: "h".into(),
            attachments: vec![
                Attachment {
                    network_id: "front".into(),
                    vni: 4097,
                    addr: "10.0.1.20".parse().expect("ip"),
                    prefix: 24,
                    internal: false,
                    ingress: false,
                },
                Attachment {
                    network_id: "ing".into(),
                    vni: 4096,
                    addr: "10.0.0.20".parse().expect("ip"),
                    prefix: 24,
                    internal: false,
                    ingress: true,
                },
            ],
            host_ports: vec![PortConfig {
                published_port: 9000,
                target_port: 90,
                publish_mode: PublishMode::Host as i32,
                ..Default::default()
            }],
        };
        let stopped = TaskNet {
            task_id: "h2".into(),
            host_ports: vec![PortConfig {
                published_port: 9001,
                target_port: 90,
                ..Default::default()
            }],
            ..host.clone()
        };
        let rules = node_rules(
            &view,
            &[
                LocalTask {
                    net: &host,
                    active: true,
                },
                LocalTask {
                    net: &stopped,
                    active: false,
                },
            ],
        );
        assert!(rules.contains(&format!(
            "fib daddr type local tcp dport 8080 meta mark set {MESH_MARK:#x} dnat to numgen inc mod 2 map {{ 0 : 10.0.0.3, 1 : 10.0.0.4 }}:80"
        )), "{rules}");
        assert!(
            rules.contains("fib daddr type local tcp dport 9000 dnat to 10.0.1.20:90"),
            "{rules}"
        );
        assert!(!rules.contains("9001"), "{rules}");
        assert!(
            rules.contains("iifname \"bnb4097\" oifname \"bnb*\" oifname != \"bnb4097\" drop"),
            "{rules}"
        );
        assert!(
            rules.contains(&format!(
                "oifname \"bnb4096\" meta mark {MESH_MARK:#x} masquerade"
            )),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr 10.0.1.0/24 oifname != \"bnb*\" masquerade"),
            "{rules}"
        );
    }

    #[test]
    fn a_task_net_comes_from_the_allocators_attachments() {
        let task = Task {
            id: "t".into(),
            service_id: "s".into(),
            networks: vec![
                NetworkAttachment {
                    network: Some(Network {
                        id: "ing".into(),
                        vxlan_id: 4096,
                        spec: Some(NetworkSpec {
                            ingress: true,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    addresses: vec!["10.0.0.5/24".into()],
                    aliases: vec![],
                },
                NetworkAttachment {
                    network: Some(Network {
                        id: "back".into(),
                        vxlan_id: 4098,
                        spec: Some(NetworkSpec {
                            internal: true,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    addresses: vec!["10.0.2.5/24".into()],
                    aliases: vec![],
                },
            ],
            endpoint: Some(Endpoint {
                ports: vec![PortConfig {
                    published_port: 81,
                    publish_mode: PublishMode::Host as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let net = task_net(&task).expect("attached");
        assert_eq!(net.attachments.len(), 2);
        assert_eq!(net.host_ports.len(), 1);
        // Only ingress is not internal: the default route goes there.
        assert_eq!(net.gateway_attachment().map(|a| a.vni), Some(4096));
        assert!(task_net(&Task::default()).is_none());
        assert!(hosts(&net, "web.1").contains("10.0.0.5\tweb.1"));
        assert_eq!(resolv_conf(), "nameserver 127.0.0.11\noptions ndots:0\n");
    }
}
