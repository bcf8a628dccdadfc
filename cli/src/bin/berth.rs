//! `berth`: the command-line client of a Berth node.

use std::process::ExitCode;

use berth_cli::client::{self, ClientArgs, ClientCommand};
use clap::Parser;

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    berth_cli::exit::report(run(args))
}

fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClientCommand::Version(version) => {
            print_version(version.format.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Info(info) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(print_info(&args.host, info.format.as_deref()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_version(format: Option<&str>) -> anyhow::Result<()> {
    let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);
    match format {
        Some("json") => println!(
            "{}",
            serde_json::json!({"Client": {"Version": berth_cli::VERSION, "Os": os, "Arch": arch}})
        ),
        Some(other) => anyhow::bail!("unknown format {other:?}: expected json"),
        None => {
            println!("Client:");
            println!(" Version:    {}", berth_cli::VERSION);
            println!(" OS/Arch:    {os}/{arch}");
        }
    }
    Ok(())
}

async fn print_info(host: &str, format: Option<&str>) -> anyhow::Result<()> {
    let mut node = client::connect(host).await?;
    let info = node
        .info(berth_proto::v1::InfoRequest {})
        .await
        .map_err(client::status_error)?
        .into_inner();
    let swarm = berth_proto::v1::LocalSwarmState::try_from(info.swarm_state)
        .map(|state| {
            state
                .as_str_name()
                .trim_start_matches("LOCAL_SWARM_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    match format {
        Some("json") => println!(
            "{}",
            serde_json::json!({
                "Swarm": swarm,
                "NodeID": info.node_id,
                "IsManager": info.is_manager,
                "ClusterID": info.cluster_id,
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
            }
            if !info.error.is_empty() {
                println!(" Error: {}", info.error);
            }
        }
    }
    Ok(())
}
