//! An in-process Raft network: every message goes through serde JSON (as it will over the
//! gRPC transport) and is handed straight to the target's `Raft`. Links can be cut and healed.
//! For tests, examples and benchmarks; production uses the mTLS gRPC transport.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{NodeId, TypeConfig};

/// The switchboard: which Raft instances exist and which nodes are cut off.
#[derive(Clone, Default)]
pub struct MemRouter {
    inner: Arc<Mutex<RouterState>>,
}

#[derive(Default)]
struct RouterState {
    nodes: BTreeMap<NodeId, Raft<TypeConfig>>,
    isolated: BTreeSet<NodeId>,
}

impl std::fmt::Debug for MemRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemRouter")
            .field("nodes", &state.nodes.keys().collect::<Vec<_>>())
            .field("isolated", &state.isolated)
            .finish()
    }
}

impl MemRouter {
    /// An empty router.
    pub fn new() -> Self {
        MemRouter::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The network factory node `source` uses to reach the others.
    pub fn network(&self, source: NodeId) -> MemNetwork {
        MemNetwork {
            source,
            router: self.clone(),
        }
    }

    /// Makes `raft` reachable as node `id` (replacing a previous instance).
    pub fn register(&self, id: NodeId, raft: Raft<TypeConfig>) {
        self.lock().nodes.insert(id, raft);
    }

    /// Makes node `id` unreachable and drops the router's handle on it.
    pub fn unregister(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.lock().isolated.insert(id);
    }

    /// Restores node `id`'s links.
    pub fn heal(&self, id: NodeId) {
        self.lock().isolated.remove(&id);
    }

    fn route(&self, source: NodeId, target: NodeId) -> Result<Raft<TypeConfig>, Unreachable> {
        let state = self.lock();
        if state.isolated.contains(&source) || state.isolated.contains(&target) {
            return Err(Unreachable::new(&io::Error::other(format!(
                "link {source} -> {target} is cut"
            ))));
        }
        state
            .nodes
            .get(&target)
            .cloned()
            .ok_or_else(|| Unreachable::new(&io::Error::other(format!("node {target} is down"))))
    }
}

/// Node `source`'s view of the router (openraft's `RaftNetworkFactory`).
#[derive(Debug, Clone)]
pub struct MemNetwork {
    source: NodeId,
    router: MemRouter,
}

impl RaftNetworkFactory<TypeConfig> for MemNetwork {
    type Network = MemConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> MemConnection {
        MemConnection {
            source: self.source,
            target,
            router: self.router.clone(),
        }
    }
}

/// A link from one node to another.
#[derive(Debug, Clone)]
pub struct MemConnection {
    source: NodeId,
    target: NodeId,
    router: MemRouter,
}

/// Encodes and decodes a message as the wire transport does.
fn through_wire<T: Serialize + DeserializeOwned>(msg: &T) -> Result<T, NetworkError> {
    let bytes = serde_json::to_vec(msg).map_err(|e| NetworkError::new(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for MemConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.router.route(self.source, self.target)?;
        let rpc = through_wire(&rpc)?;
        let resp = raft
            .append_entries(rpc)
            .await
            .map_err(|e| RemoteError::new(self.target, e))?;
        Ok(through_wire(&resp)?)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.router.route(self.source, self.target)?;
        let rpc = through_wire(&rpc)?;
        let resp = raft
            .install_snapshot(rpc)
            .await
            .map_err(|e| RemoteError::new(self.target, e))?;
        Ok(through_wire(&resp)?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.router.route(self.source, self.target)?;
        let rpc = through_wire(&rpc)?;
        let resp = raft
            .vote(rpc)
            .await
            .map_err(|e| RemoteError::new(self.target, e))?;
        Ok(through_wire(&resp)?)
    }
}
