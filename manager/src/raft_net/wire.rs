//! The wire forms of openraft's three RPC requests ([`WireRequest`]): the request as JSON
//! without its bulk, and the bulk (log entries, snapshot bytes) in binary fields beside it.
//! Encoding a megabyte entry costs a copy; as JSON text it cost 25 ms to write and 100-200 ms
//! to parse in a debug build, over openraft's AppendEntries deadline of one heartbeat.

use berth_proto::v1::RaftRequest as WireRequest;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::raft::entry_codec::{decode_entry, encode_entry};
use crate::raft::{NodeId, TypeConfig};

/// The wire form of a vote request (small: JSON only).
pub fn encode_vote(rpc: &VoteRequest<NodeId>) -> Result<WireRequest, serde_json::Error> {
    Ok(WireRequest {
        payload: serde_json::to_vec(rpc)?,
        ..WireRequest::default()
    })
}

/// Reads a vote request.
pub fn decode_vote(wire: &WireRequest) -> Result<VoteRequest<NodeId>, String> {
    serde_json::from_slice(&wire.payload).map_err(|e| format!("vote request: {e}"))
}

/// The wire form of an AppendEntries request: its fields as JSON, its entries binary.
pub fn encode_append_entries(
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Result<WireRequest, serde_json::Error> {
    let header = AppendEntriesRequest::<TypeConfig> {
        vote: rpc.vote,
        prev_log_id: rpc.prev_log_id,
        leader_commit: rpc.leader_commit,
        entries: Vec::new(),
    };
    Ok(WireRequest {
        payload: serde_json::to_vec(&header)?,
        entries: rpc
            .entries
            .iter()
            .map(encode_entry)
            .collect::<Result<_, _>>()?,
        snapshot_data: Vec::new(),
    })
}

/// Reads an AppendEntries request; the error names what is malformed.
pub fn decode_append_entries(
    wire: WireRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    let mut rpc: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&wire.payload)
        .map_err(|e| format!("append-entries request: {e}"))?;
    if !rpc.entries.is_empty() {
        return Err("append-entries request carries entries in its JSON part".into());
    }
    rpc.entries = wire
        .entries
        .iter()
        .map(|e| decode_entry(e))
        .collect::<Result<_, _>>()?;
    Ok(rpc)
}

/// The wire form of one InstallSnapshot chunk: its fields as JSON, its data binary (moved,
/// not copied).
pub fn encode_install_snapshot(
    mut rpc: InstallSnapshotRequest<TypeConfig>,
) -> Result<WireRequest, serde_json::Error> {
    let data = std::mem::take(&mut rpc.data);
    Ok(WireRequest {
        payload: serde_json::to_vec(&rpc)?,
        entries: Vec::new(),
        snapshot_data: data,
    })
}

/// Reads an InstallSnapshot chunk; the error names what is malformed.
pub fn decode_install_snapshot(
    wire: WireRequest,
) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let mut rpc: InstallSnapshotRequest<TypeConfig> = serde_json::from_slice(&wire.payload)
        .map_err(|e| format!("install-snapshot request: {e}"))?;
    if !rpc.data.is_empty() {
        return Err("install-snapshot request carries data in its JSON part".into());
    }
    rpc.data = wire.snapshot_data;
    Ok(rpc)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, Vote};

    use super::*;
    use crate::raft::RaftRequest;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(2, 7), index)
    }

    #[test]
    fn append_entries_round_trip_with_their_batches_outside_the_json() {
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 7),
            prev_log_id: Some(log_id(4)),
            leader_commit: Some(log_id(3)),
            entries: vec![
                Entry {
                    log_id: log_id(5),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(6),
                    payload: EntryPayload::Normal(RaftRequest {
                        seconds: 1,
                        nanos: 2,
                        actions: vec![7; 700 * 1024],
                    }),
                },
            ],
        };
        let wire = encode_append_entries(&rpc).expect("encode");
        assert!(
            wire.payload.len() < 512,
            "{} JSON bytes",
            wire.payload.len()
        );
        let back = decode_append_entries(wire).expect("decode");
        assert_eq!(back.vote, rpc.vote);
        assert_eq!(back.prev_log_id, rpc.prev_log_id);
        assert_eq!(back.leader_commit, rpc.leader_commit);
        assert_eq!(back.entries, rpc.entries);
    }

    #[test]
    fn snapshot_chunks_and_votes_round_trip() {
        let rpc = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 7),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(9)),
                last_membership: Default::default(),
                snapshot_id: "s-9".into(),
            },
            offset: 4096,
            data: (0..=255).cycle().take(3 << 20).collect(),
            done: true,
        };
        let wire = encode_install_snapshot(rpc.clone()).expect("encode");
        assert!(
            wire.payload.len() < 512,
            "{} JSON bytes",
            wire.payload.len()
        );
        let back = decode_install_snapshot(wire).expect("decode");
        assert_eq!(
            (back.vote, back.meta, back.offset, back.done),
            (rpc.vote, rpc.meta, rpc.offset, rpc.done)
        );
        assert_eq!(back.data, rpc.data);

        let vote = VoteRequest::new(Vote::new(3, 1), Some(log_id(2)));
        assert_eq!(
            decode_vote(&encode_vote(&vote).expect("encode")).expect("decode"),
            vote
        );
    }

    #[test]
    fn bulk_hidden_in_the_json_part_is_refused() {
        let smuggled = WireRequest {
            payload: br#"{"vote":{"leader_id":{"term":1,"node_id":1},"committed":true},"meta":{"last_log_id":null,"last_membership":{"log_id":null,"membership":{"configs":[],"nodes":{}}},"snapshot_id":"x"},"offset":0,"data":[1],"done":true}"#.to_vec(),
            ..WireRequest::default()
        };
        assert!(
            decode_install_snapshot(smuggled)
                .unwrap_err()
                .contains("data in its JSON part")
        );
    }
}
