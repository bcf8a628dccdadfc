//! `berth swarm init|join|join-token|leave|update|ca`.
//!
//! `swarm ca --rotate` raises `spec.ca_config.force_rotate`, which starts a root CA rotation
//! (`berth_manager::ca::rotation`), then, unless `-d`, follows it from the cluster and node
//! objects (progress on stderr unless `-q`) until it is done, and prints the new root.

use std::sync::Arc;
use std::time::Duration;

use berth_manager::ca::rotation::{self, Progress};
use berth_proto::v1::{
    GetClusterRequest, GetJoinTokensRequest, InfoRequest, ListClustersRequest, ListNodesRequest,
    NodeAvailability, NodeRole, RotateJoinTokenRequest, SwarmInitRequest, SwarmJoinRequest,
    SwarmLeaveRequest, UpdateClusterRequest,
};
use clap::{Args, Subcommand};

use super::{Daemon, status_error};
use crate::duration;

/// `berth swarm` subcommands.
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Initialize a swarm: this node becomes its first manager
    Init(InitArgs),
    /// Join a swarm as a node and/or manager
    Join(JoinArgs),
    /// Manage join tokens
    JoinToken(JoinTokenArgs),
    /// Leave the swarm
    Leave(LeaveArgs),
    /// Update the swarm
    Update(UpdateArgs),
    /// Display and rotate the root CA
    Ca(CaArgs),
}

/// `berth swarm init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Advertised address (format: <ip>[:port])
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: <ip>[:port])
    #[arg(long, default_value = "0.0.0.0:4377")]
    pub listen_addr: String,
    /// Validity period for node certificates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = duration::parse)]
    pub cert_expiry: Option<std::time::Duration>,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h)
    #[arg(long, value_parser = duration::parse)]
    pub dispatcher_heartbeat: Option<std::time::Duration>,
    /// Task history retention limit
    #[arg(long)]
    pub task_history_limit: Option<i64>,
    /// Number of log entries between Raft snapshots
    #[arg(long)]
    pub snapshot_interval: Option<u64>,
    /// Force create a new cluster from current state
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, default_value = "active", value_parser = parse_availability)]
    pub availability: NodeAvailability,
    /// Default address pool in CIDR format
    #[arg(long)]
    pub default_addr_pool: Vec<String>,
    /// Default address pool subnet mask length
    #[arg(long, default_value_t = 24)]
    pub default_addr_pool_mask_length: u32,
    /// Port number used for data path traffic (VXLAN)
    #[arg(long, default_value_t = 4789)]
    pub data_path_port: u32,
}

/// `berth swarm join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Token for entry into the swarm
    #[arg(long)]
    pub token: String,
    /// Advertised address (format: <ip>[:port])
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: <ip>[:port])
    #[arg(long, default_value = "0.0.0.0:4377")]
    pub listen_addr: String,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, default_value = "active", value_parser = parse_availability)]
    pub availability: NodeAvailability,
    /// A manager's cluster address (HOST:PORT)
    pub remote: String,
}

/// `berth swarm join-token`.
#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Only display token
    #[arg(short, long)]
    pub quiet: bool,
    /// Rotate join token
    #[arg(long)]
    pub rotate: bool,
    /// worker or manager
    #[arg(value_parser = parse_role)]
    pub role: NodeRole,
}

/// `berth swarm leave`.
#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Force this node to leave the swarm, ignoring warnings
    #[arg(short, long)]
    pub force: bool,
}

/// `berth swarm update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Validity period for node certificates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = duration::parse)]
    pub cert_expiry: Option<std::time::Duration>,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h)
    #[arg(long, value_parser = duration::parse)]
    pub dispatcher_heartbeat: Option<std::time::Duration>,
    /// Task history retention limit
    #[arg(long)]
    pub task_history_limit: Option<i64>,
    /// Number of log entries between Raft snapshots
    #[arg(long)]
    pub snapshot_interval: Option<u64>,
}

/// `berth swarm ca`.
#[derive(Debug, Args)]
pub struct CaArgs {
    /// Rotate the swarm CA
    #[arg(long)]
    pub rotate: bool,
    /// Exit immediately instead of waiting for the root rotation to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_availability(text: &str) -> Result<NodeAvailability, String> {
    NodeAvailability::from_str_name(&format!("NODE_AVAILABILITY_{}", text.to_uppercase()))
        .ok_or_else(|| format!("invalid availability {text:?}: expected active, pause or drain"))
}

fn parse_role(text: &str) -> Result<NodeRole, String> {
    NodeRole::from_str_name(&format!("NODE_ROLE_{}", text.to_uppercase()))
        .ok_or_else(|| format!("unknown role {text:?}: expected worker or manager"))
}

fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Worker => "worker",
        NodeRole::Manager => "manager",
    }
}

/// Runs one `berth swarm` command.
pub async fn run(daemon: &mut Daemon, command: SwarmCommand) -> anyhow::Result<()> {
    match command {
        SwarmCommand::Init(args) => init(daemon, args).await,
        SwarmCommand::Join(args) => join(daemon, args).await,
        SwarmCommand::JoinToken(args) => join_token(daemon, args).await,
        SwarmCommand::Leave(args) => {
            daemon
                .node
                .swarm_leave(SwarmLeaveRequest { force: args.force })
                .await
                .map_err(status_error)?;
            println!("Node left the swarm.");
            Ok(())
        }
        SwarmCommand::Update(args) => update(daemon, args).await,
        SwarmCommand::Ca(args) => ca(daemon, args).await,
    }
}

async fn init(daemon: &mut Daemon, args: InitArgs) -> anyhow::Result<()> {
    let request = SwarmInitRequest {
        advertise_addr: args.advertise_addr.unwrap_or_default(),
        listen_addr: args.listen_addr,
        cert_expiry: args.cert_expiry.map(duration::to_proto),
        dispatcher_heartbeat: args.dispatcher_heartbeat.map(duration::to_proto),
        task_history_limit: args.task_history_limit,
        force_new_cluster: args.force_new_cluster,
        default_addr_pool: args.default_addr_pool,
        default_addr_pool_mask_len: args.default_addr_pool_mask_length,
        availability: args.availability as i32,
        data_path_port: args.data_path_port,
        snapshot_interval: args.snapshot_interval,
    };
    let response = daemon
        .node
        .swarm_init(request)
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "Swarm initialized: current node ({}) is now a manager.",
        response.node_id
    );
    println!();
    print_join_command(daemon, NodeRole::Worker).await?;
    println!(
        "To add a manager to this swarm, run 'berth swarm join-token manager' and follow the instructions."
    );
    println!();
    Ok(())
}

async fn join(daemon: &mut Daemon, args: JoinArgs) -> anyhow::Result<()> {
    let request = SwarmJoinRequest {
        remote_addrs: vec![args.remote],
        join_token: args.token,
        advertise_addr: args.advertise_addr.unwrap_or_default(),
        listen_addr: args.listen_addr,
        availability: args.availability as i32,
    };
    let response = daemon
        .node
        .swarm_join(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let role = NodeRole::try_from(response.role).unwrap_or(NodeRole::Worker);
    println!("This node joined a swarm as a {}.", role_name(role));
    Ok(())
}

async fn join_token(daemon: &mut Daemon, args: JoinTokenArgs) -> anyhow::Result<()> {
    if args.rotate {
        daemon
            .control
            .rotate_join_token(RotateJoinTokenRequest {
                role: args.role as i32,
            })
            .await
            .map_err(status_error)?;
        if !args.quiet {
            println!("Successfully rotated {} join token.", role_name(args.role));
            println!();
        }
    }
    if args.quiet {
        println!("{}", token_for(daemon, args.role).await?);
        return Ok(());
    }
    print_join_command(daemon, args.role).await
}

async fn token_for(daemon: &mut Daemon, role: NodeRole) -> anyhow::Result<String> {
    let tokens = daemon
        .control
        .get_join_tokens(GetJoinTokensRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .join_tokens
        .unwrap_or_default();
    Ok(match role {
        NodeRole::Worker => tokens.worker,
        NodeRole::Manager => tokens.manager,
    })
}

async fn print_join_command(daemon: &mut Daemon, role: NodeRole) -> anyhow::Result<()> {
    let token = token_for(daemon, role).await?;
    let info = daemon
        .node
        .info(InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "To add a {} to this swarm, run the following command:",
        role_name(role)
    );
    println!();
    println!("    berth swarm join --token {token} {}", info.node_addr);
    println!();
    Ok(())
}

async fn current_cluster(daemon: &mut Daemon) -> anyhow::Result<berth_proto::v1::Cluster> {
    let clusters = daemon
        .control
        .list_clusters(ListClustersRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .clusters;
    let id = clusters
        .first()
        .map(|c| c.id.clone())
        .ok_or_else(|| anyhow::anyhow!("the swarm has no cluster object yet"))?;
    daemon
        .control
        .get_cluster(GetClusterRequest { cluster_id: id })
        .await
        .map_err(status_error)?
        .into_inner()
        .cluster
        .ok_or_else(|| anyhow::anyhow!("the manager returned no cluster"))
}

async fn update(daemon: &mut Daemon, args: UpdateArgs) -> anyhow::Result<()> {
    let cluster = current_cluster(daemon).await?;
    let mut spec = cluster.spec.clone().unwrap_or_default();
    if let Some(expiry) = args.cert_expiry {
        spec.ca_config.get_or_insert_default().node_cert_expiry = Some(duration::to_proto(expiry));
    }
    if let Some(period) = args.dispatcher_heartbeat {
        spec.dispatcher.get_or_insert_default().heartbeat_period = Some(duration::to_proto(period));
    }
    if let Some(limit) = args.task_history_limit {
        spec.orchestration
            .get_or_insert_default()
            .task_history_retention_limit = limit;
    }
    if let Some(interval) = args.snapshot_interval {
        spec.raft.get_or_insert_default().snapshot_interval = interval;
    }
    daemon
        .control
        .update_cluster(UpdateClusterRequest {
            cluster_id: cluster.id.clone(),
            cluster_version: cluster.meta.as_ref().map_or(0, |m| m.version),
            spec: Some(spec),
        })
        .await
        .map_err(status_error)?;
    println!("Swarm updated.");
    Ok(())
}

async fn ca(daemon: &mut Daemon, args: CaArgs) -> anyhow::Result<()> {
    if args.rotate {
        let cluster = current_cluster(daemon).await?;
        let mut spec = cluster.spec.clone().unwrap_or_default();
        spec.ca_config.get_or_insert_default().force_rotate += 1;
        daemon
            .control
            .update_cluster(UpdateClusterRequest {
                cluster_id: cluster.id.clone(),
                cluster_version: cluster.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
            })
            .await
            .map_err(status_error)?;
        if !args.detach {
            wait_for_rotation(daemon, args.quiet).await?;
        }
    }
    let cluster = current_cluster(daemon).await?;
    let cert = cluster.root_ca.map(|ca| ca.ca_cert).unwrap_or_default();
    print!("{}", String::from_utf8_lossy(&cert));
    Ok(())
}

/// How long [`wait_for_rotation`] keeps retrying when the managers do not answer (each
/// manager restarts its cluster port with its new certificate during a rotation).
const ROTATION_UNREACHABLE_GRACE: Duration = Duration::from_secs(30);

async fn rotation_progress(daemon: &mut Daemon) -> anyhow::Result<Progress> {
    let cluster = current_cluster(daemon).await?;
    let nodes: Vec<_> = daemon
        .control
        .list_nodes(ListNodesRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .nodes
        .into_iter()
        .map(Arc::new)
        .collect();
    Ok(rotation::progress(&cluster, &nodes))
}

/// Follows a root rotation until it is done, printing each change of progress on stderr.
async fn wait_for_rotation(daemon: &mut Daemon, quiet: bool) -> anyhow::Result<()> {
    let mut shown = None;
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let progress = match rotation_progress(daemon).await {
            Ok(progress) => {
                failing_since = None;
                progress
            }
            Err(err) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > ROTATION_UNREACHABLE_GRACE {
                    return Err(err.context(
                        "lost track of the root CA rotation (it goes on; see berth swarm ca)",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if !quiet && shown != Some(progress) {
            match progress {
                Progress::Reissuing { reissued, nodes } => {
                    eprintln!("rotated {reissued}/{nodes} nodes");
                }
                Progress::Finishing { finished, nodes } => eprintln!(
                    "new root CA in use; {finished}/{nodes} nodes no longer trust the old one"
                ),
                Progress::Done => eprintln!("root CA rotation complete"),
            }
        }
        if progress == Progress::Done {
            return Ok(());
        }
        shown = Some(progress);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
