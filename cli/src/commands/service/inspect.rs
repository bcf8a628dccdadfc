//! `berth service inspect [--pretty] [-f TEMPLATE] SERVICE...`: the service as Docker's JSON
//! (its keys, durations in nanoseconds, enums in lower case), or Docker's `--pretty` text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use berth_proto::v1::placement_preference::Preference;
use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    ContainerSpec, Endpoint, EndpointSpec, FailureAction, PortConfig, PortProtocol, PublishMode,
    ResolutionMode, Resources, RestartCondition, Service, ServiceSpec, TaskSpec, UpdateConfig,
    UpdateOrder, UpdateState, UpdateStatus,
};
use clap::Args;
use serde_json::{Value, json};

use super::{Daemon, go_duration, list_services, std_duration};
use crate::commands::format::{go_template, json_pretty, rfc3339};

/// `berth service inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a Go template (e.g. '{{.Spec.Name}}')
    #[arg(short, long, value_name = "string")]
    pub format: Option<String>,
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Services (id, name or id prefix)
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

fn nanos(d: Option<&prost_types::Duration>) -> Option<i64> {
    d.map(|d| d.seconds.saturating_mul(1_000_000_000) + i64::from(d.nanos))
}

/// Inserts `key: value` unless the value is null, like Go's `omitempty` on pointers.
fn put(map: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if !empty {
        map.insert(key.to_string(), value);
    }
}

fn sorted<K: Ord + Clone, V: Clone>(map: &std::collections::HashMap<K, V>) -> BTreeMap<K, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn resources_json(r: Option<&Resources>, with_pids: bool) -> Value {
    let mut map = serde_json::Map::new();
    if let Some(r) = r {
        if r.nano_cpus != 0 {
            map.insert("NanoCPUs".into(), json!(r.nano_cpus));
        }
        if r.memory_bytes != 0 {
            map.insert("MemoryBytes".into(), json!(r.memory_bytes));
        }
        if with_pids && r.pids != 0 {
            map.insert("Pids".into(), json!(r.pids));
        }
    }
    Value::Object(map)
}

fn container_json(c: &ContainerSpec) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("Image".into(), json!(c.image));
    put(&mut map, "Labels", json!(sorted(&c.labels)));
    put(&mut map, "Command", json!(c.command));
    put(&mut map, "Args", json!(c.args));
    put(&mut map, "Hostname", json!(c.hostname));
    put(&mut map, "Env", json!(c.env));
    put(&mut map, "Dir", json!(c.dir));
    put(&mut map, "User", json!(c.user));
    put(&mut map, "Groups", json!(c.groups));
    if let Some(init) = c.init {
        map.insert("Init".into(), json!(init));
    }
    if c.read_only {
        map.insert("ReadOnly".into(), json!(true));
    }
    put(&mut map, "StopSignal", json!(c.stop_signal));
    if let Some(n) = nanos(c.stop_grace_period.as_ref()) {
        map.insert("StopGracePeriod".into(), json!(n));
    }
    if let Some(h) = &c.healthcheck {
        let mut health = serde_json::Map::new();
        put(&mut health, "Test", json!(h.test));
        for (key, d) in [
            ("Interval", &h.interval),
            ("Timeout", &h.timeout),
            ("StartPeriod", &h.start_period),
        ] {
            if let Some(n) = nanos(d.as_ref()) {
                health.insert(key.into(), json!(n));
            }
        }
        if h.retries != 0 {
            health.insert("Retries".into(), json!(h.retries));
        }
        map.insert("Healthcheck".into(), Value::Object(health));
    }
    let file = |t: &Option<berth_proto::v1::FileTarget>| {
        let t = t.clone().unwrap_or_default();
        json!({"Name": t.name, "UID": t.uid, "GID": t.gid, "Mode": t.mode})
    };
    put(
        &mut map,
        "Secrets",
        Value::Array(
            c.secrets
                .iter()
                .map(|s| json!({"File": file(&s.target), "SecretID": s.secret_id, "SecretName": s.secret_name}))
                .collect(),
        ),
    );
    put(
        &mut map,
        "Configs",
        Value::Array(
            c.configs
                .iter()
                .map(|s| json!({"File": file(&s.target), "ConfigID": s.config_id, "ConfigName": s.config_name}))
                .collect(),
        ),
    );
    put(&mut map, "CapabilityAdd", json!(c.cap_add));
    put(&mut map, "CapabilityDrop", json!(c.cap_drop));
    put(&mut map, "Hosts", json!(c.hosts));
    map.insert(
        "DNSConfig".into(),
        c.dns_config.as_ref().map_or(json!({}), |d| {
            let mut dns = serde_json::Map::new();
            put(&mut dns, "Nameservers", json!(d.nameservers));
            put(&mut dns, "Search", json!(d.search));
            put(&mut dns, "Options", json!(d.options));
            Value::Object(dns)
        }),
    );
    map.insert("Isolation".into(), json!("default"));
    Value::Object(map)
}

fn restart_json(task: &TaskSpec) -> Value {
    let Some(r) = &task.restart else {
        return Value::Null;
    };
    let condition = match RestartCondition::try_from(r.condition) {
        Ok(RestartCondition::None) => "none",
        Ok(RestartCondition::OnFailure) => "on-failure",
        _ => "any",
    };
    let mut map = serde_json::Map::new();
    map.insert("Condition".into(), json!(condition));
    if let Some(n) = nanos(r.delay.as_ref()) {
        map.insert("Delay".into(), json!(n));
    }
    map.insert("MaxAttempts".into(), json!(r.max_attempts));
    if let Some(n) = nanos(r.window.as_ref()) {
        map.insert("Window".into(), json!(n));
    }
    Value::Object(map)
}

fn placement_json(task: &TaskSpec) -> Value {
    let Some(p) = &task.placement else {
        return json!({});
    };
    let mut map = serde_json::Map::new();
    put(&mut map, "Constraints", json!(p.constraints));
    put(
        &mut map,
        "Preferences",
        Value::Array(
            p.preferences
                .iter()
                .filter_map(|pref| {
                    pref.preference.as_ref().map(|Preference::Spread(s)| {
                        json!({"Spread": {"SpreadDescriptor": s.spread_descriptor}})
                    })
                })
                .collect(),
        ),
    );
    if p.max_replicas != 0 {
        map.insert("MaxReplicas".into(), json!(p.max_replicas));
    }
    put(
        &mut map,
        "Platforms",
        Value::Array(
            p.platforms
                .iter()
                .map(|p| json!({"Architecture": p.architecture, "OS": p.os}))
                .collect(),
        ),
    );
    Value::Object(map)
}

fn failure_action(value: i32) -> &'static str {
    match FailureAction::try_from(value) {
        Ok(FailureAction::Continue) => "continue",
        Ok(FailureAction::Rollback) => "rollback",
        _ => "pause",
    }
}

fn order(value: i32) -> &'static str {
    if value == UpdateOrder::StartFirst as i32 {
        "start-first"
    } else {
        "stop-first"
    }
}

fn update_config_json(c: Option<&UpdateConfig>) -> Value {
    let Some(c) = c else { return Value::Null };
    let mut map = serde_json::Map::new();
    map.insert("Parallelism".into(), json!(c.parallelism.unwrap_or(1)));
    if let Some(n) = nanos(c.delay.as_ref()).filter(|n| *n != 0) {
        map.insert("Delay".into(), json!(n));
    }
    map.insert(
        "FailureAction".into(),
        json!(failure_action(c.failure_action)),
    );
    if let Some(n) = nanos(c.monitor.as_ref()) {
        map.insert("Monitor".into(), json!(n));
    }
    map.insert("MaxFailureRatio".into(), json!(c.max_failure_ratio));
    map.insert("Order".into(), json!(order(c.order)));
    Value::Object(map)
}

fn protocol(p: &PortConfig) -> &'static str {
    if p.protocol == PortProtocol::Udp as i32 {
        "udp"
    } else {
        "tcp"
    }
}

fn publish_mode(p: &PortConfig) -> &'static str {
    if p.publish_mode == PublishMode::Host as i32 {
        "host"
    } else {
        "ingress"
    }
}

fn ports_json(ports: &[PortConfig]) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|p| {
                let mut map = serde_json::Map::new();
                put(&mut map, "Name", json!(p.name));
                map.insert("Protocol".into(), json!(protocol(p)));
                map.insert("TargetPort".into(), json!(p.target_port));
                map.insert("PublishedPort".into(), json!(p.published_port));
                map.insert("PublishMode".into(), json!(publish_mode(p)));
                Value::Object(map)
            })
            .collect(),
    )
}

fn endpoint_mode(e: Option<&EndpointSpec>) -> &'static str {
    if e.is_some_and(|e| e.mode == ResolutionMode::Dnsrr as i32) {
        "dnsrr"
    } else {
        "vip"
    }
}

fn endpoint_spec_json(e: Option<&EndpointSpec>) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("Mode".into(), json!(endpoint_mode(e)));
    if let Some(e) = e {
        put(&mut map, "Ports", ports_json(&e.ports));
    }
    Value::Object(map)
}

/// A spec in Docker's shape (`Spec` and `PreviousSpec`).
pub fn spec_json(spec: &ServiceSpec) -> Value {
    let annotations = spec.annotations.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let container = task.container.clone().unwrap_or_default();
    let resources = task.resources.unwrap_or_default();
    let mut template = serde_json::Map::new();
    template.insert("ContainerSpec".into(), container_json(&container));
    template.insert(
        "Resources".into(),
        json!({
            "Limits": resources_json(resources.limits.as_ref(), true),
            "Reservations": resources_json(resources.reservations.as_ref(), false),
        }),
    );
    put(&mut template, "RestartPolicy", restart_json(&task));
    template.insert("Placement".into(), placement_json(&task));
    put(
        &mut template,
        "Networks",
        Value::Array(
            task.networks
                .iter()
                .map(|n| {
                    let mut map = serde_json::Map::new();
                    map.insert("Target".into(), json!(n.target));
                    put(&mut map, "Aliases", json!(n.aliases));
                    Value::Object(map)
                })
                .collect(),
        ),
    );
    template.insert("ForceUpdate".into(), json!(task.force_update));
    template.insert("Runtime".into(), json!("container"));
    let mode = match &spec.mode {
        Some(Mode::Global(_)) => json!({"Global": {}}),
        Some(Mode::Replicated(r)) => json!({"Replicated": {"Replicas": r.replicas}}),
        None => json!({"Replicated": {"Replicas": 1}}),
    };
    let mut map = serde_json::Map::new();
    map.insert("Name".into(), json!(annotations.name));
    map.insert("Labels".into(), json!(sorted(&annotations.labels)));
    map.insert("TaskTemplate".into(), Value::Object(template));
    map.insert("Mode".into(), mode);
    put(
        &mut map,
        "UpdateConfig",
        update_config_json(spec.update.as_ref()),
    );
    put(
        &mut map,
        "RollbackConfig",
        update_config_json(spec.rollback.as_ref()),
    );
    map.insert(
        "EndpointSpec".into(),
        endpoint_spec_json(spec.endpoint.as_ref()),
    );
    Value::Object(map)
}

fn endpoint_json(e: &Endpoint) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("Spec".into(), endpoint_spec_json(e.spec.as_ref()));
    put(&mut map, "Ports", ports_json(&e.ports));
    put(
        &mut map,
        "VirtualIPs",
        Value::Array(
            e.virtual_ips
                .iter()
                .map(|v| json!({"NetworkID": v.network_id, "Addr": v.addr}))
                .collect(),
        ),
    );
    Value::Object(map)
}

fn update_state(s: &UpdateStatus) -> &'static str {
    match UpdateState::try_from(s.state).unwrap_or(UpdateState::None) {
        UpdateState::None => "",
        UpdateState::Updating => "updating",
        UpdateState::Paused => "paused",
        UpdateState::Completed => "completed",
        UpdateState::RollbackStarted => "rollback_started",
        UpdateState::RollbackPaused => "rollback_paused",
        UpdateState::RollbackCompleted => "rollback_completed",
    }
}

/// A service in Docker's shape.
pub fn service_json(service: &Service) -> Value {
    let meta = service.meta.unwrap_or_default();
    let mut map = serde_json::Map::new();
    map.insert("ID".into(), json!(service.id));
    map.insert("Version".into(), json!({"Index": meta.version}));
    map.insert("CreatedAt".into(), json!(rfc3339(meta.created_at.as_ref())));
    map.insert("UpdatedAt".into(), json!(rfc3339(meta.updated_at.as_ref())));
    map.insert(
        "Spec".into(),
        spec_json(&service.spec.clone().unwrap_or_default()),
    );
    if let Some(previous) = &service.previous_spec {
        map.insert("PreviousSpec".into(), spec_json(previous));
    }
    map.insert(
        "Endpoint".into(),
        service
            .endpoint
            .as_ref()
            .map_or_else(|| json!({"Spec": {}}), endpoint_json),
    );
    if let Some(status) = &service.update_status {
        let mut s = serde_json::Map::new();
        s.insert("State".into(), json!(update_state(status)));
        if status.started_at.is_some() {
            s.insert(
                "StartedAt".into(),
                json!(rfc3339(status.started_at.as_ref())),
            );
        }
        if status.completed_at.is_some() {
            s.insert(
                "CompletedAt".into(),
                json!(rfc3339(status.completed_at.as_ref())),
            );
        }
        s.insert("Message".into(), json!(status.message));
        map.insert("UpdateStatus".into(), Value::Object(s));
    }
    Value::Object(map)
}

/// Docker's CPU display: nano CPUs as a decimal number of CPUs.
fn cpus(nano: i64) -> String {
    let text = format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Docker's `BytesSize`: binary units with up to 4 significant digits (`64MiB`, `1.5GiB`).
fn bytes_size(bytes: i64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    // Go's %.4g: four significant digits, trailing zeros dropped.
    let integer_digits = format!("{}", size.trunc() as u64).len();
    let decimals = 4usize.saturating_sub(integer_digits);
    let mut text = format!("{size:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

fn update_config_pretty(out: &mut String, title: &str, verb: &str, c: &UpdateConfig) {
    let _ = writeln!(out, "{title}:");
    let _ = writeln!(out, " Parallelism:\t{}", c.parallelism.unwrap_or(1));
    if let Some(d) = std_duration(c.delay.as_ref()).filter(|d| !d.is_zero()) {
        let _ = writeln!(out, " Delay:\t\t{}", go_duration(d));
    }
    let _ = writeln!(out, " On failure:\t{}", failure_action(c.failure_action));
    if let Some(d) = std_duration(c.monitor.as_ref()).filter(|d| !d.is_zero()) {
        let _ = writeln!(out, " Monitoring Period: {}", go_duration(d));
    }
    let _ = writeln!(out, " Max failure ratio: {}", c.max_failure_ratio);
    let _ = writeln!(out, " {:<19}{}", format!("{verb} order:"), order(c.order));
}

/// Docker's `service inspect --pretty` text.
pub fn pretty(service: &Service) -> String {
    let spec = service.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let container = task.container.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "\nID:\t\t{}", service.id);
    let _ = writeln!(out, "Name:\t\t{}", annotations.name);
    if !annotations.labels.is_empty() {
        let _ = writeln!(out, "Labels:");
        for (k, v) in sorted(&annotations.labels) {
            if v.is_empty() {
                let _ = writeln!(out, " {k}");
            } else {
                let _ = writeln!(out, " {k}={v}");
            }
        }
    }
    match &spec.mode {
        Some(Mode::Global(_)) => {
            let _ = writeln!(out, "Service Mode:\tGlobal");
        }
        mode => {
            let replicas = match mode {
                Some(Mode::Replicated(r)) => r.replicas,
                _ => 1,
            };
            let _ = writeln!(out, "Service Mode:\tReplicated");
            let _ = writeln!(out, " Replicas:\t{replicas}");
        }
    }
    if let Some(status) = &service.update_status {
        let _ = writeln!(out, "UpdateStatus:");
        let _ = writeln!(out, " State:\t\t{}", update_state(status));
        if status.started_at.is_some() {
            let _ = writeln!(out, " Started:\t{}", rfc3339(status.started_at.as_ref()));
        }
        if status.completed_at.is_some() {
            let _ = writeln!(
                out,
                " Completed:\t{}",
                rfc3339(status.completed_at.as_ref())
            );
        }
        let _ = writeln!(out, " Message:\t{}", status.message);
    }
    let _ = writeln!(out, "Placement:");
    if let Some(p) = &task.placement {
        if !p.constraints.is_empty() {
            let _ = writeln!(out, " Constraints:\t[{}]", p.constraints.join(" "));
        }
        let prefs: Vec<String> = p
            .preferences
            .iter()
            .filter_map(|pref| {
                pref.preference
                    .as_ref()
                    .map(|Preference::Spread(s)| format!("spread={}", s.spread_descriptor))
            })
            .collect();
        if !prefs.is_empty() {
            let _ = writeln!(out, " Preferences:   [{}]", prefs.join(" "));
        }
        if p.max_replicas > 0 {
            let _ = writeln!(out, " Max Replicas Per Node:   {}", p.max_replicas);
        }
    }
    if let Some(c) = &spec.update {
        update_config_pretty(&mut out, "UpdateConfig", "Update", c);
    }
    if let Some(c) = &spec.rollback {
        update_config_pretty(&mut out, "RollbackConfig", "Rollback", c);
    }
    let _ = writeln!(out, "ContainerSpec:");
    let _ = writeln!(out, " Image:\t\t{}", container.image);
    if !container.args.is_empty() {
        let _ = writeln!(out, " Args:\t\t{} ", container.args.join(" "));
    }
    if !container.env.is_empty() {
        let _ = writeln!(out, " Env:\t\t{} ", container.env.join(" "));
    }
    if !container.dir.is_empty() {
        let _ = writeln!(out, " Dir:\t\t{}", container.dir);
    }
    if let Some(init) = container.init {
        let _ = writeln!(out, " Init:\t\t{init}");
    }
    if !container.user.is_empty() {
        let _ = writeln!(out, " User: {}", container.user);
    }
    if !container.cap_add.is_empty() || !container.cap_drop.is_empty() {
        let _ = writeln!(out, "Capabilities:");
        if !container.cap_add.is_empty() {
            let _ = writeln!(out, " Add: {}", container.cap_add.join(", "));
        }
        if !container.cap_drop.is_empty() {
            let _ = writeln!(out, " Drop: {}", container.cap_drop.join(", "));
        }
    }
    if !container.configs.is_empty() {
        let _ = writeln!(out, "Configs:");
        for c in &container.configs {
            let target = c.target.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                " Target:\t{}\n  Source:\t{}",
                target.name, c.config_name
            );
        }
    }
    if !container.secrets.is_empty() {
        let _ = writeln!(out, "Secrets:");
        for s in &container.secrets {
            let target = s.target.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                " Target:\t{}\n  Source:\t{}",
                target.name, s.secret_name
            );
        }
    }
    let resources = task.resources.unwrap_or_default();
    let reservations = resources.reservations.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let has_reservations = reservations.nano_cpus > 0 || reservations.memory_bytes > 0;
    let has_limits = limits.nano_cpus > 0 || limits.memory_bytes > 0 || limits.pids > 0;
    if has_reservations || has_limits {
        let _ = writeln!(out, "Resources:");
        if has_reservations {
            let _ = writeln!(out, " Reservations:");
            if reservations.nano_cpus > 0 {
                let _ = writeln!(out, "  CPU:\t\t{}", cpus(reservations.nano_cpus));
            }
            if reservations.memory_bytes > 0 {
                let _ = writeln!(out, "  Memory:\t{}", bytes_size(reservations.memory_bytes));
            }
        }
        if has_limits {
            let _ = writeln!(out, " Limits:");
            if limits.nano_cpus > 0 {
                let _ = writeln!(out, "  CPU:\t\t{}", cpus(limits.nano_cpus));
            }
            if limits.memory_bytes > 0 {
                let _ = writeln!(out, "  Memory:\t{}", bytes_size(limits.memory_bytes));
            }
            if limits.pids > 0 {
                let _ = writeln!(out, "  PIDs:\t\t{}", limits.pids);
            }
        }
    }
    if !task.networks.is_empty() {
        let names: Vec<&str> = task.networks.iter().map(|n| n.target.as_str()).collect();
        let _ = writeln!(out, "Networks: {} ", names.join(" "));
    }
    let _ = writeln!(
        out,
        "Endpoint Mode:\t{}",
        endpoint_mode(spec.endpoint.as_ref())
    );
    let ports = service
        .endpoint
        .as_ref()
        .map(|e| e.ports.clone())
        .filter(|p| !p.is_empty())
        .or_else(|| spec.endpoint.as_ref().map(|e| e.ports.clone()))
        .unwrap_or_default();
    if !ports.is_empty() {
        let _ = writeln!(out, "Ports:");
        for p in &ports {
            let _ = writeln!(
                out,
                " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                p.published_port,
                protocol(p),
                p.target_port,
                publish_mode(p)
            );
        }
    }
    if let Some(h) = &container.healthcheck {
        let d = |v: &Option<prost_types::Duration>| {
            go_duration(std_duration(v.as_ref()).unwrap_or_default())
        };
        let _ = writeln!(out, " Healthcheck:");
        let _ = writeln!(out, "  Interval = {}", d(&h.interval));
        let _ = writeln!(out, "  Retries = {}", h.retries);
        let _ = writeln!(out, "  StartPeriod =\t{}", d(&h.start_period));
        let _ = writeln!(out, "  Timeout =\t{}", d(&h.timeout));
        if !h.test.is_empty() {
            let _ = writeln!(out, "  Tests:");
            for t in &h.test {
                let _ = writeln!(out, "\t Test = {t}");
            }
        }
    }
    out
}

/// `berth service inspect`.
pub async fn inspect(daemon: &mut Daemon, args: InspectArgs) -> anyhow::Result<()> {
    let services = list_services(daemon).await?;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &args.services {
        match super::find(&services, name) {
            Ok(s) => found.push(s.clone()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if args.pretty {
        for s in &found {
            print!("{}", pretty(s));
        }
    } else if let Some(template) = &args.format {
        for s in &found {
            println!(
                "{}",
                go_template(template, &service_json(s)).map_err(|e| anyhow::anyhow!("{e}"))?
            );
        }
    } else {
        let all = Value::Array(found.iter().map(service_json).collect());
        println!("{}", json_pretty(&all));
    }
    super::joined_errors(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::service::spec::CreateFlags;
    use berth_proto::v1::Meta;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flags: CreateFlags,
        image: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    }

    fn created(args: &[&str]) -> Service {
        let cli =
            Cli::try_parse_from(std::iter::once("create").chain(args.iter().copied())).unwrap();
        let spec = cli
            .flags
            .to_spec("web", &cli.image, &cli.args, &|_| None)
            .unwrap();
        Service {
            id: "abcdefghijklmnopqrstuvwxy".into(),
            meta: Some(Meta {
                version: 12,
                created_at: Some(prost_types::Timestamp {
                    seconds: 1_709_210_096,
                    nanos: 0,
                }),
                updated_at: None,
            }),
            spec: Some(spec),
            ..Default::default()
        }
    }

    #[test]
    fn json_has_dockers_keys_and_defaults() {
        let s = created(&["--replicas", "3", "busybox", "sleep", "60"]);
        let v = service_json(&s);
        assert_eq!(v["ID"], "abcdefghijklmnopqrstuvwxy");
        assert_eq!(v["Version"]["Index"], 12);
        assert_eq!(v["CreatedAt"], "2024-02-29T12:34:56.000000000Z");
        let spec = &v["Spec"];
        assert_eq!(spec["Name"], "web");
        assert_eq!(spec["Labels"], json!({}));
        assert_eq!(spec["Mode"], json!({"Replicated": {"Replicas": 3}}));
        let c = &spec["TaskTemplate"]["ContainerSpec"];
        assert_eq!(c["Image"], "busybox");
        assert_eq!(c["Args"], json!(["sleep", "60"]));
        assert_eq!(c["StopGracePeriod"], 10_000_000_000i64);
        assert!(c.get("Env").is_none(), "empty lists are left out: {c}");
        assert_eq!(
            spec["TaskTemplate"]["RestartPolicy"],
            json!({"Condition": "any", "Delay": 5_000_000_000i64, "MaxAttempts": 0})
        );
        assert_eq!(
            spec["TaskTemplate"]["Resources"],
            json!({"Limits": {}, "Reservations": {}})
        );
        assert_eq!(spec["TaskTemplate"]["Placement"], json!({}));
        let update = json!({"Parallelism": 1, "FailureAction": "pause",
            "Monitor": 5_000_000_000i64, "MaxFailureRatio": 0.0, "Order": "stop-first"});
        assert_eq!(spec["UpdateConfig"], update);
        assert_eq!(spec["RollbackConfig"], update);
        assert_eq!(spec["EndpointSpec"], json!({"Mode": "vip"}));
        assert!(v.get("PreviousSpec").is_none() && v.get("UpdateStatus").is_none());
    }

    #[test]
    fn json_carries_every_set_field() {
        let mut s = created(&[
            "--mode",
            "global",
            "-e",
            "A=1",
            "--limit-memory",
            "64M",
            "--limit-cpu",
            "0.5",
            "--reserve-memory",
            "1g",
            "--constraint",
            "node.role==worker",
            "--placement-pref",
            "spread=node.labels.az",
            "-p",
            "8080:80",
            "--restart-condition",
            "none",
            "--health-cmd",
            "true",
            "--update-delay",
            "2s",
            "-l",
            "a=b",
            "busybox",
        ]);
        s.update_status = Some(UpdateStatus {
            state: UpdateState::Paused as i32,
            message: "update paused".into(),
            ..Default::default()
        });
        s.previous_spec = s.spec.clone();
        let v = service_json(&s);
        let spec = &v["Spec"];
        assert_eq!(spec["Mode"], json!({"Global": {}}));
        assert_eq!(spec["Labels"], json!({"a": "b"}));
        let t = &spec["TaskTemplate"];
        assert_eq!(t["ContainerSpec"]["Env"], json!(["A=1"]));
        assert_eq!(
            t["ContainerSpec"]["Healthcheck"]["Test"],
            json!(["CMD-SHELL", "true"])
        );
        assert_eq!(
            t["Resources"],
            json!({"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 67_108_864},
                   "Reservations": {"MemoryBytes": 1_073_741_824}})
        );
        assert_eq!(t["RestartPolicy"]["Condition"], "none");
        assert_eq!(
            t["Placement"],
            json!({"Constraints": ["node.role==worker"],
                   "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.az"}}]})
        );
        assert_eq!(spec["UpdateConfig"]["Delay"], 2_000_000_000i64);
        assert_eq!(
            spec["EndpointSpec"]["Ports"],
            json!([{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                    "PublishMode": "ingress"}])
        );
        assert_eq!(v["UpdateStatus"]["State"], "paused");
        assert_eq!(v["PreviousSpec"]["Name"], "web");
    }

    #[test]
    fn pretty_reads_like_dockers() {
        let s = created(&[
            "--replicas",
            "2",
            "--limit-memory",
            "64M",
            "--limit-cpu",
            "0.5",
            "--constraint",
            "node.role==worker",
            "--replicas-max-per-node",
            "1",
            "-p",
            "8080:80",
            "-e",
            "A=1",
            "busybox",
            "sleep",
            "60",
        ]);
        let text = pretty(&s);
        for wanted in [
            "ID:\t\tabcdefghijklmnopqrstuvwxy\n",
            "Name:\t\tweb\n",
            "Service Mode:\tReplicated\n Replicas:\t2\n",
            "Placement:\n Constraints:\t[node.role==worker]\n Max Replicas Per Node:   1\n",
            "UpdateConfig:\n Parallelism:\t1\n On failure:\tpause\n Monitoring Period: 5s\n Max failure ratio: 0\n Update order:      stop-first\n",
            "RollbackConfig:\n Parallelism:\t1\n",
            " Rollback order:    stop-first\n",
            "ContainerSpec:\n Image:\t\tbusybox\n Args:\t\tsleep 60 \n Env:\t\tA=1 \n",
            "Resources:\n Limits:\n  CPU:\t\t0.5\n  Memory:\t64MiB\n",
            "Endpoint Mode:\tvip\n",
            "Ports:\n PublishedPort = 8080\n  Protocol = tcp\n  TargetPort = 80\n  PublishMode = ingress\n",
        ] {
            assert!(text.contains(wanted), "missing {wanted:?} in:\n{text}");
        }
    }

    #[test]
    fn sizes_and_cpus_display_like_dockers() {
        assert_eq!(bytes_size(64 << 20), "64MiB");
        assert_eq!(bytes_size(1536 << 20), "1.5GiB");
        assert_eq!(bytes_size(1000), "1000B");
        assert_eq!(bytes_size(1_234_567), "1.177MiB");
        assert_eq!(cpus(500_000_000), "0.5");
        assert_eq!(cpus(2_000_000_000), "2");
    }
}
