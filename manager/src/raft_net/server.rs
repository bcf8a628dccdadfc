//! The `Raft` gRPC service: decodes a peer's openraft request ([`super::wire`]), hands it to the
//! local `openraft::Raft`, and answers the encoded `Result` (Raft-level errors travel in the
//! payload; gRPC errors mean the request never reached Raft). Only managers that are not on
//! the cluster's deny list may call it.

use std::sync::Arc;

use berth_proto::identity::{Role, require_role};
use berth_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use berth_proto::v1::{RaftReply, RaftRequest as WireRequest};
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::wire::{decode_append_entries, decode_install_snapshot, decode_vote};
use super::{MAX_MESSAGE_SIZE, Replica};

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

fn undecodable(reason: String) -> Status {
    Status::invalid_argument(format!("undecodable raft request: {reason}"))
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
        let rpc = decode_vote(request.get_ref()).map_err(undecodable)?;
        encode(&raft.raft().vote(rpc).await)
    }

    async fn append_entries(
        &self,
        request: Request<WireRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request)?;
        let raft = self.replica.raft()?;
        let rpc = decode_append_entries(request.into_inner()).map_err(undecodable)?;
        encode(&raft.raft().append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<WireRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.authorize(&request)?;
        let raft = self.replica.raft()?;
        let rpc = decode_install_snapshot(request.into_inner()).map_err(undecodable)?;
        encode(&raft.raft().install_snapshot(rpc).await)
    }
}
