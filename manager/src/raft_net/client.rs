//! The client side of manager-to-manager gRPC: [`Peers`] (one lazily connected mTLS channel per
//! peer address, the TLS identity used to dial, and when each Raft peer last answered) and
//! [`GrpcNetwork`], openraft's network factory over the `Raft` gRPC service.
//!
//! Failure mapping, so that openraft backs off rather than blocking on a dead peer:
//! - no connection (refused, reset, TLS failure, connect timeout: gRPC UNAVAILABLE, and the
//!   peer refusing our certificate) → `RPCError::Unreachable` (openraft waits its backoff);
//! - the call's deadline (openraft's `RPCOption::hard_ttl`) passing → `RPCError::Timeout`;
//! - an answer that cannot be decoded, or any other gRPC status → `RPCError::Network`;
//! - a Raft-level error from the peer (carried inside the reply payload) → `RemoteError`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use berth_proto::identity::{NodeCredentials, TlsError, client_tls_config};
use berth_proto::v1::raft_client::RaftClient;
use berth_proto::v1::raft_membership_client::RaftMembershipClient;
use berth_proto::v1::{RaftReply, RaftRequest as WireRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::MAX_MESSAGE_SIZE;
use super::wire::{encode_append_entries, encode_install_snapshot, encode_vote};
use crate::raft::{NodeId, TypeConfig};

/// Connection timings of manager-to-manager calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long establishing a TCP + TLS connection to a peer may take.
    pub connect: Duration,
    /// How long openraft waits after an unreachable peer before retrying it.
    pub backoff: Duration,
    /// A peer that answered a Raft RPC within this long is "reachable".
    pub reachable_within: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            backoff: Duration::from_millis(200),
            reachable_within: Duration::from_secs(2),
        }
    }
}

/// Channels to other managers, shared by the Raft transport and the services that call the
/// leader. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    tls: RwLock<ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    last_ok: Mutex<HashMap<NodeId, Instant>>,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("timeouts", &self.inner.timeouts)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// Peers dialled with `creds` (the manager's own certificate).
    pub fn new(creds: &NodeCredentials, timeouts: Timeouts) -> Result<Self, TlsError> {
        Ok(Peers {
            inner: Arc::new(PeersInner {
                tls: RwLock::new(client_tls_config(creds)?),
                channels: Mutex::new(HashMap::new()),
                last_ok: Mutex::new(HashMap::new()),
                timeouts,
            }),
        })
    }

    /// The timings in use.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// Dials with new credentials from now on (after a renewal); cached channels are dropped.
    pub fn set_credentials(&self, creds: &NodeCredentials) -> Result<(), TlsError> {
        let tls = client_tls_config(creds)?;
        *self
            .inner
            .tls
            .write()
            .unwrap_or_else(PoisonError::into_inner) = tls;
        self.inner
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// A channel to the manager at `addr` ("IP:port"), connected on first use and reconnected
    /// by tonic after failures.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let tls = self
            .inner
            .tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(self.inner.timeouts.connect)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// A `RaftMembership` client for the manager at `addr`.
    pub fn membership_client(
        &self,
        addr: &str,
    ) -> Result<RaftMembershipClient<Channel>, tonic::transport::Error> {
        Ok(RaftMembershipClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }

    fn record_ok(&self, target: NodeId) {
        self.inner
            .last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target, Instant::now());
    }

    /// When Raft member `target` last answered a Raft RPC from this manager.
    pub fn last_contact(&self, target: NodeId) -> Option<Instant> {
        self.inner
            .last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .copied()
    }

    /// Whether `target` answered a Raft RPC within [`Timeouts::reachable_within`]. Meaningful
    /// on the leader, which sends heartbeats to every member.
    pub fn is_reachable(&self, target: NodeId) -> bool {
        self.last_contact(target)
            .is_some_and(|t| t.elapsed() <= self.inner.timeouts.reachable_within)
    }
}

/// openraft's network factory over gRPC; one per manager.
#[derive(Debug, Clone)]
pub struct GrpcNetwork {
    source: NodeId,
    peers: Peers,
}

impl GrpcNetwork {
    /// The network member `source` uses to reach the others through `peers`.
    pub fn new(source: NodeId, peers: Peers) -> Self {
        GrpcNetwork { source, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcConnection {
        GrpcConnection {
            source: self.source,
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// A link from this manager to one Raft peer.
#[derive(Debug, Clone)]
pub struct GrpcConnection {
    source: NodeId,
    target: NodeId,
    addr: String,
    peers: Peers,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable {
    Unreachable::new(&std::io::Error::other(e.to_string()))
}

fn network_err(e: impl std::fmt::Display) -> NetworkError {
    NetworkError::new(&std::io::Error::other(e.to_string()))
}

/// How a failed gRPC call is reported to openraft (see the module docs).
fn classify<E: std::error::Error>(status: &Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        Code::Unavailable | Code::Unauthenticated | Code::PermissionDenied | Code::Cancelled => {
            RPCError::Unreachable(unreachable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            )))
        }
        _ => RPCError::Network(network_err(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
    }
}

impl GrpcConnection {
    /// Sends one openraft request in its wire form ([`super::wire`]) and decodes the `Result`
    /// it answers.
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        wire: Result<WireRequest, serde_json::Error>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let wire = wire.map_err(network_err)?;
        let channel = self.peers.channel(&self.addr).map_err(unreachable)?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(wire);
        request.set_timeout(ttl);
        let call = async {
            match action {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply: RaftReply = match tokio::time::timeout(ttl, call).await {
            Err(_elapsed) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.source,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) if status.code() == Code::DeadlineExceeded => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.source,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) => return Err(classify(&status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        self.peers.record_ok(self.target);
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.payload).map_err(network_err)?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(
            RPCTypes::AppendEntries,
            encode_append_entries(&rpc),
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(
            RPCTypes::InstallSnapshot,
            encode_install_snapshot(rpc),
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, encode_vote(&rpc), &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.peers.timeouts().backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_statuses_map_to_the_errors_openraft_backs_off_on() {
        let e: RPCError<NodeId, BasicNode, RaftError<NodeId>> =
            classify(&Status::unavailable("tcp connect error"));
        assert!(matches!(e, RPCError::Unreachable(_)), "{e}");
        let e: RPCError<NodeId, BasicNode, RaftError<NodeId>> =
            classify(&Status::permission_denied("node x has been removed"));
        assert!(matches!(e, RPCError::Unreachable(_)), "{e}");
        let e: RPCError<NodeId, BasicNode, RaftError<NodeId>> =
            classify(&Status::internal("bad payload"));
        assert!(matches!(e, RPCError::Network(_)), "{e}");
    }
}
