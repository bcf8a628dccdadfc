//! Published ports: which ingress ports are taken cluster-wide, conflicts between services,
//! and dynamic ports (30000-32767, Swarm's range) for ingress ports published as 0.
//!
//! Host-mode ports are not allocated here: they belong to the node a task runs on, and the
//! scheduler's host-port filter keeps two tasks from binding the same one.

use std::collections::{BTreeMap, HashSet};

use berth_proto::v1::{PortConfig, PortProtocol, PublishMode, Service};

/// First port of the dynamic ingress range.
pub const DYNAMIC_PORT_START: u32 = 30000;
/// Last port of the dynamic ingress range.
pub const DYNAMIC_PORT_END: u32 = 32767;

/// A published port: number and protocol.
pub type PortKey = (u32, i32);

/// Whether `p` is published in ingress mode (the routing mesh).
pub fn is_ingress(p: &PortConfig) -> bool {
    p.publish_mode == PublishMode::Ingress as i32
}

/// The protocol's name as port texts print it.
pub fn protocol_name(protocol: i32) -> &'static str {
    if protocol == PortProtocol::Udp as i32 {
        "udp"
    } else {
        "tcp"
    }
}

/// Ingress ports each service holds: its allocated endpoint ports, and the ports its spec asks
/// for (a service being created holds those before allocation).
pub fn ingress_ports_in_use<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> BTreeMap<PortKey, String> {
    let mut used = BTreeMap::new();
    for s in services {
        let allocated = s.endpoint.iter().flat_map(|e| e.ports.iter());
        let asked = s
            .spec
            .as_ref()
            .and_then(|sp| sp.endpoint.as_ref())
            .into_iter()
            .flat_map(|e| e.ports.iter());
        for p in allocated.chain(asked) {
            if is_ingress(p) && p.published_port != 0 {
                used.entry((p.published_port, p.protocol))
                    .or_insert_with(|| s.id.clone());
            }
        }
    }
    used
}

/// The ingress ports of `spec_ports` another service already holds, per `used` (which may
/// include the service itself, `own_id`).
pub fn conflicts(
    spec_ports: &[PortConfig],
    used: &BTreeMap<PortKey, String>,
    own_id: &str,
) -> Vec<(PortConfig, String)> {
    spec_ports
        .iter()
        .filter(|p| is_ingress(p) && p.published_port != 0)
        .filter_map(|p| {
            used.get(&(p.published_port, p.protocol))
                .filter(|holder| holder.as_str() != own_id)
                .map(|holder| (p.clone(), holder.clone()))
        })
        .collect()
}

/// The endpoint ports of a service: `spec_ports` with every ingress port published as 0
/// given a port — the one it had in `previous` (same target, protocol and mode), else the
/// lowest free dynamic port. `taken` holds every ingress port in use (other services' and
/// this one's fixed ones); ports picked here are added to it. `None` when the dynamic range
/// is exhausted.
pub fn allocate_ports(
    spec_ports: &[PortConfig],
    previous: &[PortConfig],
    taken: &mut HashSet<PortKey>,
) -> Option<Vec<PortConfig>> {
    let mut out = Vec::with_capacity(spec_ports.len());
    let mut reused: HashSet<usize> = HashSet::new();
    for p in spec_ports {
        let mut port = p.clone();
        if is_ingress(p) && p.published_port == 0 {
            let before = previous.iter().enumerate().find(|(i, q)| {
                !reused.contains(i)
                    && q.target_port == p.target_port
                    && q.protocol == p.protocol
                    && is_ingress(q)
                    && (DYNAMIC_PORT_START..=DYNAMIC_PORT_END).contains(&q.published_port)
            });
            port.published_port = match before {
                Some((i, q)) => {
                    reused.insert(i);
                    q.published_port
                }
                None => (DYNAMIC_PORT_START..=DYNAMIC_PORT_END)
                    .find(|n| !taken.contains(&(*n, p.protocol)))?,
            };
            taken.insert((port.published_port, p.protocol));
        }
        out.push(port);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Endpoint, EndpointSpec, ServiceSpec};

    use super::*;

    fn port(published: u32, target: u32, mode: PublishMode) -> PortConfig {
        PortConfig {
            published_port: published,
            target_port: target,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    fn service(id: &str, spec: Vec<PortConfig>, allocated: Vec<PortConfig>) -> Service {
        Service {
            id: id.into(),
            spec: Some(ServiceSpec {
                endpoint: Some(EndpointSpec {
                    ports: spec,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            endpoint: Some(Endpoint {
                ports: allocated,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ingress_ports_conflict_across_services_but_host_ports_do_not() {
        let web = service(
            "web",
            vec![
                port(8080, 80, PublishMode::Ingress),
                port(0, 81, PublishMode::Ingress),
            ],
            vec![
                port(8080, 80, PublishMode::Ingress),
                port(30000, 81, PublishMode::Ingress),
            ],
        );
        let host = service("h", vec![port(9090, 80, PublishMode::Host)], vec![]);
        let used = ingress_ports_in_use([&web, &host]);
        assert_eq!(used.len(), 2);
        let asked = [
            port(8080, 80, PublishMode::Ingress),
            port(9090, 80, PublishMode::Ingress),
        ];
        let c = conflicts(&asked, &used, "other");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.published_port, c[0].1.as_str()), (8080, "web"));
        assert!(conflicts(&asked, &used, "web").is_empty());
        // The same number over UDP is another port.
        let udp = PortConfig {
            protocol: PortProtocol::Udp as i32,
            ..port(8080, 80, PublishMode::Ingress)
        };
        assert!(conflicts(&[udp], &used, "other").is_empty());
    }

    #[test]
    fn dynamic_ports_are_the_lowest_free_and_stay_across_updates() {
        let mut taken: HashSet<PortKey> = [(30000, 0), (8080, 0)].into_iter().collect();
        let spec = [
            port(0, 80, PublishMode::Ingress),
            port(8081, 81, PublishMode::Ingress),
            port(0, 82, PublishMode::Host),
            port(0, 83, PublishMode::Ingress),
        ];
        let got = allocate_ports(&spec, &[], &mut taken).expect("ports");
        let published: Vec<u32> = got.iter().map(|p| p.published_port).collect();
        assert_eq!(published, vec![30001, 8081, 0, 30002]);
        // Re-allocating the same spec keeps the ports it had.
        let mut taken: HashSet<PortKey> = [(30000, 0)].into_iter().collect();
        let again = allocate_ports(&spec, &got, &mut taken).expect("ports");
        assert_eq!(again, got);
        // An exhausted range gives None.
        let mut full: HashSet<PortKey> = (DYNAMIC_PORT_START..=DYNAMIC_PORT_END)
            .map(|n| (n, 0))
            .collect();
        assert!(allocate_ports(&spec[..1], &[], &mut full).is_none());
        assert_eq!(protocol_name(PortProtocol::Udp as i32), "udp");
    }
}
