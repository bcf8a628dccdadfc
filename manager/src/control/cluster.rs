//! Cluster calls: the cluster object (never with the CA key), its spec, the join tokens and
//! their rotation, and the Raft status as this manager sees it.
//!
//! Rotating a token is a read-modify-write of the cluster object; once it returns, the CA
//! (which runs on the leader and checks tokens against the cluster object there) refuses the
//! old token.
//!
//! Raising `spec.ca_config.force_rotate` in an update starts a root CA rotation in the same
//! write ([`crate::ca::rotation::begin`]); the leader carries it out from there. It is refused
//! while one runs.

use std::time::Duration;

use berth_proto::identity::{JoinToken, Role};
use berth_proto::v1::{
    Cluster, ClusterSpec, GetRaftStatusResponse, JoinTokens, UpdateClusterRequest,
};

use super::status::ControlError;
use crate::ca::rotation::{self, RotationError};
use crate::ca::{JoinTokens as TokenPair, MIN_NODE_CERT_VALIDITY};
use crate::raft_net::Replica;
use crate::store::{StoreActions, StoreObject};

/// The cluster object as users see it: without the CA's private keys.
pub fn redact(cluster: &Cluster) -> Cluster {
    let mut c = cluster.clone();
    if let Some(ca) = c.root_ca.as_mut() {
        ca.ca_key.clear();
        if let Some(rotation) = ca.rotation.as_mut() {
            rotation.ca_key.clear();
        }
    }
    c
}

fn force_rotate(spec: Option<&ClusterSpec>) -> u64 {
    spec.and_then(|s| s.ca_config.as_ref())
        .map_or(0, |c| c.force_rotate)
}

/// The cluster with this id.
pub fn get(replica: &Replica, id: &str) -> Result<Cluster, ControlError> {
    replica
        .store()
        .get::<Cluster>(id)
        .map(|c| redact(&c))
        .ok_or_else(|| ControlError::not_found("cluster", id))
}

/// Every cluster object (there is one).
pub fn list(replica: &Replica) -> Vec<Cluster> {
    replica
        .store()
        .list::<Cluster>()
        .iter()
        .map(|c| redact(c))
        .collect()
}

fn the_cluster(replica: &Replica) -> Result<std::sync::Arc<Cluster>, ControlError> {
    replica
        .store()
        .list::<Cluster>()
        .into_iter()
        .next()
        .ok_or_else(|| {
            ControlError::FailedPrecondition("this manager has no cluster object yet".into())
        })
}

/// Replaces the cluster spec (name stays "default"; certificate expiry at least
/// [`MIN_NODE_CERT_VALIDITY`]).
pub async fn update(replica: &Replica, req: UpdateClusterRequest) -> Result<Cluster, ControlError> {
    let mut spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("cluster spec is required".into()))?;
    if let Some(expiry) = spec.ca_config.as_ref().and_then(|c| c.node_cert_expiry) {
        let secs = u64::try_from(expiry.seconds).unwrap_or(0);
        if Duration::from_secs(secs) < MIN_NODE_CERT_VALIDITY {
            return Err(ControlError::InvalidArgument(format!(
                "certificate expiry must be at least {}s",
                MIN_NODE_CERT_VALIDITY.as_secs()
            )));
        }
    }
    let annotations = spec.annotations.get_or_insert_with(Default::default);
    if annotations.name.is_empty() {
        annotations.name = "default".into();
    }
    if annotations.name != "default" {
        return Err(ControlError::InvalidArgument(
            "the cluster's name is always \"default\"".into(),
        ));
    }
    let stored = replica
        .store()
        .get::<Cluster>(&req.cluster_id)
        .ok_or_else(|| ControlError::not_found("cluster", &req.cluster_id))?;
    let mut cluster = (*stored).clone();
    if force_rotate(Some(&spec)) > force_rotate(stored.spec.as_ref()) {
        let rotation = rotation::begin(&stored).map_err(|e| match e {
            RotationError::InProgress => ControlError::FailedPrecondition(e.to_string()),
            other => ControlError::Internal(other.to_string()),
        })?;
        if let Some(ca) = cluster.root_ca.as_mut() {
            ca.rotation = Some(rotation);
        }
        tracing::info!(cluster_id = %cluster.id, "root CA rotation started");
    }
    cluster.meta_mut().version = req.cluster_version;
    cluster.spec = Some(spec);
    let mut batch = StoreActions::new();
    batch.update(cluster);
    replica.propose_and_wait(&batch).await?;
    get(replica, &req.cluster_id)
}

/// The current join tokens.
pub fn join_tokens(replica: &Replica) -> Result<JoinTokens, ControlError> {
    Ok(the_cluster(replica)?
        .root_ca
        .as_ref()
        .and_then(|ca| ca.join_tokens.clone())
        .unwrap_or_default())
}

/// Gives the token of `role` a new secret and answers both tokens.
pub async fn rotate_join_token(replica: &Replica, role: Role) -> Result<JoinTokens, ControlError> {
    let cluster = the_cluster(replica)?;
    let current = cluster
        .root_ca
        .as_ref()
        .and_then(|ca| ca.join_tokens.clone())
        .unwrap_or_default();
    let parse = |s: &str| {
        JoinToken::parse(s)
            .map_err(|e| ControlError::Internal(format!("stored join token is unusable: {e}")))
    };
    let mut pair = TokenPair::from_tokens(parse(&current.worker)?, parse(&current.manager)?);
    pair.rotate(role)
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    let rotated = pair.get(role).to_string();
    let updated = replica
        .update_cluster(&cluster.id, |c| {
            let Some(tokens) = c.root_ca.as_mut().and_then(|ca| ca.join_tokens.as_mut()) else {
                return false;
            };
            match role {
                Role::Worker => tokens.worker = rotated.clone(),
                Role::Manager => tokens.manager = rotated.clone(),
            }
            true
        })
        .await?
        .ok_or_else(|| ControlError::not_found("cluster", &cluster.id))?;
    updated
        .root_ca
        .and_then(|ca| ca.join_tokens)
        .ok_or_else(|| ControlError::Internal("the cluster object has no join tokens".into()))
}

/// Leader, term, applied index and members as this manager sees them.
pub fn raft_status(replica: &Replica) -> Result<GetRaftStatusResponse, ControlError> {
    let raft = replica
        .raft()
        .map_err(|s| ControlError::FailedPrecondition(s.message().into()))?;
    let metrics = raft.metrics().borrow().clone();
    let leader_raft_id = metrics.current_leader.unwrap_or(0);
    Ok(GetRaftStatusResponse {
        leader_node_id: metrics
            .current_leader
            .and_then(|l| replica.node_id_of(l))
            .unwrap_or_default(),
        leader_raft_id,
        term: metrics.current_term,
        commit_index: metrics.last_applied.map_or(0, |l| l.index),
        members: replica.members(),
    })
}
