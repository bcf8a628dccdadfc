//! The `Raft` gRPC service: decodes a peer's serde-encoded openraft request, hands it to the
//! local `openraft::Raft`, and answers the encoded `Result` (Raft-level errors travel in the
//! payload; gRPC errors mean the request never reached Raft). Only managers that are not on
//! the cluster's deny list may call it.

use std::sync::Arc;

use berth_proto::identity::{Role, require_role};
use berth_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use berth_proto::v1::{RaftReply, RaftRequest as WireRequest};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::{MAX_MESSAGE_SIZE, Replica};
use crate::raft::{NodeId, TypeConfig};

/// The `Raft` service of one manager.
#[derive(Debug, Clone)]
pub struct RaftService {
    replica: Arc<Replica>,
}

impl RaftService {
    /// The service over `replica`'s Raft member.
    pub fn new(replica: Arc<Replica>) -> Self {
        RaftService { replica }
    }

    /// The tonic server to mount, with message limits large enough for snapshot chunks.
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        require_role(req, &[Role::Manager], self.replica.revocations())?;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(req: Request<WireRequest>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft request: {e}")))
}

fn encode<T: Serialize>(reply: &T) -> Result<Response<RaftReply>, Status> {
    serde_json::to_vec(reply)
        .map(|payload| Response::new(RaftReply { payload }))
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn vote(&self, request: Request<WireRequest>) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request)?;
        let raft = self.replica.raft()?;
        let rpc: VoteRequest<NodeId> = decode(request)?;
        encode(&raft.raft().vote(rpc).await)
    }

    async fn append_entries(
        &self,
        request: Request<WireRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request)?;
        let raft = self.replica.raft()?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&raft.raft().append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<WireRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request)?;
        let raft = self.replica.raft()?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&raft.raft().install_snapshot(rpc).await)
    }
}
