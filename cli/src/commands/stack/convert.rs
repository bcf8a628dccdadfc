//! A merged, interpolated Compose tree → a [`Stack`]: the networks, secrets, configs and
//! service specs one deploy needs, all checked before anything is sent to the managers.
//!
//! Names follow `docker stack deploy`: objects are `STACK_KEY` (a top-level `name:` is used as
//! written, external objects keep their own name), and every object the stack owns carries the
//! label `com.docker.stack.namespace=STACK`. Services without `networks:` join the `default`
//! network, `STACK_default`. Only networks some service uses are created; every declared
//! secret and config is.
//!
//! Top-level keys: `version` (accepted, unused), `name` (ignored: the stack's name is given on
//! the command line), `services`, `networks`, `secrets`, `configs`, `volumes` (must be empty:
//! named volumes are not supported), and `x-` extensions. The per-service keys are in
//! [`super::service`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use berth_proto::v1::{Annotations, IpamConfig, IpamOptions, NetworkSpec, ServiceSpec};

use super::read::{self, Diags, child, is_extension};
use super::service;
use super::yaml::{At, Node, Value};

/// The label that marks what a stack owns.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// The service label with the image as the file names it.
pub const IMAGE_LABEL: &str = "com.docker.stack.image";
/// Secrets must be smaller than this (Docker's limit).
pub const MAX_SECRET_SIZE: usize = 500 * 1024;
/// Configs must be smaller than this (Docker's limit).
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;

/// What converting needs besides the tree.
pub struct Context<'a> {
    /// The stack's name.
    pub stack: &'a str,
    /// Relative paths (env_file, secret and config files, bind sources) start here: the
    /// directory of the first Compose file.
    pub project_dir: PathBuf,
    /// Variables for `environment: [NAME]` without a value and env_file lines without one.
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Context<'_> {
    /// `STACK_name`.
    pub fn scoped(&self, name: &str) -> String {
        format!("{}_{name}", self.stack)
    }

    /// A path from the file, relative to the project directory.
    pub fn path(&self, text: &str) -> PathBuf {
        let path = Path::new(text);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.project_dir.join(path)
        }
    }
}

/// One service of the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    /// Its key in the file (`web`).
    pub key: String,
    /// The full spec; network targets are network names and secret/config references carry
    /// names only: the deploy fills in ids.
    pub spec: ServiceSpec,
    /// Where it is declared.
    pub at: At,
}

/// One network the stack uses.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkPlan {
    /// Its key in the file (`default`, `back`).
    pub key: String,
    /// Its full name (`STACK_back`, or the external network's name).
    pub name: String,
    /// Declared `external`: it must exist and is never created or removed.
    pub external: bool,
    /// The spec to create it with (unused when external).
    pub spec: NetworkSpec,
    /// Where it is declared (or first used, for an undeclared default network).
    pub at: At,
}

/// One secret or config the stack declares.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePlan {
    /// Its key in the file.
    pub key: String,
    /// Its full name.
    pub name: String,
    /// Declared `external`: it must exist and is never created or removed.
    pub external: bool,
    /// Its content (empty when external).
    pub data: Vec<u8>,
    /// Its labels, the namespace label included.
    pub labels: HashMap<String, String>,
    /// Where it is declared.
    pub at: At,
}

/// Everything one deploy creates or updates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stack {
    /// The stack's name.
    pub name: String,
    /// Services, in file order.
    pub services: Vec<ServicePlan>,
    /// Networks some service uses, in file order (the default network first when used).
    pub networks: Vec<NetworkPlan>,
    /// Declared secrets.
    pub secrets: Vec<FilePlan>,
    /// Declared configs.
    pub configs: Vec<FilePlan>,
    /// Where the file first names a network itself (top-level `networks` or a service's
    /// `networks`); `None` when the stack only uses its implicit default network.
    pub explicit_networks: Option<At>,
}

/// The names a service may refer to: top-level keys → full names.
#[derive(Debug, Default)]
pub struct Declared {
    /// Network keys → full names.
    pub networks: HashMap<String, String>,
    /// Secret keys → full names.
    pub secrets: HashMap<String, String>,
    /// Config keys → full names.
    pub configs: HashMap<String, String>,
}

/// Checks a stack name: letters, digits, `-` and `_`, starting with a letter or digit.
pub fn validate_stack_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid stack name {name:?}: use letters, digits, '-' and '_', starting with a letter or digit"
        ))
    }
}

fn namespace_labels(
    ctx: &Context<'_>,
    mut labels: HashMap<String, String>,
) -> HashMap<String, String> {
    labels.insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
    labels
}

/// Converts the whole tree; problems go to `d` (the stack is meaningful only if `d.ok()`).
pub fn convert(root: &Node, ctx: &Context<'_>, d: &mut Diags) -> Stack {
    let mut stack = Stack {
        name: ctx.stack.to_string(),
        ..Default::default()
    };
    let Some(entries) = read::map(root, "(top level)", d) else {
        return stack;
    };
    if entries.is_empty() {
        d.error(&root.at, "(top level)", "the file is empty");
        return stack;
    }
    let mut networks_node = None;
    let mut services_node = None;
    for (key, value) in entries {
        match key.name.as_str() {
            "version" => {}
            "name" => d.warn(
                &key.at,
                "name",
                "ignored (the stack's name is the one given to berth stack deploy)",
            ),
            "services" => services_node = Some(value),
            "networks" => {
                networks_node = Some(value);
                if value.as_map().is_some_and(|m| !m.is_empty()) {
                    stack
                        .explicit_networks
                        .get_or_insert_with(|| key.at.clone());
                }
            }
            "secrets" => stack.secrets = files(value, "secrets", ctx, d),
            "configs" => stack.configs = files(value, "configs", ctx, d),
            "volumes" => {
                if let Some(volumes) = read::map(value, "volumes", d) {
                    for (k, _) in volumes {
                        d.unsupported(
                            k,
                            "volumes",
                            "named volumes are not supported; use a bind mount or tmpfs",
                        );
                    }
                }
            }
            "include" => d.unsupported(key, "", "merge files with several -c instead"),
            _ if is_extension(key) => {}
            _ => d.unknown(key, ""),
        }
    }
    let declared_networks = networks(networks_node, ctx, d);
    let declared = Declared {
        networks: declared_networks
            .iter()
            .map(|n| (n.key.clone(), n.name.clone()))
            .collect(),
        secrets: stack
            .secrets
            .iter()
            .map(|s| (s.key.clone(), s.name.clone()))
            .collect(),
        configs: stack
            .configs
            .iter()
            .map(|c| (c.key.clone(), c.name.clone()))
            .collect(),
    };
    let Some(services_node) = services_node else {
        d.error(&root.at, "services", "the file defines no services");
        return stack;
    };
    let mut used = BTreeSet::new();
    let mut first_use: HashMap<String, At> = HashMap::new();
    if let Some(services) = read::map(services_node, "services", d) {
        if services.is_empty() {
            d.error(
                &services_node.at,
                "services",
                "the file defines no services",
            );
        }
        for (key, value) in services {
            let path = child("services", &key.name);
            let full = ctx.scoped(&key.name);
            if let Err(e) = berth_proto::naming::validate_service_name(&full) {
                d.error(
                    &key.at,
                    &path,
                    format!("invalid service name {full:?}: {e}"),
                );
                continue;
            }
            let Some(converted) = service::convert(key, value, ctx, &declared, d) else {
                continue;
            };
            if converted.explicit_networks {
                stack
                    .explicit_networks
                    .get_or_insert_with(|| key.at.clone());
            }
            for network in converted.networks {
                first_use.entry(network.clone()).or_insert(key.at.clone());
                used.insert(network);
            }
            stack.services.push(ServicePlan {
                key: key.name.clone(),
                spec: converted.spec,
                at: key.at.clone(),
            });
        }
    }
    // Networks in file order, the implicit default first.
    if used.contains("default") && !declared.networks.contains_key("default") {
        stack.networks.push(NetworkPlan {
            key: "default".into(),
            name: ctx.scoped("default"),
            external: false,
            spec: overlay_spec(
                &ctx.scoped("default"),
                namespace_labels(ctx, HashMap::new()),
            ),
            at: first_use.get("default").cloned().unwrap_or(root.at.clone()),
        });
    }
    stack.networks.extend(
        declared_networks
            .into_iter()
            .filter(|n| used.contains(&n.key)),
    );
    stack
}

/// An overlay network spec.
fn overlay_spec(name: &str, labels: HashMap<String, String>) -> NetworkSpec {
    NetworkSpec {
        annotations: Some(Annotations {
            name: name.to_string(),
            labels,
        }),
        driver: "overlay".into(),
        ..Default::default()
    }
}

/// `external: true` or the legacy `external: {name: N}`; returns (external, legacy name).
fn external(node: &Node, path: &str, d: &mut Diags) -> (bool, Option<String>) {
    match &node.value {
        Value::Map(entries) => {
            let mut name = None;
            for (k, v) in entries {
                match k.name.as_str() {
                    "name" => name = read::string(v, &child(path, "name"), d),
                    _ if is_extension(k) => {}
                    _ => d.unknown(k, path),
                }
            }
            (true, name)
        }
        _ => (read::boolean(node, path, d).unwrap_or(false), None),
    }
}

/// The top-level `networks`.
fn networks(node: Option<&Node>, ctx: &Context<'_>, d: &mut Diags) -> Vec<NetworkPlan> {
    let Some(node) = node else {
        return Vec::new();
    };
    let Some(entries) = read::map(node, "networks", d) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in entries {
        let path = child("networks", &key.name);
        let Some(fields) = read::map(value, &path, d) else {
            continue;
        };
        let mut spec = NetworkSpec {
            driver: "overlay".into(),
            ..Default::default()
        };
        let mut labels = HashMap::new();
        let mut name = None;
        let mut is_external = false;
        let mut configured = None;
        for (k, v) in fields {
            let p = child(&path, &k.name);
            match k.name.as_str() {
                "driver" => {
                    configured.get_or_insert(k);
                    if let Some(driver) = read::string(v, &p, d)
                        && driver != "overlay"
                    {
                        d.error(
                            &v.at,
                            &p,
                            format!("driver {driver:?} is not supported (only overlay)"),
                        );
                    }
                }
                "driver_opts" => {
                    configured.get_or_insert(k);
                    if let Some(opts) = read::labels(v, &p, d) {
                        spec.driver_options = opts;
                    }
                }
                "ipam" => {
                    configured.get_or_insert(k);
                    spec.ipam = ipam(v, &p, d);
                }
                "internal" => {
                    configured.get_or_insert(k);
                    spec.internal = read::boolean(v, &p, d).unwrap_or(false);
                }
                "attachable" => {
                    configured.get_or_insert(k);
                    spec.attachable = read::boolean(v, &p, d).unwrap_or(false);
                }
                "labels" => labels = read::labels(v, &p, d).unwrap_or_default(),
                "name" => name = read::string(v, &p, d),
                "external" => {
                    let (ext, legacy) = external(v, &p, d);
                    is_external = ext;
                    if legacy.is_some() {
                        name = legacy;
                    }
                }
                "enable_ipv6" => {
                    if read::boolean(v, &p, d) == Some(true) {
                        d.unsupported(k, &path, "IPv6 networks");
                    }
                }
                _ if is_extension(k) => {}
                _ => d.unknown(k, &path),
            }
        }
        if is_external && let Some(k) = configured {
            d.error(
                &k.at,
                &child(&path, &k.name),
                "an external network cannot be configured here",
            );
        }
        let full = match (&name, is_external) {
            (Some(n), _) => n.clone(),
            (None, true) => key.name.clone(),
            (None, false) => ctx.scoped(&key.name),
        };
        if let Err(e) = berth_proto::naming::validate_network_name(&full) {
            d.error(
                &key.at,
                &path,
                format!("invalid network name {full:?}: {e}"),
            );
            continue;
        }
        spec.annotations = Some(Annotations {
            name: full.clone(),
            labels: namespace_labels(ctx, labels),
        });
        out.push(NetworkPlan {
            key: key.name.clone(),
            name: full,
            external: is_external,
            spec,
            at: key.at.clone(),
        });
    }
    out
}

/// A network's `ipam`.
fn ipam(node: &Node, path: &str, d: &mut Diags) -> Option<IpamOptions> {
    let fields = read::map(node, path, d)?;
    let mut options = IpamOptions::default();
    for (k, v) in fields {
        let p = child(path, &k.name);
        match k.name.as_str() {
            "driver" => {
                if let Some(driver) = read::string(v, &p, d)
                    && driver != "default"
                {
                    d.error(
                        &v.at,
                        &p,
                        format!("IPAM driver {driver:?} is not supported (only default)"),
                    );
                }
            }
            "config" => {
                for (i, entry) in read::list(v, &p, d).unwrap_or_default().iter().enumerate() {
                    let ip = read::item(&p, i);
                    let mut config = IpamConfig::default();
                    for (ck, cv) in read::map(entry, &ip, d).unwrap_or_default() {
                        let cp = child(&ip, &ck.name);
                        match ck.name.as_str() {
                            "subnet" => {
                                config.subnet = read::string(cv, &cp, d).unwrap_or_default()
                            }
                            "ip_range" => {
                                config.range = read::string(cv, &cp, d).unwrap_or_default()
                            }
                            "gateway" => {
                                config.gateway = read::string(cv, &cp, d).unwrap_or_default()
                            }
                            "aux_addresses" => d.unsupported(ck, &ip, ""),
                            _ if is_extension(ck) => {}
                            _ => d.unknown(ck, &ip),
                        }
                    }
                    if config.subnet.is_empty() {
                        d.error(&entry.at, &ip, "a subnet is required");
                    }
                    options.configs.push(config);
                }
            }
            "options" => d.unsupported(k, path, ""),
            _ if is_extension(k) => {}
            _ => d.unknown(k, path),
        }
    }
    Some(options)
}

/// The top-level `secrets` or `configs` (`what`).
fn files(node: &Node, what: &str, ctx: &Context<'_>, d: &mut Diags) -> Vec<FilePlan> {
    let is_secret = what == "secrets";
    let Some(entries) = read::map(node, what, d) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in entries {
        let path = child(what, &key.name);
        let Some(fields) = read::map(value, &path, d) else {
            continue;
        };
        let mut name = None;
        let mut labels = HashMap::new();
        let mut is_external = false;
        let mut sources: Vec<(&str, &Node)> = Vec::new();
        for (k, v) in fields {
            let p = child(&path, &k.name);
            match k.name.as_str() {
                "file" | "environment" => sources.push((k.name.as_str(), v)),
                "content" if !is_secret => sources.push(("content", v)),
                "external" => {
                    let (ext, legacy) = external(v, &p, d);
                    is_external = ext;
                    if legacy.is_some() {
                        name = legacy;
                    }
                }
                "name" => name = read::string(v, &p, d),
                "labels" => labels = read::labels(v, &p, d).unwrap_or_default(),
                "driver" | "driver_opts" | "template_driver" => d.unsupported(k, &path, ""),
                _ if is_extension(k) => {}
                _ => d.unknown(k, &path),
            }
        }
        let full = match (&name, is_external) {
            (Some(n), _) => n.clone(),
            (None, true) => key.name.clone(),
            (None, false) => ctx.scoped(&key.name),
        };
        let valid = if is_secret {
            berth_proto::naming::validate_secret_name(&full)
        } else {
            berth_proto::naming::validate_config_name(&full)
        };
        if let Err(e) = valid {
            d.error(&key.at, &path, format!("invalid name {full:?}: {e}"));
            continue;
        }
        let data = match (sources.as_slice(), is_external) {
            ([], true) => Vec::new(),
            ([(_, v), ..], true) => {
                d.error(
                    &v.at,
                    &path,
                    "an external object takes its content from the cluster: remove file/environment/content",
                );
                continue;
            }
            ([], false) => {
                let choices = if is_secret {
                    "file, environment or external"
                } else {
                    "file, environment, content or external"
                };
                d.error(&key.at, &path, format!("one of {choices} is required"));
                continue;
            }
            ([(source, v)], false) => match content(source, v, &child(&path, source), ctx, d) {
                Some(data) => data,
                None => continue,
            },
            ([_, (_, v), ..], false) => {
                d.error(
                    &v.at,
                    &path,
                    "give only one of file, environment and content",
                );
                continue;
            }
        };
        let max = if is_secret {
            MAX_SECRET_SIZE
        } else {
            MAX_CONFIG_SIZE
        };
        if !is_external && (data.len() >= max || data.is_empty()) {
            let limit = if is_secret {
                "larger than 0 and less than 500 KiB"
            } else {
                "larger than 0 and less than 1000 KiB"
            };
            d.error(
                &key.at,
                &path,
                format!("content is {} bytes; it must be {limit}", data.len()),
            );
            continue;
        }
        out.push(FilePlan {
            key: key.name.clone(),
            name: full,
            external: is_external,
            data,
            labels: if is_external {
                labels
            } else {
                namespace_labels(ctx, labels)
            },
            at: key.at.clone(),
        });
    }
    out
}

/// The content of a secret or config from `file`, `environment` or `content`.
fn content(
    source: &str,
    node: &Node,
    path: &str,
    ctx: &Context<'_>,
    d: &mut Diags,
) -> Option<Vec<u8>> {
    let text = read::string(node, path, d)?;
    match source {
        "file" => {
            let file = ctx.path(&text);
            match std::fs::read(&file) {
                Ok(data) => Some(data),
                Err(e) => {
                    d.error(&node.at, path, format!("reading {}: {e}", file.display()));
                    None
                }
            }
        }
        "environment" => match (ctx.lookup)(&text) {
            Some(value) => Some(value.into_bytes()),
            None => {
                d.error(
                    &node.at,
                    path,
                    format!("environment variable {text} is not set"),
                );
                None
            }
        },
        _ => Some(text.into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::stack::yaml::parse;

    pub(crate) fn ctx_in<'a>(
        dir: &Path,
        lookup: &'a dyn Fn(&str) -> Option<String>,
    ) -> Context<'a> {
        Context {
            stack: "app",
            project_dir: dir.to_path_buf(),
            lookup,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn run(text: &str, dir: &Path) -> (Stack, Diags) {
        let root = parse(text, "s.yml").unwrap();
        let mut d = Diags::default();
        let stack = convert(&root, &ctx_in(dir, &no_env), &mut d);
        (stack, d)
    }

    #[test]
    fn top_level_objects_get_stack_names_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw.txt"), "hunter2").unwrap();
        let text = "version: \"3.8\"\nx-any: {a: 1}\nservices:\n  web:\n    image: busybox\n  api:\n    image: busybox\n    networks: [back, ext]\nnetworks:\n  back:\n    driver_opts: {com.example: x}\n    labels: [tier=back]\n  unused: {}\n  ext:\n    external: true\n    name: shared\nsecrets:\n  pw:\n    file: ./pw.txt\n  outside:\n    external: true\nconfigs:\n  conf:\n    content: hello\n    name: fixed_name\n";
        let (stack, d) = run(text, dir.path());
        assert!(d.ok() && d.warnings.is_empty(), "{d:?}");
        let names: Vec<_> = stack.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["app_default", "app_back", "shared"]);
        let back = &stack.networks[1];
        let labels = &back.spec.annotations.as_ref().unwrap().labels;
        assert_eq!(labels[NAMESPACE_LABEL], "app");
        assert_eq!(labels["tier"], "back");
        assert_eq!(back.spec.driver_options["com.example"], "x");
        assert!(stack.networks[2].external);
        assert_eq!(stack.explicit_networks.as_ref().unwrap().line, 9);

        assert_eq!(stack.secrets.len(), 2);
        assert_eq!(
            (
                stack.secrets[0].name.as_str(),
                stack.secrets[0].data.as_slice()
            ),
            ("app_pw", b"hunter2".as_slice())
        );
        assert_eq!(stack.secrets[0].labels[NAMESPACE_LABEL], "app");
        assert!(stack.secrets[1].external && stack.secrets[1].name == "outside");
        assert_eq!(stack.configs[0].name, "fixed_name");
        assert_eq!(stack.configs[0].data, b"hello");
        let services: Vec<_> = stack.services.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(services, ["web", "api"]);
    }

    #[test]
    fn only_the_default_network_is_implicit() {
        let dir = tempfile::tempdir().unwrap();
        let (stack, d) = run("services:\n  web:\n    image: busybox\n", dir.path());
        assert!(d.ok(), "{d:?}");
        assert_eq!(stack.networks.len(), 1);
        assert_eq!(stack.networks[0].name, "app_default");
        assert!(stack.explicit_networks.is_none());
    }

    #[test]
    fn top_level_problems_name_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "services:\n  web:\n    image: busybox\nvolumes:\n  data: {}\nnetworks:\n  n:\n    driver: bridge\n    ipv4: x\nsecrets:\n  s:\n    file: missing.txt\n  t: {}\nconfigs:\n  c:\n    content: a\n    file: b\nbogus: 1\nname: x\n";
        let (_, d) = run(text, dir.path());
        let errors = d.errors.join("\n");
        for wanted in [
            "s.yml line 5: volumes.data: not supported by berth stack deploy (named volumes",
            "s.yml line 8: networks.n.driver: driver \"bridge\" is not supported (only overlay)",
            "s.yml line 9: networks.n.ipv4: unknown key",
            "s.yml line 12: secrets.s.file: reading ",
            "s.yml line 13: secrets.t: one of file, environment or external is required",
            "give only one of file, environment and content",
            "s.yml line 18: bogus: unknown key",
        ] {
            assert!(errors.contains(wanted), "{wanted}\n--\n{errors}");
        }
        assert_eq!(
            d.warnings,
            [
                "s.yml line 19: name: ignored (the stack's name is the one given to berth stack deploy)"
            ]
        );
        let (_, d) = run("x-only: 1\n", dir.path());
        assert_eq!(
            d.errors,
            ["s.yml line 1: services: the file defines no services"]
        );
    }

    #[test]
    fn stack_names_are_checked() {
        assert!(validate_stack_name("app-1_x").is_ok());
        for bad in ["", "-a", "a b", "a.b", "ä"] {
            assert!(validate_stack_name(bad).is_err(), "{bad}");
        }
    }
}
