//! `berth network create|ls|inspect|rm`, with Docker's output: `create` prints the id, `ls`
//! the table `NETWORK ID NAME DRIVER SCOPE`, `inspect` a JSON array (`IPAM.Config` with the
//! allocated subnets, the VXLAN id under `Options`), `rm` each name given (refused by the
//! managers while a service uses the network).

use std::collections::{BTreeMap, HashMap};

use berth_proto::v1::{
    Annotations, CreateNetworkRequest, IpamConfig, IpamOptions, ListNetworksRequest, Network,
    NetworkSpec, RemoveNetworkRequest, list_networks_request,
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::format::{go_template, json_pretty, rfc3339};
use super::{Daemon, short_id, status_error};
use crate::table::Table;

/// `berth network` subcommands.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    Create(CreateArgs),
    /// List networks
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks
    Inspect(InspectArgs),
    /// Remove one or more networks
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

/// `berth network create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver to manage the Network
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR format that represents a network segment
    #[arg(long)]
    pub subnet: Vec<String>,
    /// IPv4 Gateway for the master subnet
    #[arg(long)]
    pub gateway: Vec<String>,
    /// Allocate container ip from a sub-range
    #[arg(long = "ip-range")]
    pub ip_range: Vec<String>,
    /// Restrict external access to the network
    #[arg(long)]
    pub internal: bool,
    /// Enable manual container attachment
    #[arg(long)]
    pub attachable: bool,
    /// Create swarm routing-mesh network
    #[arg(long)]
    pub ingress: bool,
    /// Set metadata on a network
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Set driver specific options
    #[arg(short = 'o', long = "opt")]
    pub opts: Vec<String>,
    /// Network name
    pub name: String,
}

/// `berth network ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display network IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Provide filter values (e.g. "name=front", "id=abc", "label=k=v")
    #[arg(short, long = "filter")]
    pub filters: Vec<String>,
    /// Format output (`json`)
    #[arg(long)]
    pub format: Option<String>,
}

/// `berth network inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a Go template (`{{.Path}}` fields, `{{json .X}}`)
    #[arg(short, long)]
    pub format: Option<String>,
    /// Networks (name, id or id prefix)
    #[arg(required = true)]
    pub networks: Vec<String>,
}

/// `berth network rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Networks (name, id or id prefix)
    #[arg(required = true)]
    pub networks: Vec<String>,
}

/// Runs one `berth network` command.
pub async fn run(daemon: &mut Daemon, command: NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create(args) => create(daemon, args).await,
        NetworkCommand::Ls(args) => ls(daemon, args).await,
        NetworkCommand::Inspect(args) => inspect(daemon, args).await,
        NetworkCommand::Rm(args) => rm(daemon, args).await,
    }
}

/// `k=v` pairs (a bare `k` has an empty value).
fn key_values(items: &[String]) -> HashMap<String, String> {
    items
        .iter()
        .map(|i| match i.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (i.clone(), String::new()),
        })
        .collect()
}

/// The spec `berth network create` asks for.
pub fn create_spec(args: &CreateArgs) -> anyhow::Result<NetworkSpec> {
    if args.gateway.len() > args.subnet.len() || args.ip_range.len() > args.subnet.len() {
        anyhow::bail!("every --gateway and --ip-range needs a --subnet (given in the same order)");
    }
    let configs = args
        .subnet
        .iter()
        .enumerate()
        .map(|(i, subnet)| IpamConfig {
            subnet: subnet.clone(),
            range: args.ip_range.get(i).cloned().unwrap_or_default(),
            gateway: args.gateway.get(i).cloned().unwrap_or_default(),
        })
        .collect::<Vec<_>>();
    Ok(NetworkSpec {
        annotations: Some(Annotations {
            name: args.name.clone(),
            labels: key_values(&args.labels),
        }),
        driver: args.driver.clone(),
        driver_options: key_values(&args.opts),
        ipam: (!configs.is_empty()).then_some(IpamOptions { configs }),
        internal: args.internal,
        attachable: args.attachable,
        ingress: args.ingress,
    })
}

async fn create(daemon: &mut Daemon, args: CreateArgs) -> anyhow::Result<()> {
    let spec = create_spec(&args)?;
    let network = daemon
        .control
        .create_network(CreateNetworkRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner()
        .network
        .ok_or_else(|| anyhow::anyhow!("the manager answered no network"))?;
    println!("{}", network.id);
    Ok(())
}

fn name(n: &Network) -> &str {
    n.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

fn driver(n: &Network) -> &str {
    match n.spec.as_ref().map(|s| s.driver.as_str()) {
        Some("") | None => "overlay",
        Some(d) => d,
    }
}

async fn all(daemon: &mut Daemon) -> anyhow::Result<Vec<Network>> {
    Ok(daemon
        .control
        .list_networks(ListNetworksRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .networks)
}

/// The network `key` names: an exact id, then an exact name, then a unique id prefix.
pub fn pick<'a>(networks: &'a [Network], key: &str) -> anyhow::Result<&'a Network> {
    if let Some(n) = networks.iter().find(|n| n.id == key) {
        return Ok(n);
    }
    if let Some(n) = networks.iter().find(|n| name(n) == key) {
        return Ok(n);
    }
    let matches: Vec<&Network> = networks.iter().filter(|n| n.id.starts_with(key)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!("network {key} not found"),
        _ => anyhow::bail!("network {key} is ambiguous ({} matches)", matches.len()),
    }
}

async fn ls(daemon: &mut Daemon, args: LsArgs) -> anyhow::Result<()> {
    let mut filters = list_networks_request::Filters::default();
    for f in &args.filters {
        match f.split_once('=') {
            Some(("name", v)) => filters.name_prefixes.push(v.to_owned()),
            Some(("id", v)) => filters.id_prefixes.push(v.to_owned()),
            Some(("label", v)) => {
                let (k, v) = v.split_once('=').unwrap_or((v, ""));
                filters.labels.insert(k.to_owned(), v.to_owned());
            }
            _ => anyhow::bail!("invalid filter {f:?}: expected name=, id= or label="),
        }
    }
    let networks = daemon
        .control
        .list_networks(ListNetworksRequest {
            filters: Some(filters),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .networks;
    if args.quiet {
        for n in &networks {
            println!("{}", short_id(&n.id));
        }
        return Ok(());
    }
    if let Some(format) = args.format.as_deref() {
        if format != "json" {
            anyhow::bail!("unknown format {format:?}: expected json");
        }
        for n in &networks {
            let row = json!({"ID": short_id(&n.id), "Name": name(n), "Driver": driver(n), "Scope": "swarm"});
            println!("{row}");
        }
        return Ok(());
    }
    print!("{}", table(&networks));
    Ok(())
}

/// The `network ls` table.
pub fn table(networks: &[Network]) -> String {
    let mut t = Table::new(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"]);
    for n in networks {
        t.row(vec![
            short_id(&n.id).to_owned(),
            name(n).to_owned(),
            driver(n).to_owned(),
            "swarm".into(),
        ]);
    }
    t.render()
}

/// A network as `docker network inspect` shows it.
pub fn inspect_json(n: &Network) -> Value {
    let spec = n.spec.clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = spec
        .annotations
        .as_ref()
        .map(|a| a.labels.clone().into_iter().collect())
        .unwrap_or_default();
    let mut options: BTreeMap<String, String> = spec.driver_options.clone().into_iter().collect();
    if n.vxlan_id != 0 {
        options.insert(
            "com.docker.network.driver.overlay.vxlanid_list".into(),
            n.vxlan_id.to_string(),
        );
    }
    let config: Vec<Value> = n
        .ipam
        .iter()
        .map(|c| {
            let mut m = serde_json::Map::new();
            m.insert("Subnet".into(), json!(c.subnet));
            if !c.range.is_empty() {
                m.insert("IPRange".into(), json!(c.range));
            }
            m.insert("Gateway".into(), json!(c.gateway));
            Value::Object(m)
        })
        .collect();
    let meta = n.meta.unwrap_or_default();
    json!({
        "Name": name(n),
        "Id": n.id,
        "Created": rfc3339(meta.created_at.as_ref()),
        "Scope": "swarm",
        "Driver": driver(n),
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": config},
        "Internal": spec.internal,
        "Attachable": spec.attachable,
        "Ingress": spec.ingress,
        "Options": options,
        "Labels": labels,
    })
}

async fn inspect(daemon: &mut Daemon, args: InspectArgs) -> anyhow::Result<()> {
    let networks = all(daemon).await?;
    let mut out = Vec::new();
    for key in &args.networks {
        out.push(inspect_json(pick(&networks, key)?));
    }
    match args.format.as_deref() {
        Some(template) => {
            for v in &out {
                println!(
                    "{}",
                    go_template(template, v).map_err(|e| anyhow::anyhow!(e))?
                );
            }
        }
        None => println!("{}", json_pretty(&Value::Array(out))),
    }
    Ok(())
}

async fn rm(daemon: &mut Daemon, args: RmArgs) -> anyhow::Result<()> {
    let networks = all(daemon).await?;
    let mut failed = Vec::new();
    for key in &args.networks {
        let result = match pick(&networks, key) {
            Ok(n) => daemon
                .control
                .remove_network(RemoveNetworkRequest {
                    network_id: n.id.clone(),
                })
                .await
                .map(|_| ())
                .map_err(status_error),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => println!("{key}"),
            Err(e) => {
                eprintln!("Error: {e}");
                failed.push(key.clone());
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("failed to remove network(s): {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: NetworkCommand,
    }

    #[test]
    fn create_flags_make_the_spec() {
        let cli = Cli::try_parse_from([
            "network",
            "create",
            "--subnet",
            "10.9.0.0/24",
            "--gateway",
            "10.9.0.254",
            "--internal",
            "--label",
            "a=b",
            "back",
        ])
        .expect("parse");
        let NetworkCommand::Create(args) = cli.command else {
            panic!("not create")
        };
        let spec = create_spec(&args).expect("spec");
        assert_eq!(spec.driver, "overlay");
        assert!(spec.internal && !spec.ingress);
        let c = &spec.ipam.expect("ipam").configs[0];
        assert_eq!(
            (c.subnet.as_str(), c.gateway.as_str()),
            ("10.9.0.0/24", "10.9.0.254")
        );
        assert_eq!(spec.annotations.expect("a").labels["a"], "b");
        let cli = Cli::try_parse_from(["network", "create", "--gateway", "10.0.0.1", "x"])
            .expect("parse");
        let NetworkCommand::Create(args) = cli.command else {
            panic!("not create")
        };
        assert!(create_spec(&args).is_err());
    }

    #[test]
    fn networks_print_like_docker() {
        let n = Network {
            id: "abcdefghijklmnopqrstuvwxy".into(),
            spec: Some(NetworkSpec {
                annotations: Some(Annotations {
                    name: "front".into(),
                    ..Default::default()
                }),
                driver: "overlay".into(),
                ..Default::default()
            }),
            ipam: vec![IpamConfig {
                subnet: "10.0.1.0/24".into(),
                range: String::new(),
                gateway: "10.0.1.1".into(),
            }],
            vxlan_id: 4097,
            ..Default::default()
        };
        let t = table(std::slice::from_ref(&n));
        assert_eq!(
            t,
            "NETWORK ID     NAME    DRIVER    SCOPE\nabcdefghijkl   front   overlay   swarm\n"
        );
        let v = inspect_json(&n);
        assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
        assert_eq!(
            v["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
            "4097"
        );
        let list = [n.clone()];
        assert_eq!(pick(&list, "front").map(|n| n.vxlan_id).ok(), Some(4097));
        assert!(pick(&list, "abc").is_ok());
        assert!(pick(&list, "zzz").is_err());
    }
}
