//! `berth info`.

use berth_proto::v1::{InfoRequest, LocalSwarmState};

use super::{Daemon, status_error};

/// Prints the daemon's state, as text or JSON.
pub async fn info(daemon: &mut Daemon, format: Option<&str>) -> anyhow::Result<()> {
    let info = daemon
        .node
        .info(InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let swarm = LocalSwarmState::try_from(info.swarm_state)
        .map(|state| super::title(state.as_str_name(), "LOCAL_SWARM_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into());
    match format {
        Some("json") => println!(
            "{}",
            serde_json::json!({
                "Swarm": swarm,
                "NodeID": info.node_id,
                "IsManager": info.is_manager,
                "ClusterID": info.cluster_id,
                "NodeAddr": info.node_addr,
                "ManagerAddrs": info.manager_addrs,
                "ServerVersion": info.engine_version,
                "DataDir": info.data_dir,
                "Name": info.hostname,
                "Error": info.error,
            })
        ),
        Some(other) => anyhow::bail!("unknown format {other:?}: expected json"),
        None => {
            println!("Server Version: {}", info.engine_version);
            println!("Name: {}", info.hostname);
            println!("Berth Root Dir: {}", info.data_dir);
            println!("Swarm: {swarm}");
            if !info.node_id.is_empty() {
                println!(" NodeID: {}", info.node_id);
                println!(" Is Manager: {}", info.is_manager);
                println!(" ClusterID: {}", info.cluster_id);
                println!(" Node Address: {}", info.node_addr);
                println!(" Manager Addresses:");
                for addr in &info.manager_addrs {
                    println!("  {addr}");
                }
            }
            if !info.error.is_empty() {
                println!(" Error: {}", info.error);
            }
        }
    }
    Ok(())
}
