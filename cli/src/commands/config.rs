//! `berth config create|ls|inspect|rm|rotate`: the same commands as `berth secret` (see
//! [`super::secret`]), over configs, whose data `inspect` shows (base64 in `Spec.Data`, plain
//! with `--pretty`).

use clap::Subcommand;

use super::Daemon;
use super::secret::{
    CreateArgs, InspectArgs, Kind, LsArgs, RmArgs, RotateArgs, create, inspect, ls, rm, rotate,
};

/// `berth config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create a config from a file or STDIN
    Create(CreateArgs),
    /// List configs
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more configs
    Inspect(InspectArgs),
    /// Remove one or more configs
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Replace a config's content with a new version and update the services using it
    Rotate(RotateArgs),
}

/// Runs one `berth config` command.
pub async fn run(daemon: &mut Daemon, command: ConfigCommand) -> anyhow::Result<()> {
    let kind = Kind::Config;
    match command {
        ConfigCommand::Create(args) => create(daemon, kind, args).await,
        ConfigCommand::Ls(args) => ls(daemon, kind, args).await,
        ConfigCommand::Inspect(args) => inspect(daemon, kind, args).await,
        ConfigCommand::Rm(args) => rm(daemon, kind, args).await,
        ConfigCommand::Rotate(args) => rotate(daemon, kind, args).await,
    }
}
