//! Output helpers shared by the container and image commands, matching Docker's CLI:
//! human durations ("2 minutes ago"), decimal sizes ("4.26MB"), RFC 3339 timestamps,
//! 4-space indented JSON and the `{{.Path.To.Field}}` subset of Go templates (`-f`).

use std::time::{SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use serde_json::Value;

/// Seconds since `t` (0 if it is in the future or unset).
pub fn seconds_since(t: Option<&Timestamp>) -> f64 {
    let Some(t) = t else { return 0.0 };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    (now - (t.seconds as f64 + f64::from(t.nanos) / 1e9)).max(0.0)
}

/// Docker's (go-units') `HumanDuration` of `secs` seconds.
pub fn human_duration(secs: f64) -> String {
    let seconds = secs as i64;
    let minutes = (secs / 60.0) as i64;
    let hours = (secs / 3600.0 + 0.5) as i64;
    if seconds < 1 {
        "Less than a second".into()
    } else if seconds == 1 {
        "1 second".into()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", (secs / 3600.0) as i64 / 24 / 365)
    }
}

/// "N units ago" for a creation time, as `docker ps` and `docker images` print it.
pub fn ago(t: Option<&Timestamp>) -> String {
    match t {
        Some(_) => format!("{} ago", human_duration(seconds_since(t))),
        None => "N/A".into(),
    }
}

/// Docker's `HumanSizeWithPrecision(size, 3)`: decimal units, three significant digits.
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut size = bytes.max(0) as f64;
    let mut unit = 0;
    while size >= 1000.0 && unit + 1 < UNITS.len() {
        size /= 1000.0;
        unit += 1;
    }
    let decimals = if size >= 100.0 {
        0
    } else if size >= 10.0 {
        1
    } else {
        2
    };
    let mut text = format!("{size:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

/// A timestamp as RFC 3339 with nanoseconds (`2024-05-01T10:00:00.123456789Z`), the form of
/// `docker logs -t` and `docker inspect`; Go's zero time when unset.
pub fn rfc3339(t: Option<&Timestamp>) -> String {
    match t {
        Some(t) if t.seconds > 0 || t.nanos > 0 => {
            let time = UNIX_EPOCH
                + std::time::Duration::new(
                    u64::try_from(t.seconds).unwrap_or(0),
                    u32::try_from(t.nanos).unwrap_or(0),
                );
            berth_agent::runtime::logs::rfc3339_nanos(time)
        }
        _ => "0001-01-01T00:00:00Z".into(),
    }
}

/// JSON indented with four spaces, as `docker inspect` prints it.
pub fn json_pretty(value: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // serialising a Value into a Vec cannot fail
    let _ = value.serialize(&mut ser);
    String::from_utf8_lossy(&out).into_owned()
}

/// How Go's text/template prints a value.
fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(go_value).collect();
            format!("[{}]", parts.join(" "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}:{}", go_value(v)))
                .collect();
            format!("map[{}]", parts.join(" "))
        }
        other => other.to_string(),
    }
}

fn lookup<'a>(root: &'a Value, path: &str) -> Result<&'a Value, String> {
    let path = path.trim();
    if path == "." {
        return Ok(root);
    }
    let rest = path
        .strip_prefix('.')
        .ok_or_else(|| format!("template: unsupported expression {path:?}"))?;
    let mut v = root;
    for key in rest.split('.') {
        v = v
            .get(key)
            .ok_or_else(|| format!("template: can't evaluate field {key}"))?;
    }
    Ok(v)
}

/// Renders the subset of Go templates Docker users mostly write: literal text with
/// `{{.A.B}}` and `{{json .A}}` actions.
pub fn go_template(template: &str, value: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "template: unclosed action".to_string())?;
        let action = after[..end].trim();
        if let Some(path) = action.strip_prefix("json ") {
            out.push_str(&lookup(value, path)?.to_string());
        } else {
            out.push_str(&go_value(lookup(value, action)?));
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(human_duration(0.4), "Less than a second");
        assert_eq!(human_duration(1.2), "1 second");
        assert_eq!(human_duration(42.0), "42 seconds");
        assert_eq!(human_duration(61.0), "About a minute");
        assert_eq!(human_duration(600.0), "10 minutes");
        assert_eq!(human_duration(3600.0), "About an hour");
        assert_eq!(human_duration(5.0 * 3600.0), "5 hours");
        assert_eq!(human_duration(3.0 * 86400.0), "3 days");
        assert_eq!(human_duration(20.0 * 86400.0), "2 weeks");
        assert_eq!(human_duration(100.0 * 86400.0), "3 months");
        assert_eq!(human_duration(800.0 * 86400.0), "2 years");
    }

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260), "4.26kB");
        assert_eq!(human_size(1_240_000), "1.24MB");
        assert_eq!(human_size(12_000_000), "12MB");
        assert_eq!(human_size(123_400_000), "123MB");
    }

    #[test]
    fn templates_pick_fields() {
        let v =
            json!({"State": {"Status": "running", "Pid": 7}, "Config": {"Env": ["A=1", "B=2"]}});
        assert_eq!(go_template("{{.State.Status}}", &v).unwrap(), "running");
        assert_eq!(go_template("pid={{ .State.Pid }}!", &v).unwrap(), "pid=7!");
        assert_eq!(go_template("{{.Config.Env}}", &v).unwrap(), "[A=1 B=2]");
        assert_eq!(
            go_template("{{json .Config.Env}}", &v).unwrap(),
            "[\"A=1\",\"B=2\"]"
        );
        assert!(go_template("{{.Nope}}", &v).is_err());
        assert!(go_template("{{.State", &v).is_err());
    }

    #[test]
    fn timestamps_have_nanoseconds() {
        let t = Timestamp {
            seconds: 1_709_210_096,
            nanos: 5,
        };
        assert_eq!(rfc3339(Some(&t)), "2024-02-29T12:34:56.000000005Z");
        assert_eq!(rfc3339(None), "0001-01-01T00:00:00Z");
    }
}
