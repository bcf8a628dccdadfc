//! Merging several Compose files (`-c base.yml -c prod.yml`) like `docker compose` does: the
//! later file overrides the earlier one.
//!
//! - Mappings merge key by key, recursively; a scalar (or a value of another kind) replaces.
//! - `command`, `entrypoint` and `healthcheck.test` of a service are replaced whole.
//! - `environment`, `labels` and `deploy.labels` (list or mapping) merge by variable or label
//!   name.
//! - A service's `secrets` and `configs` merge by source; its `networks` by network name.
//! - Every other list is appended to, without repeating an equal item (`ports`, `dns`,
//!   `placement.constraints`, ...).
//!
//! Each node keeps the position it was written at, so errors still name the right file.

use super::yaml::{Key, Node, Value};

/// Whether two nodes hold the same value, wherever they are written.
pub fn same_value(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, a), (kb, b))| ka.name == kb.name && same_value(a, b))
        }
        (x, y) => x == y,
    }
}

/// How the list at a path merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListRule {
    /// The later list replaces the earlier one.
    Replace,
    /// Lists of `K=V` (or mappings) merge by K.
    ByName,
    /// Items merge by their `source` (a string item is its own source).
    BySource,
    /// Network lists or mappings merge by network name.
    Networks,
    /// Append items not already there.
    Append,
}

/// The rule for the value at `path` (dot-separated keys; `*` for a service name).
fn rule(path: &[&str]) -> ListRule {
    match path {
        ["services", _, "command" | "entrypoint"] | ["services", _, "healthcheck", "test"] => {
            ListRule::Replace
        }
        ["services", _, "environment" | "labels"] | ["services", _, "deploy", "labels"] => {
            ListRule::ByName
        }
        ["services", _, "secrets" | "configs"] => ListRule::BySource,
        ["services", _, "networks"] => ListRule::Networks,
        _ => ListRule::Append,
    }
}

/// `["A=1", "B"]` → `{A: "1", B: null}` (for [`ListRule::ByName`]); mappings stay.
fn named_entries(node: &Node) -> Option<Vec<(Key, Node)>> {
    match &node.value {
        Value::Map(entries) => Some(entries.clone()),
        Value::Seq(items) => items
            .iter()
            .map(|item| {
                let text = item.scalar_text()?;
                let (k, v) = match text.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (text, None),
                };
                Some((
                    Key {
                        name: k,
                        at: item.at.clone(),
                    },
                    Node::new(v.map_or(Value::Null, Value::Str), item.at.clone()),
                ))
            })
            .collect(),
        _ => None,
    }
}

/// The `source` of a secret or config reference.
fn source_of(node: &Node) -> Option<String> {
    match &node.value {
        Value::Map(_) => node.get("source").and_then(Node::scalar_text),
        _ => node.scalar_text(),
    }
}

/// Network attachments as a mapping (a list item `net` becomes `net: null`).
fn network_entries(node: &Node) -> Option<Vec<(Key, Node)>> {
    match &node.value {
        Value::Map(entries) => Some(entries.clone()),
        Value::Seq(items) => items
            .iter()
            .map(|item| {
                Some((
                    Key {
                        name: item.scalar_text()?,
                        at: item.at.clone(),
                    },
                    Node::new(Value::Null, item.at.clone()),
                ))
            })
            .collect(),
        _ => None,
    }
}

fn merge_maps(base: Vec<(Key, Node)>, over: Vec<(Key, Node)>, path: &[&str]) -> Vec<(Key, Node)> {
    let mut out = base;
    for (key, value) in over {
        match out.iter_mut().find(|(k, _)| k.name == key.name) {
            Some((k, existing)) => {
                let mut child = path.to_vec();
                child.push(&key.name);
                let old = std::mem::replace(existing, Node::new(Value::Null, key.at.clone()));
                *existing = merge_at(old, value, &child);
                *k = key;
            }
            None => out.push((key, value)),
        }
    }
    out
}

/// Merges `over` onto `base` (both at `path`).
fn merge_at(base: Node, over: Node, path: &[&str]) -> Node {
    let at = over.at.clone();
    match rule(path) {
        ListRule::Replace => return over,
        ListRule::ByName => {
            if let (Some(b), Some(o)) = (named_entries(&base), named_entries(&over))
                && (matches!(base.value, Value::Seq(_)) || matches!(over.value, Value::Seq(_)))
            {
                // Written as a mapping from here on; values stay strings (or null).
                let mut merged = b;
                for (k, v) in o {
                    match merged.iter_mut().find(|(mk, _)| mk.name == k.name) {
                        Some(slot) => *slot = (k, v),
                        None => merged.push((k, v)),
                    }
                }
                return Node::new(Value::Map(merged), at);
            }
        }
        ListRule::BySource => {
            if let (Value::Seq(b), Value::Seq(o)) = (&base.value, &over.value) {
                let mut merged = b.clone();
                for item in o {
                    let source = source_of(item);
                    match merged
                        .iter_mut()
                        .find(|m| source.is_some() && source_of(m) == source)
                    {
                        Some(slot) => *slot = item.clone(),
                        None => merged.push(item.clone()),
                    }
                }
                return Node::new(Value::Seq(merged), at);
            }
        }
        ListRule::Networks => {
            if let (Value::Seq(b), Value::Seq(o)) = (&base.value, &over.value) {
                let mut merged = b.clone();
                for item in o {
                    if !merged.iter().any(|m| same_value(m, item)) {
                        merged.push(item.clone());
                    }
                }
                return Node::new(Value::Seq(merged), at);
            }
            if let (Some(b), Some(o)) = (network_entries(&base), network_entries(&over)) {
                return Node::new(Value::Map(merge_maps(b, o, path)), at);
            }
        }
        ListRule::Append => {}
    }
    match (base.value, over.value) {
        (Value::Map(b), Value::Map(o)) => Node::new(Value::Map(merge_maps(b, o, path)), at),
        (Value::Seq(mut b), Value::Seq(o)) => {
            for item in o {
                if !b.iter().any(|m| same_value(m, &item)) {
                    b.push(item);
                }
            }
            Node::new(Value::Seq(b), at)
        }
        (_, value) => Node::new(value, at),
    }
}

/// Merges the files in order; the first one's root position is kept.
pub fn merge(files: Vec<Node>) -> Option<Node> {
    let mut files = files.into_iter();
    let first = files.next()?;
    Some(files.fold(first, |base, over| {
        let at = base.at.clone();
        let mut merged = merge_at(base, over, &[]);
        merged.at = at;
        merged
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::stack::yaml::{parse, to_yaml};

    fn merged(a: &str, b: &str) -> Node {
        merge(vec![parse(a, "a.yml").unwrap(), parse(b, "b.yml").unwrap()]).unwrap()
    }

    fn web(root: &Node) -> &Node {
        root.get("services").unwrap().get("web").unwrap()
    }

    #[test]
    fn later_files_override_and_extend() {
        let a = "services:\n  web:\n    image: busybox:1\n    command: [sh, -c, a]\n    environment:\n      - A=1\n      - B=1\n    ports: [\"80:80\"]\n    secrets: [s1, {source: s2, target: x}]\n    networks: [front]\n    deploy:\n      replicas: 1\n      labels: {a: \"1\"}\n  db:\n    image: db\n";
        let b = "services:\n  web:\n    image: busybox:2\n    command: [sh]\n    environment:\n      B: 2\n      C: 3\n    ports: [\"80:80\", \"81:81\"]\n    secrets: [{source: s2, target: y}]\n    networks:\n      back:\n        aliases: [w]\n    deploy:\n      labels: [b=2]\n";
        let root = merged(a, b);
        let w = web(&root);
        assert_eq!(
            w.get("image").unwrap().value,
            Value::Str("busybox:2".into())
        );
        assert_eq!(w.get("image").unwrap().at.file.as_ref(), "b.yml");
        let command = w.get("command").unwrap();
        assert!(matches!(&command.value, Value::Seq(s) if s.len() == 1));
        let env = w.get("environment").unwrap();
        assert_eq!(env.get("A").unwrap().value, Value::Str("1".into()));
        assert_eq!(env.get("B").unwrap().value, Value::Int(2));
        assert_eq!(env.get("C").unwrap().value, Value::Int(3));
        let Value::Seq(ports) = &w.get("ports").unwrap().value else {
            panic!()
        };
        assert_eq!(ports.len(), 2, "equal items are not repeated");
        let Value::Seq(secrets) = &w.get("secrets").unwrap().value else {
            panic!()
        };
        assert_eq!(secrets.len(), 2);
        assert_eq!(
            secrets[1].get("target").unwrap().value,
            Value::Str("y".into())
        );
        let networks = w.get("networks").unwrap();
        assert!(networks.get("front").is_some() && networks.get("back").is_some());
        let deploy = w.get("deploy").unwrap();
        assert_eq!(deploy.get("replicas").unwrap().value, Value::Int(1));
        let labels = deploy.get("labels").unwrap();
        assert!(labels.get("a").is_some() && labels.get("b").is_some());
        assert!(root.get("services").unwrap().get("db").is_some());
        assert!(to_yaml(&root).is_ok());
    }
}
