//! Variable interpolation in Compose files, as `docker stack deploy` does it.
//!
//! Every string value (never a key) is interpolated before the file is read as Compose:
//! `$VAR` and `${VAR}`; `${VAR:-default}` / `${VAR-default}` (default when unset or empty /
//! unset); `${VAR:?message}` / `${VAR?message}` (an error when unset or empty / unset);
//! `${VAR:+alt}` / `${VAR+alt}` (alt when set and non-empty / set); `$$` for a literal `$`.
//! Defaults and alternatives are interpolated themselves (`${A:-${B}}`). A variable that is
//! not set becomes the empty string, with a warning. A `$` followed by anything else is an
//! error ("invalid interpolation format"), like Docker's.
//!
//! Variables come from the environment of `berth`, then from the `.env` file beside the first
//! Compose file ([`parse_dotenv`]).

use super::yaml::{Node, Value};

/// What interpolation found wrong or worth saying.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Errors, each naming the file, line and key path.
    pub errors: Vec<String>,
    /// Warnings (unset variables), each naming the file, line and key path.
    pub warnings: Vec<String>,
}

/// Interpolates every string under `node` (at key path `path`).
pub fn interpolate_tree(
    node: &mut Node,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    report: &mut Report,
) {
    match &mut node.value {
        Value::Str(text) => {
            let mut unset = Vec::new();
            match interpolate(text, lookup, &mut unset) {
                Ok(done) => *text = done,
                Err(message) => report
                    .errors
                    .push(format!("{}: {path}: {message}", node.at)),
            }
            for name in unset {
                report.warnings.push(format!(
                    "{}: {path}: the {name:?} variable is not set, defaulting to a blank string",
                    node.at
                ));
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), lookup, report);
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries.iter_mut() {
                let path = if path.is_empty() {
                    key.name.clone()
                } else {
                    format!("{path}.{}", key.name)
                };
                interpolate_tree(value, &path, lookup, report);
            }
        }
        Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {}
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Interpolates one string; names of unset variables used without a default go to `unset`.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let invalid = || {
        format!(
            "invalid interpolation format in {text:?}: you may need to escape any $ with another $"
        )
    };
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        match chars.get(i + 1) {
            Some('$') => {
                out.push('$');
                i += 2;
            }
            Some('{') => {
                // Find the matching brace (defaults may nest `${...}`).
                let start = i + 2;
                let mut depth = 1;
                let mut j = start;
                while j < chars.len() {
                    match chars[j] {
                        '{' if j > 0 && chars[j - 1] == '$' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(invalid());
                }
                let inner: String = chars[start..j].iter().collect();
                out.push_str(&braced(&inner, lookup, unset, &invalid)?);
                i = j + 1;
            }
            Some(&n) if is_name_start(n) => {
                let mut j = i + 1;
                while j < chars.len() && is_name_char(chars[j]) {
                    j += 1;
                }
                let name: String = chars[i + 1..j].iter().collect();
                match lookup(&name) {
                    Some(v) => out.push_str(&v),
                    None => unset.push(name),
                }
                i = j;
            }
            _ => return Err(invalid()),
        }
    }
    Ok(out)
}

/// The value of `${inner}`.
fn braced(
    inner: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<String>,
    invalid: &dyn Fn() -> String,
) -> Result<String, String> {
    let name_end = inner
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(inner.len(), |(i, _)| i);
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(invalid());
    }
    let value = lookup(name);
    if rest.is_empty() {
        return Ok(value.unwrap_or_else(|| {
            unset.push(name.to_string());
            String::new()
        }));
    }
    let (colon, op_and_word) = match rest.strip_prefix(':') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let mut op_chars = op_and_word.chars();
    let op = op_chars.next().ok_or_else(invalid)?;
    let word = op_chars.as_str();
    // With a colon, an empty value counts as unset.
    let present = match &value {
        Some(v) => !(colon && v.is_empty()),
        None => false,
    };
    match op {
        '-' => {
            if present {
                Ok(value.unwrap_or_default())
            } else {
                interpolate(word, lookup, unset)
            }
        }
        '+' => {
            if present {
                interpolate(word, lookup, unset)
            } else {
                Ok(String::new())
            }
        }
        '?' => {
            if present {
                Ok(value.unwrap_or_default())
            } else {
                let message = interpolate(word, lookup, unset)?;
                Err(if message.is_empty() {
                    format!("required variable {name} is missing a value")
                } else {
                    format!("required variable {name} is missing a value: {message}")
                })
            }
        }
        _ => Err(invalid()),
    }
}

/// Reads a `.env` file: `KEY=VALUE` lines, `#` comments and blank lines skipped, an optional
/// `export ` prefix, and one pair of matching quotes around a value removed.
pub fn parse_dotenv(content: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, raw) in content.lines().enumerate() {
        let line = raw.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected KEY=VALUE, got {line:?}", n + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.starts_with(is_name_start) || !key.chars().all(is_name_char) {
            return Err(format!("line {}: invalid variable name {key:?}", n + 1));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| {
                value
                    .strip_prefix(*q)
                    .and_then(|v| v.strip_suffix(*q))
                    .filter(|_| value.len() >= 2)
            })
            .unwrap_or(value);
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::stack::yaml::parse;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.36".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<(String, Vec<String>), String> {
        let mut unset = Vec::new();
        interpolate(text, &env, &mut unset).map(|s| (s, unset))
    }

    #[test]
    fn forms_of_variables() {
        let ok = |t: &str| run(t).unwrap().0;
        assert_eq!(ok("busybox:${TAG}"), "busybox:1.36");
        assert_eq!(ok("busybox:$TAG"), "busybox:1.36");
        assert_eq!(ok("$TAG-x"), "1.36-x");
        assert_eq!(ok("${UNSET:-80}:80"), "80:80");
        assert_eq!(ok("${EMPTY:-d}"), "d");
        assert_eq!(ok("${EMPTY-d}"), "");
        assert_eq!(ok("${UNSET-d}"), "d");
        assert_eq!(ok("${PORT:-${TAG}}"), "8080");
        assert_eq!(ok("${UNSET:-${TAG}}"), "1.36");
        assert_eq!(ok("${TAG:+set}"), "set");
        assert_eq!(ok("${EMPTY:+set}"), "");
        assert_eq!(ok("${EMPTY+set}"), "set");
        assert_eq!(ok("${UNSET+set}"), "");
        assert_eq!(ok("cost: $$5 and $${TAG}"), "cost: $5 and ${TAG}");
        assert_eq!(ok("${TAG:?needed}"), "1.36");
        assert_eq!(ok("no vars"), "no vars");
    }

    #[test]
    fn unset_variables_warn_and_required_ones_fail() {
        let (value, unset) = run("a${NOPE}b").unwrap();
        assert_eq!((value.as_str(), unset), ("ab", vec!["NOPE".to_string()]));
        let err = run("${NOPE:?set NOPE first}").unwrap_err();
        assert_eq!(
            err,
            "required variable NOPE is missing a value: set NOPE first"
        );
        let err = run("${EMPTY:?}").unwrap_err();
        assert_eq!(err, "required variable EMPTY is missing a value");
        assert!(run("${EMPTY?}").is_ok());
        for bad in [
            "${",
            "${TAG",
            "$1",
            "a $ b",
            "${}",
            "${1X}",
            "${TAG:x}",
            "trailing $",
        ] {
            let err = run(bad).unwrap_err();
            assert!(err.contains("invalid interpolation format"), "{bad}: {err}");
        }
    }

    #[test]
    fn trees_interpolate_values_not_keys_and_report_lines() {
        let text = "services:\n  ${TAG}:\n    image: busybox:${TAG}\n    environment:\n      - A=${NOPE}\n    command: ${MISSING:?give a command}\n";
        let mut root = parse(text, "s.yml").unwrap();
        let mut report = Report::default();
        interpolate_tree(&mut root, "", &env, &mut report);
        let services = root.get("services").unwrap();
        let web = services.get("${TAG}").expect("keys stay as written");
        assert_eq!(
            web.get("image").unwrap().value,
            Value::Str("busybox:1.36".into())
        );
        assert_eq!(
            report.errors,
            [
                "s.yml line 6: services.${TAG}.command: required variable MISSING is missing a value: give a command"
            ]
        );
        assert_eq!(report.warnings.len(), 1);
        assert!(
            report.warnings[0].starts_with(
                "s.yml line 5: services.${TAG}.environment[0]: the \"NOPE\" variable is not set"
            ),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn dotenv_files() {
        let vars = parse_dotenv("# c\n\nA=1\nexport B=\"two words\"\nC='x'\nD=\nE=a=b\n").unwrap();
        assert_eq!(
            vars,
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "two words".into()),
                ("C".into(), "x".into()),
                ("D".into(), String::new()),
                ("E".into(), "a=b".into()),
            ]
        );
        assert!(parse_dotenv("NOVALUE\n").unwrap_err().contains("line 1"));
        assert!(parse_dotenv("1A=x\n").is_err());
    }
}
