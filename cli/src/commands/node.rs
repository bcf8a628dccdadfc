//! `berth node ls|inspect|update|promote|demote|rm`.

use std::collections::BTreeMap;

use berth_proto::v1::{
    InfoRequest, ListNodesRequest, Node, NodeAvailability, NodeRole, NodeSpec, NodeState,
    Reachability, RemoveNodeRequest, UpdateNodeRequest,
};
use clap::{Args, Subcommand};

use super::{Daemon, status_error, title};
use crate::table::Table;

/// `berth node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes in the swarm
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more nodes
    Inspect(InspectArgs),
    /// Update a node
    Update(UpdateArgs),
    /// Promote one or more nodes to manager in the swarm
    Promote(NodesArgs),
    /// Demote one or more nodes from manager in the swarm
    Demote(NodesArgs),
    /// Remove one or more nodes from the swarm
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// List tasks running on one or more nodes, defaults to current node
    Ps(super::service::ps::NodePsArgs),
}

/// `berth node ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output (`json`)
    #[arg(long)]
    pub format: Option<String>,
}

/// `berth node inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Nodes (id, id prefix, hostname or `self`)
    #[arg(required = true)]
    pub nodes: Vec<String>,
}

/// `berth node update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long)]
    pub availability: Option<String>,
    /// Add or update a node label (key=value)
    #[arg(long)]
    pub label_add: Vec<String>,
    /// Remove a node label if exists
    #[arg(long)]
    pub label_rm: Vec<String>,
    /// Role of the node ("worker", "manager")
    #[arg(long)]
    pub role: Option<String>,
    /// The node
    pub node: String,
}

/// Commands taking a list of nodes.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Nodes (id, id prefix or hostname)
    #[arg(required = true)]
    pub nodes: Vec<String>,
}

/// `berth node rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force remove a node from the swarm
    #[arg(short, long)]
    pub force: bool,
    /// Nodes (id, id prefix or hostname)
    #[arg(required = true)]
    pub nodes: Vec<String>,
}

/// Runs one `berth node` command.
pub async fn run(daemon: &mut Daemon, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Ls(args) => ls(daemon, args).await,
        NodeCommand::Inspect(args) => inspect(daemon, args).await,
        NodeCommand::Update(args) => update(daemon, args).await,
        NodeCommand::Ps(args) => super::service::ps::node_ps(daemon, args).await,
        NodeCommand::Promote(args) => {
            for name in args.nodes {
                let node = resolve(daemon, &name).await?;
                let hostname = hostname(&node).to_string();
                if node.spec.as_ref().map(|s| s.desired_role) == Some(NodeRole::Manager as i32) {
                    println!("Node {hostname} is already a manager.");
                    continue;
                }
                set_role(daemon, node, NodeRole::Manager).await?;
                println!("Node {hostname} promoted to a manager in the swarm.");
            }
            Ok(())
        }
        NodeCommand::Demote(args) => {
            for name in args.nodes {
                let node = resolve(daemon, &name).await?;
                let hostname = hostname(&node).to_string();
                if node.spec.as_ref().map(|s| s.desired_role) == Some(NodeRole::Worker as i32) {
                    println!("Node {hostname} is already a worker.");
                    continue;
                }
                set_role(daemon, node, NodeRole::Worker).await?;
                println!("Manager {hostname} demoted in the swarm.");
            }
            Ok(())
        }
        NodeCommand::Rm(args) => {
            for name in args.nodes {
                let node = resolve(daemon, &name).await?;
                daemon
                    .control
                    .remove_node(RemoveNodeRequest {
                        node_id: node.id.clone(),
                        force: args.force,
                    })
                    .await
                    .map_err(status_error)?;
                println!("{name}");
            }
            Ok(())
        }
    }
}

async fn list(daemon: &mut Daemon) -> anyhow::Result<Vec<Node>> {
    let mut nodes = daemon
        .control
        .list_nodes(ListNodesRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .nodes;
    nodes.sort_by(|a, b| hostname(a).cmp(hostname(b)).then(a.id.cmp(&b.id)));
    Ok(nodes)
}

/// Finds a node by full id, `self`, hostname or unique id prefix (Docker's order).
async fn resolve(daemon: &mut Daemon, name: &str) -> anyhow::Result<Node> {
    let self_id = if name == "self" {
        Some(
            daemon
                .node
                .info(InfoRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .node_id,
        )
    } else {
        None
    };
    let name = self_id.as_deref().unwrap_or(name);
    let nodes = list(daemon).await?;
    if let Some(node) = nodes.iter().find(|n| n.id == name) {
        return Ok(node.clone());
    }
    let by_host: Vec<&Node> = nodes.iter().filter(|n| hostname(n) == name).collect();
    if let [node] = by_host.as_slice() {
        return Ok((*node).clone());
    }
    let by_prefix: Vec<&Node> = nodes.iter().filter(|n| n.id.starts_with(name)).collect();
    match (by_host.len(), by_prefix.as_slice()) {
        (0, [node]) => Ok((*node).clone()),
        (0, []) => anyhow::bail!("node {name} not found"),
        _ => anyhow::bail!(
            "node {name} is ambiguous ({} matches)",
            by_host.len().max(by_prefix.len())
        ),
    }
}

fn hostname(node: &Node) -> &str {
    node.description
        .as_ref()
        .map_or("", |d| d.hostname.as_str())
}

fn status(node: &Node) -> String {
    let state = node.status.as_ref().map_or(0, |s| s.state);
    NodeState::try_from(state).map_or("Unknown".into(), |s| title(s.as_str_name(), "NODE_STATE_"))
}

fn availability(node: &Node) -> String {
    let value = node.spec.as_ref().map_or(0, |s| s.availability);
    NodeAvailability::try_from(value).map_or("Unknown".into(), |a| {
        title(a.as_str_name(), "NODE_AVAILABILITY_")
    })
}

fn manager_status(node: &Node) -> String {
    match &node.manager_status {
        None => String::new(),
        Some(m) if m.leader => "Leader".into(),
        Some(m) => Reachability::try_from(m.reachability).map_or("Unknown".into(), |r| {
            title(r.as_str_name(), "REACHABILITY_")
        }),
    }
}

async fn ls(daemon: &mut Daemon, args: LsArgs) -> anyhow::Result<()> {
    let self_id = daemon
        .node
        .info(InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .node_id;
    let nodes = list(daemon).await?;
    if args.quiet {
        for node in &nodes {
            println!("{}", node.id);
        }
        return Ok(());
    }
    match args.format.as_deref() {
        Some("json") => {
            for node in &nodes {
                println!("{}", node_json(node, &self_id));
            }
        }
        Some(other) => anyhow::bail!("unknown format {other:?}: expected json"),
        None => {
            let mut table = Table::new(&[
                "ID",
                "HOSTNAME",
                "STATUS",
                "AVAILABILITY",
                "MANAGER STATUS",
                "ENGINE VERSION",
            ]);
            for node in &nodes {
                let mark = if node.id == self_id { " *" } else { "" };
                table.row(vec![
                    format!("{}{mark}", node.id),
                    hostname(node).to_string(),
                    status(node),
                    availability(node),
                    manager_status(node),
                    node.description
                        .as_ref()
                        .map_or(String::new(), |d| d.engine_version.clone()),
                ]);
            }
            print!("{}", table.render());
        }
    }
    Ok(())
}

/// One line of `node ls --format json`, with Docker's keys.
fn node_json(node: &Node, self_id: &str) -> serde_json::Value {
    serde_json::json!({
        "ID": node.id,
        "Self": node.id == self_id,
        "Hostname": hostname(node),
        "Status": status(node),
        "Availability": availability(node),
        "ManagerStatus": manager_status(node),
        "EngineVersion": node.description.as_ref().map_or("", |d| d.engine_version.as_str()),
    })
}

/// `node inspect` output, shaped like Docker's.
fn inspect_json(node: &Node) -> serde_json::Value {
    let spec = node.spec.clone().unwrap_or_default();
    let role = NodeRole::try_from(spec.desired_role).unwrap_or(NodeRole::Worker);
    let labels: BTreeMap<_, _> = spec
        .annotations
        .as_ref()
        .map(|a| a.labels.clone().into_iter().collect())
        .unwrap_or_default();
    let description = node.description.clone().unwrap_or_default();
    let platform = description.platform.clone().unwrap_or_default();
    let resources = description.resources.unwrap_or_default();
    serde_json::json!({
        "ID": node.id,
        "Version": {"Index": node.meta.as_ref().map_or(0, |m| m.version)},
        "CreatedAt": node.meta.as_ref().and_then(|m| m.created_at.as_ref()).map(|t| t.to_string()),
        "UpdatedAt": node.meta.as_ref().and_then(|m| m.updated_at.as_ref()).map(|t| t.to_string()),
        "Spec": {
            "Labels": labels,
            "Role": if role == NodeRole::Manager { "manager" } else { "worker" },
            "Availability": availability(node).to_lowercase(),
        },
        "Description": {
            "Hostname": description.hostname,
            "Platform": {"Architecture": platform.architecture, "OS": platform.os},
            "Resources": {"NanoCPUs": resources.nano_cpus, "MemoryBytes": resources.memory_bytes},
            "Engine": {"EngineVersion": description.engine_version},
        },
        "Status": {
            "State": status(node).to_lowercase(),
            "Message": node.status.as_ref().map_or("", |s| s.message.as_str()),
            "Addr": node.status.as_ref().map_or("", |s| s.addr.as_str()),
        },
        "ManagerStatus": node.manager_status.as_ref().map(|m| serde_json::json!({
            "Leader": m.leader,
            "Reachability": manager_status(node).to_lowercase(),
            "Addr": m.addr,
        })),
    })
}

async fn inspect(daemon: &mut Daemon, args: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in &args.nodes {
        found.push(resolve(daemon, name).await?);
    }
    if args.pretty {
        for node in &found {
            let description = node.description.clone().unwrap_or_default();
            let platform = description.platform.clone().unwrap_or_default();
            let resources = description.resources.unwrap_or_default();
            println!("ID:\t\t\t{}", node.id);
            println!("Hostname:\t\t{}", description.hostname);
            println!("Status:");
            println!(" State:\t\t\t{}", status(node));
            println!(" Availability:\t\t{}", availability(node));
            println!(
                " Address:\t\t{}",
                node.status.as_ref().map_or("", |s| s.addr.as_str())
            );
            if let Some(m) = &node.manager_status {
                println!("Manager Status:");
                println!(" Address:\t\t{}", m.addr);
                println!(" Raft Status:\t\t{}", manager_status(node));
                println!(" Leader:\t\t{}", if m.leader { "Yes" } else { "No" });
            }
            println!("Platform:");
            println!(" Operating System:\t{}", platform.os);
            println!(" Architecture:\t\t{}", platform.architecture);
            println!("Resources:");
            println!(" CPUs:\t\t\t{}", resources.nano_cpus / 1_000_000_000);
            println!(" Memory:\t\t{} MiB", resources.memory_bytes / (1024 * 1024));
            println!("Engine Version:\t\t{}", description.engine_version);
        }
        return Ok(());
    }
    let all: Vec<_> = found.iter().map(inspect_json).collect();
    println!("{}", serde_json::to_string_pretty(&all)?);
    Ok(())
}

/// Applies `change` to the node's spec and writes it with the version it was read at. The
/// change is a delta (a label, a role, an availability), so when the system moved the node on
/// meanwhile (its status or manager status; "update out of sequence") the delta is applied
/// again to a fresh read, a few times.
async fn update_spec(
    daemon: &mut Daemon,
    name: &str,
    change: impl Fn(&mut NodeSpec) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        let node = resolve(daemon, name).await?;
        let mut spec = node.spec.clone().unwrap_or_default();
        change(&mut spec)?;
        let result = daemon
            .control
            .update_node(UpdateNodeRequest {
                node_id: node.id.clone(),
                node_version: node.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
            })
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && status.message().contains("out of sequence")
                    && attempts < 5 =>
            {
                attempts += 1;
            }
            Err(status) => return Err(status_error(status)),
        }
    }
}

async fn set_role(daemon: &mut Daemon, node: Node, role: NodeRole) -> anyhow::Result<()> {
    update_spec(daemon, &node.id, |spec| {
        spec.desired_role = role as i32;
        Ok(())
    })
    .await
}

async fn update(daemon: &mut Daemon, args: UpdateArgs) -> anyhow::Result<()> {
    let availability = args
        .availability
        .as_deref()
        .map(|text| {
            NodeAvailability::from_str_name(&format!("NODE_AVAILABILITY_{}", text.to_uppercase()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "invalid availability {text:?}: expected active, pause or drain"
                    )
                })
        })
        .transpose()?;
    let role = args
        .role
        .as_deref()
        .map(|text| {
            NodeRole::from_str_name(&format!("NODE_ROLE_{}", text.to_uppercase()))
                .ok_or_else(|| anyhow::anyhow!("invalid role {text:?}: expected worker or manager"))
        })
        .transpose()?;
    let mut added = Vec::new();
    for label in &args.label_add {
        let (key, value) = label.split_once('=').unwrap_or((label.as_str(), ""));
        if key.is_empty() {
            anyhow::bail!("invalid label {label:?}: expected key=value");
        }
        added.push((key.to_string(), value.to_string()));
    }
    update_spec(daemon, &args.node, |spec| {
        if let Some(availability) = availability {
            spec.availability = availability as i32;
        }
        if let Some(role) = role {
            spec.desired_role = role as i32;
        }
        let annotations = spec.annotations.get_or_insert_default();
        for (key, value) in &added {
            annotations.labels.insert(key.clone(), value.clone());
        }
        for key in &args.label_rm {
            if annotations.labels.remove(key).is_none() {
                anyhow::bail!("key {key} doesn't exist in node's labels");
            }
        }
        Ok(())
    })
    .await?;
    println!("{}", args.node);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::v1::{ManagerStatus, NodeDescription, NodeSpec, NodeStatus};

    fn node(id: &str, host: &str, leader: Option<bool>) -> Node {
        Node {
            id: id.into(),
            spec: Some(NodeSpec {
                availability: NodeAvailability::Drain as i32,
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: host.into(),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            manager_status: leader.map(|leader| ManagerStatus {
                leader,
                reachability: Reachability::Reachable as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn columns_read_like_docker() {
        let n = node("a", "h", Some(true));
        assert_eq!(status(&n), "Ready");
        assert_eq!(availability(&n), "Drain");
        assert_eq!(manager_status(&n), "Leader");
        assert_eq!(manager_status(&node("b", "h", Some(false))), "Reachable");
        assert_eq!(manager_status(&node("c", "h", None)), "");
        let json = node_json(&n, "a");
        assert_eq!(json["Self"], true);
        assert_eq!(json["ManagerStatus"], "Leader");
    }
}
