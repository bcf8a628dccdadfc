//! The role reconciler: runs on every manager, acts only while it leads. It carries
//! `spec.desired_role` into Raft membership and `Node.role`, and keeps managers' recorded
//! manager status (raft id, address, leader flag, reachability) current.
//!
//! - Promotion (desired manager, role worker): sets `role = manager`. The node's next
//!   certificate renewal then carries the manager OU, and with it the node starts its manager
//!   side, which joins Raft as a learner and then a voter (`RaftMembership.Join`).
//! - Demotion (desired worker, role manager): removes the node from the Raft voters first —
//!   only if a majority of the remaining voters is reachable, otherwise it waits and retries —
//!   then sets `role = worker` and clears its manager status. openraft 0.9 has no leadership
//!   transfer; a leader that demotes itself commits the membership without itself and then
//!   steps down (openraft does this once the change is committed), the remaining voters elect
//!   a new leader within an election timeout, and that leader's reconciler finishes the role
//!   change.
//! - Reachability: on the leader, a member is REACHABLE when it answered a Raft RPC recently
//!   ([`crate::raft_net::Peers::is_reachable`]).

use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::{ManagerStatus, Node, NodeRole, Reachability};
use tokio_util::sync::CancellationToken;

use crate::raft_net::{ProposeError, Replica, raft_id_for};

/// Runs the reconciler every `period` until `cancel`.
pub(crate) async fn run(replica: Arc<Replica>, cancel: CancellationToken, period: Duration) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if !replica.is_leader() {
            continue;
        }
        if let Err(e) = reconcile_once(&replica).await {
            tracing::warn!(error = %e, "role reconciliation failed; retrying");
        }
    }
}

fn raft_id_of(node: &Node) -> u64 {
    node.manager_status
        .as_ref()
        .map_or_else(|| raft_id_for(&node.id), |m| m.raft_id)
}

/// One pass over the nodes.
pub(crate) async fn reconcile_once(replica: &Replica) -> Result<(), ProposeError> {
    let nodes = replica.store().list::<Node>();
    for node in nodes {
        if !replica.is_leader() {
            return Ok(());
        }
        let desired = node.spec.as_ref().map_or(node.role, |s| s.desired_role);
        let manager = NodeRole::Manager as i32;
        let worker = NodeRole::Worker as i32;
        if desired == manager && node.role == worker {
            tracing::info!(node_id = %node.id, "promoting node to manager");
            replica
                .update_node(&node.id, |n| {
                    let promote = n.spec.as_ref().is_some_and(|s| s.desired_role == manager)
                        && n.role == worker;
                    if promote {
                        n.role = manager;
                    }
                    promote
                })
                .await?;
        } else if desired == worker && node.role == manager {
            demote(replica, &node).await?;
        } else if node.role == manager {
            refresh_status(replica, &node).await?;
        }
    }
    Ok(())
}

async fn demote(replica: &Replica, node: &Node) -> Result<(), ProposeError> {
    let raft_id = raft_id_of(node);
    {
        let _guard = replica.membership_lock().await;
        let mut voters = replica.voters();
        if voters.contains(&raft_id) {
            if let Err(e) = replica.check_removal(raft_id) {
                tracing::warn!(node_id = %node.id, reason = %e, "demotion waits: removing it from raft now would lose quorum");
                return Ok(());
            }
            let raft = replica.raft().map_err(|_| ProposeError::ShuttingDown)?;
            voters.remove(&raft_id);
            tracing::info!(node_id = %node.id, raft_id, "removing demoted manager from the raft voters");
            raft.change_membership(voters).await?;
            if raft_id == replica.raft_id() {
                // This leader removed itself: it steps down, and the next leader records the
                // role change.
                return Ok(());
            }
        }
    }
    replica
        .update_node(&node.id, |n| {
            let demote = n
                .spec
                .as_ref()
                .is_some_and(|s| s.desired_role == NodeRole::Worker as i32)
                && n.role == NodeRole::Manager as i32;
            if demote {
                n.role = NodeRole::Worker as i32;
                n.manager_status = None;
            }
            demote
        })
        .await?;
    tracing::info!(node_id = %node.id, "node demoted to worker");
    Ok(())
}

async fn refresh_status(replica: &Replica, node: &Node) -> Result<(), ProposeError> {
    let raft_id = raft_id_of(node);
    let members = replica.members();
    let Some(member) = members.iter().find(|m| m.raft_id == raft_id) else {
        // Not a member (yet): it joins through RaftMembership.Join, which records its status.
        return Ok(());
    };
    let want = ManagerStatus {
        raft_id,
        addr: member.addr.clone(),
        leader: raft_id == replica.raft_id(),
        reachability: if replica.is_reachable(raft_id) {
            Reachability::Reachable as i32
        } else {
            Reachability::Unreachable as i32
        },
    };
    if node.manager_status.as_ref() == Some(&want) {
        return Ok(());
    }
    replica
        .update_node(&node.id, |n| {
            if n.role != NodeRole::Manager as i32 || n.manager_status.as_ref() == Some(&want) {
                return false;
            }
            n.manager_status = Some(want.clone());
            true
        })
        .await?;
    Ok(())
}
