//! `berth service create|ls|ps|inspect|scale|update|rollback|rm|logs`, and the task table
//! `berth node ps` shares: Docker's flags, columns and messages over the Control API.
//!
//! Services are named on the command line like Docker does it: full id, exact name, then a
//! unique id prefix ([`find`]); anything else is `no such service: NAME`. Submodules: [`spec`]
//! (flags → spec, reused by `service update`), [`progress`] (convergence progress of create,
//! scale, update and rollback), [`ps`] (task tables of `service ps` and `node ps`), one file
//! per other command ([`update`] also holds what `rollback` shares with it).

mod create;
pub mod inspect;
mod logs;
mod ls;
pub mod progress;
pub mod ps;
mod rm;
mod rollback;
mod scale;
pub mod spec;
pub mod update;

use std::time::Duration;

use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{ListServicesRequest, PortConfig, PortProtocol, Service};
use clap::Subcommand;

use super::{Daemon, status_error};

/// `berth service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a new service
    #[command(override_usage = "berth service create [OPTIONS] IMAGE [COMMAND] [ARG...]")]
    Create(Box<create::CreateArgs>),
    /// Display detailed information on one or more services
    Inspect(inspect::InspectArgs),
    /// Fetch the logs of a service or task
    Logs(logs::LogsArgs),
    /// List services
    #[command(visible_alias = "list")]
    Ls(ls::LsArgs),
    /// List the tasks of one or more services
    Ps(ps::PsArgs),
    /// Remove one or more services
    #[command(visible_alias = "remove")]
    Rm(rm::RmArgs),
    /// Revert changes to a service's configuration
    Rollback(rollback::RollbackArgs),
    /// Scale one or multiple replicated services
    Scale(scale::ScaleArgs),
    /// Update a service
    Update(Box<update::UpdateArgs>),
}

/// Runs one `berth service` command.
pub async fn run(daemon: &mut Daemon, command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Create(args) => create::create(daemon, *args).await,
        ServiceCommand::Inspect(args) => inspect::inspect(daemon, args).await,
        ServiceCommand::Logs(args) => logs::logs(daemon, args).await,
        ServiceCommand::Ls(args) => ls::ls(daemon, args).await,
        ServiceCommand::Ps(args) => ps::service_ps(daemon, args).await,
        ServiceCommand::Rm(args) => rm::rm(daemon, args).await,
        ServiceCommand::Rollback(args) => rollback::rollback(daemon, args).await,
        ServiceCommand::Scale(args) => scale::scale(daemon, args).await,
        ServiceCommand::Update(args) => update::update(daemon, *args).await,
    }
}

/// A service's name.
pub fn service_name(service: &Service) -> &str {
    service
        .spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

/// The image of a service's containers, as written in its spec.
pub fn service_image(service: &Service) -> &str {
    service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

/// The replica count of a replicated service; `None` for a global one.
pub fn replicas(service: &Service) -> Option<u64> {
    match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(Mode::Replicated(r)) => Some(r.replicas),
        Some(Mode::Global(_)) => None,
        None => Some(1),
    }
}

/// An image as tables show it: a tagged reference loses its pinned digest
/// (`busybox:1.36@sha256:…` → `busybox:1.36`), like Docker's.
pub fn display_image(image: &str) -> &str {
    match image.split_once('@') {
        Some((named, _))
            if named
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':')) =>
        {
            named
        }
        _ => image,
    }
}

/// Ports as `service ls`/`service ps` print them: `*:8080->80/tcp, *:53->53/udp`.
pub fn ports_text(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| {
            let proto = if p.protocol == PortProtocol::Udp as i32 {
                "udp"
            } else {
                "tcp"
            };
            format!("*:{}->{}/{proto}", p.published_port, p.target_port)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration as Go prints it (`5s`, `1m30s`, `1h0m0s`, `500ms`, `0s`), as Docker's
/// `--pretty` outputs show them.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1u128)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", trim_fraction(nanos, div));
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let seconds = trim_fraction(
        u128::from(s) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    if h > 0 {
        format!("{h}h{m}m{seconds}s")
    } else if m > 0 {
        format!("{m}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `value / div` with its fraction, trailing zeros trimmed (`1500, 1000` → `1.5`).
fn trim_fraction(value: u128, div: u128) -> String {
    let whole = value / div;
    let rest = value % div;
    if rest == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let fraction = format!("{rest:0width$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

/// A protobuf duration as a std one (negative → zero).
pub fn std_duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.map(|d| {
        Duration::new(
            u64::try_from(d.seconds).unwrap_or(0),
            u32::try_from(d.nanos).unwrap_or(0),
        )
    })
}

/// Every service, sorted by name.
pub async fn list_services(daemon: &mut Daemon) -> anyhow::Result<Vec<Service>> {
    Ok(daemon
        .control
        .list_services(ListServicesRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .services)
}

/// Finds a service by full id, exact name, then unique id prefix (Docker's order).
pub fn find<'a>(services: &'a [Service], name: &str) -> anyhow::Result<&'a Service> {
    if name.is_empty() {
        anyhow::bail!("no such service: {name:?}");
    }
    if let Some(s) = services.iter().find(|s| s.id == name) {
        return Ok(s);
    }
    if let Some(s) = services.iter().find(|s| service_name(s) == name) {
        return Ok(s);
    }
    let matches: Vec<&Service> = services.iter().filter(|s| s.id.starts_with(name)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!("no such service: {name}"),
        many => anyhow::bail!("service {name} is ambiguous ({} matches found)", many.len()),
    }
}

/// Finds one service (see [`find`]).
pub async fn resolve(daemon: &mut Daemon, name: &str) -> anyhow::Result<Service> {
    let services = list_services(daemon).await?;
    find(&services, name).cloned()
}

/// Turns the errors of commands that go on after a failure (`rm a b`, `scale a=1 b=2`) into
/// one error, one line each, like Docker.
pub fn joined_errors(errors: Vec<String>) -> anyhow::Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{}", errors.join("\n")))
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Services and tasks for the table and progress tests.

    use berth_proto::v1::service_spec::Mode;
    use berth_proto::v1::{
        Annotations, ContainerSpec, GlobalService, Meta, ReplicatedService, Service, ServiceSpec,
        Task, TaskSpec, TaskState, TaskStatus,
    };

    /// A replicated (`Some(n)`) or global (`None`) service.
    pub fn service(id: &str, name: &str, replicas: Option<u64>) -> Service {
        Service {
            id: id.into(),
            meta: Some(Meta {
                version: 7,
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                task: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "busybox:1.36".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(match replicas {
                    Some(replicas) => Mode::Replicated(ReplicatedService { replicas }),
                    None => Mode::Global(GlobalService {}),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A task of `service` in `slot` (0 = global) on `node`, observed in `state` at
    /// `at` seconds after the epoch.
    pub fn task(
        id: &str,
        service: &Service,
        slot: u64,
        node: &str,
        desired: TaskState,
        state: TaskState,
        at: i64,
    ) -> Task {
        Task {
            id: id.into(),
            meta: Some(Meta {
                created_at: Some(prost_types::Timestamp {
                    seconds: at,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            spec: service.spec.as_ref().and_then(|s| s.task.clone()),
            service_id: service.id.clone(),
            slot,
            node_id: node.into(),
            service_annotations: service.spec.as_ref().and_then(|s| s.annotations.clone()),
            status: Some(TaskStatus {
                timestamp: Some(prost_types::Timestamp {
                    seconds: at,
                    nanos: 0,
                }),
                state: state as i32,
                ..Default::default()
            }),
            desired_state: desired as i32,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::service;
    use super::*;

    #[test]
    fn services_resolve_like_dockers() {
        let services = vec![
            service("abc123", "web", Some(1)),
            service("abd456", "api", Some(1)),
            service("web", "other", Some(1)),
        ];
        assert_eq!(find(&services, "web").unwrap().id, "web", "full id first");
        assert_eq!(find(&services, "api").unwrap().id, "abd456");
        assert_eq!(find(&services, "abc").unwrap().id, "abc123");
        let err = find(&services, "ab").unwrap_err().to_string();
        assert_eq!(err, "service ab is ambiguous (2 matches found)");
        let err = find(&services, "db").unwrap_err().to_string();
        assert_eq!(err, "no such service: db");
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_nanos(12)), "12ns");
    }

    #[test]
    fn images_and_ports_print_like_dockers() {
        assert_eq!(display_image("busybox:1.36@sha256:abcd"), "busybox:1.36");
        assert_eq!(display_image("busybox@sha256:abcd"), "busybox@sha256:abcd");
        assert_eq!(display_image("reg:5000/app"), "reg:5000/app");
        assert_eq!(
            display_image("reg:5000/app:v1@sha256:ab"),
            "reg:5000/app:v1"
        );
        let ports = vec![
            PortConfig {
                target_port: 80,
                published_port: 8080,
                ..Default::default()
            },
            PortConfig {
                target_port: 53,
                published_port: 30000,
                protocol: PortProtocol::Udp as i32,
                ..Default::default()
            },
        ];
        assert_eq!(ports_text(&ports), "*:8080->80/tcp, *:30000->53/udp");
    }
}
