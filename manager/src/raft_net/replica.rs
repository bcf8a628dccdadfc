//! [`Replica`]: this manager's Raft member as its gRPC services use it.
//!
//! - Reads come from the local store (a replica: it may trail the leader by a few entries).
//! - [`Replica::propose`] commits a store batch: on the leader through the local Raft
//!   member, on a follower by forwarding it to the leader (`RaftMembership.ForwardWrite`,
//!   following at most [`MAX_FORWARD_HOPS`] redirects). The leader checks versions and names
//!   when it applies, so what a follower validated against its replica is re-checked.
//! - [`Replica::leader`] gates leader-only calls (certificate signing, membership changes):
//!   a follower answers UNAVAILABLE with the leader's address in [`super::LEADER_ADDR_METADATA`].
//! - [`quorum_after_removal`] is the one quorum rule: a voter may be removed only if a
//!   majority of the remaining voters is reachable.
//!
//! The Raft member is held behind a lock so [`Replica::take_raft`] can shut it down while
//! connections that still hold the services stay open; calls after that answer UNAVAILABLE.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use berth_proto::identity::IsRemoved;
use berth_proto::v1::{Cluster, ForwardWriteRequest, Node, RaftMember, Reachability};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::client::Peers;
use super::leader_addr_of;
use crate::control::status::{NO_QUORUM_HINT, not_leader_status, shutting_down_status};
use crate::raft::{ApplyResult, NodeId, RaftNode, WriteError};
use crate::store::{ApplyError, Store, StoreActions};

/// How many leader redirects a forwarded write follows before giving up.
pub const MAX_FORWARD_HOPS: usize = 3;

/// How long a follower waits for its replica to apply its own forwarded write.
const READ_YOUR_WRITE_WAIT: Duration = Duration::from_secs(5);

/// How often a read-modify-write is retried after losing a race.
const UPDATE_ATTEMPTS: usize = 10;

/// Why a batch was not committed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProposeError {
    /// Committed, but applying it refused it (stale version, name taken, missing object);
    /// nothing of the batch was written.
    #[error("{0}")]
    Refused(ApplyError),
    /// No leader could commit it: too few managers are reachable.
    #[error("no quorum: {detail}")]
    NoQuorum {
        /// What was observed.
        detail: String,
    },
    /// The call must be made on the leader and this manager could not get it there.
    #[error("this manager is not the leader")]
    NotLeader {
        /// The leader's address, when one is known.
        leader_addr: Option<String>,
    },
    /// A membership change was refused by Raft (for example, one already in progress).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// This manager is shutting down.
    #[error("this manager is shutting down")]
    ShuttingDown,
    /// The leader could not be reached or answered with an unexpected error.
    #[error("forwarding to the leader at {leader_addr} failed: {message}")]
    Forward {
        /// The leader's address.
        leader_addr: String,
        /// What went wrong.
        message: String,
    },
    /// The Raft core stopped.
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl From<WriteError> for ProposeError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotLeader { leader_addr, .. } => ProposeError::NotLeader {
                leader_addr: Some(leader_addr),
            },
            WriteError::NoQuorum { waited } => ProposeError::NoQuorum {
                detail: format!("no leader committed the change within {waited:?}"),
            },
            WriteError::Membership(m) => ProposeError::Membership(m),
            WriteError::Fatal(f) => ProposeError::Fatal(f),
        }
    }
}

/// Why removing a voter would lose quorum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// The voter is the only one.
    #[error("it is the last manager of the cluster")]
    LastManager,
    /// Too few of the remaining voters are reachable.
    #[error(
        "it would leave {reachable} of {remaining} remaining managers reachable; Raft quorum needs {needed}"
    )]
    WouldLoseQuorum {
        /// Remaining voters that are reachable.
        reachable: usize,
        /// Remaining voters.
        remaining: usize,
        /// A majority of the remaining voters.
        needed: usize,
    },
}

/// The quorum rule for removing `removing` from `voters`: a majority of the voters left must
/// be reachable. Removing a non-voter is always fine.
pub fn quorum_after_removal(
    voters: &BTreeSet<NodeId>,
    removing: NodeId,
    reachable: impl Fn(NodeId) -> bool,
) -> Result<(), QuorumError> {
    if !voters.contains(&removing) {
        return Ok(());
    }
    let remaining: Vec<NodeId> = voters.iter().copied().filter(|&v| v != removing).collect();
    if remaining.is_empty() {
        return Err(QuorumError::LastManager);
    }
    let needed = remaining.len() / 2 + 1;
    let up = remaining.iter().filter(|&&v| reachable(v)).count();
    if up < needed {
        return Err(QuorumError::WouldLoseQuorum {
            reachable: up,
            remaining: remaining.len(),
            needed,
        });
    }
    Ok(())
}

/// The deny list of removed nodes, read from the cluster object in the local replica on
/// every check (no copy to keep in sync).
#[derive(Debug, Clone)]
pub struct StoreRevocations {
    store: Store,
}

impl StoreRevocations {
    /// The deny list of `store`'s cluster object.
    pub fn new(store: Store) -> Self {
        StoreRevocations { store }
    }
}

impl IsRemoved for StoreRevocations {
    fn is_removed(&self, node_id: &str) -> bool {
        self.store.view(|t| {
            t.table::<Cluster>()
                .iter()
                .any(|c| c.removed_nodes.contains_key(node_id))
        })
    }
}

/// This manager's Raft member as its services use it (see the module docs).
#[derive(Debug)]
pub struct Replica {
    node_id: String,
    raft_id: NodeId,
    advertise_addr: String,
    raft: RwLock<Option<Arc<RaftNode>>>,
    store: Store,
    peers: Peers,
    revocations: StoreRevocations,
    membership: Mutex<()>,
    write_timeout: Duration,
}

impl Replica {
    /// Wraps `raft` (already open) for manager `node_id` advertised at `advertise_addr`.
    pub fn new(
        node_id: String,
        advertise_addr: String,
        raft: RaftNode,
        peers: Peers,
        write_timeout: Duration,
    ) -> Self {
        let store = raft.store().clone();
        Replica {
            raft_id: raft.id(),
            node_id,
            advertise_addr,
            raft: RwLock::new(Some(Arc::new(raft))),
            revocations: StoreRevocations::new(store.clone()),
            store,
            peers,
            membership: Mutex::new(()),
            write_timeout,
        }
    }

    /// This manager's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This manager's Raft member id.
    pub fn raft_id(&self) -> NodeId {
        self.raft_id
    }

    /// The address this manager advertises ("IP:port").
    pub fn advertise_addr(&self) -> &str {
        &self.advertise_addr
    }

    /// The local replica of the store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Channels to the other managers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The removed-node deny list.
    pub fn revocations(&self) -> &StoreRevocations {
        &self.revocations
    }

    /// How long a write may wait for a commit.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// The Raft member, or UNAVAILABLE once shutdown began.
    pub fn raft(&self) -> Result<Arc<RaftNode>, Status> {
        self.raft_node().map_err(|_| shutting_down_status())
    }

    fn raft_node(&self) -> Result<Arc<RaftNode>, ProposeError> {
        self.raft
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(ProposeError::ShuttingDown)
    }

    /// Takes the Raft member out for shutdown; later calls answer UNAVAILABLE.
    pub fn take_raft(&self) -> Option<Arc<RaftNode>> {
        self.raft
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether this manager is the Raft leader now.
    pub fn is_leader(&self) -> bool {
        self.raft_node().is_ok_and(|r| r.is_leader())
    }

    /// The leader's address as this manager sees it.
    pub fn leader_addr(&self) -> Option<String> {
        self.raft_node().ok()?.leadership().leader_addr
    }

    /// The Raft member if this manager leads; otherwise UNAVAILABLE naming the leader.
    pub fn leader(&self) -> Result<Arc<RaftNode>, Status> {
        let raft = self.raft()?;
        if raft.is_leader() {
            Ok(raft)
        } else {
            Err(not_leader_status(raft.leadership().leader_addr.as_deref()))
        }
    }

    /// Serialises membership changes on this manager (join, leave, role reconciliation).
    pub async fn membership_lock(&self) -> MutexGuard<'_, ()> {
        self.membership.lock().await
    }

    /// Commits `batch` (locally on the leader, forwarded from a follower) and returns the log
    /// index it was applied at.
    pub async fn propose(&self, batch: &StoreActions) -> Result<u64, ProposeError> {
        let raft = self.raft_node()?;
        match raft.write(batch).await {
            Ok(result) => into_index(result),
            Err(WriteError::NotLeader { leader_addr, .. }) => {
                drop(raft);
                self.forward(leader_addr, batch).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// [`Replica::propose`], then waits (briefly) until the local replica has applied the
    /// write, so that a read right after it sees it on this manager too.
    pub async fn propose_and_wait(&self, batch: &StoreActions) -> Result<u64, ProposeError> {
        let index = self.propose(batch).await?;
        self.wait_applied(index).await;
        Ok(index)
    }

    /// Waits up to a few seconds until the local store has applied log index `index`.
    pub async fn wait_applied(&self, index: u64) {
        let deadline = Instant::now() + READ_YOUR_WRITE_WAIT;
        while self.store.version() < index && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn forward(
        &self,
        mut leader_addr: String,
        batch: &StoreActions,
    ) -> Result<u64, ProposeError> {
        let actions = batch.encode();
        for _ in 0..MAX_FORWARD_HOPS {
            let mut client =
                self.peers
                    .membership_client(&leader_addr)
                    .map_err(|e| ProposeError::Forward {
                        leader_addr: leader_addr.clone(),
                        message: e.to_string(),
                    })?;
            let mut request = tonic::Request::new(ForwardWriteRequest {
                actions: actions.clone(),
            });
            let budget = self.write_timeout + Duration::from_secs(2);
            request.set_timeout(budget);
            let status = match tokio::time::timeout(budget, client.forward_write(request)).await {
                Err(_elapsed) => {
                    return Err(ProposeError::NoQuorum {
                        detail: format!(
                            "the leader at {leader_addr} did not commit the change within {budget:?}"
                        ),
                    });
                }
                Ok(Ok(resp)) => {
                    let result: ApplyResult = serde_json::from_slice(&resp.into_inner().result)
                        .map_err(|e| ProposeError::Forward {
                            leader_addr: leader_addr.clone(),
                            message: format!("undecodable answer: {e}"),
                        })?;
                    return into_index(result);
                }
                Ok(Err(status)) => status,
            };
            match (status.code(), leader_addr_of(&status)) {
                (Code::Unavailable, Some(next)) if next != leader_addr => leader_addr = next,
                (Code::Unavailable, _) => {
                    // Either no leader is known, or the transport failed: both mean the write
                    // cannot be committed right now.
                    // The leader's own no-quorum answer already carries the hint; keep only
                    // its detail so the user reads the advice once.
                    let message = status.message();
                    let detail = message
                        .strip_prefix("no quorum: ")
                        .and_then(|m| m.strip_suffix(&format!(" ({NO_QUORUM_HINT})")))
                        .unwrap_or(message);
                    return Err(ProposeError::NoQuorum {
                        detail: format!("the leader at {leader_addr}: {detail}"),
                    });
                }
                (Code::DeadlineExceeded, _) => {
                    return Err(ProposeError::NoQuorum {
                        detail: format!(
                            "the leader at {leader_addr} did not commit the change in time"
                        ),
                    });
                }
                (code, _) => {
                    return Err(ProposeError::Forward {
                        leader_addr,
                        message: format!("{code:?}: {}", status.message()),
                    });
                }
            }
        }
        Err(ProposeError::NotLeader {
            leader_addr: Some(leader_addr),
        })
    }

    /// Read-modify-writes node `node_id`: `change` edits a copy of the stored node and says
    /// whether it changed anything. Retried when a concurrent write moved the node's version.
    /// Returns the node as written (or as stored when nothing changed); `None` if it is gone.
    pub async fn update_node(
        &self,
        node_id: &str,
        change: impl Fn(&mut Node) -> bool,
    ) -> Result<Option<Node>, ProposeError> {
        self.update_object::<Node>(node_id, change).await
    }

    /// [`Replica::update_node`] for the cluster object.
    pub async fn update_cluster(
        &self,
        cluster_id: &str,
        change: impl Fn(&mut Cluster) -> bool,
    ) -> Result<Option<Cluster>, ProposeError> {
        self.update_object::<Cluster>(cluster_id, change).await
    }

    async fn update_object<T>(
        &self,
        id: &str,
        change: impl Fn(&mut T) -> bool,
    ) -> Result<Option<T>, ProposeError>
    where
        T: crate::store::StoreObject,
        crate::store::Object: From<T>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(stored) = self.store.get::<T>(id) else {
                return Ok(None);
            };
            let mut obj = (*stored).clone();
            if !change(&mut obj) {
                return Ok(Some(obj));
            }
            let mut batch = StoreActions::new();
            batch.update(obj.clone());
            match self.propose_and_wait(&batch).await {
                Ok(index) => {
                    obj.meta_mut().version = index;
                    return Ok(Some(obj));
                }
                Err(ProposeError::Refused(e))
                    if attempt < UPDATE_ATTEMPTS
                        && matches!(
                            e.first(),
                            Some(crate::store::StoreError::OutOfSequence { .. })
                        ) =>
                {
                    // Someone wrote it meanwhile: wait for our replica to see it, then redo.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The current voters and learners with their node ids and addresses.
    pub fn members(&self) -> Vec<RaftMember> {
        let Ok(raft) = self.raft_node() else {
            return Vec::new();
        };
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| RaftMember {
                raft_id: *id,
                node_id: self.node_id_of(*id).unwrap_or_default(),
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// The current voter ids.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.raft_node()
            .map(|r| {
                r.metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node id of Raft member `raft_id`, from the nodes' manager status (or the id hash).
    pub fn node_id_of(&self, raft_id: NodeId) -> Option<String> {
        self.store.view(|t| {
            let nodes = t.table::<Node>();
            nodes
                .iter()
                .find(|n| {
                    n.manager_status
                        .as_ref()
                        .is_some_and(|m| m.raft_id == raft_id)
                })
                .or_else(|| nodes.iter().find(|n| super::raft_id_for(&n.id) == raft_id))
                .map(|n| n.id.clone())
        })
    }

    /// Whether Raft member `raft_id` is reachable as far as this manager can tell: itself and
    /// the leader it follows always are; on the leader, peers that answered recently; on a
    /// follower, what the leader last recorded in the node's manager status.
    pub fn is_reachable(&self, raft_id: NodeId) -> bool {
        if raft_id == self.raft_id {
            return true;
        }
        let Ok(raft) = self.raft_node() else {
            return false;
        };
        let leadership = raft.leadership();
        if leadership.is_self {
            return self.peers.is_reachable(raft_id);
        }
        if leadership.leader_id == Some(raft_id) {
            return true;
        }
        self.store.view(|t| {
            t.table::<Node>().iter().any(|n| {
                n.manager_status.as_ref().is_some_and(|m| {
                    m.raft_id == raft_id && m.reachability == Reachability::Reachable as i32
                })
            })
        })
    }

    /// Checks [`quorum_after_removal`] for removing `raft_id` from the current voters.
    pub fn check_removal(&self, raft_id: NodeId) -> Result<(), QuorumError> {
        quorum_after_removal(&self.voters(), raft_id, |id| self.is_reachable(id))
    }
}

fn into_index(result: ApplyResult) -> Result<u64, ProposeError> {
    match result.result {
        Ok(_) => Ok(result.log_index),
        Err(e) => Err(ProposeError::Refused(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_keeps_a_reachable_majority_or_is_refused() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        // All up: removing anyone leaves 2 of 2.
        assert_eq!(quorum_after_removal(&voters, 2, |_| true), Ok(()));
        // 3 is down: removing 2 leaves 1 of 2 reachable.
        assert_eq!(
            quorum_after_removal(&voters, 2, |id| id != 3),
            Err(QuorumError::WouldLoseQuorum {
                reachable: 1,
                remaining: 2,
                needed: 2
            })
        );
        // 3 is down: removing 3 itself leaves 2 of 2.
        assert_eq!(quorum_after_removal(&voters, 3, |id| id != 3), Ok(()));
        // Not a voter: nothing to check.
        assert_eq!(quorum_after_removal(&voters, 9, |_| false), Ok(()));
        assert_eq!(
            quorum_after_removal(&[1].into(), 1, |_| true),
            Err(QuorumError::LastManager)
        );
        let five: BTreeSet<NodeId> = [1, 2, 3, 4, 5].into();
        // 5 down: removing 1 leaves 3 of 4 reachable; 3 is a majority of 4.
        assert_eq!(quorum_after_removal(&five, 1, |id| id != 5), Ok(()));
        assert!(quorum_after_removal(&five, 1, |id| id < 3).is_err());
        let msg = QuorumError::WouldLoseQuorum {
            reachable: 1,
            remaining: 2,
            needed: 2,
        }
        .to_string();
        assert_eq!(
            msg,
            "it would leave 1 of 2 remaining managers reachable; Raft quorum needs 2"
        );
    }
}
