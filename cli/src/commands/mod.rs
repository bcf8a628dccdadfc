//! What each `berth` command does: calls to the local daemon and the output Docker users know.

pub mod config;
pub mod container;
mod format;
pub mod image;
pub mod info;
pub mod network;
pub mod node;
pub mod secret;
pub mod service;
pub mod stack;
pub mod swarm;

use berth_proto::v1::control_client::ControlClient;
use berth_proto::v1::local_node_client::LocalNodeClient;
use berth_proto::v1::logs_client::LogsClient;
use tonic::transport::Channel;

/// Clients of the local daemon's services, over one unix-socket channel.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// The local node API (info, swarm membership, local containers and images).
    pub node: LocalNodeClient<Channel>,
    /// The cluster control API, answered by this node's manager (managers only).
    pub control: ControlClient<Channel>,
    /// Log subscriptions (`berth service logs`), answered by the managers (managers only).
    pub logs: LogsClient<Channel>,
}

impl Daemon {
    /// Connects to the daemon at `host` (`unix:///PATH`).
    pub async fn connect(host: &str) -> anyhow::Result<Self> {
        let channel = crate::client::connect_channel(host).await?;
        Ok(Self {
            node: LocalNodeClient::new(channel.clone()),
            control: ControlClient::new(channel.clone()),
            logs: LogsClient::new(channel),
        })
    }
}

/// Turns a gRPC status from the daemon into the user's error: its message alone.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

/// The id as tables show it: the first 12 characters.
pub fn short_id(id: &str) -> &str {
    berth_proto::ids::short(id)
}

/// An enum's protobuf name without its prefix, capitalised like Docker prints it:
/// `NODE_STATE_READY` → `Ready`.
pub fn title(name: &str, prefix: &str) -> String {
    let word = name.strip_prefix(prefix).unwrap_or(name).to_lowercase();
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_print_like_docker() {
        assert_eq!(title("NODE_STATE_READY", "NODE_STATE_"), "Ready");
        assert_eq!(
            title("REACHABILITY_UNREACHABLE", "REACHABILITY_"),
            "Unreachable"
        );
    }
}
