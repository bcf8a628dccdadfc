//! Reading typed values out of the YAML tree, with errors that name the file, the line and the
//! key path (`stack.yml line 12: services.web.deploy.replicas: expected a number, got a list`).
//!
//! Readers never stop at the first problem: they record it in [`Diags`] and return `None`, so
//! one run reports every error in the file. Numbers and booleans may also be written as
//! strings, since interpolation (`replicas: ${N}`) always yields strings.

use std::fmt::Display;
use std::time::Duration;

use super::yaml::{At, Key, Node, Value};
use crate::commands::service::spec::parse_shell_words;

/// Errors and warnings found while reading a stack.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diags {
    /// Problems that stop a deploy.
    pub errors: Vec<String>,
    /// Things worth saying that do not stop it (ignored keys, unset variables).
    pub warnings: Vec<String>,
}

impl Diags {
    /// An error about the value at `path`, written at `at`.
    pub fn error(&mut self, at: &At, path: &str, message: impl Display) {
        self.errors.push(format!("{at}: {path}: {message}"));
    }

    /// A warning about the value at `path`, written at `at`.
    pub fn warn(&mut self, at: &At, path: &str, message: impl Display) {
        self.warnings.push(format!("{at}: {path}: {message}"));
    }

    /// A key that is neither Compose nor an `x-` extension.
    pub fn unknown(&mut self, key: &Key, parent: &str) {
        self.error(&key.at, &child(parent, &key.name), "unknown key");
    }

    /// A Compose key Berth does not support; `hint` says what to do instead (may be empty).
    pub fn unsupported(&mut self, key: &Key, parent: &str, hint: &str) {
        let message = if hint.is_empty() {
            "not supported by berth stack deploy".to_string()
        } else {
            format!("not supported by berth stack deploy ({hint})")
        };
        self.error(&key.at, &child(parent, &key.name), message);
    }

    /// A Compose key that only means something to `docker compose` and is skipped here.
    pub fn ignored(&mut self, key: &Key, parent: &str) {
        self.warn(
            &key.at,
            &child(parent, &key.name),
            "ignored (not used by stack deploy)",
        );
    }

    /// Whether nothing stops a deploy.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// `parent.key` (or `key` at the top).
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[i]`.
pub fn item(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Whether a key is an extension field (`x-...`), which every mapping may carry.
pub fn is_extension(key: &Key) -> bool {
    key.name.starts_with("x-")
}

/// The entries of a mapping (`null` reads as an empty one).
pub fn map<'n>(node: &'n Node, path: &str, d: &mut Diags) -> Option<&'n [(Key, Node)]> {
    match &node.value {
        Value::Map(entries) => Some(entries),
        Value::Null => Some(&[]),
        _ => {
            d.error(
                &node.at,
                path,
                format!("expected a mapping, got {}", node.kind()),
            );
            None
        }
    }
}

/// The items of a list (`null` reads as an empty one).
pub fn list<'n>(node: &'n Node, path: &str, d: &mut Diags) -> Option<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        Value::Null => Some(&[]),
        _ => {
            d.error(
                &node.at,
                path,
                format!("expected a list, got {}", node.kind()),
            );
            None
        }
    }
}

/// A scalar as a string.
pub fn string(node: &Node, path: &str, d: &mut Diags) -> Option<String> {
    let text = node.scalar_text();
    if text.is_none() {
        d.error(
            &node.at,
            path,
            format!("expected a string, got {}", node.kind()),
        );
    }
    text
}

/// A non-negative integer.
pub fn uint(node: &Node, path: &str, d: &mut Diags) -> Option<u64> {
    let parsed = match &node.value {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Str(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        d.error(
            &node.at,
            path,
            format!("expected a non-negative integer, got {}", describe(node)),
        );
    }
    parsed
}

/// An integer.
pub fn int(node: &Node, path: &str, d: &mut Diags) -> Option<i64> {
    let parsed = match &node.value {
        Value::Int(i) => Some(*i),
        Value::Str(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        d.error(
            &node.at,
            path,
            format!("expected an integer, got {}", describe(node)),
        );
    }
    parsed
}

/// `true` or `false`.
pub fn boolean(node: &Node, path: &str, d: &mut Diags) -> Option<bool> {
    let parsed = match &node.value {
        Value::Bool(b) => Some(*b),
        Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    };
    if parsed.is_none() {
        d.error(
            &node.at,
            path,
            format!("expected true or false, got {}", describe(node)),
        );
    }
    parsed
}

/// A Go-style duration (`10s`, `1m30s`, `500ms`, `0`).
pub fn duration(node: &Node, path: &str, d: &mut Diags) -> Option<Duration> {
    let text = string(node, path, d)?;
    match crate::duration::parse(text.trim()) {
        Ok(v) => Some(v),
        Err(e) => {
            d.error(&node.at, path, e);
            None
        }
    }
}

/// A list of scalars.
pub fn strings(node: &Node, path: &str, d: &mut Diags) -> Option<Vec<String>> {
    let items = list(node, path, d)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, n) in items.iter().enumerate() {
        match string(n, &item(path, i), d) {
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// One string or a list of them.
pub fn string_or_list(node: &Node, path: &str, d: &mut Diags) -> Option<Vec<String>> {
    match &node.value {
        Value::Seq(_) | Value::Null => strings(node, path, d),
        _ => string(node, path, d).map(|s| vec![s]),
    }
}

/// A command: a list of words, or a string split like a shell would.
pub fn command(node: &Node, path: &str, d: &mut Diags) -> Option<Vec<String>> {
    match &node.value {
        Value::Seq(_) | Value::Null => strings(node, path, d),
        _ => {
            let text = string(node, path, d)?;
            match parse_shell_words(&text) {
                Ok(words) => Some(words.0),
                Err(e) => {
                    d.error(&node.at, path, e);
                    None
                }
            }
        }
    }
}

/// A mapping of names to scalars, or a list of `NAME=VALUE` / `NAME` (environment, labels);
/// a missing value is `None`.
pub fn pairs(node: &Node, path: &str, d: &mut Diags) -> Option<Vec<(String, Option<String>)>> {
    match &node.value {
        Value::Map(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            let mut ok = true;
            for (key, value) in entries {
                match &value.value {
                    Value::Null => out.push((key.name.clone(), None)),
                    Value::Seq(_) | Value::Map(_) => {
                        d.error(
                            &value.at,
                            &child(path, &key.name),
                            format!("expected a string, number or boolean, got {}", value.kind()),
                        );
                        ok = false;
                    }
                    _ => out.push((key.name.clone(), value.scalar_text())),
                }
            }
            ok.then_some(out)
        }
        Value::Seq(_) | Value::Null => {
            let texts = strings(node, path, d)?;
            Some(
                texts
                    .into_iter()
                    .map(|t| match t.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (t, None),
                    })
                    .collect(),
            )
        }
        _ => {
            d.error(
                &node.at,
                path,
                format!("expected a mapping or a list, got {}", node.kind()),
            );
            None
        }
    }
}

/// `pairs` where every value must be given (labels): a missing value is the empty string.
pub fn labels(
    node: &Node,
    path: &str,
    d: &mut Diags,
) -> Option<std::collections::HashMap<String, String>> {
    Some(
        pairs(node, path, d)?
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
    )
}

/// A value for an error message: `"abc"` for scalars, its kind otherwise.
pub fn describe(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => format!("{s:?}"),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => node.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::stack::yaml::parse;

    #[test]
    fn readers_accept_strings_for_numbers_and_report_lines() {
        let root = parse(
            "a: \"3\"\nb: 4\nc: [x]\nd: \"true\"\ne: 1m30s\nf: echo 'a b'\ng: {A: 1, B: ~}\nh: [A=1, B]\n",
            "s.yml",
        )
        .unwrap();
        let mut d = Diags::default();
        let get = |k: &str| root.get(k).unwrap();
        assert_eq!(uint(get("a"), "a", &mut d), Some(3));
        assert_eq!(uint(get("b"), "b", &mut d), Some(4));
        assert_eq!(boolean(get("d"), "d", &mut d), Some(true));
        assert_eq!(
            duration(get("e"), "e", &mut d),
            Some(Duration::from_secs(90))
        );
        assert_eq!(command(get("f"), "f", &mut d).unwrap(), ["echo", "a b"]);
        let expected = vec![("A".to_string(), Some("1".to_string())), ("B".into(), None)];
        assert_eq!(pairs(get("g"), "g", &mut d).unwrap(), expected);
        assert_eq!(pairs(get("h"), "h", &mut d).unwrap(), expected);
        assert!(d.ok(), "{d:?}");
        assert_eq!(uint(get("c"), "c", &mut d), None);
        assert_eq!(string(get("c"), "c", &mut d), None);
        assert_eq!(
            d.errors,
            [
                "s.yml line 3: c: expected a non-negative integer, got a list",
                "s.yml line 3: c: expected a string, got a list"
            ]
        );
    }
}
