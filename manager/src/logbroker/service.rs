//! The two gRPC faces of the [`LogBroker`], and the one place its errors become statuses.
//!
//! - [`LogsService`] (`berth.v1.Logs`, managers only: `berth` reaches it through its local
//!   `berthd`): SubscribeLogs on the leader's broker; a follower passes the call to the leader
//!   over mTLS with its own manager certificate and relays the stream.
//! - [`LogBrokerService`] (`berth.v1.LogBroker`, any node): ListenSubscriptions and
//!   PublishLogs; the node id always comes from the caller's certificate.
//!
//! | refusal | code |
//! |---|---|
//! | unknown service, task or node in the selector | NOT_FOUND |
//! | empty selector | INVALID_ARGUMENT |
//! | publishing for a subscription the node was not asked to serve | PERMISSION_DENIED |
//! | no leader known (follower) | UNAVAILABLE |

use std::collections::HashSet;
use std::sync::Arc;

use berth_proto::identity::{Role, require_role};
use berth_proto::v1::log_broker_server::{LogBroker as LogBrokerRpc, LogBrokerServer};
use berth_proto::v1::logs_client::LogsClient;
use berth_proto::v1::logs_server::{Logs, LogsServer};
use berth_proto::v1::{
    ListenSubscriptionsRequest, PublishLogsMessage, PublishLogsResponse, SubscribeLogsMessage,
    SubscribeLogsRequest, SubscriptionMessage,
};
use futures::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::{LogBroker, LogBrokerError};
use crate::control::status::not_leader_status;
use crate::raft_net::{MAX_MESSAGE_SIZE, Replica};

impl From<LogBrokerError> for Status {
    fn from(e: LogBrokerError) -> Self {
        let text = e.to_string();
        match e {
            LogBrokerError::NoSuchService(_)
            | LogBrokerError::NoSuchTask(_)
            | LogBrokerError::NoSuchNode(_) => Status::not_found(text),
            LogBrokerError::EmptySelector => Status::invalid_argument(text),
            LogBrokerError::NotAsked { .. } => Status::permission_denied(text),
        }
    }
}

/// `berth.v1.Logs` of one manager (see the module docs).
#[derive(Debug, Clone)]
pub struct LogsService {
    broker: LogBroker,
    replica: Arc<Replica>,
}

impl LogsService {
    /// The service of the manager owning `replica`, serving from `broker` when it leads.
    pub fn new(broker: LogBroker, replica: Arc<Replica>) -> Self {
        LogsService { broker, replica }
    }

    /// The tonic server to mount.
    pub fn into_server(self) -> LogsServer<Self> {
        LogsServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Passes a subscription to the leader and relays its stream.
    async fn proxy(
        &self,
        req: SubscribeLogsRequest,
    ) -> Result<BoxStream<SubscribeLogsMessage>, Status> {
        let leader = self
            .replica
            .leader_addr()
            .filter(|a| a != self.replica.advertise_addr())
            .ok_or_else(|| not_leader_status(None))?;
        let channel = self.replica.peers().channel(&leader).map_err(|e| {
            Status::unavailable(format!("cannot reach the leader at {leader}: {e}"))
        })?;
        let mut client = LogsClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let upstream = client.subscribe_logs(req).await?.into_inner();
        Ok(Box::pin(upstream))
    }
}

#[tonic::async_trait]
impl Logs for LogsService {
    async fn subscribe_logs(
        &self,
        request: Request<SubscribeLogsRequest>,
    ) -> Result<Response<BoxStream<SubscribeLogsMessage>>, Status> {
        require_role(&request, &[Role::Manager], self.replica.revocations())?;
        let req = request.into_inner();
        if !self.replica.is_leader() {
            return Ok(Response::new(self.proxy(req).await?));
        }
        let stream = self.broker.subscribe(req)?;
        Ok(Response::new(Box::pin(stream.map(Ok))))
    }
}

/// `berth.v1.LogBroker` of one manager (see the module docs).
#[derive(Debug, Clone)]
pub struct LogBrokerService {
    broker: LogBroker,
    replica: Arc<Replica>,
}

/// Roles allowed to serve subscriptions: every node runs an agent.
const NODE_ROLES: &[Role] = &[Role::Worker, Role::Manager];

impl LogBrokerService {
    /// The service of the manager owning `replica`, feeding `broker`.
    pub fn new(broker: LogBroker, replica: Arc<Replica>) -> Self {
        LogBrokerService { broker, replica }
    }

    /// The tonic server to mount.
    pub fn into_server(self) -> LogBrokerServer<Self> {
        LogBrokerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

/// Relays one node's publish stream into the broker; returns the subscriptions it left open
/// and the error that ended it, if any.
pub async fn relay(
    broker: &LogBroker,
    node: &str,
    inbound: &mut Streaming<PublishLogsMessage>,
    open: &mut HashSet<String>,
) -> Result<(), Status> {
    loop {
        let msg = match inbound.message().await? {
            Some(m) => m,
            None => return Ok(()),
        };
        let id = msg.subscription_id.clone();
        let close = msg.close;
        let has_lines = !msg.messages.is_empty();
        match broker.publish(node, msg)? {
            None => {
                // The subscriber is gone; the node was (or will be) told to stop.
                open.remove(&id);
                continue;
            }
            Some((tx, batch)) => {
                open.insert(id.clone());
                if has_lines {
                    // A gone subscriber is not the node's error.
                    let _ = tx.send(batch).await;
                }
            }
        }
        if close {
            open.remove(&id);
            broker.node_done(&id, node, None);
        }
    }
}

#[tonic::async_trait]
impl LogBrokerRpc for LogBrokerService {
    async fn listen_subscriptions(
        &self,
        request: Request<ListenSubscriptionsRequest>,
    ) -> Result<Response<BoxStream<SubscriptionMessage>>, Status> {
        let node = require_role(&request, NODE_ROLES, self.replica.revocations())?;
        Ok(Response::new(Box::pin(self.broker.listen(&node.node_id))))
    }

    async fn publish_logs(
        &self,
        request: Request<Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        let node = require_role(&request, NODE_ROLES, self.replica.revocations())?;
        let mut inbound = request.into_inner();
        let mut open = HashSet::new();
        let result = relay(&self.broker, &node.node_id, &mut inbound, &mut open).await;
        if !open.is_empty() {
            let name = self.broker.node_name(&node.node_id);
            let why = match &result {
                Ok(()) => "stopped".to_owned(),
                Err(s) => format!("failed ({})", s.message()),
            };
            for id in open {
                self.broker.node_done(
                    &id,
                    &node.node_id,
                    Some(format!(
                        "the log stream of node {name} {why} before it sent everything"
                    )),
                );
            }
        }
        result.map(|()| Response::new(PublishLogsResponse {}))
    }
}
