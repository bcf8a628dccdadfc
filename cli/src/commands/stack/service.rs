//! One Compose service → a [`ServiceSpec`], as `docker stack deploy` converts it.
//!
//! The spec starts from Docker's defaults ([`default_spec`], shared with `service create`) and
//! the same value parsers (sizes, CPUs, durations, signals, ports, constraints), so a stack and
//! `service create` with equal options give equal specs. Environment entries are sorted (as
//! Docker does), so a re-deploy of an unchanged file yields an equal spec.
//!
//! Keys (Compose names): `image`, `command`, `entrypoint`, `environment`, `env_file`,
//! `working_dir`, `user`, `hostname`, `labels`, `ports`, `networks`, `secrets`, `configs`,
//! `healthcheck`, `stop_signal`, `stop_grace_period`, `init`, `read_only`, `restart`,
//! `cap_add`, `cap_drop`, `extra_hosts`, `dns`, `dns_search`, `dns_opt`, `ulimits`,
//! `group_add`, `tmpfs`, `volumes` (bind and tmpfs), `deploy` (`mode`, `replicas`,
//! `endpoint_mode`, `labels`, `resources`, `restart_policy`, `update_config`,
//! `rollback_config`, `placement`). [`IGNORED`] keys only mean something to `docker compose`
//! and get a warning; [`UNSUPPORTED`] keys and anything else are errors.

use std::collections::{BTreeMap, HashMap, HashSet};

use berth_proto::v1::placement_preference::Preference;
use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    ConfigReference, DnsConfig, EndpointSpec, FileTarget, GlobalService, HealthConfig, Mount,
    MountType, NetworkAttachmentConfig, Placement, PlacementPreference, PortConfig, PortProtocol,
    PublishMode, ReplicatedService, ResolutionMode, RestartCondition, SecretReference, ServiceSpec,
    SpreadOver, TmpfsOptions, Ulimit,
};

use super::convert::{Context, Declared, IMAGE_LABEL, NAMESPACE_LABEL};
use super::read::{self, Diags, child, is_extension, item};
use super::yaml::{Key, Node, Value};
use crate::commands::service::spec::{
    ResourceFlags, RestartFlags, UpdateConfigValues, default_spec, env_entry, parse_capability,
    parse_constraint, parse_endpoint_mode, parse_env_file, parse_failure_action, parse_mem_bytes,
    parse_nano_cpus, parse_order, parse_publish, parse_restart_condition,
    parse_rollback_failure_action, parse_signal,
};
use crate::duration;

/// Service keys that only mean something to `docker compose`: warned about and skipped.
pub const IGNORED: &[&str] = &[
    "build",
    "container_name",
    "depends_on",
    "links",
    "external_links",
    "expose",
    "profiles",
    "pull_policy",
    "stdin_open",
    "tty",
    "logging",
    "domainname",
    "mac_address",
    "platform",
    "scale",
    "develop",
    "attach",
    "annotations",
    "label_file",
];

/// Compose service keys Berth cannot honour: refused, so a stack never runs with less
/// isolation or fewer resources limits than its file asks for.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("privileged", ""),
    ("devices", ""),
    ("device_cgroup_rules", ""),
    ("security_opt", ""),
    ("sysctls", ""),
    ("network_mode", "use networks"),
    ("pid", ""),
    ("ipc", ""),
    ("uts", ""),
    ("userns_mode", ""),
    ("cgroup", ""),
    ("cgroup_parent", ""),
    ("isolation", ""),
    ("oom_kill_disable", ""),
    ("oom_score_adj", ""),
    ("shm_size", ""),
    ("storage_opt", ""),
    ("runtime", ""),
    ("volumes_from", ""),
    ("credential_spec", ""),
    ("gpus", ""),
    ("blkio_config", ""),
    ("extends", "merge files with several -c instead"),
    ("memswap_limit", ""),
    ("mem_swappiness", ""),
    ("mem_limit", "use deploy.resources.limits.memory"),
    (
        "mem_reservation",
        "use deploy.resources.reservations.memory",
    ),
    ("cpus", "use deploy.resources.limits.cpus"),
    ("cpu_count", "use deploy.resources.limits.cpus"),
    ("cpu_percent", "use deploy.resources.limits.cpus"),
    ("cpu_shares", "use deploy.resources"),
    ("cpu_period", "use deploy.resources.limits.cpus"),
    ("cpu_quota", "use deploy.resources.limits.cpus"),
    ("cpu_rt_runtime", ""),
    ("cpu_rt_period", ""),
    ("cpuset", ""),
    ("pids_limit", "use deploy.resources.limits.pids"),
    ("use_api_socket", ""),
    ("models", ""),
    ("provider", ""),
];

/// A converted service.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// Its spec (references by name; see [`super::convert::ServicePlan`]).
    pub spec: ServiceSpec,
    /// Keys of the networks it joins.
    pub networks: Vec<String>,
    /// Whether it names its networks itself.
    pub explicit_networks: bool,
}

/// Converts service `key` (its mapping is `node`).
pub fn convert(
    key: &Key,
    node: &Node,
    ctx: &Context<'_>,
    declared: &Declared,
    d: &mut Diags,
) -> Option<Converted> {
    let path = child("services", &key.name);
    let fields = read::map(node, &path, d)?;
    let errors_before = d.errors.len();
    let Some(image) = fields
        .iter()
        .find(|(k, _)| k.name == "image")
        .and_then(|(_, v)| read::string(v, &child(&path, "image"), d))
        .filter(|i| !i.trim().is_empty())
    else {
        if !fields.iter().any(|(k, _)| k.name == "image") {
            d.error(&key.at, &path, "an image is required");
        }
        return None;
    };
    let full_name = ctx.scoped(&key.name);
    let mut spec = default_spec(&full_name, &image);
    let mut task = spec.task.take().unwrap_or_default();
    let mut container = task.container.take().unwrap_or_default();
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    let mut env_files: Vec<String> = Vec::new();
    let mut networks_node = None;
    let mut deploy_node = None;
    let mut restart_node = None;
    let mut dns = DnsConfig::default();
    let mut ports: Vec<(PortConfig, &Node)> = Vec::new();
    let mut mounts: Vec<Mount> = Vec::new();

    for (k, v) in fields {
        let p = child(&path, &k.name);
        match k.name.as_str() {
            "image" => {}
            "command" => container.args = read::command(v, &p, d).unwrap_or_default(),
            "entrypoint" => container.command = read::command(v, &p, d).unwrap_or_default(),
            "environment" => env = read::pairs(v, &p, d).unwrap_or_default(),
            "env_file" => env_files = env_file_paths(v, &p, ctx, d),
            "working_dir" => container.dir = read::string(v, &p, d).unwrap_or_default(),
            "user" => container.user = read::string(v, &p, d).unwrap_or_default(),
            "hostname" => container.hostname = read::string(v, &p, d).unwrap_or_default(),
            "labels" => container.labels = read::labels(v, &p, d).unwrap_or_default(),
            "ports" => {
                for (i, port) in read::list(v, &p, d).unwrap_or_default().iter().enumerate() {
                    for config in self::port(port, &item(&p, i), d) {
                        ports.push((config, port));
                    }
                }
            }
            "networks" => networks_node = Some((k, v)),
            "secrets" => {
                container.secrets = references(v, &p, &declared.secrets, "secret", d)
                    .into_iter()
                    .map(|(source, name, mut target)| {
                        if target.name.is_empty() {
                            target.name = source;
                        }
                        SecretReference {
                            secret_id: String::new(),
                            secret_name: name,
                            target: Some(target),
                        }
                    })
                    .collect();
            }
            "configs" => {
                container.configs = references(v, &p, &declared.configs, "config", d)
                    .into_iter()
                    .map(|(source, name, mut target)| {
                        if target.name.is_empty() {
                            target.name = format!("/{source}");
                        }
                        ConfigReference {
                            config_id: String::new(),
                            config_name: name,
                            target: Some(target),
                        }
                    })
                    .collect();
            }
            "healthcheck" => container.healthcheck = healthcheck(v, &p, d),
            "stop_signal" => {
                if let Some(signal) = read::string(v, &p, d) {
                    match parse_signal(&signal) {
                        Ok(s) => container.stop_signal = s,
                        Err(e) => d.error(&v.at, &p, e),
                    }
                }
            }
            "stop_grace_period" => {
                if let Some(grace) = read::duration(v, &p, d) {
                    container.stop_grace_period = Some(duration::to_proto(grace));
                }
            }
            "init" => container.init = read::boolean(v, &p, d),
            "read_only" => container.read_only = read::boolean(v, &p, d).unwrap_or(false),
            "restart" => restart_node = Some(v),
            "cap_add" | "cap_drop" => {
                let caps: Vec<String> = read::strings(v, &p, d)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| parse_capability(c).map_err(|e| d.error(&v.at, &p, e)).ok())
                    .collect();
                if k.name == "cap_add" {
                    container.cap_add = caps;
                } else {
                    container.cap_drop = caps;
                }
            }
            "extra_hosts" => container.hosts = extra_hosts(v, &p, d),
            "dns" => dns.nameservers = read::string_or_list(v, &p, d).unwrap_or_default(),
            "dns_search" => dns.search = read::string_or_list(v, &p, d).unwrap_or_default(),
            "dns_opt" => dns.options = read::strings(v, &p, d).unwrap_or_default(),
            "ulimits" => container.ulimits = ulimits(v, &p, d),
            "group_add" => container.groups = read::strings(v, &p, d).unwrap_or_default(),
            "tmpfs" => {
                for target in read::string_or_list(v, &p, d).unwrap_or_default() {
                    if let Some(m) = tmpfs_short(&target, v, &p, d) {
                        mounts.push(m);
                    }
                }
            }
            "volumes" => {
                for (i, volume) in read::list(v, &p, d).unwrap_or_default().iter().enumerate() {
                    if let Some(m) = self::volume(volume, &item(&p, i), ctx, d) {
                        mounts.push(m);
                    }
                }
            }
            "deploy" => deploy_node = Some(v),
            name if IGNORED.contains(&name) => d.ignored(k, &path),
            name => match UNSUPPORTED.iter().find(|(n, _)| *n == name) {
                Some((_, hint)) => d.unsupported(k, &path, hint),
                None if is_extension(k) => {}
                None => d.unknown(k, &path),
            },
        }
    }

    // Environment: env_file entries, then `environment` over them, sorted by name.
    let mut merged: BTreeMap<String, Option<String>> = BTreeMap::new();
    for file in &env_files {
        let text = match std::fs::read_to_string(ctx.path(file)) {
            Ok(t) => t,
            Err(e) => {
                let at = fields
                    .iter()
                    .find(|(k, _)| k.name == "env_file")
                    .map(|(_, v)| v.at.clone())
                    .unwrap_or(key.at.clone());
                d.error(
                    &at,
                    &child(&path, "env_file"),
                    format!("reading {}: {e}", ctx.path(file).display()),
                );
                continue;
            }
        };
        match parse_env_file(&text, ctx.lookup) {
            Ok(entries) => {
                for entry in entries {
                    let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
                    merged.insert(k.to_string(), Some(v.to_string()));
                }
            }
            Err(e) => {
                let at = fields
                    .iter()
                    .find(|(k, _)| k.name == "env_file")
                    .map(|(_, v)| v.at.clone())
                    .unwrap_or(key.at.clone());
                d.error(&at, &child(&path, "env_file"), format!("{file}: {e}"));
            }
        }
    }
    for (name, value) in env {
        if name.is_empty() {
            d.error(&key.at, &child(&path, "environment"), "empty variable name");
            continue;
        }
        let value = match value {
            Some(v) => Some(v),
            // `NAME` alone takes the value of berth's environment, like `-e NAME`.
            None => env_entry(&name, ctx.lookup)
                .ok()
                .and_then(|e| e.split_once('=').map(|(_, v)| v.to_string())),
        };
        merged.insert(name, value);
    }
    container.env = merged
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect();
    if dns != DnsConfig::default() {
        container.dns_config = Some(dns);
    }
    container.mounts = mounts;
    container
        .labels
        .insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());

    // Networks: the service's, or the stack's default one.
    let mut network_keys = Vec::new();
    let explicit_networks = networks_node.is_some();
    match networks_node {
        Some((k, v)) => {
            task.networks = attachments(
                v,
                &child(&path, &k.name),
                &key.name,
                declared,
                &ctx.scoped("default"),
                &mut network_keys,
                d,
            )
        }
        None => {
            network_keys.push("default".to_string());
            task.networks = vec![NetworkAttachmentConfig {
                target: ctx.scoped("default"),
                aliases: vec![key.name.clone()],
            }];
        }
    }

    let mut service_labels = HashMap::new();
    let mut restart_policy_set = false;
    if let Some(v) = deploy_node {
        let p = child(&path, "deploy");
        deploy(
            v,
            &p,
            &mut spec,
            &mut task,
            &mut service_labels,
            &mut restart_policy_set,
            d,
        );
    }
    if let Some(v) = restart_node {
        let p = child(&path, "restart");
        let restart = restart_flags(v, &p, d);
        if !restart_policy_set {
            restart.apply(&mut task);
        }
    }
    service_labels.insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
    service_labels.insert(IMAGE_LABEL.to_string(), image.clone());
    if let Some(annotations) = spec.annotations.as_mut() {
        annotations.labels = service_labels;
    }

    // Ports: no port published twice; DNS round robin only with host-mode ports.
    let endpoint = spec.endpoint.get_or_insert_with(EndpointSpec::default);
    let mut seen = HashSet::new();
    for (port, at_node) in &ports {
        if port.published_port != 0 && !seen.insert((port.published_port, port.protocol)) {
            d.error(
                &at_node.at,
                &child(&path, "ports"),
                format!("port {} is published twice", port.published_port),
            );
        }
        if endpoint.mode == ResolutionMode::Dnsrr as i32
            && port.publish_mode == PublishMode::Ingress as i32
        {
            d.error(
                &at_node.at,
                &child(&path, "ports"),
                "endpoint_mode dnsrr cannot be used with ingress ports (publish with mode: host)",
            );
        }
    }
    endpoint.ports = ports.into_iter().map(|(p, _)| p).collect();

    task.container = Some(container);
    spec.task = Some(task);
    (d.errors.len() == errors_before).then_some(Converted {
        spec,
        networks: network_keys,
        explicit_networks,
    })
}

/// `env_file: path`, a list of paths, or long entries `{path, required}`; missing optional
/// files are dropped here.
fn env_file_paths(node: &Node, path: &str, ctx: &Context<'_>, d: &mut Diags) -> Vec<String> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut out = Vec::new();
    for (i, entry) in items.iter().enumerate() {
        let p = item(path, i);
        match &entry.value {
            Value::Map(fields) => {
                let mut file = None;
                let mut required = true;
                for (k, v) in fields {
                    match k.name.as_str() {
                        "path" => file = read::string(v, &child(&p, "path"), d),
                        "required" => {
                            required = read::boolean(v, &child(&p, "required"), d).unwrap_or(true)
                        }
                        "format" => d.unsupported(k, &p, ""),
                        _ if is_extension(k) => {}
                        _ => d.unknown(k, &p),
                    }
                }
                match file {
                    Some(f) if required || ctx.path(&f).exists() => out.push(f),
                    Some(_) => {}
                    None => d.error(&entry.at, &p, "a path is required"),
                }
            }
            _ => {
                if let Some(f) = read::string(entry, &p, d) {
                    out.push(f);
                }
            }
        }
    }
    out
}

/// One item of `ports`: short (`"8080:80/udp"`, `80`) or long syntax.
fn port(node: &Node, path: &str, d: &mut Diags) -> Vec<PortConfig> {
    let Value::Map(fields) = &node.value else {
        let Some(text) = read::string(node, path, d) else {
            return Vec::new();
        };
        return parse_publish(&text).unwrap_or_else(|e| {
            d.error(&node.at, path, e);
            Vec::new()
        });
    };
    let mut port = PortConfig::default();
    let mut target = None;
    for (k, v) in fields {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "target" => target = read::uint(v, &p, d),
            "published" => {
                if let Some(published) = read::uint(v, &p, d) {
                    match u32::try_from(published) {
                        Ok(n) if n <= 65535 => port.published_port = n,
                        _ => d.error(&v.at, &p, format!("invalid port {published}")),
                    }
                }
            }
            "protocol" => match read::string(v, &p, d).as_deref() {
                Some("tcp") => port.protocol = PortProtocol::Tcp as i32,
                Some("udp") => port.protocol = PortProtocol::Udp as i32,
                Some(other) => d.error(
                    &v.at,
                    &p,
                    format!("invalid protocol {other:?}: expected tcp or udp"),
                ),
                None => {}
            },
            "mode" => match read::string(v, &p, d).as_deref() {
                Some("ingress") => port.publish_mode = PublishMode::Ingress as i32,
                Some("host") => port.publish_mode = PublishMode::Host as i32,
                Some(other) => d.error(
                    &v.at,
                    &p,
                    format!("invalid publish mode {other:?}: expected ingress or host"),
                ),
                None => {}
            },
            "name" => port.name = read::string(v, &p, d).unwrap_or_default(),
            "app_protocol" => d.ignored(k, path),
            "host_ip" => d.unsupported(k, path, "ports are published on every address"),
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    match target {
        Some(t @ 1..=65535) => port.target_port = t as u32,
        Some(t) => d.error(
            &node.at,
            &child(path, "target"),
            format!("invalid port {t}"),
        ),
        None => d.error(&node.at, path, "a target port is required"),
    }
    vec![port]
}

/// `secrets:`/`configs:` of a service: names or `{source, target, uid, gid, mode}`. Returns
/// (source key, full name, target) each; an empty target name means "the default".
fn references(
    node: &Node,
    path: &str,
    declared: &HashMap<String, String>,
    what: &str,
    d: &mut Diags,
) -> Vec<(String, String, FileTarget)> {
    let mut out = Vec::new();
    for (i, entry) in read::list(node, path, d)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let p = item(path, i);
        let mut target = FileTarget {
            name: String::new(),
            uid: "0".into(),
            gid: "0".into(),
            mode: 0o444,
        };
        let source = match &entry.value {
            Value::Map(fields) => {
                let mut source = None;
                for (k, v) in fields {
                    let fp = child(&p, &k.name);
                    match k.name.as_str() {
                        "source" => source = read::string(v, &fp, d),
                        "target" => target.name = read::string(v, &fp, d).unwrap_or_default(),
                        "uid" => target.uid = read::string(v, &fp, d).unwrap_or_default(),
                        "gid" => target.gid = read::string(v, &fp, d).unwrap_or_default(),
                        "mode" => {
                            if let Some(mode) = file_mode(v, &fp, d) {
                                target.mode = mode;
                            }
                        }
                        _ if is_extension(k) => {}
                        _ => d.unknown(k, &p),
                    }
                }
                if source.is_none() {
                    d.error(&entry.at, &p, "a source is required");
                }
                source
            }
            _ => read::string(entry, &p, d),
        };
        let Some(source) = source else { continue };
        match declared.get(&source) {
            Some(name) => out.push((source, name.clone(), target)),
            None => d.error(
                &entry.at,
                &p,
                format!("{what} {source:?} is not defined in the top-level {what}s"),
            ),
        }
    }
    out
}

/// A file mode: an integer as YAML reads it (`0440` is octal), or an octal string.
fn file_mode(node: &Node, path: &str, d: &mut Diags) -> Option<u32> {
    let mode = match &node.value {
        Value::Int(i) => u32::try_from(*i).ok(),
        Value::Str(s) => u32::from_str_radix(s.trim().trim_start_matches("0o"), 8).ok(),
        _ => None,
    }
    .filter(|m| *m <= 0o7777);
    if mode.is_none() {
        d.error(
            &node.at,
            path,
            format!("invalid mode {}: expected e.g. 0440", read::describe(node)),
        );
    }
    mode
}

/// `healthcheck:`.
fn healthcheck(node: &Node, path: &str, d: &mut Diags) -> Option<HealthConfig> {
    let fields = read::map(node, path, d)?;
    let mut health = HealthConfig::default();
    let mut disable = None;
    for (k, v) in fields {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "test" => {
                health.test = match &v.value {
                    Value::Seq(_) => {
                        let words = read::strings(v, &p, d).unwrap_or_default();
                        match words.first().map(String::as_str) {
                            Some("CMD") if words.len() > 1 => words,
                            Some("CMD-SHELL") if words.len() == 2 => words,
                            Some("NONE") if words.len() == 1 => words,
                            _ => {
                                d.error(
                                    &v.at,
                                    &p,
                                    "expected [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
                                );
                                Vec::new()
                            }
                        }
                    }
                    _ => match read::string(v, &p, d) {
                        Some(cmd) if cmd.trim().is_empty() => {
                            d.error(&v.at, &p, "empty test command");
                            Vec::new()
                        }
                        Some(cmd) => vec!["CMD-SHELL".into(), cmd],
                        None => Vec::new(),
                    },
                }
            }
            "interval" | "timeout" | "start_period" => {
                if let Some(value) = read::duration(v, &p, d) {
                    if !value.is_zero() && value < std::time::Duration::from_millis(1) {
                        d.error(&v.at, &p, "cannot be less than 1ms");
                    }
                    let value = Some(duration::to_proto(value));
                    match k.name.as_str() {
                        "interval" => health.interval = value,
                        "timeout" => health.timeout = value,
                        _ => health.start_period = value,
                    }
                }
            }
            "retries" => {
                if let Some(r) = read::uint(v, &p, d) {
                    match i32::try_from(r) {
                        Ok(r) => health.retries = r,
                        Err(_) => d.error(&v.at, &p, "too large"),
                    }
                }
            }
            "disable" => disable = read::boolean(v, &p, d).map(|b| (b, k)),
            "start_interval" => d.ignored(k, path),
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    match disable {
        Some((true, k)) => {
            if !health.test.is_empty() {
                d.error(
                    &k.at,
                    &child(path, "disable"),
                    "disable: true conflicts with test",
                );
            }
            Some(HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            })
        }
        _ => Some(health),
    }
}

/// `restart:` of a service: no, always, unless-stopped, on-failure[:N].
fn restart_flags(node: &Node, path: &str, d: &mut Diags) -> RestartFlags {
    let mut flags = RestartFlags::default();
    let Some(text) = read::string(node, path, d) else {
        return flags;
    };
    let (policy, max) = text.split_once(':').unwrap_or((&text, ""));
    flags.restart_condition = match policy {
        "no" => Some(RestartCondition::None),
        "always" | "unless-stopped" => Some(RestartCondition::Any),
        "on-failure" => Some(RestartCondition::OnFailure),
        _ => {
            d.error(
                &node.at,
                path,
                format!("invalid restart policy {text:?}: expected no, always, on-failure[:N] or unless-stopped"),
            );
            None
        }
    };
    if !max.is_empty() {
        match max.parse::<u64>() {
            Ok(n) if policy == "on-failure" => flags.restart_max_attempts = Some(n),
            _ => d.error(
                &node.at,
                path,
                format!("invalid restart policy {text:?}: only on-failure takes a count"),
            ),
        }
    }
    flags
}

/// `extra_hosts:` as `host:ip` / `host=ip` items or a `host: ip` mapping → "IP HOST".
fn extra_hosts(node: &Node, path: &str, d: &mut Diags) -> Vec<String> {
    let pairs: Vec<(String, String)> = match &node.value {
        Value::Map(_) => read::pairs(node, path, d)
            .unwrap_or_default()
            .into_iter()
            .map(|(h, ip)| (h, ip.unwrap_or_default()))
            .collect(),
        _ => read::strings(node, path, d)
            .unwrap_or_default()
            .into_iter()
            .map(|entry| {
                let (host, ip) = entry
                    .split_once('=')
                    .or_else(|| entry.split_once(':'))
                    .unwrap_or((&entry, ""));
                (host.to_string(), ip.to_string())
            })
            .collect(),
    };
    let mut out = Vec::new();
    for (host, ip) in pairs {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || ip.parse::<std::net::IpAddr>().is_err() {
            d.error(
                &node.at,
                path,
                format!("invalid extra host {host:?}: expected HOST:IP"),
            );
            continue;
        }
        out.push(format!("{ip} {host}"));
    }
    out
}

/// `ulimits:` as `name: N` or `name: {soft, hard}`.
fn ulimits(node: &Node, path: &str, d: &mut Diags) -> Vec<Ulimit> {
    let mut out = Vec::new();
    for (k, v) in read::map(node, path, d).unwrap_or_default() {
        let p = child(path, &k.name);
        let (soft, hard) = match &v.value {
            Value::Map(fields) => {
                let (mut soft, mut hard) = (None, None);
                for (fk, fv) in fields {
                    match fk.name.as_str() {
                        "soft" => soft = read::int(fv, &child(&p, "soft"), d),
                        "hard" => hard = read::int(fv, &child(&p, "hard"), d),
                        _ if is_extension(fk) => {}
                        _ => d.unknown(fk, &p),
                    }
                }
                match (soft, hard) {
                    (Some(s), Some(h)) => (s, h),
                    _ => {
                        d.error(&v.at, &p, "both soft and hard are required");
                        continue;
                    }
                }
            }
            _ => match read::int(v, &p, d) {
                Some(n) => (n, n),
                None => continue,
            },
        };
        if soft > hard {
            d.error(&v.at, &p, "soft limit is above the hard limit");
        }
        out.push(Ulimit {
            name: k.name.to_ascii_lowercase(),
            soft,
            hard,
        });
    }
    out
}

/// A tmpfs `PATH[:size=N,mode=M]`.
fn tmpfs_short(text: &str, node: &Node, path: &str, d: &mut Diags) -> Option<Mount> {
    let (target, options) = text.split_once(':').unwrap_or((text, ""));
    if !target.starts_with('/') {
        d.error(
            &node.at,
            path,
            format!("tmpfs target {target:?} must be an absolute path"),
        );
        return None;
    }
    let mut tmpfs = TmpfsOptions::default();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = option.split_once('=').unwrap_or((option, ""));
        match k {
            "size" => match parse_mem_bytes(v) {
                Ok(n) => tmpfs.size_bytes = n,
                Err(e) => d.error(&node.at, path, e),
            },
            "mode" => match u32::from_str_radix(v, 8) {
                Ok(m) if m <= 0o7777 => tmpfs.mode = m,
                _ => d.error(&node.at, path, format!("invalid tmpfs mode {v:?}")),
            },
            _ => d.error(
                &node.at,
                path,
                format!("unsupported tmpfs option {option:?} (size and mode only)"),
            ),
        }
    }
    Some(Mount {
        r#type: MountType::Tmpfs as i32,
        target: target.to_string(),
        tmpfs_options: Some(tmpfs),
        ..Default::default()
    })
}

/// One item of `volumes`: a bind mount or a tmpfs (named volumes are refused).
fn volume(node: &Node, path: &str, ctx: &Context<'_>, d: &mut Diags) -> Option<Mount> {
    let named = || "named and anonymous volumes are not supported; use a bind mount or tmpfs";
    let bind_source = |source: &str| -> Option<String> {
        let expanded = match source.strip_prefix("~/") {
            Some(rest) => {
                std::env::var("HOME")
                    .ok()?
                    .trim_end_matches('/')
                    .to_string()
                    + "/"
                    + rest
            }
            None => source.to_string(),
        };
        Some(ctx.path(&expanded).display().to_string())
    };
    let is_path = |s: &str| s.starts_with('/') || s.starts_with('.') || s.starts_with('~');
    let Value::Map(fields) = &node.value else {
        let text = read::string(node, path, d)?;
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [source, target] => (*source, *target, ""),
            [source, target, mode] => (*source, *target, *mode),
            _ => {
                d.error(&node.at, path, named());
                return None;
            }
        };
        if !is_path(source) {
            d.error(&node.at, path, named());
            return None;
        }
        let read_only = match mode {
            "" | "rw" => false,
            "ro" => true,
            other => {
                d.error(
                    &node.at,
                    path,
                    format!("unsupported volume mode {other:?} (ro or rw)"),
                );
                return None;
            }
        };
        if !target.starts_with('/') {
            d.error(
                &node.at,
                path,
                format!("target {target:?} must be an absolute path"),
            );
            return None;
        }
        return Some(Mount {
            r#type: MountType::Bind as i32,
            source: bind_source(source).unwrap_or_default(),
            target: target.to_string(),
            read_only,
            ..Default::default()
        });
    };
    let mut mount = Mount::default();
    let mut kind = None;
    let mut source = None;
    for (k, v) in fields {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "type" => kind = read::string(v, &p, d).map(|t| (t, v)),
            "source" => source = read::string(v, &p, d),
            "target" => mount.target = read::string(v, &p, d).unwrap_or_default(),
            "read_only" => mount.read_only = read::boolean(v, &p, d).unwrap_or(false),
            "bind" => {
                for (bk, bv) in read::map(v, &p, d).unwrap_or_default() {
                    let bp = child(&p, &bk.name);
                    match bk.name.as_str() {
                        "propagation" => {
                            use berth_proto::v1::BindPropagation as B;
                            let value = match read::string(bv, &bp, d).as_deref() {
                                Some("rprivate") => B::Rprivate,
                                Some("private") => B::Private,
                                Some("rshared") => B::Rshared,
                                Some("shared") => B::Shared,
                                Some("rslave") => B::Rslave,
                                Some("slave") => B::Slave,
                                Some(other) => {
                                    d.error(&bv.at, &bp, format!("invalid propagation {other:?}"));
                                    continue;
                                }
                                None => continue,
                            };
                            mount
                                .bind_options
                                .get_or_insert_with(Default::default)
                                .propagation = value as i32;
                        }
                        "create_host_path" => d.ignored(bk, &p),
                        "selinux" => d.unsupported(bk, &p, ""),
                        _ if is_extension(bk) => {}
                        _ => d.unknown(bk, &p),
                    }
                }
            }
            "tmpfs" => {
                let tmpfs = mount.tmpfs_options.get_or_insert_with(Default::default);
                for (tk, tv) in read::map(v, &p, d).unwrap_or_default() {
                    let tp = child(&p, &tk.name);
                    match tk.name.as_str() {
                        "size" => {
                            if let Some(size) = read::string(tv, &tp, d) {
                                match parse_mem_bytes(&size) {
                                    Ok(n) => tmpfs.size_bytes = n,
                                    Err(e) => d.error(&tv.at, &tp, e),
                                }
                            }
                        }
                        "mode" => {
                            if let Some(m) = file_mode(tv, &tp, d) {
                                tmpfs.mode = m;
                            }
                        }
                        _ if is_extension(tk) => {}
                        _ => d.unknown(tk, &p),
                    }
                }
            }
            "consistency" => d.ignored(k, path),
            "volume" | "image" => d.unsupported(k, path, named()),
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    if !mount.target.starts_with('/') {
        d.error(&node.at, path, "an absolute target path is required");
        return None;
    }
    match kind {
        Some((t, _)) if t == "bind" => {
            let Some(source) = source.filter(|s| !s.is_empty()) else {
                d.error(&node.at, path, "a bind mount needs a source path");
                return None;
            };
            mount.r#type = MountType::Bind as i32;
            mount.source = bind_source(&source).unwrap_or_default();
        }
        Some((t, _)) if t == "tmpfs" => {
            mount.r#type = MountType::Tmpfs as i32;
            mount.tmpfs_options.get_or_insert_with(Default::default);
        }
        Some((t, v)) => {
            d.error(
                &v.at,
                &child(path, "type"),
                format!("volume type {t:?} is not supported (bind or tmpfs)"),
            );
            return None;
        }
        None => {
            d.error(&node.at, path, "a type (bind or tmpfs) is required");
            return None;
        }
    }
    Some(mount)
}

/// A service's `networks`: a list of names or a mapping name → null | `{aliases}`.
fn attachments(
    node: &Node,
    path: &str,
    service: &str,
    declared: &Declared,
    default_network: &str,
    used: &mut Vec<String>,
    d: &mut Diags,
) -> Vec<NetworkAttachmentConfig> {
    let entries: Vec<(String, &Node, Option<&Node>)> = match &node.value {
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| read::string(n, &item(path, i), d).map(|s| (s, n, None)))
            .collect(),
        Value::Map(fields) => fields
            .iter()
            .map(|(k, v)| (k.name.clone(), v, Some(v)))
            .collect(),
        _ => {
            d.error(
                &node.at,
                path,
                format!("expected a list or a mapping, got {}", node.kind()),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (name, at_node, options) in entries {
        let p = child(path, &name);
        let mut aliases = vec![service.to_string()];
        if let Some(options) = options {
            for (k, v) in read::map(options, &p, d).unwrap_or_default() {
                let op = child(&p, &k.name);
                match k.name.as_str() {
                    "aliases" => aliases.extend(read::strings(v, &op, d).unwrap_or_default()),
                    "priority" | "gw_priority" => d.ignored(k, &p),
                    "ipv4_address" | "ipv6_address" | "link_local_ips" | "mac_address"
                    | "driver_opts" | "interface_name" => d.unsupported(k, &p, ""),
                    _ if is_extension(k) => {}
                    _ => d.unknown(k, &p),
                }
            }
        }
        let full = match declared.networks.get(&name) {
            Some(full) => full.clone(),
            // The implicit default network.
            None if name == "default" => default_network.to_string(),
            None => {
                d.error(
                    &at_node.at,
                    &p,
                    format!("network {name:?} is not defined in the top-level networks"),
                );
                continue;
            }
        };
        used.push(name.clone());
        out.push(NetworkAttachmentConfig {
            target: full,
            aliases,
        });
    }
    out
}

/// `deploy:`.
fn deploy(
    node: &Node,
    path: &str,
    spec: &mut ServiceSpec,
    task: &mut berth_proto::v1::TaskSpec,
    labels: &mut HashMap<String, String>,
    restart_policy_set: &mut bool,
    d: &mut Diags,
) {
    let Some(fields) = read::map(node, path, d) else {
        return;
    };
    let mut replicas = None;
    let mut global = false;
    for (k, v) in fields {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "mode" => match read::string(v, &p, d).as_deref() {
                Some("replicated") => {}
                Some("global") => global = true,
                Some(job @ ("replicated-job" | "global-job")) => {
                    d.error(&v.at, &p, format!("{job:?}: jobs are not supported yet"))
                }
                Some(other) => d.error(
                    &v.at,
                    &p,
                    format!("invalid mode {other:?}: expected replicated or global"),
                ),
                None => {}
            },
            "replicas" => replicas = read::uint(v, &p, d).map(|n| (n, k)),
            "endpoint_mode" => {
                if let Some(mode) = read::string(v, &p, d) {
                    match parse_endpoint_mode(&mode) {
                        Ok(m) => {
                            spec.endpoint.get_or_insert_with(EndpointSpec::default).mode = m as i32
                        }
                        Err(e) => d.error(&v.at, &p, e),
                    }
                }
            }
            "labels" => *labels = read::labels(v, &p, d).unwrap_or_default(),
            "resources" => resources(v, &p, task, d),
            "restart_policy" => {
                *restart_policy_set = true;
                restart_policy(v, &p, d).apply(task);
            }
            "update_config" => update_config(v, &p, false, d).apply(&mut spec.update),
            "rollback_config" => update_config(v, &p, true, d).apply(&mut spec.rollback),
            "placement" => placement(v, &p, task, d),
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    if global {
        spec.mode = Some(Mode::Global(GlobalService {}));
        if let Some((_, k)) = replicas {
            d.error(
                &k.at,
                &child(path, "replicas"),
                "replicas can only be used with replicated mode",
            );
        }
        if task.placement.as_ref().is_some_and(|p| p.max_replicas > 0) {
            d.error(
                &node.at,
                &child(path, "placement.max_replicas_per_node"),
                "max_replicas_per_node can only be used with replicated mode",
            );
        }
    } else if let Some((n, _)) = replicas {
        spec.mode = Some(Mode::Replicated(ReplicatedService { replicas: n }));
    }
}

/// `deploy.resources`.
fn resources(node: &Node, path: &str, task: &mut berth_proto::v1::TaskSpec, d: &mut Diags) {
    let mut flags = ResourceFlags::default();
    for (k, v) in read::map(node, path, d).unwrap_or_default() {
        let p = child(path, &k.name);
        let limits = match k.name.as_str() {
            "limits" => true,
            "reservations" => false,
            _ if is_extension(k) => continue,
            _ => {
                d.unknown(k, path);
                continue;
            }
        };
        for (rk, rv) in read::map(v, &p, d).unwrap_or_default() {
            let rp = child(&p, &rk.name);
            match rk.name.as_str() {
                "cpus" => {
                    if let Some(text) = read::string(rv, &rp, d) {
                        match parse_nano_cpus(text.trim()) {
                            Ok(n) if limits => flags.limit_cpu = Some(n),
                            Ok(n) => flags.reserve_cpu = Some(n),
                            Err(e) => d.error(&rv.at, &rp, e),
                        }
                    }
                }
                "memory" => {
                    if let Some(text) = read::string(rv, &rp, d) {
                        match parse_mem_bytes(text.trim()) {
                            Ok(n) if limits => flags.limit_memory = Some(n),
                            Ok(n) => flags.reserve_memory = Some(n),
                            Err(e) => d.error(&rv.at, &rp, e),
                        }
                    }
                }
                "pids" if limits => flags.limit_pids = read::int(rv, &rp, d),
                "generic_resources" | "devices" if !limits => d.unsupported(rk, &p, ""),
                _ if is_extension(rk) => {}
                _ => d.unknown(rk, &p),
            }
        }
    }
    if let Err(e) = flags.apply(task) {
        d.error(&node.at, path, e);
    }
}

/// `deploy.restart_policy`.
fn restart_policy(node: &Node, path: &str, d: &mut Diags) -> RestartFlags {
    let mut flags = RestartFlags::default();
    for (k, v) in read::map(node, path, d).unwrap_or_default() {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "condition" => {
                if let Some(text) = read::string(v, &p, d) {
                    match parse_restart_condition(&text) {
                        Ok(c) => flags.restart_condition = Some(c),
                        Err(e) => d.error(&v.at, &p, e),
                    }
                }
            }
            "delay" => flags.restart_delay = read::duration(v, &p, d),
            "max_attempts" => flags.restart_max_attempts = read::uint(v, &p, d),
            "window" => flags.restart_window = read::duration(v, &p, d),
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    // A policy block without a condition still means Docker's default condition.
    if flags.restart_condition.is_none() {
        flags.restart_condition = Some(RestartCondition::Any);
    }
    flags
}

/// `deploy.update_config` / `deploy.rollback_config`.
fn update_config(node: &Node, path: &str, rollback: bool, d: &mut Diags) -> UpdateConfigValues {
    let mut values = UpdateConfigValues::default();
    for (k, v) in read::map(node, path, d).unwrap_or_default() {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "parallelism" => values.parallelism = read::uint(v, &p, d),
            "delay" => values.delay = read::duration(v, &p, d),
            "monitor" => values.monitor = read::duration(v, &p, d),
            "failure_action" => {
                if let Some(text) = read::string(v, &p, d) {
                    let parsed = if rollback {
                        parse_rollback_failure_action(&text)
                    } else {
                        parse_failure_action(&text)
                    };
                    match parsed {
                        Ok(a) => values.failure_action = Some(a),
                        Err(e) => d.error(&v.at, &p, e),
                    }
                }
            }
            "max_failure_ratio" => {
                let ratio = match &v.value {
                    Value::Float(f) => Some(*f as f32),
                    Value::Int(i) => Some(*i as f32),
                    Value::Str(s) => s.trim().parse::<f32>().ok(),
                    _ => None,
                };
                match ratio {
                    Some(r) if (0.0..=1.0).contains(&r) => values.max_failure_ratio = Some(r),
                    _ => d.error(
                        &v.at,
                        &p,
                        format!(
                            "invalid failure ratio {}: expected a number between 0 and 1",
                            read::describe(v)
                        ),
                    ),
                }
            }
            "order" => {
                if let Some(text) = read::string(v, &p, d) {
                    match parse_order(&text) {
                        Ok(o) => values.order = Some(o),
                        Err(e) => d.error(&v.at, &p, e),
                    }
                }
            }
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    values
}

/// `deploy.placement`.
fn placement(node: &Node, path: &str, task: &mut berth_proto::v1::TaskSpec, d: &mut Diags) {
    let mut placement = Placement::default();
    for (k, v) in read::map(node, path, d).unwrap_or_default() {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "constraints" => {
                for (i, c) in read::list(v, &p, d).unwrap_or_default().iter().enumerate() {
                    if let Some(text) = read::string(c, &item(&p, i), d) {
                        match parse_constraint(&text) {
                            Ok(c) => placement.constraints.push(c),
                            Err(e) => d.error(&c.at, &item(&p, i), e),
                        }
                    }
                }
            }
            "preferences" => {
                for (i, pref) in read::list(v, &p, d).unwrap_or_default().iter().enumerate() {
                    let pp = item(&p, i);
                    for (pk, pv) in read::map(pref, &pp, d).unwrap_or_default() {
                        match pk.name.as_str() {
                            "spread" => {
                                if let Some(descriptor) = read::string(pv, &child(&pp, "spread"), d)
                                {
                                    placement.preferences.push(PlacementPreference {
                                        preference: Some(Preference::Spread(SpreadOver {
                                            spread_descriptor: descriptor,
                                        })),
                                    });
                                }
                            }
                            _ if is_extension(pk) => {}
                            _ => d.unknown(pk, &pp),
                        }
                    }
                }
            }
            "max_replicas_per_node" => {
                placement.max_replicas = read::uint(v, &p, d).unwrap_or_default()
            }
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    if placement != Placement::default() {
        task.placement = Some(placement);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use berth_proto::v1::{ContainerSpec, FailureAction, UpdateOrder};

    use super::*;
    use crate::commands::stack::convert::{Stack, convert as convert_stack};
    use crate::commands::stack::yaml::parse;

    fn env(name: &str) -> Option<String> {
        (name == "FROM_SHELL").then(|| "shell".to_string())
    }

    fn run_in(text: &str, dir: &Path) -> (Stack, Diags) {
        let root = parse(text, "s.yml").unwrap();
        let ctx = Context {
            stack: "app",
            project_dir: dir.to_path_buf(),
            lookup: &env,
        };
        let mut d = Diags::default();
        let stack = convert_stack(&root, &ctx, &mut d);
        (stack, d)
    }

    fn run(text: &str) -> (Stack, Diags) {
        run_in(text, Path::new("/nonexistent"))
    }

    fn ok(text: &str) -> Stack {
        let (stack, d) = run(text);
        assert!(d.ok(), "{:#?}", d.errors);
        stack
    }

    fn container(spec: &ServiceSpec) -> &ContainerSpec {
        spec.task.as_ref().unwrap().container.as_ref().unwrap()
    }

    fn secs(d: &Option<prost_types::Duration>) -> f64 {
        d.as_ref()
            .map_or(-1.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
    }

    const FULL: &str = r#"
services:
  web:
    image: busybox:1.36
    command: httpd -f -p 80
    entrypoint: ["/bin/sh", "-c"]
    environment:
      B: 2
      A: "1"
      FROM_SHELL:
      UNSET:
    working_dir: /srv
    user: "1000:1000"
    hostname: web-{{.Task.Slot}}
    labels: [c=1]
    ports:
      - "8080:80"
      - target: 53
        published: 5353
        protocol: udp
        mode: host
    secrets:
      - pw
      - source: pw
        target: other
        uid: "10"
        gid: "20"
        mode: 0400
    configs:
      - conf
      - source: conf
        target: /etc/x.conf
    healthcheck:
      test: wget -q -O- localhost
      interval: 2s
      timeout: 1s
      retries: 5
      start_period: 3s
    stop_signal: SIGQUIT
    stop_grace_period: 30s
    init: true
    read_only: true
    cap_add: [net_admin]
    cap_drop: [ALL]
    extra_hosts: ["db:10.0.0.5", "cache=10.0.0.6"]
    dns: 10.0.0.2
    dns_search: [example.org]
    dns_opt: ["ndots:2"]
    ulimits:
      nofile: {soft: 1024, hard: 2048}
      nproc: 64
    group_add: [audio]
    tmpfs: /run/cache:size=64m,mode=1777
    volumes:
      - /srv/data:/data:ro
      - type: tmpfs
        target: /scratch
        tmpfs: {size: 1m}
    networks:
      front:
        aliases: [www]
      back:
    deploy:
      mode: replicated
      replicas: 3
      endpoint_mode: vip
      labels: {tier: web}
      resources:
        limits: {cpus: "0.5", memory: 64M, pids: 100}
        reservations: {cpus: 0.25, memory: 33554432}
      restart_policy: {condition: on-failure, delay: 1s, max_attempts: 3, window: 2m}
      update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 0s, max_failure_ratio: 0.2, order: start-first}
      rollback_config: {parallelism: 0, failure_action: continue}
      placement:
        constraints: [node.role==worker, "node.labels.az!=a"]
        preferences: [{spread: node.labels.az}]
        max_replicas_per_node: 2
networks:
  front: {}
  back: {}
secrets:
  pw: {environment: FROM_SHELL}
configs:
  conf: {content: "x=1"}
"#;

    #[test]
    fn every_supported_key_lands_in_the_spec() {
        let stack = ok(FULL);
        let spec = &stack.services[0].spec;
        let annotations = spec.annotations.as_ref().unwrap();
        assert_eq!(annotations.name, "app_web");
        assert_eq!(annotations.labels["tier"], "web");
        assert_eq!(annotations.labels[NAMESPACE_LABEL], "app");
        assert_eq!(annotations.labels[IMAGE_LABEL], "busybox:1.36");
        assert_eq!(
            spec.mode,
            Some(Mode::Replicated(ReplicatedService { replicas: 3 }))
        );
        let c = container(spec);
        assert_eq!(c.image, "busybox:1.36");
        assert_eq!(c.args, ["httpd", "-f", "-p", "80"]);
        assert_eq!(c.command, ["/bin/sh", "-c"]);
        assert_eq!(c.env, ["A=1", "B=2", "FROM_SHELL=shell", "UNSET"]);
        assert_eq!((c.dir.as_str(), c.user.as_str()), ("/srv", "1000:1000"));
        assert_eq!(c.hostname, "web-{{.Task.Slot}}");
        assert_eq!(c.labels["c"], "1");
        assert_eq!(c.labels[NAMESPACE_LABEL], "app");
        assert_eq!(c.secrets.len(), 2);
        assert_eq!(c.secrets[0].secret_name, "app_pw");
        let t = c.secrets[0].target.as_ref().unwrap();
        assert_eq!((t.name.as_str(), t.mode), ("pw", 0o444));
        let t = c.secrets[1].target.as_ref().unwrap();
        assert_eq!(
            (t.name.as_str(), t.uid.as_str(), t.gid.as_str(), t.mode),
            ("other", "10", "20", 0o400)
        );
        assert_eq!(c.configs[0].config_name, "app_conf");
        assert_eq!(c.configs[0].target.as_ref().unwrap().name, "/conf");
        assert_eq!(c.configs[1].target.as_ref().unwrap().name, "/etc/x.conf");
        let h = c.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "wget -q -O- localhost"]);
        assert_eq!(
            (secs(&h.interval), secs(&h.timeout), secs(&h.start_period)),
            (2.0, 1.0, 3.0)
        );
        assert_eq!(h.retries, 5);
        assert_eq!(c.stop_signal, "SIGQUIT");
        assert_eq!(secs(&c.stop_grace_period), 30.0);
        assert_eq!((c.init, c.read_only), (Some(true), true));
        assert_eq!(
            (c.cap_add.as_slice(), c.cap_drop.as_slice()),
            (&["CAP_NET_ADMIN".to_string()][..], &["ALL".to_string()][..])
        );
        assert_eq!(c.hosts, ["10.0.0.5 db", "10.0.0.6 cache"]);
        let dns = c.dns_config.as_ref().unwrap();
        assert_eq!(dns.nameservers, ["10.0.0.2"]);
        assert_eq!(dns.search, ["example.org"]);
        assert_eq!(dns.options, ["ndots:2"]);
        assert_eq!(c.ulimits.len(), 2);
        assert_eq!((c.ulimits[0].soft, c.ulimits[0].hard), (1024, 2048));
        assert_eq!((c.ulimits[1].soft, c.ulimits[1].hard), (64, 64));
        assert_eq!(c.groups, ["audio"]);
        assert_eq!(c.mounts.len(), 3);
        assert_eq!(c.mounts[0].r#type, MountType::Tmpfs as i32);
        assert_eq!(c.mounts[0].target, "/run/cache");
        let tmpfs = c.mounts[0].tmpfs_options.as_ref().unwrap();
        assert_eq!((tmpfs.size_bytes, tmpfs.mode), (64 << 20, 0o1777));
        assert_eq!(c.mounts[1].r#type, MountType::Bind as i32);
        assert_eq!(
            (
                c.mounts[1].source.as_str(),
                c.mounts[1].target.as_str(),
                c.mounts[1].read_only
            ),
            ("/srv/data", "/data", true)
        );
        assert_eq!(c.mounts[2].target, "/scratch");

        let task = spec.task.as_ref().unwrap();
        let nets: Vec<_> = task
            .networks
            .iter()
            .map(|n| (n.target.as_str(), n.aliases.clone()))
            .collect();
        assert_eq!(
            nets,
            [
                ("app_front", vec!["web".to_string(), "www".to_string()]),
                ("app_back", vec!["web".to_string()])
            ]
        );
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
        assert_eq!(placement.preferences.len(), 1);
        let update = spec.update.as_ref().unwrap();
        assert_eq!(update.parallelism, Some(2));
        assert_eq!((secs(&update.delay), secs(&update.monitor)), (10.0, 0.0));
        assert_eq!(update.failure_action, FailureAction::Rollback as i32);
        assert!((update.max_failure_ratio - 0.2).abs() < 1e-6);
        assert_eq!(update.order, UpdateOrder::StartFirst as i32);
        let rollback = spec.rollback.as_ref().unwrap();
        assert_eq!(rollback.parallelism, Some(0));
        assert_eq!(rollback.failure_action, FailureAction::Continue as i32);
        assert_eq!(secs(&rollback.monitor), 5.0, "Docker's default stays");
        let ports = &spec.endpoint.as_ref().unwrap().ports;
        assert_eq!(ports.len(), 2);
        assert_eq!((ports[0].published_port, ports[0].target_port), (8080, 80));
        assert_eq!(ports[1].protocol, PortProtocol::Udp as i32);
        assert_eq!(ports[1].publish_mode, PublishMode::Host as i32);
        assert_eq!((ports[1].published_port, ports[1].target_port), (5353, 53));
        assert_eq!(stack.secrets[0].data, b"shell");
    }

    #[test]
    fn defaults_match_service_create() {
        let stack = ok("services:\n  web:\n    image: busybox\n");
        let spec = &stack.services[0].spec;
        let mut expected = default_spec("app_web", "busybox");
        let annotations = expected.annotations.as_mut().unwrap();
        annotations
            .labels
            .insert(NAMESPACE_LABEL.into(), "app".into());
        annotations
            .labels
            .insert(IMAGE_LABEL.into(), "busybox".into());
        let task = expected.task.as_mut().unwrap();
        task.container
            .as_mut()
            .unwrap()
            .labels
            .insert(NAMESPACE_LABEL.into(), "app".into());
        task.networks = vec![NetworkAttachmentConfig {
            target: "app_default".into(),
            aliases: vec!["web".into()],
        }];
        assert_eq!(spec, &expected);
        // Converting the same file twice gives the same spec (re-deploys compare specs).
        assert_eq!(
            ok("services:\n  web:\n    image: busybox\n").services,
            stack.services
        );
    }

    #[test]
    fn global_mode_restart_and_healthcheck_forms() {
        let stack = ok(
            "services:\n  a:\n    image: x\n    restart: on-failure:4\n    deploy: {mode: global}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n  b:\n    image: x\n    restart: \"no\"\n    healthcheck: {disable: true}\n  c:\n    image: x\n    restart: always\n    deploy:\n      restart_policy: {condition: none}\n",
        );
        let a = &stack.services[0].spec;
        assert_eq!(a.mode, Some(Mode::Global(GlobalService {})));
        let restart = a.task.as_ref().unwrap().restart.as_ref().unwrap();
        assert_eq!(
            (restart.condition, restart.max_attempts),
            (RestartCondition::OnFailure as i32, 4)
        );
        assert_eq!(
            container(a).healthcheck.as_ref().unwrap().test,
            ["CMD", "true"]
        );
        let b = &stack.services[1].spec;
        let restart = b.task.as_ref().unwrap().restart.as_ref().unwrap();
        assert_eq!(restart.condition, RestartCondition::None as i32);
        assert_eq!(container(b).healthcheck.as_ref().unwrap().test, ["NONE"]);
        let c = &stack.services[2].spec;
        let restart = c.task.as_ref().unwrap().restart.as_ref().unwrap();
        assert_eq!(
            restart.condition,
            RestartCondition::None as i32,
            "deploy.restart_policy wins over restart"
        );
    }

    #[test]
    fn env_files_are_read_relative_to_the_project() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.env"),
            "# c\nA=from-file\nB=from-file\nFROM_SHELL\n",
        )
        .unwrap();
        let text = "services:\n  web:\n    image: x\n    env_file:\n      - web.env\n      - path: optional.env\n        required: false\n    environment: [B=override]\n";
        let (stack, d) = run_in(text, dir.path());
        assert!(d.ok(), "{:?}", d.errors);
        assert_eq!(
            container(&stack.services[0].spec).env,
            ["A=from-file", "B=override", "FROM_SHELL=shell"]
        );
        let (_, d) = run_in(
            "services:\n  web:\n    image: x\n    env_file: missing.env\n",
            dir.path(),
        );
        assert_eq!(d.errors.len(), 1);
        assert!(
            d.errors[0].starts_with("s.yml line 4: services.web.env_file: reading "),
            "{:?}",
            d.errors
        );
    }

    #[test]
    fn bad_keys_and_values_name_key_and_line() {
        let text = r#"services:
  web:
    image: busybox
    depends_on: [db]
    build: .
    privileged: true
    mem_limit: 1g
    deploy:
      replicas: many
      foo: 1
      x-note: fine
      resources:
        limits: {memory: 12Q}
      placement:
        constraints: [node.colour==red]
    ports:
      - "80:80"
      - "80:80"
      - {published: 1}
    secrets: [nope]
    networks: [elsewhere]
    healthcheck:
      test: ["SH", "x"]
      interval: soon
    restart: sometimes
    volumes:
      - data:/data
    x-ok: 1
  db:
    command: x
"#;
        let (_, d) = run(text);
        let errors = d.errors.join("\n");
        for wanted in [
            "s.yml line 6: services.web.privileged: not supported by berth stack deploy",
            "s.yml line 7: services.web.mem_limit: not supported by berth stack deploy (use deploy.resources.limits.memory)",
            "s.yml line 9: services.web.deploy.replicas: expected a non-negative integer, got \"many\"",
            "s.yml line 10: services.web.deploy.foo: unknown key",
            "s.yml line 13: services.web.deploy.resources.limits.memory: invalid size",
            "s.yml line 15: services.web.deploy.placement.constraints[0]: invalid constraint",
            "s.yml line 18: services.web.ports: port 80 is published twice",
            "s.yml line 19: services.web.ports[2]: a target port is required",
            "s.yml line 20: services.web.secrets[0]: secret \"nope\" is not defined in the top-level secrets",
            "s.yml line 21: services.web.networks.elsewhere: network \"elsewhere\" is not defined",
            "s.yml line 23: services.web.healthcheck.test: expected",
            "s.yml line 24: services.web.healthcheck.interval: invalid duration",
            "s.yml line 25: services.web.restart: invalid restart policy",
            "s.yml line 27: services.web.volumes[0]: named and anonymous volumes are not supported",
            "s.yml line 29: services.db: an image is required",
        ] {
            assert!(errors.contains(wanted), "missing {wanted:?} in\n{errors}");
        }
        assert_eq!(d.errors.len(), 15, "{errors}");
        assert_eq!(
            d.warnings,
            [
                "s.yml line 4: services.web.depends_on: ignored (not used by stack deploy)",
                "s.yml line 5: services.web.build: ignored (not used by stack deploy)"
            ]
        );
    }

    #[test]
    fn mode_conflicts_and_dnsrr_ports_are_refused() {
        let (_, d) = run(
            "services:\n  a:\n    image: x\n    deploy:\n      mode: global\n      replicas: 2\n",
        );
        assert_eq!(
            d.errors,
            [
                "s.yml line 6: services.a.deploy.replicas: replicas can only be used with replicated mode"
            ]
        );
        let (_, d) = run(
            "services:\n  a:\n    image: x\n    ports: [\"80:80\"]\n    deploy: {endpoint_mode: dnsrr}\n",
        );
        assert!(d.errors[0].contains("dnsrr"), "{:?}", d.errors);
        let (_, d) = run("services:\n  a:\n    image: x\n    deploy: {mode: replicated-job}\n");
        assert!(
            d.errors[0].contains("jobs are not supported"),
            "{:?}",
            d.errors
        );
        let (_, d) = run("services:\n  Bad-Name-:\n    image: x\n");
        assert!(
            d.errors[0].contains("invalid service name"),
            "{:?}",
            d.errors
        );
    }
}
