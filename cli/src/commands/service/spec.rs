//! Flags → [`ServiceSpec`]: the options of `berth service create` (and the ones `service update`
//! shares), their value syntax and Docker's defaults.
//!
//! Every flag is optional here (`Option`/`Vec`), so `service update` can tell "not given" from
//! "given": the `apply` methods change only what a flag sets. `service create` starts from
//! [`default_spec`], which spells out Docker's defaults (restart any/5 s, update and rollback
//! parallelism 1, pause, monitor 5 s, stop-first, stop grace period 10 s), and applies every
//! group on top. Value parsers return `String` errors that clap prints with the flag and the
//! value; cross-flag checks name the flags too.

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::v1::placement_preference::Preference;
use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    Annotations, ConfigReference, ContainerSpec, EndpointSpec, FailureAction, FileTarget,
    GlobalService, HealthConfig, NetworkAttachmentConfig, Placement, PlacementPreference,
    PortConfig, PortProtocol, PublishMode, ReplicatedService, ResolutionMode, ResourceRequirements,
    Resources, RestartCondition, RestartPolicy, SecretReference, ServiceSpec, SpreadOver, TaskSpec,
    UpdateConfig, UpdateOrder,
};
use clap::Args;

use crate::duration;

/// Docker's default restart delay.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);
/// Docker's default update/rollback monitor period.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
/// Docker's default stop grace period.
pub const DEFAULT_STOP_GRACE_PERIOD: Duration = Duration::from_secs(10);

// ---- value parsers ------------------------------------------------------------------------

/// A CPU amount as Docker's `--limit-cpu`/`--reserve-cpu` take it (`0.5`, `2`) → nano CPUs.
pub fn parse_nano_cpus(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid CPU amount {text:?}: expected a decimal number such as 0.5");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 9 {
        return Err(format!("invalid CPU amount {text:?}: value is too precise"));
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let nanos: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().map_err(|_| bad())?
    };
    whole
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(nanos))
        .ok_or_else(|| format!("invalid CPU amount {text:?}: too large"))
}

/// A memory size like Docker's `RAMInBytes`: `64M`, `512m`, `1g`, `1.5GiB`, `1024` (bytes);
/// units are binary (k = 1024).
pub fn parse_mem_bytes(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid size: {text:?} (expected e.g. 64M, 512m, 1g)");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut chars = unit.chars();
    let shift = match chars.next() {
        None | Some('b') if unit.len() <= 1 => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => return Err(bad()),
    };
    let rest: String = chars.collect();
    if shift > 0 && !matches!(rest.as_str(), "" | "b" | "i" | "ib") {
        return Err(bad());
    }
    let bytes = number * (1u64 << shift) as f64;
    if bytes >= i64::MAX as f64 {
        return Err(format!("invalid size: {text:?} (too large)"));
    }
    Ok(bytes as i64)
}

/// `--mode`: replicated or global.
pub fn parse_mode(text: &str) -> Result<ServiceMode, String> {
    match text {
        "replicated" => Ok(ServiceMode::Replicated),
        "global" => Ok(ServiceMode::Global),
        "replicated-job" | "global-job" => Err(format!(
            "{text:?}: jobs are not supported yet (expected replicated or global)"
        )),
        _ => Err(format!(
            "invalid mode {text:?}: expected replicated or global"
        )),
    }
}

/// A service's mode as `--mode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceMode {
    /// A fixed number of replicas.
    Replicated,
    /// One task per eligible node.
    Global,
}

/// `--restart-condition`: none, on-failure or any.
pub fn parse_restart_condition(text: &str) -> Result<RestartCondition, String> {
    match text {
        "none" => Ok(RestartCondition::None),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "any" => Ok(RestartCondition::Any),
        _ => Err(format!(
            "invalid restart condition {text:?}: expected none, on-failure or any"
        )),
    }
}

/// `--update-failure-action`: pause, continue or rollback.
pub fn parse_failure_action(text: &str) -> Result<FailureAction, String> {
    match text {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" => Ok(FailureAction::Rollback),
        _ => Err(format!(
            "invalid failure action {text:?}: expected pause, continue or rollback"
        )),
    }
}

/// `--rollback-failure-action`: pause or continue.
pub fn parse_rollback_failure_action(text: &str) -> Result<FailureAction, String> {
    match text {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        _ => Err(format!(
            "invalid failure action {text:?}: expected pause or continue"
        )),
    }
}

/// `--update-order`/`--rollback-order`: stop-first or start-first.
pub fn parse_order(text: &str) -> Result<UpdateOrder, String> {
    match text {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        _ => Err(format!(
            "invalid order {text:?}: expected stop-first or start-first"
        )),
    }
}

/// `--update-max-failure-ratio`: a fraction in 0..=1.
pub fn parse_ratio(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "invalid failure ratio {text:?}: expected a number between 0 and 1"
        )),
    }
}

/// `--endpoint-mode`: vip or dnsrr.
pub fn parse_endpoint_mode(text: &str) -> Result<ResolutionMode, String> {
    match text {
        "vip" => Ok(ResolutionMode::Vip),
        "dnsrr" => Ok(ResolutionMode::Dnsrr),
        _ => Err(format!(
            "invalid endpoint mode {text:?}: expected vip or dnsrr"
        )),
    }
}

/// `--stop-signal`: a signal name (`SIGTERM`, `TERM`) or number; kept as written.
pub fn parse_signal(text: &str) -> Result<String, String> {
    let valid = match text.parse::<i32>() {
        Ok(n) => (1..=64).contains(&n),
        Err(_) => {
            let upper = text.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            name.parse::<nix::sys::signal::Signal>().is_ok()
                || name
                    .strip_prefix("SIGRTMIN+")
                    .or_else(|| name.strip_prefix("SIGRTMAX-"))
                    .is_some_and(|n| n.parse::<u8>().is_ok())
        }
    };
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!("invalid signal {text:?}"))
    }
}

/// A command line split like a shell would (quotes and backslashes), for `--entrypoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellWords(pub Vec<String>);

/// Splits `--entrypoint "sh -c"` into words.
pub fn parse_shell_words(text: &str) -> Result<ShellWords, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated quote in {text:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated quote in {text:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated quote in {text:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("trailing backslash in {text:?}")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(ShellWords(words))
}

/// `KEY=VALUE` or `KEY` (empty value), for `--label` and `--container-label`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    if key.trim().is_empty() {
        return Err(format!("invalid label {text:?}: empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// The constraint keys the scheduler understands (`node.labels.*`, `engine.labels.*` too).
const CONSTRAINT_KEYS: [&str; 6] = [
    "node.id",
    "node.hostname",
    "node.ip",
    "node.role",
    "node.platform.os",
    "node.platform.arch",
];

/// `--constraint KEY==VALUE` or `KEY!=VALUE`, checked for a known key and a value.
pub fn parse_constraint(text: &str) -> Result<String, String> {
    let (key, value) = text
        .split_once("==")
        .or_else(|| text.split_once("!="))
        .ok_or_else(|| format!("invalid constraint {text:?}: expected KEY==VALUE or KEY!=VALUE"))?;
    let key = key.trim();
    let known = CONSTRAINT_KEYS.contains(&key.to_ascii_lowercase().as_str())
        || ["node.labels.", "engine.labels."].iter().any(|p| {
            key.to_ascii_lowercase()
                .strip_prefix(p)
                .is_some_and(|l| !l.is_empty())
        });
    if !known {
        return Err(format!(
            "invalid constraint {text:?}: unknown key {key:?} (expected {}, node.labels.<label> or engine.labels.<label>)",
            CONSTRAINT_KEYS.join(", ")
        ));
    }
    if value.trim().is_empty() || value.contains("==") || value.contains("!=") {
        return Err(format!("invalid constraint {text:?}: missing value"));
    }
    Ok(text.to_string())
}

/// `--placement-pref spread=<descriptor>`.
pub fn parse_placement_pref(text: &str) -> Result<PlacementPreference, String> {
    let (strategy, descriptor) = text.split_once('=').ok_or_else(|| {
        format!("invalid placement preference {text:?}: expected spread=<descriptor>")
    })?;
    if !strategy.eq_ignore_ascii_case("spread") {
        return Err(format!(
            "unsupported placement preference {strategy} (only spread is supported)"
        ));
    }
    if descriptor.is_empty() {
        return Err(format!(
            "invalid placement preference {text:?}: empty descriptor"
        ));
    }
    Ok(PlacementPreference {
        preference: Some(Preference::Spread(SpreadOver {
            spread_descriptor: descriptor.to_string(),
        })),
    })
}

/// Splits Docker's CSV option syntax (`a=1,b=2`) into pairs.
fn csv_fields(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap_or((f, ""));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect()
}

fn parse_port(text: &str, what: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(p),
        _ => Err(format!("invalid {what} port {text:?}")),
    }
}

/// A port or `first-last` range.
fn parse_port_range(text: &str, what: &str) -> Result<(u32, u32), String> {
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port(a, what)?, parse_port(b, what)?);
            if b < a {
                return Err(format!("invalid {what} port range {text:?}"));
            }
            Ok((a, b))
        }
        None => {
            let p = parse_port(text, what)?;
            Ok((p, p))
        }
    }
}

/// `--publish`: short `[PUBLISHED:]TARGET[/PROTO]` (ranges allowed) or long
/// `published=P,target=T,protocol=tcp|udp,mode=ingress|host`.
pub fn parse_publish(text: &str) -> Result<Vec<PortConfig>, String> {
    let protocol_of = |p: &str| match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => Err(format!(
            "invalid protocol {other:?} in {text:?}: expected tcp or udp"
        )),
    };
    if text.contains('=') {
        let mut port = PortConfig::default();
        let mut target = None;
        for (key, value) in csv_fields(text) {
            match key.as_str() {
                "target" => target = Some(parse_port(&value, "target")?),
                "published" => port.published_port = parse_port(&value, "published")?,
                "protocol" => port.protocol = protocol_of(&value)? as i32,
                "mode" => {
                    port.publish_mode = match value.as_str() {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        _ => {
                            return Err(format!(
                                "invalid publish mode {value:?} in {text:?}: expected ingress or host"
                            ));
                        }
                    } as i32
                }
                "name" => port.name = value,
                _ => return Err(format!("invalid field key {key:?} in {text:?}")),
            }
        }
        port.target_port = target
            .filter(|t| *t > 0)
            .ok_or_else(|| format!("missing mandatory field \"target\" in {text:?}"))?;
        return Ok(vec![port]);
    }
    let (ports, protocol) = match text.split_once('/') {
        Some((ports, proto)) => (ports, protocol_of(proto)?),
        None => (text, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, *target),
        [published, target] => (Some(*published).filter(|p| !p.is_empty()), *target),
        _ => {
            return Err(format!(
                "invalid port {text:?}: a host IP is not supported (expected [PUBLISHED:]TARGET[/PROTOCOL])"
            ));
        }
    };
    let (t0, t1) = parse_port_range(target, "target")?;
    if t0 == 0 {
        return Err(format!("invalid port {text:?}: target port 0"));
    }
    let published = published
        .map(|p| parse_port_range(p, "published"))
        .transpose()?;
    if let Some((p0, p1)) = published
        && p1 - p0 != t1 - t0
    {
        return Err(format!(
            "invalid port {text:?}: published and target ranges differ in size"
        ));
    }
    Ok((t0..=t1)
        .enumerate()
        .map(|(i, target)| {
            let published = published.map_or(0, |(p0, _)| p0 + i as u32);
            PortConfig {
                protocol: protocol as i32,
                target_port: target,
                published_port: published,
                publish_mode: PublishMode::Ingress as i32,
                ..Default::default()
            }
        })
        .collect())
}

/// `--network NAME` or `--network name=NET,alias=A`.
pub fn parse_network(text: &str) -> Result<NetworkAttachmentConfig, String> {
    if !text.contains('=') {
        if text.is_empty() {
            return Err("invalid network \"\": empty name".into());
        }
        return Ok(NetworkAttachmentConfig {
            target: text.to_string(),
            aliases: Vec::new(),
        });
    }
    let mut net = NetworkAttachmentConfig::default();
    for (key, value) in csv_fields(text) {
        match key.as_str() {
            "name" | "target" => net.target = value,
            "alias" => net.aliases.push(value),
            _ => return Err(format!("invalid field key {key:?} in network {text:?}")),
        }
    }
    if net.target.is_empty() {
        return Err(format!("invalid network {text:?}: missing name"));
    }
    Ok(net)
}

/// A `--secret`/`--config` reference before its id is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReference {
    /// The secret's or config's name.
    pub source: String,
    /// Where it appears in the container.
    pub target: FileTarget,
}

/// `--secret NAME` or `--secret source=NAME,target=FILE,uid=,gid=,mode=0444` (and `--config`).
pub fn parse_file_reference(text: &str) -> Result<FileReference, String> {
    let mut reference = FileReference {
        source: String::new(),
        target: FileTarget {
            name: String::new(),
            uid: "0".into(),
            gid: "0".into(),
            mode: 0o444,
        },
    };
    if !text.contains('=') {
        reference.source = text.to_string();
    } else {
        for (key, value) in csv_fields(text) {
            match key.as_str() {
                "source" | "src" => reference.source = value,
                "target" => reference.target.name = value,
                "uid" => reference.target.uid = value,
                "gid" => reference.target.gid = value,
                "mode" => {
                    reference.target.mode = u32::from_str_radix(&value, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            format!(
                                "invalid mode {value:?} in {text:?}: expected octal such as 0444"
                            )
                        })?
                }
                _ => return Err(format!("invalid field key {key:?} in {text:?}")),
            }
        }
    }
    if reference.source.is_empty() {
        return Err(format!("invalid reference {text:?}: missing source name"));
    }
    Ok(reference)
}

/// `--cap-add`/`--cap-drop`: `NET_ADMIN`, `net_admin`, `CAP_NET_ADMIN` → `CAP_NET_ADMIN`;
/// `ALL` stays.
pub fn parse_capability(text: &str) -> Result<String, String> {
    let upper = text.trim().to_ascii_uppercase();
    if upper.is_empty() || !upper.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("invalid capability {text:?}"));
    }
    if upper == "ALL" || upper.starts_with("CAP_") {
        Ok(upper)
    } else {
        Ok(format!("CAP_{upper}"))
    }
}

/// A value of `-e`: `KEY=VALUE` kept; `KEY` alone takes the client's value when it has one
/// (like Docker).
pub fn env_entry(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (key, _) = text.split_once('=').unwrap_or((text, ""));
    if key.is_empty() {
        return Err(format!("invalid environment variable {text:?}: empty name"));
    }
    if text.contains('=') {
        return Ok(text.to_string());
    }
    Ok(lookup(text).map_or_else(|| text.to_string(), |v| format!("{text}={v}")))
}

/// An `--env-file`'s lines like Docker reads them: `#` comments and blank lines skipped,
/// `KEY=VALUE` kept as is, `KEY` alone taken from the client's environment (skipped if unset).
pub fn parse_env_file(
    content: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (n, raw) in content.lines().enumerate() {
        let raw = if n == 0 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (variable, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line, None),
        };
        if variable.contains(char::is_whitespace) {
            return Err(format!(
                "line {}: variable {variable:?} contains whitespaces",
                n + 1
            ));
        }
        if variable.is_empty() {
            return Err(format!("line {}: no variable name in {line:?}", n + 1));
        }
        match value {
            Some(v) => out.push(format!("{variable}={v}")),
            None => {
                if let Some(v) = lookup(variable) {
                    out.push(format!("{variable}={v}"));
                }
            }
        }
    }
    Ok(out)
}

// ---- flag groups shared with `service update` --------------------------------------------

/// `--limit-*` and `--reserve-*`.
#[derive(Debug, Default, Clone, Args)]
pub struct ResourceFlags {
    /// Limit CPUs
    #[arg(long, value_name = "decimal", value_parser = parse_nano_cpus)]
    pub limit_cpu: Option<i64>,
    /// Limit Memory
    #[arg(long, value_name = "bytes", value_parser = parse_mem_bytes)]
    pub limit_memory: Option<i64>,
    /// Limit maximum number of processes (default 0 = unlimited)
    #[arg(long, value_name = "int")]
    pub limit_pids: Option<i64>,
    /// Reserve CPUs
    #[arg(long, value_name = "decimal", value_parser = parse_nano_cpus)]
    pub reserve_cpu: Option<i64>,
    /// Reserve Memory
    #[arg(long, value_name = "bytes", value_parser = parse_mem_bytes)]
    pub reserve_memory: Option<i64>,
}

impl ResourceFlags {
    /// Sets the limits and reservations given.
    pub fn apply(&self, task: &mut TaskSpec) -> Result<(), String> {
        if let Some(pids) = self.limit_pids
            && pids < 0
        {
            return Err(format!("invalid --limit-pids {pids}: must not be negative"));
        }
        let given = [
            self.limit_cpu,
            self.limit_memory,
            self.limit_pids,
            self.reserve_cpu,
            self.reserve_memory,
        ];
        if given.iter().all(Option::is_none) {
            return Ok(());
        }
        let resources = task
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        let limits = resources.limits.get_or_insert_with(Resources::default);
        if let Some(v) = self.limit_cpu {
            limits.nano_cpus = v;
        }
        if let Some(v) = self.limit_memory {
            limits.memory_bytes = v;
        }
        if let Some(v) = self.limit_pids {
            limits.pids = v;
        }
        let reservations = resources
            .reservations
            .get_or_insert_with(Resources::default);
        if let Some(v) = self.reserve_cpu {
            reservations.nano_cpus = v;
        }
        if let Some(v) = self.reserve_memory {
            reservations.memory_bytes = v;
        }
        Ok(())
    }
}

/// `--restart-*`.
#[derive(Debug, Default, Clone, Args)]
pub struct RestartFlags {
    /// Restart when condition is met ("none", "on-failure", "any") (default "any")
    #[arg(long, value_name = "string", value_parser = parse_restart_condition)]
    pub restart_condition: Option<RestartCondition>,
    /// Delay between restart attempts (ns|us|ms|s|m|h) (default 5s)
    #[arg(long, value_name = "duration", value_parser = duration::parse)]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up
    #[arg(long, value_name = "uint")]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_name = "duration", value_parser = duration::parse)]
    pub restart_window: Option<Duration>,
}

impl RestartFlags {
    /// Sets the restart policy fields given (an unset policy starts from Docker's defaults).
    pub fn apply(&self, task: &mut TaskSpec) {
        if self.restart_condition.is_none()
            && self.restart_delay.is_none()
            && self.restart_max_attempts.is_none()
            && self.restart_window.is_none()
        {
            return;
        }
        let policy = task.restart.get_or_insert_with(default_restart_policy);
        if let Some(c) = self.restart_condition {
            policy.condition = c as i32;
        }
        if let Some(d) = self.restart_delay {
            policy.delay = Some(duration::to_proto(d));
        }
        if let Some(n) = self.restart_max_attempts {
            policy.max_attempts = n;
        }
        if let Some(w) = self.restart_window {
            policy.window = Some(duration::to_proto(w));
        }
    }
}

/// The values of one update or rollback configuration group, whichever flags spelled them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UpdateConfigValues {
    /// `--*-parallelism`.
    pub parallelism: Option<u64>,
    /// `--*-delay`.
    pub delay: Option<Duration>,
    /// `--*-failure-action`.
    pub failure_action: Option<FailureAction>,
    /// `--*-monitor`.
    pub monitor: Option<Duration>,
    /// `--*-max-failure-ratio`.
    pub max_failure_ratio: Option<f32>,
    /// `--*-order`.
    pub order: Option<UpdateOrder>,
}

impl UpdateConfigValues {
    /// Whether no flag of the group was given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Sets the fields given on `config` (an unset config starts from Docker's defaults).
    pub fn apply(&self, config: &mut Option<UpdateConfig>) {
        if self.is_empty() {
            return;
        }
        let config = config.get_or_insert_with(default_update_config);
        if let Some(p) = self.parallelism {
            config.parallelism = Some(p);
        }
        if let Some(d) = self.delay {
            config.delay = Some(duration::to_proto(d));
        }
        if let Some(a) = self.failure_action {
            config.failure_action = a as i32;
        }
        if let Some(m) = self.monitor {
            config.monitor = Some(duration::to_proto(m));
        }
        if let Some(r) = self.max_failure_ratio {
            config.max_failure_ratio = r;
        }
        if let Some(o) = self.order {
            config.order = o as i32;
        }
    }
}

/// `--update-*`.
#[derive(Debug, Default, Clone, Args)]
pub struct UpdateFlags {
    /// Maximum number of tasks updated simultaneously (0 to update all at once) (default 1)
    #[arg(
        long = "update-parallelism",
        id = "update_parallelism",
        value_name = "uint"
    )]
    pub parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h) (default 0s)
    #[arg(long = "update-delay", id = "update_delay", value_name = "duration",
          value_parser = duration::parse)]
    pub delay: Option<Duration>,
    /// Action on update failure ("pause", "continue", "rollback") (default "pause")
    #[arg(long = "update-failure-action", id = "update_failure_action", value_name = "string",
          value_parser = parse_failure_action)]
    pub failure_action: Option<FailureAction>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "update-monitor", id = "update_monitor", value_name = "duration",
          value_parser = duration::parse)]
    pub monitor: Option<Duration>,
    /// Failure rate to tolerate during an update (default 0)
    #[arg(long = "update-max-failure-ratio", id = "update_max_failure_ratio",
          value_name = "float", value_parser = parse_ratio)]
    pub max_failure_ratio: Option<f32>,
    /// Update order ("start-first", "stop-first") (default "stop-first")
    #[arg(long = "update-order", id = "update_order", value_name = "string",
          value_parser = parse_order)]
    pub order: Option<UpdateOrder>,
}

impl UpdateFlags {
    /// The values given.
    pub fn values(&self) -> UpdateConfigValues {
        UpdateConfigValues {
            parallelism: self.parallelism,
            delay: self.delay,
            failure_action: self.failure_action,
            monitor: self.monitor,
            max_failure_ratio: self.max_failure_ratio,
            order: self.order,
        }
    }
}

/// `--rollback-*`.
#[derive(Debug, Default, Clone, Args)]
pub struct RollbackFlags {
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once) (default 1)
    #[arg(
        long = "rollback-parallelism",
        id = "rollback_parallelism",
        value_name = "uint"
    )]
    pub parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h) (default 0s)
    #[arg(long = "rollback-delay", id = "rollback_delay", value_name = "duration",
          value_parser = duration::parse)]
    pub delay: Option<Duration>,
    /// Action on rollback failure ("pause", "continue") (default "pause")
    #[arg(long = "rollback-failure-action", id = "rollback_failure_action",
          value_name = "string", value_parser = parse_rollback_failure_action)]
    pub failure_action: Option<FailureAction>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h) (default 5s)
    #[arg(long = "rollback-monitor", id = "rollback_monitor", value_name = "duration",
          value_parser = duration::parse)]
    pub monitor: Option<Duration>,
    /// Failure rate to tolerate during a rollback (default 0)
    #[arg(long = "rollback-max-failure-ratio", id = "rollback_max_failure_ratio",
          value_name = "float", value_parser = parse_ratio)]
    pub max_failure_ratio: Option<f32>,
    /// Rollback order ("start-first", "stop-first") (default "stop-first")
    #[arg(long = "rollback-order", id = "rollback_order", value_name = "string",
          value_parser = parse_order)]
    pub order: Option<UpdateOrder>,
}

impl RollbackFlags {
    /// The values given.
    pub fn values(&self) -> UpdateConfigValues {
        UpdateConfigValues {
            parallelism: self.parallelism,
            delay: self.delay,
            failure_action: self.failure_action,
            monitor: self.monitor,
            max_failure_ratio: self.max_failure_ratio,
            order: self.order,
        }
    }
}

/// `--health-*` and `--no-healthcheck`.
#[derive(Debug, Default, Clone, Args)]
pub struct HealthFlags {
    /// Command to run to check health
    #[arg(long, value_name = "string")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long, value_name = "duration", value_parser = duration::parse)]
    pub health_interval: Option<Duration>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long, value_name = "duration", value_parser = duration::parse)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long, value_name = "int")]
    pub health_retries: Option<i32>,
    /// Start period for the container to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long, value_name = "duration", value_parser = duration::parse)]
    pub health_start_period: Option<Duration>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long)]
    pub no_healthcheck: bool,
}

impl HealthFlags {
    fn any_health_flag(&self) -> bool {
        self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some()
    }

    /// Sets the healthcheck given (an existing one is modified field by field).
    pub fn apply(&self, container: &mut ContainerSpec) -> Result<(), String> {
        if self.no_healthcheck {
            if self.any_health_flag() {
                return Err("--no-healthcheck conflicts with --health-* options".into());
            }
            container.healthcheck = Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            });
            return Ok(());
        }
        if !self.any_health_flag() {
            return Ok(());
        }
        for (flag, value) in [
            ("--health-interval", self.health_interval),
            ("--health-timeout", self.health_timeout),
            ("--health-start-period", self.health_start_period),
        ] {
            if let Some(d) = value
                && !d.is_zero()
                && d < Duration::from_millis(1)
            {
                return Err(format!("{flag} cannot be less than 1ms"));
            }
        }
        if let Some(r) = self.health_retries
            && r < 0
        {
            return Err(format!("--health-retries cannot be negative (got {r})"));
        }
        let health = container
            .healthcheck
            .get_or_insert_with(HealthConfig::default);
        if health.test.first().is_some_and(|t| t == "NONE") {
            health.test.clear();
        }
        if let Some(cmd) = &self.health_cmd {
            health.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        if let Some(d) = self.health_interval {
            health.interval = Some(duration::to_proto(d));
        }
        if let Some(d) = self.health_timeout {
            health.timeout = Some(duration::to_proto(d));
        }
        if let Some(d) = self.health_start_period {
            health.start_period = Some(duration::to_proto(d));
        }
        if let Some(r) = self.health_retries {
            health.retries = r;
        }
        Ok(())
    }
}

/// Single-valued flags `service create` and `service update` share.
#[derive(Debug, Default, Clone, Args)]
pub struct CommonFlags {
    /// Working directory inside the container
    #[arg(short = 'w', long, value_name = "string")]
    pub workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long, value_name = "string")]
    pub user: Option<String>,
    /// Container hostname
    #[arg(long, value_name = "string")]
    pub hostname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long, value_name = "command", value_parser = parse_shell_words)]
    pub entrypoint: Option<ShellWords>,
    /// Signal to stop the container
    #[arg(long, value_name = "string", value_parser = parse_signal)]
    pub stop_signal: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h) (default 10s)
    #[arg(long, value_name = "duration", value_parser = duration::parse)]
    pub stop_grace_period: Option<Duration>,
    /// Use an init inside each service container to forward signals and reap processes
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_name = "bool")]
    pub init: Option<bool>,
    /// Mount the container's root filesystem as read only
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_name = "bool")]
    pub read_only: Option<bool>,
    /// Number of tasks
    #[arg(long, value_name = "uint")]
    pub replicas: Option<u64>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long, value_name = "uint")]
    pub replicas_max_per_node: Option<u64>,
    /// Endpoint mode (vip or dnsrr) (default "vip")
    #[arg(long, value_name = "string", value_parser = parse_endpoint_mode)]
    pub endpoint_mode: Option<ResolutionMode>,
    /// Resource limits and reservations.
    #[command(flatten)]
    pub resources: ResourceFlags,
    /// Restart policy.
    #[command(flatten)]
    pub restart: RestartFlags,
    /// Update configuration.
    #[command(flatten)]
    pub update: UpdateFlags,
    /// Rollback configuration.
    #[command(flatten)]
    pub rollback: RollbackFlags,
    /// Healthcheck.
    #[command(flatten)]
    pub health: HealthFlags,
}

impl CommonFlags {
    /// Sets everything given on `spec` (replica counts are checked against the mode).
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), String> {
        let global = matches!(spec.mode, Some(Mode::Global(_)));
        if let Some(n) = self.replicas {
            if global {
                return Err("--replicas can only be used with replicated mode".into());
            }
            spec.mode = Some(Mode::Replicated(ReplicatedService { replicas: n }));
        }
        let task = spec.task.get_or_insert_with(TaskSpec::default);
        if let Some(n) = self.replicas_max_per_node {
            if global {
                return Err("--replicas-max-per-node can only be used with replicated mode".into());
            }
            task.placement
                .get_or_insert_with(Placement::default)
                .max_replicas = n;
        }
        self.resources.apply(task)?;
        self.restart.apply(task);
        let container = task.container.get_or_insert_with(ContainerSpec::default);
        if let Some(v) = &self.workdir {
            container.dir = v.clone();
        }
        if let Some(v) = &self.user {
            container.user = v.clone();
        }
        if let Some(v) = &self.hostname {
            container.hostname = v.clone();
        }
        if let Some(v) = &self.entrypoint {
            container.command = v.0.clone();
        }
        if let Some(v) = &self.stop_signal {
            container.stop_signal = v.clone();
        }
        if let Some(v) = self.stop_grace_period {
            container.stop_grace_period = Some(duration::to_proto(v));
        }
        if let Some(v) = self.init {
            container.init = Some(v);
        }
        if let Some(v) = self.read_only {
            container.read_only = v;
        }
        self.health.apply(container)?;
        if let Some(mode) = self.endpoint_mode {
            spec.endpoint.get_or_insert_with(EndpointSpec::default).mode = mode as i32;
        }
        self.update.values().apply(&mut spec.update);
        self.rollback.values().apply(&mut spec.rollback);
        Ok(())
    }
}

// ---- `service create` ---------------------------------------------------------------------

/// Every spec-shaping flag of `service create`.
#[derive(Debug, Default, Clone, Args)]
pub struct CreateFlags {
    /// Service name
    #[arg(long, value_name = "string")]
    pub name: Option<String>,
    /// Service mode ("replicated" or "global") (default "replicated")
    #[arg(long, value_name = "string", value_parser = parse_mode)]
    pub mode: Option<ServiceMode>,
    /// Set environment variables
    #[arg(short = 'e', long, value_name = "list")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long, value_name = "list")]
    pub env_file: Vec<std::path::PathBuf>,
    /// Service labels
    #[arg(short = 'l', long = "label", value_name = "list", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Container labels
    #[arg(long = "container-label", value_name = "list", value_parser = parse_label)]
    pub container_labels: Vec<(String, String)>,
    /// Placement constraints
    #[arg(long = "constraint", value_name = "list", value_parser = parse_constraint)]
    pub constraints: Vec<String>,
    /// Add a placement preference
    #[arg(long = "placement-pref", value_name = "pref", value_parser = parse_placement_pref)]
    pub placement_prefs: Vec<PlacementPreference>,
    /// Publish a port as a node port
    #[arg(short = 'p', long = "publish", value_name = "port", value_parser = parse_publish)]
    pub publish: Vec<Vec<PortConfig>>,
    /// Network attachments
    #[arg(long = "network", value_name = "network", value_parser = parse_network)]
    pub networks: Vec<NetworkAttachmentConfig>,
    /// Specify secrets to expose to the service
    #[arg(long = "secret", value_name = "secret", value_parser = parse_file_reference)]
    pub secrets: Vec<FileReference>,
    /// Specify configurations to expose to the service
    #[arg(long = "config", value_name = "config", value_parser = parse_file_reference)]
    pub configs: Vec<FileReference>,
    /// Add Linux capabilities
    #[arg(long = "cap-add", value_name = "list", value_parser = parse_capability)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop", value_name = "list", value_parser = parse_capability)]
    pub cap_drop: Vec<String>,
    /// Flags shared with `service update`.
    #[command(flatten)]
    pub common: CommonFlags,
}

/// The spec of `service create NAME IMAGE` before any flag: Docker's defaults spelled out.
pub fn default_spec(name: &str, image: &str) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations {
            name: name.to_string(),
            labels: HashMap::new(),
        }),
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: image.to_string(),
                stop_grace_period: Some(duration::to_proto(DEFAULT_STOP_GRACE_PERIOD)),
                ..Default::default()
            }),
            restart: Some(default_restart_policy()),
            ..Default::default()
        }),
        mode: Some(Mode::Replicated(ReplicatedService { replicas: 1 })),
        update: Some(default_update_config()),
        rollback: Some(default_update_config()),
        endpoint: Some(EndpointSpec {
            mode: ResolutionMode::Vip as i32,
            ports: Vec::new(),
        }),
    }
}

/// Docker's restart policy: condition any, delay 5 s, unlimited attempts.
pub fn default_restart_policy() -> RestartPolicy {
    RestartPolicy {
        condition: RestartCondition::Any as i32,
        delay: Some(duration::to_proto(DEFAULT_RESTART_DELAY)),
        max_attempts: 0,
        window: None,
    }
}

/// Docker's update (and rollback) configuration: parallelism 1, no delay, pause on failure,
/// monitor 5 s, no failures tolerated, stop-first.
pub fn default_update_config() -> UpdateConfig {
    UpdateConfig {
        parallelism: Some(1),
        delay: Some(duration::to_proto(Duration::ZERO)),
        failure_action: FailureAction::Pause as i32,
        monitor: Some(duration::to_proto(DEFAULT_MONITOR)),
        max_failure_ratio: 0.0,
        order: UpdateOrder::StopFirst as i32,
    }
}

impl CreateFlags {
    /// The service spec these flags describe for `IMAGE [COMMAND] [ARG...]`. `name` is the
    /// service name to use (`--name`, or a generated one); `lookup` reads the client's
    /// environment (for `-e KEY` and `--env-file` lines without a value). Secrets and configs
    /// are returned by name: their ids are looked up by the caller.
    pub fn to_spec(
        &self,
        name: &str,
        image: &str,
        args: &[String],
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<ServiceSpec> {
        berth_proto::naming::validate_service_name(name)
            .map_err(|e| anyhow::anyhow!("invalid --name {name:?}: {e}"))?;
        if image.trim().is_empty() {
            anyhow::bail!(
                "an image is required: berth service create [OPTIONS] IMAGE [COMMAND] [ARG...]"
            );
        }
        let mut spec = default_spec(name, image);
        if self.mode == Some(ServiceMode::Global) {
            spec.mode = Some(Mode::Global(GlobalService {}));
        }
        let annotations = spec.annotations.get_or_insert_with(Annotations::default);
        annotations.labels.extend(self.labels.iter().cloned());

        let mut env = Vec::new();
        for path in &self.env_file {
            let content = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading --env-file {}: {e}", path.display()))?;
            env.extend(
                parse_env_file(&content, lookup)
                    .map_err(|e| anyhow::anyhow!("invalid --env-file {}: {e}", path.display()))?,
            );
        }
        for entry in &self.env {
            env.push(env_entry(entry, lookup).map_err(|e| anyhow::anyhow!("invalid --env: {e}"))?);
        }

        let task = spec.task.get_or_insert_with(TaskSpec::default);
        let container = task.container.get_or_insert_with(ContainerSpec::default);
        container.args = args.to_vec();
        container.env = env;
        container
            .labels
            .extend(self.container_labels.iter().cloned());
        container.cap_add = self.cap_add.clone();
        container.cap_drop = self.cap_drop.clone();
        container.secrets = self
            .secrets
            .iter()
            .map(|s| SecretReference {
                secret_id: String::new(),
                secret_name: s.source.clone(),
                target: Some(FileTarget {
                    name: if s.target.name.is_empty() {
                        s.source.clone()
                    } else {
                        s.target.name.clone()
                    },
                    ..s.target.clone()
                }),
            })
            .collect();
        container.configs = self
            .configs
            .iter()
            .map(|c| ConfigReference {
                config_id: String::new(),
                config_name: c.source.clone(),
                target: Some(FileTarget {
                    name: if c.target.name.is_empty() {
                        format!("/{}", c.source)
                    } else {
                        c.target.name.clone()
                    },
                    ..c.target.clone()
                }),
            })
            .collect();
        if !self.constraints.is_empty() || !self.placement_prefs.is_empty() {
            let placement = task.placement.get_or_insert_with(Placement::default);
            placement.constraints = self.constraints.clone();
            placement.preferences = self.placement_prefs.clone();
        }
        task.networks = self.networks.clone();
        let endpoint = spec.endpoint.get_or_insert_with(EndpointSpec::default);
        endpoint.ports = self.publish.iter().flatten().cloned().collect();

        self.common
            .apply(&mut spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        check_ports(&spec)?;
        Ok(spec)
    }
}

/// Refuses the same published port twice, and ingress ports with DNS round robin.
pub(super) fn check_ports(spec: &ServiceSpec) -> anyhow::Result<()> {
    let Some(endpoint) = &spec.endpoint else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for p in &endpoint.ports {
        if p.published_port != 0 && !seen.insert((p.published_port, p.protocol)) {
            anyhow::bail!(
                "invalid --publish: port {} is published twice",
                p.published_port
            );
        }
        if endpoint.mode == ResolutionMode::Dnsrr as i32
            && p.publish_mode == PublishMode::Ingress as i32
        {
            anyhow::bail!(
                "--endpoint-mode dnsrr cannot be used with ingress ports (publish with mode=host)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flags: CreateFlags,
        image: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn spec_of(args: &[&str]) -> anyhow::Result<ServiceSpec> {
        let cli = Cli::try_parse_from(std::iter::once("create").chain(args.iter().copied()))?;
        cli.flags.to_spec("web", &cli.image, &cli.args, &no_env)
    }

    fn container(spec: &ServiceSpec) -> &ContainerSpec {
        spec.task.as_ref().unwrap().container.as_ref().unwrap()
    }

    fn secs(d: &Option<prost_types::Duration>) -> f64 {
        d.as_ref()
            .map_or(-1.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
    }

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(parse_mem_bytes("64M").unwrap(), 64 << 20);
        assert_eq!(parse_mem_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_mem_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_mem_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_mem_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_mem_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_mem_bytes("10b").unwrap(), 10);
        assert_eq!(parse_mem_bytes("2 MB").unwrap(), 2 << 20);
        for bad in ["", "M", "64X", "-1m", "1.m", "1mm", "1bb", "1 2"] {
            let err = parse_mem_bytes(bad).unwrap_err();
            assert!(err.contains("invalid size"), "{bad}: {err}");
        }
    }

    #[test]
    fn cpus_become_nano_cpus() {
        assert_eq!(parse_nano_cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_nano_cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(parse_nano_cpus(".25").unwrap(), 250_000_000);
        assert_eq!(parse_nano_cpus("1.000000001").unwrap(), 1_000_000_001);
        assert_eq!(parse_nano_cpus("1.5000000000").unwrap(), 1_500_000_000);
        assert!(
            parse_nano_cpus("0.0000000001")
                .unwrap_err()
                .contains("too precise")
        );
        for bad in ["", ".", "abc", "-1", "1,5", "1e3"] {
            assert!(parse_nano_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_dockers() {
        let spec = spec_of(&["busybox"]).unwrap();
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 1 }))
        );
        let task = spec.task.as_ref().unwrap();
        let restart = task.restart.as_ref().unwrap();
        assert_eq!(restart.condition, RestartCondition::Any as i32);
        assert_eq!(secs(&restart.delay), 5.0);
        assert_eq!(restart.max_attempts, 0);
        for cfg in [&spec.update, &spec.rollback] {
            let cfg = cfg.as_ref().unwrap();
            assert_eq!(cfg.parallelism, Some(1));
            assert_eq!(secs(&cfg.monitor), 5.0);
            assert_eq!(cfg.failure_action, FailureAction::Pause as i32);
            assert_eq!(cfg.order, UpdateOrder::StopFirst as i32);
        }
        assert_eq!(secs(&container(&spec).stop_grace_period), 10.0);
        assert_eq!(container(&spec).image, "busybox");
        assert!(container(&spec).args.is_empty());
        assert!(task.resources.is_none() && task.placement.is_none());
        assert_eq!(
            spec.endpoint.as_ref().unwrap().mode,
            ResolutionMode::Vip as i32
        );
    }

    #[test]
    fn every_create_flag_lands_in_the_spec() {
        let spec = spec_of(&[
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "-w",
            "/srv",
            "-u",
            "1000:1000",
            "--hostname",
            "h-{{.Task.Slot}}",
            "--entrypoint",
            "sh -c 'echo hi'",
            "-l",
            "tier=web",
            "--label",
            "flag",
            "--container-label",
            "c=1",
            "--limit-cpu",
            "0.5",
            "--limit-memory",
            "64M",
            "--limit-pids",
            "100",
            "--reserve-cpu",
            "0.25",
            "--reserve-memory",
            "32m",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "1s",
            "--restart-max-attempts",
            "3",
            "--restart-window",
            "2m",
            "--constraint",
            "node.role==worker",
            "--constraint",
            "node.labels.az!=a",
            "--placement-pref",
            "spread=node.labels.az",
            "--replicas-max-per-node",
            "2",
            "--stop-signal",
            "SIGQUIT",
            "--stop-grace-period",
            "30s",
            "--init",
            "--read-only",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "0s",
            "--update-max-failure-ratio",
            "0.2",
            "--update-order",
            "start-first",
            "--rollback-parallelism",
            "0",
            "--rollback-failure-action",
            "continue",
            "--health-cmd",
            "wget -q localhost",
            "--health-interval",
            "2s",
            "--health-retries",
            "5",
            "--health-timeout",
            "1s",
            "--health-start-period",
            "3s",
            "-p",
            "8080:80",
            "--publish",
            "published=53,target=5353,protocol=udp,mode=host",
            "--network",
            "name=front,alias=web",
            "--endpoint-mode",
            "vip",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "ALL",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
        ])
        .unwrap();
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 3 }))
        );
        let labels = &spec.annotations.as_ref().unwrap().labels;
        assert_eq!(labels["tier"], "web");
        assert_eq!(labels["flag"], "");
        let c = container(&spec);
        assert_eq!(c.args, ["httpd", "-f", "-p", "80"]);
        assert_eq!(c.env, ["A=1", "B=2"]);
        assert_eq!((c.dir.as_str(), c.user.as_str()), ("/srv", "1000:1000"));
        assert_eq!(c.hostname, "h-{{.Task.Slot}}");
        assert_eq!(c.command, ["sh", "-c", "echo hi"]);
        assert_eq!(c.labels["c"], "1");
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(secs(&c.stop_grace_period), 30.0);
        assert_eq!((c.init, c.read_only), (Some(true), true));
        assert_eq!(c.cap_add, ["CAP_NET_ADMIN"]);
        assert_eq!(c.cap_drop, ["ALL"]);
        let health = c.healthcheck.as_ref().unwrap();
        assert_eq!(health.test, ["CMD-SHELL", "wget -q localhost"]);
        assert_eq!(
            (
                secs(&health.interval),
                secs(&health.timeout),
                secs(&health.start_period)
            ),
            (2.0, 1.0, 3.0)
        );
        assert_eq!(health.retries, 5);

        let task = spec.task.as_ref().unwrap();
        let res = task.resources.as_ref().unwrap();
        let limits = res.limits.as_ref().unwrap();
        assert_eq!(
            (limits.nano_cpus, limits.memory_bytes, limits.pids),
            (500_000_000, 64 << 20, 100)
        );
        let reservations = res.reservations.as_ref().unwrap();
        assert_eq!(
            (reservations.nano_cpus, reservations.memory_bytes),
            (250_000_000, 32 << 20)
        );
        let restart = task.restart.as_ref().unwrap();
        assert_eq!(restart.condition, RestartCondition::OnFailure as i32);
        assert_eq!((secs(&restart.delay), secs(&restart.window)), (1.0, 120.0));
        assert_eq!(restart.max_attempts, 3);
        let placement = task.placement.as_ref().unwrap();
        assert_eq!(
            placement.constraints,
            ["node.role==worker", "node.labels.az!=a"]
        );
        assert_eq!(placement.max_replicas, 2);
        assert_eq!(
            placement.preferences[0].preference,
            Some(Preference::Spread(SpreadOver {
                spread_descriptor: "node.labels.az".into()
            }))
        );
        assert_eq!(task.networks[0].target, "front");
        assert_eq!(task.networks[0].aliases, ["web"]);

        let update = spec.update.as_ref().unwrap();
        assert_eq!(update.parallelism, Some(2));
        assert_eq!((secs(&update.delay), secs(&update.monitor)), (10.0, 0.0));
        assert_eq!(update.failure_action, FailureAction::Rollback as i32);
        assert!((update.max_failure_ratio - 0.2).abs() < 1e-6);
        assert_eq!(update.order, UpdateOrder::StartFirst as i32);
        let rollback = spec.rollback.as_ref().unwrap();
        assert_eq!(rollback.parallelism, Some(0));
        assert_eq!(rollback.failure_action, FailureAction::Continue as i32);
        assert_eq!(secs(&rollback.monitor), 5.0);

        let ports = &spec.endpoint.as_ref().unwrap().ports;
        assert_eq!(ports.len(), 2);
        assert_eq!((ports[0].published_port, ports[0].target_port), (8080, 80));
        assert_eq!(ports[1].protocol, PortProtocol::Udp as i32);
        assert_eq!(ports[1].publish_mode, PublishMode::Host as i32);
        assert_eq!((ports[1].published_port, ports[1].target_port), (53, 5353));
    }

    #[test]
    fn publish_syntax() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p[0].published_port, p[0].target_port, p[0].protocol),
            (8080, 80, PortProtocol::Tcp as i32)
        );
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(p[0].protocol, PortProtocol::Udp as i32);
        let p = parse_publish("80").unwrap();
        assert_eq!((p[0].published_port, p[0].target_port), (0, 80));
        let p = parse_publish(":80").unwrap();
        assert_eq!((p[0].published_port, p[0].target_port), (0, 80));
        let p = parse_publish("8080-8082:80-82").unwrap();
        let pairs: Vec<_> = p
            .iter()
            .map(|p| (p.published_port, p.target_port))
            .collect();
        assert_eq!(pairs, [(8080, 80), (8081, 81), (8082, 82)]);
        let p = parse_publish("target=80").unwrap();
        assert_eq!(
            (p[0].published_port, p[0].target_port, p[0].publish_mode),
            (0, 80, PublishMode::Ingress as i32)
        );
        let p = parse_publish("published=8080,target=80,mode=host").unwrap();
        assert_eq!(p[0].publish_mode, PublishMode::Host as i32);
        for (bad, wanted) in [
            ("1.2.3.4:80:80", "host IP"),
            ("80/sctp", "protocol"),
            ("70000", "target port"),
            ("x:80", "published port"),
            ("8080-8081:80-83", "ranges"),
            ("published=80", "missing mandatory field \"target\""),
            ("target=80,mode=bridge", "publish mode"),
            ("target=80,foo=1", "invalid field key"),
        ] {
            let err = parse_publish(bad).unwrap_err();
            assert!(err.contains(wanted), "{bad}: {err}");
        }
    }

    #[test]
    fn env_file_reads_like_dockers() {
        let lookup = |k: &str| (k == "HOME_DIR").then(|| "/root".to_string());
        let content = "\u{feff}# comment\n\nA=1\n  B=two words\nHOME_DIR\nMISSING\nC=\nD=x=y\n";
        assert_eq!(
            parse_env_file(content, &lookup).unwrap(),
            ["A=1", "B=two words", "HOME_DIR=/root", "C=", "D=x=y"]
        );
        let err = parse_env_file("A B=1\n", &lookup).unwrap_err();
        assert!(err.contains("contains whitespaces"), "{err}");
        assert!(parse_env_file("=1\n", &lookup).is_err());

        // Files come first, then -e; -e KEY takes the client's value.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "FROM_FILE=1\n").unwrap();
        let cli = Cli::try_parse_from([
            "create",
            "-e",
            "HOME_DIR",
            "-e",
            "UNSET",
            "--env-file",
            file.to_str().unwrap(),
            "busybox",
        ])
        .unwrap();
        let spec = cli.flags.to_spec("web", &cli.image, &[], &lookup).unwrap();
        assert_eq!(
            container(&spec).env,
            ["FROM_FILE=1", "HOME_DIR=/root", "UNSET"]
        );
        let missing =
            Cli::try_parse_from(["create", "--env-file", "/nonexistent/x", "busybox"]).unwrap();
        let err = missing
            .flags
            .to_spec("web", "busybox", &[], &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--env-file /nonexistent/x"), "{err}");
    }

    #[test]
    fn constraints_and_preferences_are_checked() {
        for ok in [
            "node.role==manager",
            "node.hostname!=n1",
            "node.labels.az==eu-1",
            "engine.labels.ssd==true",
            "node.platform.os==linux",
            "node.id==abc",
        ] {
            assert_eq!(parse_constraint(ok).unwrap(), ok);
        }
        for (bad, wanted) in [
            ("node.role=manager", "expected KEY==VALUE"),
            ("node.foo==x", "unknown key \"node.foo\""),
            ("node.labels.==x", "unknown key"),
            ("node.role==", "missing value"),
        ] {
            let err = parse_constraint(bad).unwrap_err();
            assert!(err.contains(wanted), "{bad}: {err}");
        }
        assert!(
            parse_placement_pref("binpack=node.labels.az")
                .unwrap_err()
                .contains("only spread is supported")
        );
        assert!(parse_placement_pref("spread").is_err());
    }

    #[test]
    fn flag_errors_name_the_flag_and_value() {
        let err = spec_of(&["--limit-memory", "64X", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--limit-memory") && err.contains("64X"),
            "{err}"
        );
        let err = spec_of(&["--restart-condition", "always", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--restart-condition") && err.contains("always"),
            "{err}"
        );
        let err = spec_of(&["--mode", "global", "--replicas", "2", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--replicas can only be used with replicated mode"),
            "{err}"
        );
        let err = spec_of(&[
            "--mode",
            "global",
            "--replicas-max-per-node",
            "1",
            "busybox",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--replicas-max-per-node"), "{err}");
        let err = spec_of(&["--mode", "replicated-job", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("jobs are not supported"), "{err}");
        let err = spec_of(&["--no-healthcheck", "--health-cmd", "true", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--no-healthcheck conflicts"), "{err}");
        let err = spec_of(&["--stop-signal", "SIGNOPE", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--stop-signal") && err.contains("SIGNOPE"),
            "{err}"
        );
        let err = spec_of(&["--endpoint-mode", "dnsrr", "-p", "80:80", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("dnsrr"), "{err}");
        let err = spec_of(&["-p", "80:80", "-p", "80:81", "busybox"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("published twice"), "{err}");
        let cli = Cli::try_parse_from(["create", "busybox"]).unwrap();
        let err = cli
            .flags
            .to_spec("bad name", "busybox", &[], &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid --name \"bad name\""), "{err}");
    }

    #[test]
    fn global_mode_and_misc_values() {
        let spec = spec_of(&[
            "--mode",
            "global",
            "--no-healthcheck",
            "--init=false",
            "busybox",
        ])
        .unwrap();
        assert_eq!(spec.mode, Some(Mode::Global(GlobalService {})));
        let c = container(&spec);
        assert_eq!(c.healthcheck.as_ref().unwrap().test, ["NONE"]);
        assert_eq!(c.init, Some(false));
        assert!(parse_signal("TERM").is_ok() && parse_signal("9").is_ok());
        assert!(parse_signal("99").is_err());
        assert_eq!(
            parse_shell_words(r#"sh -c "echo \"a b\"" 'x y' z\ w"#)
                .unwrap()
                .0,
            ["sh", "-c", "echo \"a b\"", "x y", "z w"]
        );
        assert!(parse_shell_words("'open").is_err());
        let s = parse_file_reference("source=db,target=pw,mode=0400,uid=10").unwrap();
        assert_eq!(
            (
                s.source.as_str(),
                s.target.name.as_str(),
                s.target.mode,
                s.target.uid.as_str()
            ),
            ("db", "pw", 0o400, "10")
        );
        assert!(parse_file_reference("target=x").is_err());
        assert!(parse_file_reference("source=x,mode=999").is_err());
        assert_eq!(parse_capability("CAP_SYS_ADMIN").unwrap(), "CAP_SYS_ADMIN");
        assert!(parse_label("=x").is_err());
    }
}
