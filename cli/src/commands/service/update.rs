//! `berth service update [OPTIONS] SERVICE`: changes a service's spec with Docker's flags
//! (the shared groups of [`super::spec`] plus the `--*-add`/`--*-rm` pairs — env, labels,
//! constraints, placement preferences, secrets, configs, networks, published ports — `--image`,
//! `--args` and `--force`), then — unless `-d` — shows the rolling update's progress and
//! exits non-zero when it pauses or rolls back, with the update status message.
//!
//! The update carries the service version read: if the service changed in between, the
//! managers refuse it ("update out of sequence: the service was changed meanwhile; re-run the
//! command") rather than losing either change. `--rollback` is `berth service rollback`.
//!
//! [`follow`] is shared with `service rollback`: the convergence progress of the tasks of the
//! current spec ([`super::progress::watch`]), then the updater's verdict from the service's
//! update status.

use std::collections::HashSet;
use std::time::Duration;

use berth_proto::v1::{
    ConfigReference, ContainerSpec, EndpointSpec, FileTarget, GetServiceRequest,
    ListNetworksRequest, ListTasksRequest, NetworkAttachmentConfig, Placement, PlacementPreference,
    PortConfig, SecretReference, ServiceSpec, TaskSpec, UpdateServiceRequest, UpdateState,
    list_tasks_request::Filters,
};
use clap::Args;

use super::progress::{self, RenderMode, Tracker, WatchOptions};
use super::spec::{
    CommonFlags, FileReference, ShellWords, check_ports, env_entry, parse_constraint,
    parse_file_reference, parse_label, parse_network, parse_placement_pref, parse_publish,
    parse_shell_words,
};
use super::{Daemon, resolve, status_error};

/// `berth service update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Service image tag
    #[arg(long, value_name = "string")]
    pub image: Option<String>,
    /// Service command args
    #[arg(long, value_name = "command", value_parser = parse_shell_words)]
    pub args: Option<ShellWords>,
    /// Add or update an environment variable
    #[arg(long = "env-add", value_name = "list")]
    pub env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long = "env-rm", value_name = "list")]
    pub env_rm: Vec<String>,
    /// Add or update a service label
    #[arg(long = "label-add", value_name = "list", value_parser = parse_label)]
    pub label_add: Vec<(String, String)>,
    /// Remove a label by its key
    #[arg(long = "label-rm", value_name = "list")]
    pub label_rm: Vec<String>,
    /// Add or update a container label
    #[arg(long = "container-label-add", value_name = "list", value_parser = parse_label)]
    pub container_label_add: Vec<(String, String)>,
    /// Remove a container label by its key
    #[arg(long = "container-label-rm", value_name = "list")]
    pub container_label_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long = "constraint-add", value_name = "list", value_parser = parse_constraint)]
    pub constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long = "constraint-rm", value_name = "list")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference
    #[arg(long = "placement-pref-add", value_name = "pref", value_parser = parse_placement_pref)]
    pub placement_pref_add: Vec<PlacementPreference>,
    /// Remove a placement preference
    #[arg(long = "placement-pref-rm", value_name = "pref", value_parser = parse_placement_pref)]
    pub placement_pref_rm: Vec<PlacementPreference>,
    /// Add or update a secret on a service
    #[arg(long = "secret-add", value_name = "secret", value_parser = parse_file_reference)]
    pub secret_add: Vec<FileReference>,
    /// Remove a secret (by name)
    #[arg(long = "secret-rm", value_name = "list")]
    pub secret_rm: Vec<String>,
    /// Add or update a config file on a service
    #[arg(long = "config-add", value_name = "config", value_parser = parse_file_reference)]
    pub config_add: Vec<FileReference>,
    /// Remove a configuration file (by name)
    #[arg(long = "config-rm", value_name = "list")]
    pub config_rm: Vec<String>,
    /// Add a network
    #[arg(long = "network-add", value_name = "network", value_parser = parse_network)]
    pub network_add: Vec<NetworkAttachmentConfig>,
    /// Remove a network (by name or id)
    #[arg(long = "network-rm", value_name = "list")]
    pub network_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long = "publish-add", value_name = "port", value_parser = parse_publish)]
    pub publish_add: Vec<Vec<PortConfig>>,
    /// Remove a published port by its target port (`TARGET[/PROTO]`, or `PUBLISHED:TARGET`)
    #[arg(long = "publish-rm", value_name = "port", value_parser = parse_publish)]
    pub publish_rm: Vec<Vec<PortConfig>>,
    /// Force update even if no changes require it
    #[arg(long)]
    pub force: bool,
    /// Rollback to previous specification
    #[arg(long)]
    pub rollback: bool,
    /// Flags shared with `service create`.
    #[command(flatten)]
    pub common: CommonFlags,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// The service (name, id or unique id prefix)
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

/// `value`, or `default` when it is empty.
fn non_empty_or(value: &str, default: &str) -> String {
    if value.is_empty() { default } else { value }.to_owned()
}

/// The key of an environment entry (`KEY=VALUE` or `KEY`).
fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

impl UpdateArgs {
    /// Whether a flag that changes the spec was given (`--rollback` takes none).
    fn changes_spec(&self) -> bool {
        // The parts `apply` creates when missing are there already, so the spec changes iff a
        // flag is set (an `--env-add KEY` unset in the environment still adds an entry).
        let mut probe = ServiceSpec {
            annotations: Some(Default::default()),
            task: Some(TaskSpec {
                container: Some(ContainerSpec::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let before = probe.clone();
        self.apply(&mut probe, &|_| None).is_err() || probe != before
    }

    /// Applies every flag given to `spec`, removals before additions (like Docker). `lookup`
    /// reads the client's environment for `--env-add KEY`.
    pub fn apply(
        &self,
        spec: &mut ServiceSpec,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let annotations = spec.annotations.get_or_insert_with(Default::default);
        for key in &self.label_rm {
            annotations.labels.remove(key);
        }
        annotations.labels.extend(self.label_add.iter().cloned());

        let task = spec.task.get_or_insert_with(TaskSpec::default);
        if self.force {
            task.force_update = task.force_update.wrapping_add(1);
        }
        if !self.constraint_rm.is_empty()
            || !self.constraint_add.is_empty()
            || !self.placement_pref_rm.is_empty()
            || !self.placement_pref_add.is_empty()
        {
            let placement = task.placement.get_or_insert_with(Placement::default);
            placement
                .constraints
                .retain(|c| !self.constraint_rm.iter().any(|r| r.trim() == c.trim()));
            for c in &self.constraint_add {
                if !placement.constraints.contains(c) {
                    placement.constraints.push(c.clone());
                }
            }
            placement
                .preferences
                .retain(|p| !self.placement_pref_rm.contains(p));
            placement
                .preferences
                .extend(self.placement_pref_add.iter().cloned());
        }
        let container = task.container.get_or_insert_with(ContainerSpec::default);
        if let Some(image) = &self.image {
            if image.trim().is_empty() {
                anyhow::bail!("invalid --image: must not be empty");
            }
            container.image = image.clone();
        }
        if let Some(args) = &self.args {
            container.args = args.0.clone();
        }
        for key in &self.env_rm {
            container.env.retain(|e| env_key(e) != key);
        }
        for entry in &self.env_add {
            let entry =
                env_entry(entry, lookup).map_err(|e| anyhow::anyhow!("invalid --env-add: {e}"))?;
            let key = env_key(&entry).to_string();
            match container.env.iter_mut().find(|e| env_key(e) == key) {
                Some(existing) => *existing = entry,
                None => container.env.push(entry),
            }
        }
        for key in &self.container_label_rm {
            container.labels.remove(key);
        }
        // Secrets and configs: removed by name, then added (an added one replaces any with the
        // same target); ids of added ones are looked up before the update is sent.
        container
            .secrets
            .retain(|s| !self.secret_rm.contains(&s.secret_name));
        for add in &self.secret_add {
            let target = FileTarget {
                name: non_empty_or(&add.target.name, &add.source),
                ..add.target.clone()
            };
            container
                .secrets
                .retain(|s| s.target.as_ref().map(|t| &t.name) != Some(&target.name));
            container.secrets.push(SecretReference {
                secret_id: String::new(),
                secret_name: add.source.clone(),
                target: Some(target),
            });
        }
        container
            .configs
            .retain(|c| !self.config_rm.contains(&c.config_name));
        for add in &self.config_add {
            let target = FileTarget {
                name: non_empty_or(&add.target.name, &format!("/{}", add.source)),
                ..add.target.clone()
            };
            container
                .configs
                .retain(|c| c.target.as_ref().map(|t| &t.name) != Some(&target.name));
            container.configs.push(ConfigReference {
                config_id: String::new(),
                config_name: add.source.clone(),
                target: Some(target),
            });
        }
        container
            .labels
            .extend(self.container_label_add.iter().cloned());
        // Networks: the stored spec names them by id; `resolve_networks` turned the flags'
        // names into ids before this runs.
        task.networks
            .retain(|n| !self.network_rm.iter().any(|r| r == &n.target));
        for add in &self.network_add {
            if task.networks.iter().any(|n| n.target == add.target) {
                anyhow::bail!("service is already attached to network {}", add.target);
            }
            task.networks.push(add.clone());
        }
        if !self.publish_rm.is_empty() || !self.publish_add.is_empty() {
            let endpoint = spec.endpoint.get_or_insert_with(EndpointSpec::default);
            // Docker's rule: a removal names the target port (and protocol), and the published
            // port too when it gives one.
            for rm in self.publish_rm.iter().flatten() {
                endpoint.ports.retain(|p| {
                    !(p.target_port == rm.target_port
                        && p.protocol == rm.protocol
                        && (rm.published_port == 0 || p.published_port == rm.published_port))
                });
            }
            // An added port replaces one published on the same port and protocol.
            for add in self.publish_add.iter().flatten() {
                endpoint.ports.retain(|p| {
                    add.published_port == 0
                        || (p.published_port, p.protocol) != (add.published_port, add.protocol)
                });
                endpoint.ports.push(add.clone());
            }
        }
        self.common
            .apply(spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        check_ports(spec)?;
        Ok(())
    }

    /// Replaces the network names of `--network-add` and `--network-rm` by the ids the
    /// stored spec uses; an unknown network is an error naming it.
    async fn resolve_networks(&mut self, daemon: &mut Daemon) -> anyhow::Result<()> {
        if self.network_add.is_empty() && self.network_rm.is_empty() {
            return Ok(());
        }
        let networks = daemon
            .control
            .list_networks(ListNetworksRequest::default())
            .await
            .map_err(status_error)?
            .into_inner()
            .networks;
        let id_of = |wanted: &str| -> anyhow::Result<String> {
            networks
                .iter()
                .find(|n| {
                    n.id == wanted
                        || n.spec
                            .as_ref()
                            .and_then(|s| s.annotations.as_ref())
                            .is_some_and(|a| a.name == wanted)
                })
                .map(|n| n.id.clone())
                .ok_or_else(|| anyhow::anyhow!("no such network: {wanted}"))
        };
        for add in &mut self.network_add {
            add.target = id_of(&add.target)?;
        }
        for rm in &mut self.network_rm {
            *rm = id_of(rm)?;
        }
        Ok(())
    }
}

/// The ids of the service's tasks that had already ended (history for the progress).
pub(super) async fn ended_tasks(
    daemon: &mut Daemon,
    service_id: &str,
) -> anyhow::Result<HashSet<String>> {
    let tasks = daemon
        .control
        .list_tasks(ListTasksRequest {
            filters: Some(Filters {
                service_ids: vec![service_id.to_string()],
                ..Default::default()
            }),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .tasks;
    Ok(Tracker::ended(&tasks))
}

/// What the command asked for, to judge the final update status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// A new spec (`service update`).
    Update,
    /// The previous spec (`service rollback`, `service update --rollback`).
    Rollback,
}

/// The verdict on a final update state: `Some(Ok)` done, `Some(Err)` failed with the message
/// for the user, `None` still rolling out.
fn verdict(asked: Asked, state: UpdateState, message: &str) -> Option<Result<(), String>> {
    match (state, asked) {
        (UpdateState::Updating | UpdateState::RollbackStarted, _) => None,
        (UpdateState::None | UpdateState::Completed, _) => Some(Ok(())),
        (UpdateState::Paused, _) => Some(Err(format!("service update paused: {message}"))),
        (UpdateState::RollbackPaused, _) => {
            Some(Err(format!("service rollback paused: {message}")))
        }
        (UpdateState::RollbackCompleted, Asked::Rollback) => Some(Ok(())),
        (UpdateState::RollbackCompleted, Asked::Update) => {
            Some(Err(format!("service update rolled back: {message}")))
        }
    }
}

/// Poll period of the final status wait.
const STATUS_POLL: Duration = Duration::from_millis(200);

/// Shows the convergence of the service's current spec, then waits for the updater's verdict:
/// an error when the update paused or rolled back (or the rollback paused).
pub(super) async fn follow(
    daemon: &mut Daemon,
    service_id: &str,
    quiet: bool,
    ended_before: HashSet<String>,
    asked: Asked,
) -> anyhow::Result<()> {
    let options = WatchOptions {
        up_to_date: true,
        ended_before,
    };
    // Registered before the progress, so a Ctrl-C that ended it also ends the wait below.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("listening for Ctrl-C: {e}"))?;
    progress::watch(daemon, service_id, RenderMode::for_stdout(quiet), options).await?;
    if tokio::time::timeout(Duration::ZERO, interrupt.recv())
        .await
        .is_ok()
    {
        return Ok(());
    }
    loop {
        let service = daemon
            .control
            .get_service(GetServiceRequest {
                service_id: service_id.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .service
            .unwrap_or_default();
        let status = service.update_status.unwrap_or_default();
        let state = UpdateState::try_from(status.state).unwrap_or(UpdateState::None);
        if let Some(done) = verdict(asked, state, &status.message) {
            return done.map_err(|e| anyhow::anyhow!(e));
        }
        tokio::select! {
            () = tokio::time::sleep(STATUS_POLL) => {}
            _ = interrupt.recv() => {
                if !quiet {
                    println!("Operation continuing in background.");
                }
                return Ok(());
            }
        }
    }
}

/// Asks for a rollback of `service_id` (read at `version`).
pub(super) async fn request_rollback(
    daemon: &mut Daemon,
    service_id: &str,
    version: u64,
) -> anyhow::Result<()> {
    daemon
        .control
        .update_service(UpdateServiceRequest {
            service_id: service_id.to_string(),
            service_version: version,
            spec: None,
            rollback: true,
        })
        .await
        .map_err(status_error)?;
    Ok(())
}

/// `berth service update`.
pub async fn update(daemon: &mut Daemon, mut args: UpdateArgs) -> anyhow::Result<()> {
    let service = resolve(daemon, &args.service).await?;
    let version = service.meta.as_ref().map_or(0, |m| m.version);
    let ended_before = ended_tasks(daemon, &service.id).await?;
    let asked = if args.rollback {
        if args.changes_spec() {
            anyhow::bail!(
                "--rollback cannot be combined with other options that change the service"
            );
        }
        request_rollback(daemon, &service.id, version).await?;
        Asked::Rollback
    } else {
        let mut spec = service.spec.clone().unwrap_or_default();
        args.resolve_networks(daemon).await?;
        args.apply(&mut spec, &|key| std::env::var(key).ok())?;
        super::create::resolve_references(daemon, &mut spec).await?;
        daemon
            .control
            .update_service(UpdateServiceRequest {
                service_id: service.id.clone(),
                service_version: version,
                spec: Some(spec),
                rollback: false,
            })
            .await
            .map_err(status_error)?;
        Asked::Update
    };
    println!("{}", args.service);
    if args.detach {
        return Ok(());
    }
    follow(daemon, &service.id, args.quiet, ended_before, asked).await
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::placement_preference::Preference;
    use berth_proto::v1::{SpreadOver, UpdateOrder};
    use clap::Parser;

    use super::*;
    use crate::commands::service::spec::default_spec;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: UpdateArgs,
    }

    fn updated(spec: &ServiceSpec, flags: &[&str]) -> anyhow::Result<ServiceSpec> {
        let cli = Cli::try_parse_from(
            std::iter::once("update")
                .chain(flags.iter().copied())
                .chain(["web"]),
        )?;
        let mut spec = spec.clone();
        cli.args
            .apply(&mut spec, &|k| (k == "HOME").then(|| "/root".into()))?;
        Ok(spec)
    }

    fn base() -> ServiceSpec {
        let mut spec = default_spec("web", "busybox");
        let task = spec.task.as_mut().unwrap();
        let c = task.container.as_mut().unwrap();
        c.env = vec!["A=1".into(), "B=2".into()];
        c.labels.insert("keep".into(), "1".into());
        c.labels.insert("drop".into(), "1".into());
        c.args = vec!["sleep".into(), "1".into()];
        task.placement = Some(Placement {
            constraints: vec!["node.role==worker".into()],
            ..Default::default()
        });
        spec.annotations
            .as_mut()
            .unwrap()
            .labels
            .insert("old".into(), "x".into());
        spec
    }

    #[test]
    fn networks_and_published_ports_are_removed_then_added() {
        let mut spec = base();
        spec.task.as_mut().unwrap().networks = vec![NetworkAttachmentConfig {
            target: "net-front".into(),
            ..Default::default()
        }];
        spec.endpoint = Some(EndpointSpec {
            ports: parse_publish("8080:80")
                .unwrap()
                .into_iter()
                .chain(parse_publish("9090:90/udp").unwrap())
                .collect(),
            ..Default::default()
        });
        // (The command has turned network names into ids before `apply`.)
        let out = updated(
            &spec,
            &[
                "--network-rm",
                "net-front",
                "--network-add",
                "name=net-back,alias=api",
                "--publish-rm",
                "80",
                "--publish-add",
                "8081:81",
                "--publish-add",
                "9090:91/udp",
            ],
        )
        .unwrap();
        let nets = &out.task.as_ref().unwrap().networks;
        assert_eq!(nets.len(), 1);
        assert_eq!(
            (nets[0].target.as_str(), nets[0].aliases.clone()),
            ("net-back", vec!["api".to_string()])
        );
        let ports: Vec<(u32, u32)> = out
            .endpoint
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .map(|p| (p.published_port, p.target_port))
            .collect();
        // 80 went; 9090/udp was replaced by the port published on it again; 8081 was added.
        assert_eq!(ports, [(8081, 81), (9090, 91)]);

        // A removal naming another published port leaves the port alone; udp is not tcp.
        let out = updated(&spec, &["--publish-rm", "8000:80", "--publish-rm", "90"]).unwrap();
        assert_eq!(out.endpoint.as_ref().unwrap().ports.len(), 2);
        // Attaching twice is refused with the reason.
        let err = updated(&spec, &["--network-add", "net-front"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("already attached to network net-front"),
            "{err}"
        );
        // The last port published on 8080 wins (Docker replaces by published port).
        let out = updated(
            &spec,
            &["--publish-add", "8080:81", "--publish-add", "8080:82"],
        )
        .unwrap();
        let at_8080: Vec<u32> = out
            .endpoint
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .filter(|p| p.published_port == 8080)
            .map(|p| p.target_port)
            .collect();
        assert_eq!(at_8080, [82]);
    }

    #[test]
    fn secrets_and_configs_are_removed_by_name_then_added() {
        let mut spec = base();
        let c = spec.task.as_mut().unwrap().container.as_mut().unwrap();
        c.secrets = vec![
            SecretReference {
                secret_id: "s-old".into(),
                secret_name: "old".into(),
                target: Some(FileTarget {
                    name: "old".into(),
                    ..Default::default()
                }),
            },
            SecretReference {
                secret_id: "s-keep".into(),
                secret_name: "keep".into(),
                target: Some(FileTarget {
                    name: "pw".into(),
                    ..Default::default()
                }),
            },
        ];
        let out = updated(
            &spec,
            &[
                "--secret-rm",
                "old",
                "--secret-add",
                "source=new,target=pw,uid=1000,mode=0400",
                "--secret-add",
                "token",
                "--config-add",
                "app",
            ],
        )
        .unwrap();
        let c = out.task.unwrap().container.unwrap();
        let secrets: Vec<(&str, &str, &str, &str, u32)> = c
            .secrets
            .iter()
            .map(|s| {
                let t = s.target.as_ref().unwrap();
                (
                    s.secret_id.as_str(),
                    s.secret_name.as_str(),
                    t.name.as_str(),
                    t.uid.as_str(),
                    t.mode,
                )
            })
            .collect();
        // "keep" had target pw: replaced by "new"; ids of added ones are looked up later.
        assert_eq!(
            secrets,
            [
                ("", "new", "pw", "1000", 0o400),
                ("", "token", "token", "0", 0o444)
            ]
        );
        assert_eq!(c.configs.len(), 1);
        assert_eq!(c.configs[0].config_name, "app");
        assert_eq!(c.configs[0].target.as_ref().unwrap().name, "/app");
        let out = updated(&out_with_config(), &["--config-rm", "app"]).unwrap();
        assert!(out.task.unwrap().container.unwrap().configs.is_empty());
    }

    fn out_with_config() -> ServiceSpec {
        let mut spec = base();
        let c = spec.task.as_mut().unwrap().container.as_mut().unwrap();
        c.configs = vec![ConfigReference {
            config_id: "c1".into(),
            config_name: "app".into(),
            target: None,
        }];
        spec
    }

    #[test]
    fn flags_change_only_what_they_name() {
        let spec = base();
        let out = updated(
            &spec,
            &[
                "--image",
                "busybox:2",
                "--args",
                "sh -c 'exit 1'",
                "--env-rm",
                "A",
                "--env-add",
                "B=3",
                "--env-add",
                "HOME",
                "--label-add",
                "new=y",
                "--label-rm",
                "old",
                "--container-label-rm",
                "drop",
                "--container-label-add",
                "c=d",
                "--constraint-rm",
                "node.role==worker",
                "--constraint-add",
                "node.labels.zone==east",
                "--placement-pref-add",
                "spread=node.labels.rack",
                "--replicas",
                "6",
                "--update-parallelism",
                "2",
                "--update-order",
                "start-first",
            ],
        )
        .unwrap();
        let task = out.task.as_ref().unwrap();
        let c = task.container.as_ref().unwrap();
        assert_eq!(c.image, "busybox:2");
        assert_eq!(c.args, ["sh", "-c", "exit 1"]);
        assert_eq!(c.env, ["B=3", "HOME=/root"]);
        assert_eq!(
            c.labels
                .keys()
                .map(String::as_str)
                .collect::<std::collections::BTreeSet<_>>(),
            ["c", "keep"].into()
        );
        let labels = &out.annotations.as_ref().unwrap().labels;
        assert_eq!(
            (labels.get("new"), labels.get("old")),
            (Some(&"y".into()), None)
        );
        let placement = task.placement.as_ref().unwrap();
        assert_eq!(placement.constraints, ["node.labels.zone==east"]);
        assert_eq!(
            placement.preferences,
            [PlacementPreference {
                preference: Some(Preference::Spread(SpreadOver {
                    spread_descriptor: "node.labels.rack".into()
                }))
            }]
        );
        assert_eq!(
            super::super::replicas(&berth_proto::v1::Service {
                spec: Some(out.clone()),
                ..Default::default()
            }),
            Some(6)
        );
        let update = out.update.as_ref().unwrap();
        assert_eq!(update.parallelism, Some(2));
        assert_eq!(update.order, UpdateOrder::StartFirst as i32);
        // Untouched: the restart policy, the stop grace period, the rollback config.
        assert_eq!(task.restart, spec.task.as_ref().unwrap().restart);
        assert_eq!(
            c.stop_grace_period,
            spec.task
                .as_ref()
                .unwrap()
                .container
                .as_ref()
                .unwrap()
                .stop_grace_period
        );
        assert_eq!(out.rollback, spec.rollback);
    }

    #[test]
    fn nothing_given_changes_nothing_and_force_bumps_the_counter() {
        let spec = base();
        assert_eq!(updated(&spec, &[]).unwrap(), spec);
        let forced = updated(&spec, &["--force"]).unwrap();
        assert_eq!(forced.task.as_ref().unwrap().force_update, 1);
        let again = updated(&forced, &["--force"]).unwrap();
        assert_eq!(again.task.as_ref().unwrap().force_update, 2);
    }

    #[test]
    fn bad_values_are_refused() {
        let spec = base();
        assert!(updated(&spec, &["--constraint-add", "nonsense"]).is_err());
        assert!(updated(&spec, &["--image", " "]).is_err());
        assert!(updated(&spec, &["--env-add", "=x"]).is_err());
    }

    #[test]
    fn rollback_takes_no_spec_flag() {
        let cli = Cli::try_parse_from(["update", "--rollback", "web"]).unwrap();
        assert!(!cli.args.changes_spec());
        let cli = Cli::try_parse_from(["update", "--rollback", "--image", "x", "web"]).unwrap();
        assert!(cli.args.changes_spec());
        let cli = Cli::try_parse_from(["update", "--rollback", "--force", "web"]).unwrap();
        assert!(cli.args.changes_spec());
    }

    #[test]
    fn verdicts_follow_the_update_state() {
        use Asked::{Rollback, Update};
        assert_eq!(verdict(Update, UpdateState::Updating, ""), None);
        assert_eq!(verdict(Rollback, UpdateState::RollbackStarted, ""), None);
        assert_eq!(verdict(Update, UpdateState::Completed, ""), Some(Ok(())));
        assert_eq!(verdict(Update, UpdateState::None, ""), Some(Ok(())));
        assert_eq!(
            verdict(Update, UpdateState::Paused, "update paused due to x"),
            Some(Err("service update paused: update paused due to x".into()))
        );
        assert_eq!(
            verdict(
                Update,
                UpdateState::RollbackCompleted,
                "rollback completed (y)"
            ),
            Some(Err(
                "service update rolled back: rollback completed (y)".into()
            ))
        );
        assert_eq!(
            verdict(
                Rollback,
                UpdateState::RollbackCompleted,
                "rollback completed"
            ),
            Some(Ok(()))
        );
        assert_eq!(
            verdict(Rollback, UpdateState::RollbackPaused, "z"),
            Some(Err("service rollback paused: z".into()))
        );
    }
}
