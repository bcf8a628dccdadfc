//! `berth stack ls` (`NAME SERVICES`), `berth stack services STACK` and `berth stack ps STACK`.
//!
//! A stack is found through its services' `com.docker.stack.namespace` label. `services` and
//! `ps` are `berth service ls -f label=...` and `berth service ps <the stack's services>`:
//! they run those commands (same flags, columns and formats) rather than copying them.

use std::collections::BTreeMap;

use clap::{Args, Parser};

use super::convert::NAMESPACE_LABEL;
use crate::commands::Daemon;
use crate::commands::format::go_template;
use crate::commands::service::{self, ServiceCommand, list_services};
use crate::table::Table;

/// `berth stack ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Format output (`json` or a Go template such as '{{.Name}}')
    #[arg(long, value_name = "string")]
    pub format: Option<String>,
}

/// `berth stack services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Filter output based on conditions provided (id=, label=, mode=, name=)
    #[arg(short = 'f', long = "filter", value_name = "filter")]
    pub filters: Vec<String>,
    /// Format output (`json` or a Go template such as '{{.Name}}')
    #[arg(long, value_name = "string")]
    pub format: Option<String>,
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Stack name
    #[arg(value_name = "STACK")]
    pub stack: String,
}

/// `berth stack ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Filter output based on conditions provided (id=, name=, node=, desired-state=)
    #[arg(short = 'f', long = "filter", value_name = "filter")]
    pub filters: Vec<String>,
    /// Format output (`json` or a Go template such as '{{.Name}}')
    #[arg(long, value_name = "string")]
    pub format: Option<String>,
    /// Do not map IDs to Names
    #[arg(long)]
    pub no_resolve: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Stack name
    #[arg(value_name = "STACK")]
    pub stack: String,
}

/// Stack name → number of services, from the services' namespace labels.
pub fn stacks(services: &[berth_proto::v1::Service]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in services {
        if let Some(ns) = s
            .spec
            .as_ref()
            .and_then(|sp| sp.annotations.as_ref())
            .and_then(|a| a.labels.get(NAMESPACE_LABEL))
        {
            *out.entry(ns.clone()).or_default() += 1;
        }
    }
    out
}

/// The `stack ls` table.
pub fn render_stacks(stacks: &BTreeMap<String, usize>) -> String {
    let mut table = Table::new(&["NAME", "SERVICES"]);
    for (name, count) in stacks {
        table.row(vec![name.clone(), count.to_string()]);
    }
    table.render()
}

/// `berth stack ls`.
pub async fn ls(daemon: &mut Daemon, args: LsArgs) -> anyhow::Result<()> {
    let stacks = stacks(&list_services(daemon).await?);
    match args.format.as_deref() {
        None | Some("table") => print!("{}", render_stacks(&stacks)),
        Some(format) => {
            for (name, count) in &stacks {
                let row = serde_json::json!({"Name": name, "Services": count.to_string()});
                if format == "json" {
                    println!("{row}");
                } else {
                    println!(
                        "{}",
                        go_template(format, &row).map_err(|e| anyhow::anyhow!("{e}"))?
                    );
                }
            }
        }
    }
    Ok(())
}

/// Parses a `berth service ...` command line.
#[derive(Debug, Parser)]
struct ServiceCli {
    #[command(subcommand)]
    command: ServiceCommand,
}

fn service_command(args: Vec<String>) -> anyhow::Result<ServiceCommand> {
    Ok(ServiceCli::try_parse_from(std::iter::once("service".to_string()).chain(args))?.command)
}

/// The ids of stack `name`'s services.
async fn stack_service_ids(daemon: &mut Daemon, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(list_services(daemon)
        .await?
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.annotations.as_ref())
                .and_then(|a| a.labels.get(NAMESPACE_LABEL))
                .is_some_and(|ns| ns == name)
        })
        .map(|s| s.id)
        .collect())
}

/// The `service ls` arguments of `stack services`.
fn services_command(args: &ServicesArgs) -> Vec<String> {
    let mut out = vec![
        "ls".to_string(),
        "--filter".into(),
        format!("label={NAMESPACE_LABEL}={}", args.stack),
    ];
    for f in &args.filters {
        out.extend(["--filter".to_string(), f.clone()]);
    }
    if let Some(format) = &args.format {
        out.extend(["--format".to_string(), format.clone()]);
    }
    if args.quiet {
        out.push("--quiet".into());
    }
    out
}

/// `berth stack services`.
pub async fn services(daemon: &mut Daemon, args: ServicesArgs) -> anyhow::Result<()> {
    if stack_service_ids(daemon, &args.stack).await?.is_empty() {
        eprintln!("Nothing found in stack: {}", args.stack);
        return Ok(());
    }
    let command = service_command(services_command(&args))?;
    service::run(daemon, command).await
}

/// The `service ps` arguments of `stack ps` over services `ids`.
fn ps_command(args: &PsArgs, ids: Vec<String>) -> Vec<String> {
    let mut out = vec!["ps".to_string()];
    for f in &args.filters {
        out.extend(["--filter".to_string(), f.clone()]);
    }
    if let Some(format) = &args.format {
        out.extend(["--format".to_string(), format.clone()]);
    }
    for (flag, on) in [
        ("--no-resolve", args.no_resolve),
        ("--no-trunc", args.no_trunc),
        ("--quiet", args.quiet),
    ] {
        if on {
            out.push(flag.to_string());
        }
    }
    out.push("--".into());
    out.extend(ids);
    out
}

/// `berth stack ps`.
pub async fn ps(daemon: &mut Daemon, args: PsArgs) -> anyhow::Result<()> {
    let ids = stack_service_ids(daemon, &args.stack).await?;
    if ids.is_empty() {
        anyhow::bail!("nothing found in stack: {}", args.stack);
    }
    let command = service_command(ps_command(&args, ids))?;
    service::run(daemon, command).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::service::fixtures::service;

    #[test]
    fn stacks_are_counted_from_labels() {
        let mut services = vec![
            service("a", "app_web", Some(1)),
            service("b", "app_api", Some(1)),
            service("c", "db_main", None),
            service("d", "loose", Some(1)),
        ];
        for (s, ns) in services.iter_mut().zip(["app", "app", "db"]) {
            if let Some(a) = s.spec.as_mut().and_then(|sp| sp.annotations.as_mut()) {
                a.labels.insert(NAMESPACE_LABEL.into(), ns.into());
            }
        }
        let counted = stacks(&services);
        assert_eq!(
            render_stacks(&counted),
            "NAME   SERVICES\napp    2\ndb     1\n"
        );
    }

    #[test]
    fn services_and_ps_run_the_service_commands() {
        let args = ServicesArgs {
            filters: vec!["name=app_w".into()],
            format: Some("json".into()),
            quiet: true,
            stack: "app".into(),
        };
        let command = service_command(services_command(&args)).unwrap();
        assert!(matches!(command, ServiceCommand::Ls(_)), "{command:?}");
        let args = PsArgs {
            filters: vec!["desired-state=running".into()],
            format: None,
            no_resolve: true,
            no_trunc: false,
            quiet: false,
            stack: "app".into(),
        };
        let line = ps_command(&args, vec!["id1".into(), "-odd".into()]);
        assert_eq!(
            line,
            [
                "ps",
                "--filter",
                "desired-state=running",
                "--no-resolve",
                "--",
                "id1",
                "-odd"
            ]
        );
        let command = service_command(line).unwrap();
        assert!(matches!(command, ServiceCommand::Ps(_)), "{command:?}");
    }
}
