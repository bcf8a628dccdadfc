//! The `RaftMembership` service: how a manager enters and leaves the Raft voters, and how a
//! follower's writes reach the leader.
//!
//! - Join (leader only): the caller's certificate must be a manager's and name the node it asks
//!   for; its Node object must have the manager role (joined with the manager token, or
//!   promoted and renewed). The leader adds it as a learner, waits until it caught up with the
//!   log, then makes it a voter, and records `raft_id`/`addr` in the node's manager status.
//!   Joining again when already a voter is a no-op that answers the members.
//! - Leave (leader only): removes a voter, refused (FAILED_PRECONDITION) if the remaining
//!   voters' reachable majority would be lost.
//! - ForwardWrite: the leader proposes a follower's batch and answers the apply result.
//!
//! A call on a follower answers UNAVAILABLE with the leader's address (metadata
//! [`super::LEADER_ADDR_METADATA`]); the caller retries there. It is not proxied, because the
//! leader must see the joining manager's own certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use berth_proto::identity::{Role, require_role};
use berth_proto::v1::raft_membership_server::{RaftMembership, RaftMembershipServer};
use berth_proto::v1::{
    ForwardWriteRequest, ForwardWriteResponse, ManagerStatus, Node, NodeRole, RaftJoinRequest,
    RaftJoinResponse, RaftLeaveRequest, RaftLeaveResponse, Reachability,
};
use tonic::{Request, Response, Status};

use super::{MAX_MESSAGE_SIZE, ProposeError, Replica, raft_id_for};
use crate::control::status::propose_status;
use crate::store::StoreActions;

/// The `RaftMembership` service of one manager.
#[derive(Debug, Clone)]
pub struct MembershipService {
    replica: Arc<Replica>,
}

impl MembershipService {
    /// The service over `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        MembershipService { replica }
    }

    /// The tonic server to mount.
    pub fn into_server(self) -> RaftMembershipServer<Self> {
        RaftMembershipServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

#[tonic::async_trait]
impl RaftMembership for MembershipService {
    async fn join(
        &self,
        request: Request<RaftJoinRequest>,
    ) -> Result<Response<RaftJoinResponse>, Status> {
        let caller = require_role(&request, &[Role::Manager], self.replica.revocations())?;
        let req = request.into_inner();
        if req.node_id != caller.node_id {
            return Err(Status::permission_denied(format!(
                "node {} cannot join raft on behalf of node {}",
                caller.node_id, req.node_id
            )));
        }
        if req.addr.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "raft address {:?} is not IP:port",
                req.addr
            )));
        }
        let raft = self.replica.leader()?;
        let node = self
            .replica
            .store()
            .get::<Node>(&req.node_id)
            .ok_or_else(|| Status::not_found(format!("node {} not found", req.node_id)))?;
        if node.role != NodeRole::Manager as i32 {
            return Err(Status::failed_precondition(format!(
                "node {} is not a manager; promote it before it joins raft",
                req.node_id
            )));
        }
        let raft_id = raft_id_for(&req.node_id);
        {
            let _guard = self.replica.membership_lock().await;
            let mut voters = self.replica.voters();
            if !voters.contains(&raft_id) {
                tracing::info!(node_id = %req.node_id, raft_id, addr = %req.addr, "adding manager to raft as learner");
                raft.add_learner(raft_id, &req.addr)
                    .await
                    .map_err(|e| propose_status(&e.into()))?;
                voters.insert(raft_id);
                raft.change_membership(voters)
                    .await
                    .map_err(|e| propose_status(&e.into()))?;
                tracing::info!(node_id = %req.node_id, raft_id, "manager is now a raft voter");
            }
        }
        let addr = req.addr.clone();
        self.replica
            .update_node(&req.node_id, |n| {
                let want = ManagerStatus {
                    raft_id,
                    addr: addr.clone(),
                    leader: false,
                    reachability: Reachability::Reachable as i32,
                };
                if n.manager_status.as_ref() == Some(&want) {
                    return false;
                }
                n.manager_status = Some(want);
                true
            })
            .await
            .map_err(|e| propose_status(&e))?;
        Ok(Response::new(RaftJoinResponse {
            raft_id,
            members: self.replica.members(),
        }))
    }

    async fn leave(
        &self,
        request: Request<RaftLeaveRequest>,
    ) -> Result<Response<RaftLeaveResponse>, Status> {
        require_role(&request, &[Role::Manager], self.replica.revocations())?;
        let req = request.into_inner();
        let raft = self.replica.leader()?;
        let raft_id = self
            .replica
            .store()
            .get::<Node>(&req.node_id)
            .and_then(|n| n.manager_status.as_ref().map(|m| m.raft_id))
            .unwrap_or_else(|| raft_id_for(&req.node_id));
        {
            let _guard = self.replica.membership_lock().await;
            let mut voters = self.replica.voters();
            if !voters.contains(&raft_id) {
                return Ok(Response::new(RaftLeaveResponse {}));
            }
            self.replica.check_removal(raft_id).map_err(|e| {
                Status::failed_precondition(format!(
                    "removing manager {} from raft is refused: {e}",
                    req.node_id
                ))
            })?;
            voters.remove(&raft_id);
            raft.change_membership(voters)
                .await
                .map_err(|e| propose_status(&e.into()))?;
        }
        self.replica
            .update_node(&req.node_id, |n| n.manager_status.take().is_some())
            .await
            .map_err(|e| propose_status(&e))?;
        Ok(Response::new(RaftLeaveResponse {}))
    }

    async fn forward_write(
        &self,
        request: Request<ForwardWriteRequest>,
    ) -> Result<Response<ForwardWriteResponse>, Status> {
        require_role(&request, &[Role::Manager], self.replica.revocations())?;
        let batch = StoreActions::decode(&request.into_inner().actions)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let raft = self.replica.raft()?;
        let result = raft
            .write(&batch)
            .await
            .map_err(|e| propose_status(&ProposeError::from(e)))?;
        let result = serde_json::to_vec(&result)
            .map_err(|e| Status::internal(format!("cannot encode apply result: {e}")))?;
        Ok(Response::new(ForwardWriteResponse { result }))
    }
}
