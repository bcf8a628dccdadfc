//! The openraft type configuration: what a log entry carries ([`RaftRequest`]: an encoded
//! store batch plus the proposer's timestamp) and what applying it answers ([`ApplyResult`]).
//!
//! Invariant: an entry carries everything apply needs, including the time, so applying it is
//! deterministic on every manager.

use std::io::Cursor;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{BasicNode, Entry, TokioRuntime};
use prost_types::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::{ApplyError, StoreActions};

/// Raft member id of a manager.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Berth's openraft types: entries carry [`RaftRequest`]s, apply answers [`ApplyResult`]s.
    pub TypeConfig:
        D = RaftRequest,
        R = ApplyResult,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = TokioRuntime
);

/// The payload of a normal log entry: one store batch (encoded [`StoreActions`]) and the time
/// the leader proposed it, which becomes the written objects' `meta.updated_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftRequest {
    /// Seconds of the proposal time since the Unix epoch.
    pub seconds: i64,
    /// Nanoseconds within that second.
    pub nanos: i32,
    /// The encoded batch (base64 in serde formats, raw protobuf bytes in memory).
    #[serde(with = "base64_bytes")]
    pub actions: Vec<u8>,
}

impl RaftRequest {
    /// A request for `batch` stamped with `at`.
    pub fn new(batch: &StoreActions, at: Timestamp) -> Self {
        RaftRequest {
            seconds: at.seconds,
            nanos: at.nanos,
            actions: batch.encode(),
        }
    }

    /// A request for `batch` stamped with the local clock (the proposer's clock, never read
    /// during apply).
    pub fn now(batch: &StoreActions) -> Self {
        RaftRequest::new(batch, now())
    }

    /// The proposal time.
    pub fn timestamp(&self) -> Timestamp {
        Timestamp {
            seconds: self.seconds,
            nanos: self.nanos,
        }
    }
}

/// The wall clock as a protobuf timestamp (0 if the clock is before 1970).
pub fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// What applying one log entry did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// The entry's log index: the `meta.version` of every object it wrote.
    pub log_index: u64,
    /// Number of objects written, or every refused action (then nothing was written).
    /// Entries without a store batch (leader blanks, membership changes) write 0 objects.
    pub result: Result<usize, ApplyError>,
}

/// Serde for byte strings as base64 text (JSON would otherwise spell each byte as a number).
/// Only debugging and the in-memory test network use it: on disk and on the wire the batch
/// travels raw ([`super::entry_codec`]).
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ActionError, ObjectKind, StoreError};

    #[test]
    fn requests_and_results_survive_json() {
        let mut batch = StoreActions::new();
        batch.remove(ObjectKind::Task, "t1");
        let req = RaftRequest::new(
            &batch,
            Timestamp {
                seconds: 5,
                nanos: 7,
            },
        );
        let json = serde_json::to_string(&req).expect("encode");
        assert!(json.contains("\"actions\":\""), "{json}");
        assert_eq!(
            serde_json::from_str::<RaftRequest>(&json).expect("decode"),
            req
        );
        assert_eq!(StoreActions::decode(&req.actions), Ok(batch));

        let res = ApplyResult {
            log_index: 9,
            result: Err(ApplyError {
                errors: vec![ActionError {
                    index: 2,
                    error: StoreError::OutOfSequence {
                        kind: ObjectKind::Service,
                        id: "s".into(),
                        stored: 4,
                        carried: 3,
                    },
                }],
            }),
        };
        let json = serde_json::to_vec(&res).expect("encode");
        assert_eq!(
            serde_json::from_slice::<ApplyResult>(&json).expect("decode"),
            res
        );
    }
}
