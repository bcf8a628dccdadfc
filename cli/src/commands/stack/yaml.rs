//! The YAML tree of a Compose file, every node and key tagged with where it came from.
//!
//! Files are parsed with serde-saphyr into [`Node`]s: anchors, aliases and `<<` merge keys
//! are resolved by the parser (under its alias and size budgets), duplicate keys are refused,
//! and only `true`/`false` are booleans (`yes` stays a string, as in YAML 1.2). Integers with a
//! leading zero are octal, like Docker's YAML reader (`mode: 0440`).
//!
//! Invariant: every node and every mapping key carries an [`At`] (file and 1-based line), so
//! every later error (interpolation, unknown key, bad value) can name the line it is about.
//! The tree serializes back to YAML for `berth stack config`.

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_saphyr::Spanned;

/// Where a node came from: the file as the user named it and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    /// The file, as given on the command line.
    pub file: Arc<str>,
    /// 1-based line (0 when unknown).
    pub line: u64,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}", self.file, self.line)
    }
}

/// A mapping key.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key's text.
    pub name: String,
    /// Where the key is written.
    pub at: At,
}

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (quoted or plain).
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<(Key, Node)>),
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it is written.
    pub at: At,
}

impl Node {
    /// A node at `at`.
    pub fn new(value: Value, at: At) -> Self {
        Node { value, at }
    }

    /// The entries of a mapping, or `None`.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar as text (`None` for null, lists and mappings).
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Str(s) => Some(s.clone()),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }
}

/// A YAML file that could not be read as YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the parser hands back before file names are attached.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<String>, Spanned<Raw>)>),
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or_else(|_| Raw::Str(v.to_string()), Raw::Int))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or_else(|_| Raw::Str(v.to_string()), Raw::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or_else(|_| Raw::Str(v.to_string()), Raw::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

fn attach(raw: Spanned<Raw>, file: &Arc<str>) -> Node {
    let at = At {
        file: file.clone(),
        line: raw.referenced.line(),
    };
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Int(i),
        Raw::Float(f) => Value::Float(f),
        Raw::Str(s) => Value::Str(s),
        Raw::Seq(items) => Value::Seq(items.into_iter().map(|i| attach(i, file)).collect()),
        Raw::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = Key {
                        name: k.value,
                        at: At {
                            file: file.clone(),
                            line: k.referenced.line(),
                        },
                    };
                    (key, attach(v, file))
                })
                .collect(),
        ),
    };
    Node { value, at }
}

/// Parses one YAML document; `file` names it in positions and errors.
pub fn parse(text: &str, file: &str) -> Result<Node, ParseError> {
    let file: Arc<str> = Arc::from(file);
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    options.strict_booleans = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(raw) => Ok(attach(raw, &file)),
        Err(err) => {
            let plain = err.without_snippet().to_string();
            let plain = plain.lines().next().unwrap_or_default();
            let plain = plain.strip_prefix("error: ").unwrap_or(plain);
            Err(ParseError(match err.location() {
                Some(loc) if loc.line() > 0 => {
                    // "line 3 column 12: msg" → "FILE line 3: msg (column 12)"
                    let message = plain
                        .split_once(": ")
                        .filter(|(head, _)| head.starts_with("line "))
                        .map_or(plain, |(_, rest)| rest);
                    format!(
                        "{file} line {}: {message} (column {})",
                        loc.line(),
                        loc.column()
                    )
                }
                _ => format!("{file}: {plain}"),
            }))
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.value {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Str(s) => serializer.serialize_str(s),
            Value::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(&key.name, value)?;
                }
                map.end()
            }
        }
    }
}

/// The tree as YAML text.
pub fn to_yaml(node: &Node) -> anyhow::Result<String> {
    serde_saphyr::to_string(node).map_err(|e| anyhow::anyhow!("writing YAML: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_keys_know_their_lines() {
        let text = "services:\n  web:\n    image: busybox\n    ports:\n      - \"80:80\"\n";
        let root = parse(text, "s.yml").unwrap();
        let web = root.get("services").unwrap().get("web").unwrap();
        let (key, image) = &web.as_map().unwrap()[0];
        assert_eq!((key.name.as_str(), key.at.line), ("image", 3));
        assert_eq!(image.value, Value::Str("busybox".into()));
        let ports = web.get("ports").unwrap();
        let Value::Seq(items) = &ports.value else {
            panic!("{ports:?}")
        };
        assert_eq!(items[0].at.line, 5);
        assert_eq!(items[0].at.to_string(), "s.yml line 5");
    }

    #[test]
    fn anchors_merge_keys_and_scalars() {
        let text = "x-base: &base\n  image: busybox\n  init: true\nservices:\n  web:\n    <<: *base\n    init: false\n    mode: 0440\n    answer: yes\n    ratio: 0.5\n    nothing:\n";
        let root = parse(text, "s.yml").unwrap();
        let web = root.get("services").unwrap().get("web").unwrap();
        assert_eq!(
            web.get("image").unwrap().value,
            Value::Str("busybox".into())
        );
        assert_eq!(web.get("init").unwrap().value, Value::Bool(false));
        assert_eq!(web.get("mode").unwrap().value, Value::Int(0o440));
        assert_eq!(web.get("answer").unwrap().value, Value::Str("yes".into()));
        assert_eq!(web.get("ratio").unwrap().value, Value::Float(0.5));
        assert_eq!(web.get("nothing").unwrap().value, Value::Null);
        let inits = web
            .as_map()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.name == "init")
            .count();
        assert_eq!(inits, 1, "an explicit key wins over a merged one");
    }

    #[test]
    fn bad_yaml_names_file_and_line() {
        let err = parse("services:\n  web:\n    image: [x\n", "s.yml").unwrap_err();
        assert!(err.0.starts_with("s.yml line 3: "), "{err}");
        let err = parse("a: 1\na: 2\n", "d.yml").unwrap_err();
        assert!(
            err.0.starts_with("d.yml line 2: ") && err.0.contains("duplicate"),
            "{err}"
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
        for pair in names.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let refs = vec![format!("*{prev}"); 9].join(",");
            text.push_str(&format!("{next}: &{next} [{refs}]\n"));
        }
        let err = parse(&text, "bomb.yml").unwrap_err();
        assert!(err.0.contains("budget"), "{err}");
    }

    #[test]
    fn trees_write_back_as_yaml() {
        let text = "services:\n  web:\n    image: busybox\n    command: [\"sh\", \"-c\", \"x\"]\n    replicas: 2\n";
        let root = parse(text, "s.yml").unwrap();
        let out = to_yaml(&root).unwrap();
        let again = parse(&out, "out.yml").unwrap();
        let web = again.get("services").unwrap().get("web").unwrap();
        assert_eq!(web.get("replicas").unwrap().value, Value::Int(2));
        assert!(matches!(&web.get("command").unwrap().value, Value::Seq(s) if s.len() == 3));
    }
}
