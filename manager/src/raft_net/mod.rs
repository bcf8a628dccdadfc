//! Raft between managers over mutual-TLS gRPC, and what every manager-side service needs to
//! reach the Raft group: the local replica, writes that find the leader, and membership.
//!
//! - [`client`]: openraft's `RaftNetworkFactory` over gRPC ([`GrpcNetwork`]): one cached
//!   channel per peer address ([`Peers`]), connect and per-RPC timeouts, transport failures
//!   reported as `Unreachable`/`Timeout` so openraft backs off instead of blocking.
//! - [`server`]: the `Raft` gRPC service handing openraft messages to the local
//!   `openraft::Raft`; callers must hold a manager certificate that is not on the deny list.
//! - [`wire`]: the wire form of those messages: JSON for their small fields, binary for log
//!   entries and snapshot bytes.
//! - [`membership`]: the `RaftMembership` service: Join (learner, then voter), Leave, and
//!   ForwardWrite (a follower's store batch proposed by the leader).
//! - [`replica`]: [`Replica`], this manager's handle on its Raft member as the services see
//!   it: local reads, [`Replica::propose`] (local on the leader, ForwardWrite on a follower),
//!   leader-only gates that answer UNAVAILABLE with the leader's address, and the quorum check
//!   used before removing a voter.
//!
//! Raft member ids are derived from node ids ([`raft_id_for`]) and recorded in each manager's
//! `Node.manager_status.raft_id`; a member's openraft `BasicNode.addr` is the manager's
//! advertised cluster address ("IP:port"), where every manager service is served.
//!
//! Invariants:
//! - no Raft RPC waits longer than openraft's per-RPC deadline; a dead peer costs one connect
//!   timeout and then backs off;
//! - only the leader proposes: a follower forwards, it never proposes on its own behalf;
//! - every RPC of these services authorizes the caller as a manager first.

// openraft's error types are large by design; boxing them would fight its trait signatures.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod membership;
pub mod replica;
pub mod server;
pub mod wire;

pub use client::{GrpcConnection, GrpcNetwork, Peers, Timeouts};
pub use membership::MembershipService;
pub use replica::{ProposeError, QuorumError, Replica, StoreRevocations};
pub use server::RaftService;

use crate::raft::NodeId;

/// gRPC metadata key carrying the leader's address ("IP:port") on an UNAVAILABLE answer from
/// a manager that is not the leader. Clients retry the call there.
pub const LEADER_ADDR_METADATA: &str = "berth-leader-addr";

/// Largest gRPC message the Raft and membership services accept or send (snapshot chunks and
/// entry batches).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// The Raft member id of the manager with node id `node_id`: the 64-bit FNV-1a hash of the id,
/// never 0. Node ids are 128-bit random, so two managers of one cluster colliding is
/// negligible; a removed manager never comes back under the same node id.
pub fn raft_id_for(node_id: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if hash == 0 { 1 } else { hash }
}

/// The leader address a manager named in an UNAVAILABLE answer, if any.
pub fn leader_addr_of(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDR_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable_distinct_and_never_zero() {
        let a = raft_id_for("0abcdefghijklmnopqrstuvwx");
        assert_eq!(a, raft_id_for("0abcdefghijklmnopqrstuvwx"));
        assert_ne!(a, raft_id_for("0abcdefghijklmnopqrstuvwy"));
        assert_ne!(raft_id_for(""), 0);
        let ids: std::collections::BTreeSet<_> = (0..1000)
            .map(|i| raft_id_for(&format!("node{i}")))
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn leader_address_travels_in_metadata() {
        let mut status = tonic::Status::unavailable("not the leader");
        assert_eq!(leader_addr_of(&status), None);
        status.metadata_mut().insert(
            LEADER_ADDR_METADATA,
            "127.0.0.1:4377".parse().expect("ascii"),
        );
        assert_eq!(leader_addr_of(&status).as_deref(), Some("127.0.0.1:4377"));
    }
}
