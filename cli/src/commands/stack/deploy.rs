//! `berth stack deploy -c FILE... [--prune] NAME`: makes the cluster hold the stack.
//!
//! Three phases, in order:
//! 1. the files become a checked [`Stack`] ([`super::load::plan`]) — no cluster call yet;
//! 2. a read-only check of the cluster ([`check`]): which networks, secrets, configs and
//!    services exist; external objects must; a stack service may not change mode, and a name
//!    may not belong to something outside the stack; a stack that needs networks, secrets or
//!    configs on a cluster whose managers do not offer them yet stops here, before any write;
//! 3. the writes ([`apply`]): existing secrets are sent again, so the managers refuse a
//!    changed content (secrets are immutable, and their content is never read back) before
//!    anything is created; then networks, new secrets and configs, then services — created
//!    when missing, updated (with the version read) only when their spec differs, untouched
//!    otherwise — and with `--prune`, the removal of stack services no longer in the files.
//!
//! If a write fails, the deploy undoes its own earlier writes in reverse order (removes what
//! it created, rolls back the services it updated) before reporting the error, so a failed
//! deploy leaves the stack as it found it. Pruning runs last, after every other write
//! succeeded, since a removal cannot be undone.

use std::collections::HashMap;
use std::path::PathBuf;

use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    Annotations, Config, ConfigSpec, CreateConfigRequest, CreateNetworkRequest,
    CreateSecretRequest, CreateServiceRequest, GetServiceRequest, ListConfigsRequest,
    ListNetworksRequest, ListSecretsRequest, Network, RemoveConfigRequest, RemoveNetworkRequest,
    RemoveSecretRequest, RemoveServiceRequest, Secret, SecretSpec, Service, ServiceSpec,
    UpdateConfigRequest, UpdateSecretRequest, UpdateServiceRequest,
};
use clap::Args;

use super::convert::{FilePlan, NAMESPACE_LABEL, Stack};
use super::load;
use crate::commands::service::progress::{self, RenderMode, WatchOptions};
use crate::commands::service::{list_services, service_name};
use crate::commands::{Daemon, short_id, status_error};

/// `berth stack deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Path to a Compose file, or "-" to read from stdin
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "strings",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Prune services that are no longer referenced
    #[arg(long)]
    pub prune: bool,
    /// Exit immediately instead of waiting for the stack services to converge
    #[arg(short, long, num_args = 0..=1, require_equals = true, default_value_t = true,
          default_missing_value = "true", value_name = "bool",
          action = clap::ArgAction::Set)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// Stack name
    #[arg(value_name = "STACK")]
    pub name: String,
}

/// An object kind the Control API may not offer yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Network,
    Secret,
    Config,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Network => "networks",
            Kind::Secret => "secrets",
            Kind::Config => "configs",
        }
    }
}

/// The answer of a list call the managers may not implement yet: `None` when UNIMPLEMENTED.
fn offered<T>(result: Result<T, tonic::Status>) -> anyhow::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(None),
        Err(status) => Err(status_error(status)),
    }
}

fn unavailable(kind: Kind, at: &super::yaml::At) -> anyhow::Error {
    anyhow::anyhow!(
        "{at}: this stack uses {}, which the cluster's managers do not offer yet; nothing was deployed",
        kind.plural()
    )
}

fn labels_of(annotations: Option<&Annotations>) -> HashMap<String, String> {
    annotations.map(|a| a.labels.clone()).unwrap_or_default()
}

fn in_stack(annotations: Option<&Annotations>, stack: &str) -> bool {
    annotations
        .and_then(|a| a.labels.get(NAMESPACE_LABEL))
        .is_some_and(|ns| ns == stack)
}

/// What the cluster already holds, found by [`check`].
#[derive(Debug, Default)]
pub struct Found {
    /// Whether networks are offered; when not, services attach to none.
    pub networks_offered: bool,
    /// Existing networks by name.
    pub networks: HashMap<String, Network>,
    /// Existing secrets by name.
    pub secrets: HashMap<String, Secret>,
    /// Existing configs by name.
    pub configs: HashMap<String, Config>,
    /// Existing services by name.
    pub services: HashMap<String, Service>,
    /// Services of the stack no longer in the files (for `--prune`).
    pub orphans: Vec<Service>,
}

/// Phase 2: reads the cluster and refuses what cannot be deployed. Adjusts `stack` when the
/// managers offer no networks (services then join none).
pub async fn check(daemon: &mut Daemon, stack: &mut Stack) -> anyhow::Result<Found> {
    let mut found = Found::default();
    let mut problems = Vec::new();

    // Services: by name, and the stack's own.
    let services = list_services(daemon).await?;
    for s in services {
        let name = service_name(&s).to_string();
        let annotations = s.spec.as_ref().and_then(|sp| sp.annotations.as_ref());
        let planned = stack
            .services
            .iter()
            .find(|p| p.spec.annotations.as_ref().is_some_and(|a| a.name == name));
        match planned {
            Some(plan) => {
                if !in_stack(annotations, &stack.name) {
                    problems.push(format!(
                        "{}: service {name} already exists and is not part of stack {}",
                        plan.at, stack.name
                    ));
                } else if mode_kind(s.spec.as_ref()) != mode_kind(Some(&plan.spec)) {
                    problems.push(format!(
                        "{}: service {name} cannot change between replicated and global mode (remove it first)",
                        plan.at
                    ));
                }
                found.services.insert(name, s);
            }
            None if in_stack(annotations, &stack.name) => found.orphans.push(s),
            None => {}
        }
    }

    // Networks.
    if !stack.networks.is_empty() {
        let answer = daemon
            .control
            .list_networks(ListNetworksRequest::default())
            .await;
        match offered(answer)? {
            Some(list) => {
                found.networks_offered = true;
                for n in list.into_inner().networks {
                    let name = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.annotations.as_ref())
                        .map_or(String::new(), |a| a.name.clone());
                    found.networks.insert(name, n);
                }
                for plan in &stack.networks {
                    if plan.external && !found.networks.contains_key(&plan.name) {
                        problems.push(format!(
                            "{}: network {:?} is declared as external, but could not be found",
                            plan.at, plan.name
                        ));
                    }
                }
            }
            None => match &stack.explicit_networks {
                Some(at) => return Err(unavailable(Kind::Network, at)),
                None => {
                    // Only the implicit default network: run without it until networks land.
                    eprintln!(
                        "Warning: the cluster's managers do not offer networks yet; the services of stack {} join no network",
                        stack.name
                    );
                    stack.networks.clear();
                    for plan in &mut stack.services {
                        if let Some(task) = plan.spec.task.as_mut() {
                            task.networks.clear();
                        }
                    }
                }
            },
        }
    }

    // Secrets and configs.
    let uses = |kind: Kind, stack: &Stack| {
        stack.services.iter().any(|s| {
            let c = s.spec.task.as_ref().and_then(|t| t.container.as_ref());
            c.is_some_and(|c| match kind {
                Kind::Secret => !c.secrets.is_empty(),
                _ => !c.configs.is_empty(),
            })
        })
    };
    if !stack.secrets.is_empty() || uses(Kind::Secret, stack) {
        let at = stack.secrets.first().map(|s| s.at.clone());
        let answer = daemon
            .control
            .list_secrets(ListSecretsRequest::default())
            .await;
        let Some(list) = offered(answer)? else {
            let at = at.unwrap_or_else(|| stack.services[0].at.clone());
            return Err(unavailable(Kind::Secret, &at));
        };
        for s in list.into_inner().secrets {
            let name = s
                .spec
                .as_ref()
                .and_then(|sp| sp.annotations.as_ref())
                .map_or(String::new(), |a| a.name.clone());
            found.secrets.insert(name, s);
        }
        check_files(
            &stack.secrets,
            "secret",
            &found.secrets,
            &stack.name,
            &mut problems,
            |_| None,
        );
    }
    if !stack.configs.is_empty() || uses(Kind::Config, stack) {
        let at = stack.configs.first().map(|c| c.at.clone());
        let answer = daemon
            .control
            .list_configs(ListConfigsRequest::default())
            .await;
        let Some(list) = offered(answer)? else {
            let at = at.unwrap_or_else(|| stack.services[0].at.clone());
            return Err(unavailable(Kind::Config, &at));
        };
        for c in list.into_inner().configs {
            let name = c
                .spec
                .as_ref()
                .and_then(|sp| sp.annotations.as_ref())
                .map_or(String::new(), |a| a.name.clone());
            found.configs.insert(name, c);
        }
        check_files(
            &stack.configs,
            "config",
            &found.configs,
            &stack.name,
            &mut problems,
            |c: &Config| c.spec.as_ref().map(|s| s.data.clone()),
        );
    }
    if !problems.is_empty() {
        anyhow::bail!("{}\nnothing was deployed", problems.join("\n"));
    }
    Ok(found)
}

/// Secrets or configs: external ones must exist; existing stack ones must not be someone
/// else's, and (configs, whose data the API returns) must hold the same content.
fn check_files<T>(
    plans: &[FilePlan],
    what: &str,
    existing: &HashMap<String, T>,
    stack: &str,
    problems: &mut Vec<String>,
    data: impl Fn(&T) -> Option<Vec<u8>>,
) where
    T: HasAnnotations,
{
    for plan in plans {
        match existing.get(&plan.name) {
            None if plan.external => problems.push(format!(
                "{}: {what} {:?} is declared as external, but could not be found",
                plan.at, plan.name
            )),
            None => {}
            Some(_) if plan.external => {}
            Some(obj) => {
                if !in_stack(obj.annotations(), stack) {
                    problems.push(format!(
                        "{}: {what} {} already exists and is not part of stack {stack}",
                        plan.at, plan.name
                    ));
                } else if data(obj).is_some_and(|d| d != plan.data) {
                    problems.push(format!(
                        "{}: {what} {} already exists with other content; {what}s cannot change: give it a new name (or use berth {what} rotate)",
                        plan.at, plan.name
                    ));
                }
            }
        }
    }
}

/// Objects with annotations in their spec.
trait HasAnnotations {
    fn annotations(&self) -> Option<&Annotations>;
}

impl HasAnnotations for Secret {
    fn annotations(&self) -> Option<&Annotations> {
        self.spec.as_ref().and_then(|s| s.annotations.as_ref())
    }
}

impl HasAnnotations for Config {
    fn annotations(&self) -> Option<&Annotations> {
        self.spec.as_ref().and_then(|s| s.annotations.as_ref())
    }
}

fn mode_kind(spec: Option<&ServiceSpec>) -> &'static str {
    match spec.and_then(|s| s.mode.as_ref()) {
        Some(Mode::Global(_)) => "global",
        _ => "replicated",
    }
}

/// A write this deploy made, and how to undo it.
#[derive(Debug)]
enum Undo {
    Network { id: String, name: String },
    Secret { id: String, name: String },
    Config { id: String, name: String },
    CreatedService { id: String, name: String },
    UpdatedService { id: String, name: String },
}

/// Services this deploy changed, to wait for.
#[derive(Debug, Default)]
pub struct Applied {
    /// (id, name, whether updated rather than created).
    pub services: Vec<(String, String, bool)>,
}

/// Phase 3 (see the module docs).
pub async fn apply(
    daemon: &mut Daemon,
    stack: &Stack,
    found: &Found,
    prune: bool,
) -> anyhow::Result<Applied> {
    let mut done = Vec::new();
    match write(daemon, stack, found, &mut done).await {
        Ok(applied) => {
            if prune {
                for orphan in &found.orphans {
                    let name = service_name(orphan);
                    println!("Removing service {name}");
                    daemon
                        .control
                        .remove_service(RemoveServiceRequest {
                            service_id: orphan.id.clone(),
                        })
                        .await
                        .map_err(|s| anyhow::anyhow!("removing service {name}: {}", s.message()))?;
                }
            }
            Ok(applied)
        }
        Err(err) => {
            let notes = undo(daemon, done).await;
            if notes.is_empty() {
                Err(err)
            } else {
                Err(anyhow::anyhow!("{err:#}\n{}", notes.join("\n")))
            }
        }
    }
}

/// Undoes `done` in reverse order; returns what could not be undone, or what was.
async fn undo(daemon: &mut Daemon, done: Vec<Undo>) -> Vec<String> {
    let mut notes = Vec::new();
    if !done.is_empty() {
        notes.push("deploy failed; undoing its changes".to_string());
    }
    for step in done.into_iter().rev() {
        let result = match &step {
            Undo::CreatedService { id, .. } => daemon
                .control
                .remove_service(RemoveServiceRequest {
                    service_id: id.clone(),
                })
                .await
                .map(drop),
            Undo::UpdatedService { id, .. } => {
                match daemon
                    .control
                    .get_service(GetServiceRequest {
                        service_id: id.clone(),
                    })
                    .await
                {
                    Ok(answer) => {
                        let version = answer
                            .into_inner()
                            .service
                            .and_then(|s| s.meta)
                            .map_or(0, |m| m.version);
                        daemon
                            .control
                            .update_service(UpdateServiceRequest {
                                service_id: id.clone(),
                                service_version: version,
                                spec: None,
                                rollback: true,
                            })
                            .await
                            .map(drop)
                    }
                    Err(e) => Err(e),
                }
            }
            Undo::Config { id, .. } => daemon
                .control
                .remove_config(RemoveConfigRequest {
                    config_id: id.clone(),
                })
                .await
                .map(drop),
            Undo::Secret { id, .. } => daemon
                .control
                .remove_secret(RemoveSecretRequest {
                    secret_id: id.clone(),
                })
                .await
                .map(drop),
            Undo::Network { id, .. } => remove_network_patiently(daemon, id).await,
        };
        let what = match &step {
            Undo::CreatedService { name, .. } => format!("removed service {name}"),
            Undo::UpdatedService { name, .. } => format!("rolled back service {name}"),
            Undo::Config { name, .. } => format!("removed config {name}"),
            Undo::Secret { name, .. } => format!("removed secret {name}"),
            Undo::Network { name, .. } => format!("removed network {name}"),
        };
        match result {
            Ok(()) => notes.push(what),
            Err(status) => notes.push(format!("could not undo ({what}): {}", status.message())),
        }
    }
    notes
}

/// Removes a network, retrying while tasks of just-removed services still hold it.
pub async fn remove_network_patiently(daemon: &mut Daemon, id: &str) -> Result<(), tonic::Status> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match daemon
            .control
            .remove_network(RemoveNetworkRequest {
                network_id: id.to_string(),
            })
            .await
        {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s)
                if s.code() == tonic::Code::FailedPrecondition
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// The writes; each one is recorded in `done` as soon as it succeeded.
async fn write(
    daemon: &mut Daemon,
    stack: &Stack,
    found: &Found,
    done: &mut Vec<Undo>,
) -> anyhow::Result<Applied> {
    // Existing secrets first: the managers compare the file's content with theirs and refuse
    // a change (secrets are immutable), before this deploy created anything.
    let mut secret_ids: HashMap<String, String> = HashMap::new();
    for plan in &stack.secrets {
        let Some(existing) = found.secrets.get(&plan.name) else {
            continue;
        };
        secret_ids.insert(plan.name.clone(), existing.id.clone());
        if plan.external {
            continue;
        }
        if labels_of(existing.annotations()) != plan.labels {
            println!("Updating secret {}", plan.name);
        }
        daemon
            .control
            .update_secret(UpdateSecretRequest {
                secret_id: existing.id.clone(),
                secret_version: existing.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(SecretSpec {
                    annotations: Some(Annotations {
                        name: plan.name.clone(),
                        labels: plan.labels.clone(),
                    }),
                    data: plan.data.clone(),
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}: secret {}: {}", plan.at, plan.name, s.message()))?;
    }
    // Existing configs: their content was compared by [`check`]; only labels may change.
    let mut config_ids: HashMap<String, String> = HashMap::new();
    for plan in &stack.configs {
        let Some(existing) = found.configs.get(&plan.name) else {
            continue;
        };
        config_ids.insert(plan.name.clone(), existing.id.clone());
        if plan.external || labels_of(existing.annotations()) == plan.labels {
            continue;
        }
        println!("Updating config {}", plan.name);
        daemon
            .control
            .update_config(UpdateConfigRequest {
                config_id: existing.id.clone(),
                config_version: existing.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(ConfigSpec {
                    annotations: Some(Annotations {
                        name: plan.name.clone(),
                        labels: plan.labels.clone(),
                    }),
                    data: plan.data.clone(),
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}: config {}: {}", plan.at, plan.name, s.message()))?;
    }

    // Networks.
    let mut network_ids: HashMap<String, String> = HashMap::new();
    for plan in &stack.networks {
        if let Some(existing) = found.networks.get(&plan.name) {
            network_ids.insert(plan.name.clone(), existing.id.clone());
            continue;
        }
        println!("Creating network {}", plan.name);
        let network = daemon
            .control
            .create_network(CreateNetworkRequest {
                spec: Some(plan.spec.clone()),
            })
            .await
            .map_err(|s| anyhow::anyhow!("creating network {}: {}", plan.name, s.message()))?
            .into_inner()
            .network
            .ok_or_else(|| anyhow::anyhow!("the manager answered without the network"))?;
        done.push(Undo::Network {
            id: network.id.clone(),
            name: plan.name.clone(),
        });
        network_ids.insert(plan.name.clone(), network.id);
    }

    // New secrets and configs.
    for plan in stack
        .secrets
        .iter()
        .filter(|p| !found.secrets.contains_key(&p.name))
    {
        println!("Creating secret {}", plan.name);
        let secret = daemon
            .control
            .create_secret(CreateSecretRequest {
                spec: Some(SecretSpec {
                    annotations: Some(Annotations {
                        name: plan.name.clone(),
                        labels: plan.labels.clone(),
                    }),
                    data: plan.data.clone(),
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("creating secret {}: {}", plan.name, s.message()))?
            .into_inner()
            .secret
            .ok_or_else(|| anyhow::anyhow!("the manager answered without the secret"))?;
        done.push(Undo::Secret {
            id: secret.id.clone(),
            name: plan.name.clone(),
        });
        secret_ids.insert(plan.name.clone(), secret.id);
    }
    for plan in stack
        .configs
        .iter()
        .filter(|p| !found.configs.contains_key(&p.name))
    {
        println!("Creating config {}", plan.name);
        let config = daemon
            .control
            .create_config(CreateConfigRequest {
                spec: Some(ConfigSpec {
                    annotations: Some(Annotations {
                        name: plan.name.clone(),
                        labels: plan.labels.clone(),
                    }),
                    data: plan.data.clone(),
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("creating config {}: {}", plan.name, s.message()))?
            .into_inner()
            .config
            .ok_or_else(|| anyhow::anyhow!("the manager answered without the config"))?;
        done.push(Undo::Config {
            id: config.id.clone(),
            name: plan.name.clone(),
        });
        config_ids.insert(plan.name.clone(), config.id);
    }

    // Services.
    let mut applied = Applied::default();
    for plan in &stack.services {
        let spec = resolve(&plan.spec, &network_ids, &secret_ids, &config_ids)?;
        let name = spec
            .annotations
            .as_ref()
            .map_or(String::new(), |a| a.name.clone());
        match found.services.get(&name) {
            Some(existing) if existing.spec.as_ref() == Some(&spec) => {}
            Some(existing) => {
                println!("Updating service {name} (id: {})", short_id(&existing.id));
                daemon
                    .control
                    .update_service(UpdateServiceRequest {
                        service_id: existing.id.clone(),
                        service_version: existing.meta.as_ref().map_or(0, |m| m.version),
                        spec: Some(spec),
                        rollback: false,
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("updating service {name}: {}", s.message()))?;
                done.push(Undo::UpdatedService {
                    id: existing.id.clone(),
                    name: name.clone(),
                });
                applied.services.push((existing.id.clone(), name, true));
            }
            None => {
                println!("Creating service {name}");
                let service = daemon
                    .control
                    .create_service(CreateServiceRequest { spec: Some(spec) })
                    .await
                    .map_err(|s| anyhow::anyhow!("creating service {name}: {}", s.message()))?
                    .into_inner()
                    .service
                    .ok_or_else(|| anyhow::anyhow!("the manager answered without the service"))?;
                done.push(Undo::CreatedService {
                    id: service.id.clone(),
                    name: name.clone(),
                });
                applied.services.push((service.id, name, false));
            }
        }
    }
    Ok(applied)
}

/// The spec with network, secret and config names replaced by ids.
pub fn resolve(
    spec: &ServiceSpec,
    networks: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    configs: &HashMap<String, String>,
) -> anyhow::Result<ServiceSpec> {
    let mut spec = spec.clone();
    let Some(task) = spec.task.as_mut() else {
        return Ok(spec);
    };
    for attachment in &mut task.networks {
        attachment.target = networks
            .get(&attachment.target)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("network {} was not created", attachment.target))?;
    }
    if let Some(container) = task.container.as_mut() {
        for s in &mut container.secrets {
            s.secret_id = secrets
                .get(&s.secret_name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("secret {} was not found", s.secret_name))?;
        }
        for c in &mut container.configs {
            c.config_id = configs
                .get(&c.config_name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("config {} was not found", c.config_name))?;
        }
    }
    Ok(spec)
}

/// `berth stack deploy`.
pub async fn deploy(daemon: &mut Daemon, args: DeployArgs) -> anyhow::Result<()> {
    let (mut stack, warnings) = load::plan(&args.files, &args.name, &|k| std::env::var(k).ok())?;
    load::print_warnings(&warnings);
    let found = check(daemon, &mut stack).await?;
    let applied = apply(daemon, &stack, &found, args.prune).await?;
    if args.detach {
        return Ok(());
    }
    for (id, _, updated) in &applied.services {
        progress::watch(
            daemon,
            id,
            RenderMode::for_stdout(args.quiet),
            WatchOptions {
                up_to_date: *updated,
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::stack::yaml::At;
    use berth_proto::v1::{
        ConfigReference, ContainerSpec, NetworkAttachmentConfig, SecretReference, TaskSpec,
    };

    fn at(line: u64) -> At {
        At {
            file: "s.yml".into(),
            line,
        }
    }

    fn plan(name: &str, external: bool, data: &[u8]) -> FilePlan {
        FilePlan {
            key: name.into(),
            name: name.into(),
            external,
            data: data.to_vec(),
            labels: HashMap::new(),
            at: at(7),
        }
    }

    fn config(name: &str, stack: Option<&str>, data: &[u8]) -> Config {
        let mut labels = HashMap::new();
        if let Some(ns) = stack {
            labels.insert(NAMESPACE_LABEL.to_string(), ns.to_string());
        }
        Config {
            id: format!("id-{name}"),
            spec: Some(ConfigSpec {
                annotations: Some(Annotations {
                    name: name.into(),
                    labels,
                }),
                data: data.to_vec(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn existing_objects_are_checked_before_any_write() {
        let existing: HashMap<String, Config> = [
            ("app_same", config("app_same", Some("app"), b"x")),
            ("app_changed", config("app_changed", Some("app"), b"old")),
            ("app_foreign", config("app_foreign", None, b"x")),
            ("shared", config("shared", None, b"x")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let plans = [
            plan("app_same", false, b"x"),
            plan("app_new", false, b"x"),
            plan("shared", true, b""),
            plan("app_changed", false, b"new"),
            plan("app_foreign", false, b"x"),
            plan("missing", true, b""),
        ];
        let mut problems = Vec::new();
        check_files(
            &plans,
            "config",
            &existing,
            "app",
            &mut problems,
            |c: &Config| c.spec.as_ref().map(|s| s.data.clone()),
        );
        assert_eq!(
            problems,
            [
                "s.yml line 7: config app_changed already exists with other content; configs cannot change: give it a new name (or use berth config rotate)",
                "s.yml line 7: config app_foreign already exists and is not part of stack app",
                "s.yml line 7: config \"missing\" is declared as external, but could not be found",
            ]
        );
    }

    #[test]
    fn names_become_ids() {
        let spec = ServiceSpec {
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    secrets: vec![SecretReference {
                        secret_name: "app_pw".into(),
                        ..Default::default()
                    }],
                    configs: vec![ConfigReference {
                        config_name: "app_conf".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                networks: vec![NetworkAttachmentConfig {
                    target: "app_default".into(),
                    aliases: vec!["web".into()],
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let map = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        let resolved = resolve(
            &spec,
            &map("app_default", "n1"),
            &map("app_pw", "s1"),
            &map("app_conf", "c1"),
        )
        .unwrap();
        let task = resolved.task.as_ref().unwrap();
        assert_eq!(task.networks[0].target, "n1");
        let c = task.container.as_ref().unwrap();
        assert_eq!(
            (
                c.secrets[0].secret_id.as_str(),
                c.secrets[0].secret_name.as_str()
            ),
            ("s1", "app_pw")
        );
        assert_eq!(c.configs[0].config_id, "c1");
        let err = resolve(&spec, &HashMap::new(), &HashMap::new(), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("network app_default"), "{err}");
    }

    #[test]
    fn unimplemented_kinds_read_as_absent() {
        assert_eq!(offered(Ok::<_, tonic::Status>(1)).unwrap(), Some(1));
        assert_eq!(
            offered::<u8>(Err(tonic::Status::unimplemented("no"))).unwrap(),
            None
        );
        let err = offered::<u8>(Err(tonic::Status::internal("boom"))).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        let err = unavailable(Kind::Secret, &at(3)).to_string();
        assert_eq!(
            err,
            "s.yml line 3: this stack uses secrets, which the cluster's managers do not offer yet; nothing was deployed"
        );
    }
}
