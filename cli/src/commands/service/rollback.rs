//! `berth service rollback [-d] [-q] SERVICE`: returns a service to its previous spec (the
//! managers swap `spec` and `previous_spec` and roll the tasks back with the rollback
//! configuration), then — unless `-d` — shows the progress and exits non-zero if the rollback
//! pauses.

use clap::Args;

use super::update::{Asked, ended_tasks, follow, request_rollback};
use super::{Daemon, resolve};

/// `berth service rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
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

/// `berth service rollback`.
pub async fn rollback(daemon: &mut Daemon, args: RollbackArgs) -> anyhow::Result<()> {
    let service = resolve(daemon, &args.service).await?;
    let version = service.meta.as_ref().map_or(0, |m| m.version);
    let ended_before = ended_tasks(daemon, &service.id).await?;
    request_rollback(daemon, &service.id, version).await?;
    println!("{}", args.service);
    if args.detach {
        return Ok(());
    }
    follow(
        daemon,
        &service.id,
        args.quiet,
        ended_before,
        Asked::Rollback,
    )
    .await
}
