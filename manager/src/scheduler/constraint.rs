//! Placement constraints: `KEY==VALUE` and `KEY!=VALUE`, all of which must hold for a node.
//!
//! Keys (as in Swarm): `node.id`, `node.hostname`, `node.ip` (an address or a CIDR),
//! `node.role` (`manager`/`worker`), `node.platform.os`, `node.platform.arch`,
//! `node.labels.<name>` and `engine.labels.<name>`. Keys and values compare case-insensitively
//! (label names exactly, as written); a missing label is the empty string, so `!=` holds on a
//! node without it. Architectures are normalised (`x86_64` = `amd64`, `aarch64` = `arm64`).

use std::net::IpAddr;

use berth_proto::v1::{Node, NodeRole};

/// Why a constraint expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// No `==` or `!=` operator.
    #[error("invalid constraint {0:?}: expected KEY==VALUE or KEY!=VALUE")]
    Syntax(String),
    /// The key is not one the scheduler knows.
    #[error("invalid constraint {expr:?}: unknown key {key:?}")]
    UnknownKey {
        /// The whole expression.
        expr: String,
        /// The key.
        key: String,
    },
    /// The value is empty.
    #[error("invalid constraint {0:?}: empty value")]
    EmptyValue(String),
}

/// What a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKey {
    /// `node.id`.
    NodeId,
    /// `node.hostname`.
    Hostname,
    /// `node.ip`.
    Ip,
    /// `node.role`.
    Role,
    /// `node.platform.os`.
    Os,
    /// `node.platform.arch`.
    Arch,
    /// `node.labels.<name>`.
    NodeLabel(String),
    /// `engine.labels.<name>`.
    EngineLabel(String),
}

/// One parsed constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// What it looks at.
    pub key: ConstraintKey,
    /// `==` (true) or `!=` (false).
    pub equal: bool,
    /// The value, as written.
    pub value: String,
}

const NODE_LABELS: &str = "node.labels.";
const ENGINE_LABELS: &str = "engine.labels.";

/// `s` without `prefix`, compared ASCII case-insensitively.
pub(crate) fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// The canonical name of an architecture (`x86_64` → `amd64`, `aarch64` → `arm64`).
pub(crate) fn normalize_arch(arch: &str) -> String {
    let a = arch.to_lowercase();
    match a.as_str() {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "i386" | "i686" => "386".into(),
        _ => a,
    }
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

impl Constraint {
    /// Parses one expression.
    pub fn parse(expr: &str) -> Result<Constraint, ConstraintError> {
        let eq = expr.find("==");
        let ne = expr.find("!=");
        let (at, equal) = match (eq, ne) {
            (Some(e), Some(n)) if n < e => (n, false),
            (Some(e), _) => (e, true),
            (None, Some(n)) => (n, false),
            (None, None) => return Err(ConstraintError::Syntax(expr.into())),
        };
        let key_text = expr[..at].trim();
        let value = expr[at + 2..].trim();
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(expr.into()));
        }
        let unknown = || ConstraintError::UnknownKey {
            expr: expr.into(),
            key: key_text.into(),
        };
        let key = match key_text.to_lowercase().as_str() {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::Hostname,
            "node.ip" => ConstraintKey::Ip,
            "node.role" => ConstraintKey::Role,
            "node.platform.os" => ConstraintKey::Os,
            "node.platform.arch" => ConstraintKey::Arch,
            _ => {
                if let Some(name) = strip_prefix_ci(key_text, NODE_LABELS) {
                    if name.is_empty() {
                        return Err(unknown());
                    }
                    ConstraintKey::NodeLabel(name.into())
                } else if let Some(name) = strip_prefix_ci(key_text, ENGINE_LABELS) {
                    if name.is_empty() {
                        return Err(unknown());
                    }
                    ConstraintKey::EngineLabel(name.into())
                } else {
                    return Err(unknown());
                }
            }
        };
        Ok(Constraint {
            key,
            equal,
            value: value.into(),
        })
    }

    /// Parses every expression; the first error wins.
    pub fn parse_all(exprs: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
        exprs.iter().map(|e| Constraint::parse(e)).collect()
    }

    /// Whether `node` satisfies this constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let desc = node.description.as_ref();
        let same = match &self.key {
            ConstraintKey::NodeId => eq_ci(&node.id, &self.value),
            ConstraintKey::Hostname => eq_ci(desc.map_or("", |d| d.hostname.as_str()), &self.value),
            ConstraintKey::Ip => ip_matches(node, &self.value),
            ConstraintKey::Role => {
                let role = if node.role == NodeRole::Manager as i32 {
                    "manager"
                } else {
                    "worker"
                };
                eq_ci(role, &self.value)
            }
            ConstraintKey::Os => eq_ci(
                desc.and_then(|d| d.platform.as_ref())
                    .map_or("", |p| p.os.as_str()),
                &self.value,
            ),
            ConstraintKey::Arch => {
                let arch = desc
                    .and_then(|d| d.platform.as_ref())
                    .map_or("", |p| p.architecture.as_str());
                normalize_arch(arch) == normalize_arch(&self.value)
            }
            ConstraintKey::NodeLabel(name) => {
                let v = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .and_then(|a| a.labels.get(name))
                    .map_or("", String::as_str);
                eq_ci(v, &self.value)
            }
            ConstraintKey::EngineLabel(name) => {
                let v = desc
                    .and_then(|d| d.engine_labels.get(name))
                    .map_or("", String::as_str);
                eq_ci(v, &self.value)
            }
        };
        same == self.equal
    }

    /// Whether `node` satisfies every constraint.
    pub fn all_match(constraints: &[Constraint], node: &Node) -> bool {
        constraints.iter().all(|c| c.matches(node))
    }
}

/// The node's address: the one its session came from, else the one it advertises.
fn node_ip(node: &Node) -> Option<IpAddr> {
    let from_status = node.status.as_ref().map(|s| s.addr.as_str()).unwrap_or("");
    let advertised = node
        .description
        .as_ref()
        .map(|d| d.addr.as_str())
        .unwrap_or("");
    [from_status, advertised].into_iter().find_map(parse_host)
}

fn parse_host(s: &str) -> Option<IpAddr> {
    if s.is_empty() {
        return None;
    }
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

fn ip_matches(node: &Node, value: &str) -> bool {
    let Some(ip) = node_ip(node) else {
        return false;
    };
    match value.split_once('/') {
        None => value.parse::<IpAddr>().is_ok_and(|v| v == ip),
        Some((net, bits)) => {
            let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
                return false;
            };
            match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) if bits <= 32 => {
                    let mask = if bits == 0 {
                        0
                    } else {
                        u32::MAX << (32 - bits)
                    };
                    u32::from(n) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(a)) if bits <= 128 => {
                    let mask = if bits == 0 {
                        0
                    } else {
                        u128::MAX << (128 - bits)
                    };
                    u128::from(n) & mask == u128::from(a) & mask
                }
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Annotations, NodeDescription, NodeSpec, NodeStatus, Platform};

    use super::*;

    fn n() -> Node {
        Node {
            id: "abc123".into(),
            spec: Some(NodeSpec {
                annotations: Some(Annotations {
                    labels: [("zone".to_string(), "East".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: "Worker-1".into(),
                platform: Some(Platform {
                    architecture: "x86_64".into(),
                    os: "linux".into(),
                }),
                engine_labels: [("ssd".to_string(), "true".to_string())].into(),
                addr: "192.168.1.10:4377".into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addr: "10.1.2.3".into(),
                ..Default::default()
            }),
            role: NodeRole::Manager as i32,
            ..Default::default()
        }
    }

    #[test]
    fn matching_table() {
        let table = [
            ("node.id==abc123", true),
            ("node.id==ABC123", true),
            ("node.id!=abc123", false),
            ("node.hostname==worker-1", true),
            ("node.hostname != worker-2", true),
            ("node.role==manager", true),
            ("node.role==worker", false),
            ("NODE.ROLE==Manager", true),
            ("node.platform.os==Linux", true),
            ("node.platform.arch==amd64", true),
            ("node.platform.arch==x86_64", true),
            ("node.platform.arch==arm64", false),
            ("node.labels.zone==east", true),
            ("node.labels.zone!=east", false),
            ("node.labels.Zone==east", false), // label names are exact
            ("node.labels.rack==r1", false),   // missing label
            ("node.labels.rack!=r1", true),
            ("engine.labels.ssd==true", true),
            ("node.ip==10.1.2.3", true),
            ("node.ip==10.1.2.4", false),
            ("node.ip==10.1.0.0/16", true),
            ("node.ip!=10.2.0.0/16", true),
        ];
        let node = n();
        for (expr, want) in table {
            let c = Constraint::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(c.matches(&node), want, "{expr}");
        }
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            Constraint::parse("node.role=manager"),
            Err(ConstraintError::Syntax("node.role=manager".into()))
        );
        assert!(matches!(
            Constraint::parse("node.colour==red"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert!(matches!(
            Constraint::parse("node.labels.==x"),
            Err(ConstraintError::UnknownKey { .. })
        ));
        assert_eq!(
            Constraint::parse("node.id== "),
            Err(ConstraintError::EmptyValue("node.id== ".into()))
        );
        let all = Constraint::parse_all(&["node.id==a".into(), "bad".into()]);
        assert_eq!(all, Err(ConstraintError::Syntax("bad".into())));
    }
}
