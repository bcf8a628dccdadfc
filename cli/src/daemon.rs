//! Arguments of the `berthd` daemon.
//!
//! Every path, port and name prefix is a flag, so that several daemons can share one machine in
//! network namespaces (the tests and the local demo cluster run that way).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default state directory: certificates, Raft data, agent data, images, containers.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth";
/// Default local API socket (root only).
pub const DEFAULT_SOCKET: &str = "/run/berth/berthd.sock";
/// Default cgroup parent for containers.
pub const DEFAULT_CGROUP_PARENT: &str = "berth";
/// Default cluster port: control, dispatcher, CA and Raft on one TCP port.
pub const DEFAULT_CLUSTER_PORT: u16 = 4377;

/// The `berthd` command line.
#[derive(Debug, Parser)]
#[command(
    name = "berthd",
    about = "The Berth daemon: node agent, and manager once the node is a manager",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct DaemonArgs {
    /// Runs the daemon when absent.
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,

    /// How the daemon runs.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `berthd` subcommands; without one the daemon runs in the foreground.
#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show the berthd version
    Version,
}

/// Flags of a running daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// State directory (certificates, Raft data, agent data)
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Local API socket (root only)
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Parent cgroup of the containers this node runs
    #[arg(long, default_value = DEFAULT_CGROUP_PARENT)]
    pub cgroup_parent: String,

    /// Host name this node reports to the cluster (default: the machine's); lets several
    /// daemons on one machine tell themselves apart in `berth node ls`
    #[arg(long)]
    pub hostname: Option<String>,

    /// Log filter (tracing's env-filter syntax); RUST_LOG overrides it
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_conventions() {
        let args = DaemonArgs::try_parse_from(["berthd"]).unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.run.data_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(args.run.socket, PathBuf::from("/run/berth/berthd.sock"));
        assert_eq!(args.run.cgroup_parent, "berth");
    }

    #[test]
    fn every_path_is_a_flag() {
        let args = DaemonArgs::try_parse_from([
            "berthd",
            "--data-dir",
            "/tmp/d",
            "--socket",
            "/tmp/s.sock",
            "--cgroup-parent",
            "t1",
        ])
        .unwrap();
        assert_eq!(args.run.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(args.run.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(args.run.cgroup_parent, "t1");
    }
}
