//! The running `berthd`: owns the state directory, serves the local API on the unix socket and
//! (once the node is in a swarm) composes the agent and the manager.
//!
//! Architecture Invariant: the daemon is multi-threaded and never forks itself; containers are
//! set up by the runtime's single-threaded helper.

mod agent;
mod cluster_tls;
mod forward;
mod local_api;
mod membership;
mod shutdown;
mod state_dir;
mod swarm;

pub use state_dir::StateDir;

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::daemon::RunArgs;

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    swarm::set_hostname(args.hostname.clone());
    let state = Arc::new(StateDir::open(&args.data_dir)?);
    let cancel = CancellationToken::new();
    shutdown::cancel_on_signal(cancel.clone())?;

    let engine =
        berth_agent::engine::Engine::open(args.data_dir.clone(), args.cgroup_parent.clone())
            .await
            .context("opening the container engine")?;
    let control = forward::Target::default();
    let swarm = Arc::new(swarm::Swarm::new(
        state.clone(),
        control.clone(),
        engine.clone(),
    ));
    swarm
        .resume()
        .await
        .context("rejoining the swarm after a restart")?;
    let engine = Arc::new(engine);
    let api = Arc::new(local_api::LocalApi::new(state, swarm.clone(), engine));
    let listener = local_api::bind(&args.socket)?;
    tracing::info!(socket = ?args.socket, data_dir = ?args.data_dir, "berthd started");
    let served = local_api::serve(api, control, listener, cancel.clone())
        .await
        .with_context(|| format!("serving the local API on {:?}", args.socket));
    swarm.shutdown().await;
    let _ = std::fs::remove_file(&args.socket);
    served?;
    tracing::info!("berthd stopped");
    Ok(())
}
