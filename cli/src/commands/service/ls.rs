//! `berth service ls`: `ID NAME MODE REPLICAS IMAGE PORTS`, with Docker's REPLICAS forms
//! (`2/3`, `2/3 (max 1 per node)`, running/eligible nodes for global services).

use std::collections::HashMap;

use berth_proto::v1::list_services_request::Filters;
use berth_proto::v1::{
    ListServiceStatusesRequest, ListServicesRequest, PublishMode, Service, ServiceStatus,
};
use clap::Args;

use super::{Daemon, display_image, ports_text, replicas, service_image, service_name};
use crate::commands::format::go_template;
use crate::commands::{short_id, status_error};
use crate::table::Table;

/// `berth service ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Filter output based on conditions provided (id=, label=, mode=, name=)
    #[arg(short = 'f', long = "filter", value_name = "filter")]
    pub filters: Vec<String>,
    /// Format output (`json` or a Go template such as '{{.Name}}')
    #[arg(long, value_name = "string")]
    pub format: Option<String>,
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
}

/// The request filters and the mode filter (applied here).
fn parse_filters(filters: &[String]) -> anyhow::Result<(Filters, Option<String>)> {
    let mut parsed = Filters::default();
    let mut mode = None;
    for filter in filters {
        let Some((key, value)) = filter.split_once('=') else {
            anyhow::bail!("bad format of filter (expected name=value): {filter}");
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "id" => parsed.id_prefixes.push(value.to_string()),
            "name" => parsed.name_prefixes.push(value.to_string()),
            "label" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                parsed.labels.insert(k.to_string(), v.to_string());
            }
            "mode" => match value {
                "replicated" | "global" => mode = Some(value.to_string()),
                _ => anyhow::bail!("invalid filter 'mode={value}': expected replicated or global"),
            },
            other => anyhow::bail!("invalid filter '{other}'"),
        }
    }
    Ok((parsed, mode))
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRow {
    /// ID (12 characters).
    pub id: String,
    /// NAME.
    pub name: String,
    /// MODE.
    pub mode: String,
    /// REPLICAS.
    pub replicas: String,
    /// IMAGE.
    pub image: String,
    /// PORTS.
    pub ports: String,
}

impl ServiceRow {
    /// The row as `--format json` prints it (Docker's keys).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ID": self.id,
            "Name": self.name,
            "Mode": self.mode,
            "Replicas": self.replicas,
            "Image": self.image,
            "Ports": self.ports,
        })
    }
}

/// The row of `service` given its task counts.
pub fn service_row(service: &Service, status: Option<&ServiceStatus>) -> ServiceRow {
    let (running, desired) = status.map_or((0, 0), |s| (s.running_tasks, s.desired_tasks));
    let max = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map_or(0, |p| p.max_replicas);
    let (mode, replicas) = match replicas(service) {
        Some(wanted) if max > 0 => (
            "replicated",
            format!("{running}/{wanted} (max {max} per node)"),
        ),
        Some(wanted) => ("replicated", format!("{running}/{wanted}")),
        None => ("global", format!("{running}/{desired}")),
    };
    // Ingress ports only (host-mode ports belong to tasks), as allocated; before allocation,
    // the ones the spec fixes.
    let ports: Vec<_> = match &service.endpoint {
        Some(endpoint) => endpoint.ports.clone(),
        None => service
            .spec
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .map(|e| {
                e.ports
                    .iter()
                    .filter(|p| p.published_port != 0)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
    }
    .into_iter()
    .filter(|p| p.publish_mode == PublishMode::Ingress as i32)
    .collect();
    ServiceRow {
        id: short_id(&service.id).to_string(),
        name: service_name(service).to_string(),
        mode: mode.to_string(),
        replicas,
        image: display_image(service_image(service)).to_string(),
        ports: ports_text(&ports),
    }
}

/// The rows as Docker's table.
pub fn render_table(rows: &[ServiceRow]) -> String {
    let mut table = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    for r in rows {
        table.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.mode.clone(),
            r.replicas.clone(),
            r.image.clone(),
            r.ports.clone(),
        ]);
    }
    table.render()
}

/// `berth service ls`.
pub async fn ls(daemon: &mut Daemon, args: LsArgs) -> anyhow::Result<()> {
    let (filters, mode) = parse_filters(&args.filters)?;
    let services: Vec<Service> = daemon
        .control
        .list_services(ListServicesRequest {
            filters: Some(filters),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .services
        .into_iter()
        .filter(|s| match mode.as_deref() {
            Some("global") => replicas(s).is_none(),
            Some(_) => replicas(s).is_some(),
            None => true,
        })
        .collect();
    if args.quiet {
        for s in &services {
            println!("{}", short_id(&s.id));
        }
        return Ok(());
    }
    let statuses: HashMap<String, ServiceStatus> = if services.is_empty() {
        HashMap::new()
    } else {
        daemon
            .control
            .list_service_statuses(ListServiceStatusesRequest {
                service_ids: services.iter().map(|s| s.id.clone()).collect(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .statuses
            .into_iter()
            .map(|s| (s.service_id.clone(), s))
            .collect()
    };
    let rows: Vec<ServiceRow> = services
        .iter()
        .map(|s| service_row(s, statuses.get(&s.id)))
        .collect();
    match args.format.as_deref() {
        None | Some("table") => print!("{}", render_table(&rows)),
        Some("json") => {
            for row in &rows {
                println!("{}", row.json());
            }
        }
        Some(template) => {
            for row in &rows {
                println!(
                    "{}",
                    go_template(template, &row.json()).map_err(|e| anyhow::anyhow!("{e}"))?
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::service::fixtures::service;
    use berth_proto::v1::{Endpoint, PortConfig};

    #[test]
    fn table_matches_dockers() {
        let mut web = service("5wdkhh7e0yxpaaaaaaaaaaaaa", "web", Some(3));
        web.endpoint = Some(Endpoint {
            ports: vec![
                PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    ..Default::default()
                },
                PortConfig {
                    target_port: 81,
                    published_port: 81,
                    publish_mode: PublishMode::Host as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let mut capped = service("capped0000000aaaaaaaaaaaa", "capped", Some(4));
        capped
            .spec
            .as_mut()
            .unwrap()
            .task
            .as_mut()
            .unwrap()
            .placement
            .get_or_insert_default()
            .max_replicas = 1;
        let agent = service("agent0000000aaaaaaaaaaaaa", "agent", None);
        let status = |id: &str, running, desired| ServiceStatus {
            service_id: id.into(),
            running_tasks: running,
            desired_tasks: desired,
        };
        let rows = vec![
            service_row(&agent, Some(&status(&agent.id, 2, 3))),
            service_row(&capped, Some(&status(&capped.id, 3, 4))),
            service_row(&web, Some(&status(&web.id, 2, 3))),
        ];
        let expected = "\
ID             NAME     MODE         REPLICAS               IMAGE          PORTS
agent0000000   agent    global       2/3                    busybox:1.36
capped000000   capped   replicated   3/4 (max 1 per node)   busybox:1.36
5wdkhh7e0yxp   web      replicated   2/3                    busybox:1.36   *:8080->80/tcp
";
        assert_eq!(render_table(&rows), expected);
        assert_eq!(rows[2].json()["Replicas"], "2/3");
        assert_eq!(rows[0].json()["Mode"], "global");
    }

    #[test]
    fn spec_ports_show_until_allocated() {
        let mut web = service("w", "web", Some(1));
        web.spec.as_mut().unwrap().endpoint = Some(berth_proto::v1::EndpointSpec {
            ports: vec![
                PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    ..Default::default()
                },
                PortConfig {
                    target_port: 90,
                    published_port: 0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert_eq!(service_row(&web, None).ports, "*:8080->80/tcp");
        assert_eq!(service_row(&web, None).replicas, "0/1");
    }

    #[test]
    fn filters_parse() {
        let (f, mode) = parse_filters(&[
            "name=we".into(),
            "label=tier=web".into(),
            "mode=global".into(),
        ])
        .unwrap();
        assert_eq!(f.name_prefixes, ["we"]);
        assert_eq!(f.labels["tier"], "web");
        assert_eq!(mode.as_deref(), Some("global"));
        assert!(parse_filters(&["mode=job".into()]).is_err());
        assert!(parse_filters(&["color=red".into()]).is_err());
    }
}
