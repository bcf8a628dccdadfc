//! The `Dispatcher` gRPC service: authorizes each call (any node certificate that is not
//! removed; the node id is the certificate's CN, never a request field), finds the running
//! dispatcher through the [`DispatcherSlot`], and maps refusals to statuses:
//!
//! | refusal | code |
//! |---|---|
//! | no dispatcher here (follower, or leadership changing) | UNAVAILABLE, leader's address in `berth-leader-addr` when known |
//! | node not in the store | NOT_FOUND |
//! | stale or unknown session id | FAILED_PRECONDITION (open a new session) |
//! | too many registrations | UNAVAILABLE |
//! | a status for another node's task | PERMISSION_DENIED |

use std::sync::Arc;

use berth_proto::identity::{IsRemoved, Role, require_role};
use berth_proto::v1::dispatcher_server::{Dispatcher as DispatcherRpc, DispatcherServer};
use berth_proto::v1::{
    AssignmentsMessage, AssignmentsRequest, HeartbeatRequest, HeartbeatResponse, NetworksMessage,
    NetworksRequest, SessionMessage, SessionRequest, UpdateTaskStatusRequest,
    UpdateTaskStatusResponse,
};
use tokio::sync::mpsc;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::{DispatcherSlot, Shared, assignments_stream, session_stream};
use crate::control::status::not_leader_status;
use crate::raft_net::Replica;

/// Roles allowed to call the dispatcher: every node runs an agent.
const ROLES: &[Role] = &[Role::Worker, Role::Manager];

/// Messages buffered per server stream.
const STREAM_BUFFER: usize = 16;

/// Largest message the service sends (a COMPLETE set of a busy node can be large).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// Tells a caller where the leader is when no dispatcher runs here.
pub type LeaderHint = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The gRPC service (see the module docs). Mount it once per manager.
#[derive(Clone)]
pub struct DispatcherService {
    slot: DispatcherSlot,
    removed: Arc<dyn IsRemoved>,
    leader_hint: LeaderHint,
}

impl std::fmt::Debug for DispatcherService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatcherService")
            .field("running", &self.slot.is_running())
            .finish_non_exhaustive()
    }
}

impl DispatcherService {
    /// A service answering through `slot`, refusing nodes `removed` lists, naming the leader
    /// from `leader_hint` when no dispatcher runs here.
    pub fn new(slot: DispatcherSlot, removed: Arc<dyn IsRemoved>, leader_hint: LeaderHint) -> Self {
        DispatcherService {
            slot,
            removed,
            leader_hint,
        }
    }

    /// The service of a manager: the replica's deny list, and its view of the leader.
    pub fn for_replica(slot: DispatcherSlot, replica: Arc<Replica>) -> Self {
        let removed: Arc<dyn IsRemoved> = Arc::new(replica.revocations().clone());
        let hint: LeaderHint = Arc::new(move || {
            if replica.is_leader() {
                None
            } else {
                replica.leader_addr()
            }
        });
        DispatcherService::new(slot, removed, hint)
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> DispatcherServer<Self> {
        DispatcherServer::new(self)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub(super) fn current(&self) -> Result<Arc<Shared>, Status> {
        self.slot.get().ok_or_else(|| match (self.leader_hint)() {
            Some(addr) => not_leader_status(Some(&addr)),
            None => Status::unavailable(
                "no dispatcher runs on this manager right now (leadership is changing); retry",
            ),
        })
    }
}

fn stream_of<T: Send + 'static>(mut rx: mpsc::Receiver<Result<T, Status>>) -> BoxStream<T> {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[tonic::async_trait]
impl DispatcherRpc for DispatcherService {
    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<BoxStream<SessionMessage>>, Status> {
        let node = require_role(&req, ROLES, &*self.removed)?;
        let shared = self.current()?;
        let addr = req.remote_addr().map(|a| a.ip().to_string());
        let description = req.into_inner().description;
        let session = shared.register(&node.node_id, description, addr).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        shared
            .streams
            .spawn(session_stream(shared.clone(), node.node_id, session, tx));
        Ok(Response::new(stream_of(rx)))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let node = require_role(&req, ROLES, &*self.removed)?;
        let shared = self.current()?;
        let period = shared.heartbeat(&node.node_id, &req.get_ref().session_id)?;
        let period = prost_types::Duration::try_from(period)
            .map_err(|e| Status::internal(format!("heartbeat period: {e}")))?;
        Ok(Response::new(HeartbeatResponse {
            period: Some(period),
        }))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let node = require_role(&req, ROLES, &*self.removed)?;
        let shared = self.current()?;
        let req = req.into_inner();
        shared.session(&node.node_id, &req.session_id)?;
        shared.report(&node.node_id, req.updates)?;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    async fn assignments(
        &self,
        req: Request<AssignmentsRequest>,
    ) -> Result<Response<BoxStream<AssignmentsMessage>>, Status> {
        let node = require_role(&req, ROLES, &*self.removed)?;
        let shared = self.current()?;
        let session = shared.session(&node.node_id, &req.get_ref().session_id)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        shared.streams.spawn(assignments_stream(
            shared.clone(),
            node.node_id,
            session,
            tx,
        ));
        Ok(Response::new(stream_of(rx)))
    }

    async fn networks(
        &self,
        req: Request<NetworksRequest>,
    ) -> Result<Response<BoxStream<NetworksMessage>>, Status> {
        let node = require_role(&req, ROLES, &*self.removed)?;
        let shared = self.current()?;
        let session = shared.session(&node.node_id, &req.get_ref().session_id)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        shared.streams.spawn(crate::allocator::view::stream(
            shared.store.clone(),
            node.node_id,
            session.token.clone(),
            tx,
        ));
        Ok(Response::new(stream_of(rx)))
    }
}
