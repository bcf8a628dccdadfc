//! Node calls: get, list, update (availability, labels, desired role) and remove.
//!
//! - Answers mark the leader from this manager's live Raft view (`manager_status.leader`), so
//!   a list read on any manager right after a failover names the new leader.
//! - Demotion (desired role manager → worker) is refused when removing the node from the Raft
//!   voters would leave fewer than a majority of the remaining voters reachable, or when it is
//!   the last manager. The role reconciler on the leader carries the change out.
//! - A node is removed only once it is a worker (demote first) and, without `force`, only
//!   when it is not READY. Its id goes on the cluster's deny list in the same batch, until
//!   its certificate expires, so its certificate is refused from then on.

use std::time::{Duration, UNIX_EPOCH};

use berth_proto::identity::NodeIdentity;
use berth_proto::v1::list_nodes_request::Filters;
use berth_proto::v1::{
    Cluster, Node, NodeMembership, NodeRole, NodeState, Reachability, RemoveNodeRequest,
    UpdateNodeRequest,
};
use prost_types::Timestamp;

use super::filters::{id_matches, labels_match, name_matches};
use super::status::ControlError;
use crate::raft_net::{ProposeError, Replica, raft_id_for};
use crate::store::{ObjectKind, StoreActions, StoreError, StoreObject};

/// How long a removed node stays on the deny list when its certificate's expiry is unknown.
const DENY_FALLBACK: Duration = Duration::from_secs(90 * 24 * 3600);

/// The node with this id, as answered to users.
pub fn get(replica: &Replica, id: &str) -> Result<Node, ControlError> {
    replica
        .store()
        .get::<Node>(id)
        .map(|n| present(replica, &n))
        .ok_or_else(|| ControlError::not_found("node", id))
}

/// The nodes matching `f`, sorted by hostname then id.
pub fn list(replica: &Replica, f: &Filters) -> Vec<Node> {
    let mut nodes: Vec<Node> = replica
        .store()
        .list::<Node>()
        .iter()
        .filter(|n| matches(n, f))
        .map(|n| present(replica, n))
        .collect();
    nodes.sort_by(|a, b| hostname(a).cmp(hostname(b)).then_with(|| a.id.cmp(&b.id)));
    nodes
}

fn hostname(n: &Node) -> &str {
    n.description.as_ref().map_or("", |d| d.hostname.as_str())
}

fn matches(n: &Node, f: &Filters) -> bool {
    let spec = n.spec.clone().unwrap_or_default();
    let node_labels = spec.annotations.map(|a| a.labels).unwrap_or_default();
    let engine_labels = n
        .description
        .as_ref()
        .map(|d| d.engine_labels.clone())
        .unwrap_or_default();
    id_matches(&n.id, &f.id_prefixes)
        && name_matches(hostname(n), &f.names, &f.name_prefixes)
        && labels_match(&engine_labels, &f.labels)
        && labels_match(&node_labels, &f.node_labels)
        && (f.memberships.is_empty() || f.memberships.contains(&spec.membership))
        && (f.roles.is_empty() || f.roles.contains(&n.role))
}

/// The node with its manager status brought up to date from the live Raft view: the leader
/// flag, and the leader itself always reachable.
fn present(replica: &Replica, n: &Node) -> Node {
    let mut node = n.clone();
    if let Some(ms) = node.manager_status.as_mut() {
        let leader = replica
            .raft()
            .ok()
            .and_then(|r| r.leadership().leader_id)
            .is_some_and(|l| l == ms.raft_id);
        ms.leader = leader;
        if leader || ms.raft_id == replica.raft_id() {
            ms.reachability = Reachability::Reachable as i32;
        }
    }
    node
}

/// Replaces a node's spec; see the module docs for demotion.
pub async fn update(replica: &Replica, req: UpdateNodeRequest) -> Result<Node, ControlError> {
    let spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("node spec is required".into()))?;
    NodeRole::try_from(spec.desired_role)
        .map_err(|_| ControlError::InvalidArgument("unknown desired role".into()))?;
    let stored = replica
        .store()
        .get::<Node>(&req.node_id)
        .ok_or_else(|| ControlError::not_found("node", &req.node_id))?;
    let old_spec = stored.spec.clone().unwrap_or_default();
    if old_spec.membership == NodeMembership::Accepted as i32
        && spec.membership != NodeMembership::Accepted as i32
    {
        return Err(ControlError::InvalidArgument(format!(
            "node {} is already accepted; its membership cannot go back to pending",
            req.node_id
        )));
    }
    let demoting = spec.desired_role == NodeRole::Worker as i32
        && (old_spec.desired_role == NodeRole::Manager as i32
            || stored.role == NodeRole::Manager as i32);
    if demoting {
        let raft_id = stored
            .manager_status
            .as_ref()
            .map_or_else(|| raft_id_for(&stored.id), |m| m.raft_id);
        replica.check_removal(raft_id).map_err(|e| {
            ControlError::FailedPrecondition(format!("demoting node {} is refused: {e}", stored.id))
        })?;
    }
    let mut node = (*stored).clone();
    node.meta_mut().version = req.node_version;
    node.spec = Some(spec);
    let mut batch = StoreActions::new();
    batch.update(node);
    replica.propose_and_wait(&batch).await?;
    get(replica, &req.node_id)
}

/// Removes a node and puts it on the deny list; see the module docs.
pub async fn remove(replica: &Replica, req: RemoveNodeRequest) -> Result<(), ControlError> {
    let id = req.node_id;
    for _ in 0..10 {
        let node = replica
            .store()
            .get::<Node>(&id)
            .ok_or_else(|| ControlError::not_found("node", &id))?;
        let spec = node.spec.clone().unwrap_or_default();
        let raft_member = replica.voters().contains(
            &node
                .manager_status
                .as_ref()
                .map_or_else(|| raft_id_for(&id), |m| m.raft_id),
        );
        if node.role == NodeRole::Manager as i32
            || spec.desired_role == NodeRole::Manager as i32
            || raft_member
        {
            return Err(ControlError::FailedPrecondition(format!(
                "node {id} is a manager; demote it (`berth node demote {id}`) before removing it"
            )));
        }
        let ready = node
            .status
            .as_ref()
            .is_some_and(|s| s.state == NodeState::Ready as i32);
        if ready && !req.force {
            return Err(ControlError::FailedPrecondition(format!(
                "node {id} is not down and can't be removed; use --force to remove it anyway"
            )));
        }
        let mut batch = StoreActions::new();
        batch.remove(ObjectKind::Node, id.clone());
        if let Some(cluster) = replica.store().list::<Cluster>().first() {
            let mut cluster = (**cluster).clone();
            cluster.removed_nodes.insert(id.clone(), deny_until(&node));
            batch.update(cluster);
        }
        match replica.propose_and_wait(&batch).await {
            Ok(_) => return Ok(()),
            Err(ProposeError::Refused(e))
                if matches!(e.first(), Some(StoreError::OutOfSequence { .. })) =>
            {
                // The cluster object moved meanwhile; read it again.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ControlError::FailedPrecondition(format!(
        "node {id} could not be removed: the cluster object kept changing; try again"
    )))
}

/// Until when a removed node's certificates must be refused: its certificate's expiry.
fn deny_until(node: &Node) -> Timestamp {
    let expiry = node
        .certificate
        .as_ref()
        .and_then(|c| String::from_utf8(c.certificate.clone()).ok())
        .and_then(|pem| NodeIdentity::from_pem(&pem).ok())
        .map(|id| id.not_after)
        .unwrap_or_else(|| std::time::SystemTime::now() + DENY_FALLBACK);
    let secs = expiry
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    }
}
