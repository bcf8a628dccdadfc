//! Arguments of the `berth` client.
//!
//! Like Docker's `-H`/`DOCKER_HOST`, the daemon to talk to is chosen with `-H unix:///PATH` or
//! `BERTH_HOST`; the default is the local daemon's socket.

use clap::{Parser, Subcommand};

use crate::daemon::DEFAULT_SOCKET;

/// The `berth` command line.
#[derive(Debug, Parser)]
#[command(
    name = "berth",
    about = "Berth: a clustered container scheduler in the spirit of Docker Swarm mode",
    disable_version_flag = true
)]
pub struct ClientArgs {
    /// Daemon socket to connect to (unix:///PATH)
    #[arg(short = 'H', long = "host", env = "BERTH_HOST", global = true,
          default_value_t = format!("unix://{DEFAULT_SOCKET}"))]
    pub host: String,

    /// The command to run.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Top-level `berth` commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show the Berth version information
    Version(VersionArgs),
    /// Display system-wide information
    Info(InfoArgs),
    /// Manage the swarm
    #[command(subcommand)]
    Swarm(crate::commands::swarm::SwarmCommand),
    /// Manage swarm nodes
    #[command(subcommand)]
    Node(crate::commands::node::NodeCommand),
    /// Manage networks
    #[command(subcommand)]
    Network(crate::commands::network::NetworkCommand),
    /// Manage swarm services
    #[command(subcommand)]
    Service(crate::commands::service::ServiceCommand),
    /// Manage Swarm stacks
    #[command(subcommand)]
    Stack(crate::commands::stack::StackCommand),
    /// Manage Swarm secrets
    #[command(subcommand)]
    Secret(crate::commands::secret::SecretCommand),
    /// Manage Swarm configs
    #[command(subcommand)]
    Config(crate::commands::config::ConfigCommand),
    /// Create and run a new container from an image
    Run(Box<crate::commands::container::RunArgs>),
    /// List containers
    Ps(crate::commands::container::PsArgs),
    /// Fetch the logs of a container
    Logs(crate::commands::container::LogsArgs),
    /// Execute a command in a running container
    Exec(crate::commands::container::ExecArgs),
    /// Stop one or more running containers
    Stop(crate::commands::container::StopArgs),
    /// Kill one or more running containers
    Kill(crate::commands::container::KillArgs),
    /// Remove one or more containers
    Rm(crate::commands::container::RmArgs),
    /// Return low-level information on containers and images
    Inspect(crate::commands::container::InspectArgs),
    /// Manage images
    #[command(subcommand)]
    Image(crate::commands::image::ImageCommand),
}

/// `berth info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Format the output (`json` for machine-readable output)
    #[arg(short = 'f', long)]
    pub format: Option<String>,
}

/// `berth version`.
#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Format the output (`json` for machine-readable output)
    #[arg(short = 'f', long)]
    pub format: Option<String>,
}

/// Parses `-H` values: only `unix://` endpoints are served by `berthd`'s local API.
pub fn socket_path(host: &str) -> anyhow::Result<std::path::PathBuf> {
    match host.strip_prefix("unix://") {
        Some(path) if !path.is_empty() => Ok(path.into()),
        _ => anyhow::bail!("invalid host {host:?}: expected unix:///PATH"),
    }
}

/// Connects to the daemon named by `-H`/`BERTH_HOST`, with an error that says which socket
/// could not be reached and what to check.
pub async fn connect_channel(host: &str) -> anyhow::Result<tonic::transport::Channel> {
    let path = socket_path(host)?;
    let channel = tonic::transport::Endpoint::try_from(format!("unix://{}", path.display()))?
        .connect()
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot connect to the Berth daemon at {host}: {}; is berthd running (and are you root)?",
                root_cause(&err)
            )
        })?;
    Ok(channel)
}

/// The innermost error of a chain: tonic's transport errors only say "transport error" at
/// the top, the useful part (ENOENT, EACCES) is at the bottom.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_path_accepts_only_unix_urls() {
        assert_eq!(
            socket_path("unix:///run/x.sock").unwrap(),
            std::path::PathBuf::from("/run/x.sock")
        );
        let err = socket_path("tcp://1.2.3.4:2375").unwrap_err().to_string();
        assert!(err.contains("expected unix:///PATH"), "{err}");
        assert!(socket_path("unix://").is_err());
    }

    #[test]
    fn host_defaults_to_the_local_socket() {
        let args = ClientArgs::try_parse_from(["berth", "version"]).unwrap();
        // BERTH_HOST may be set in the environment of whoever runs the tests.
        if std::env::var_os("BERTH_HOST").is_none() {
            assert_eq!(args.host, format!("unix://{DEFAULT_SOCKET}"));
        }
        let args = ClientArgs::try_parse_from(["berth", "-H", "unix:///tmp/a", "version"]).unwrap();
        assert_eq!(args.host, "unix:///tmp/a");
    }
}
