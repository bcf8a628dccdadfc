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
mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub(crate) fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let sextets = [(n >> 18) & 63, (n >> 12) & 63, (n >> 6) & 63, n & 63];
            for (i, s) in sextets.iter().enumerate() {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[*s as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub(crate) fn decode(text: &str) -> Result<Vec<u8>, String> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(4) {
            return Err(format!(
                "base64 length {} is not a multiple of 4",
                text.len()
            ));
        }
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        let last = text.len() / 4;
        for (i, quad) in text.chunks(4).enumerate() {
            let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
            if pad > 2 || (pad > 0 && i + 1 != last) {
                return Err("misplaced base64 padding".into());
            }
            let mut n = 0u32;
            for (j, c) in quad.iter().enumerate() {
                let v = if j >= 4 - pad {
                    0
                } else {
                    match ALPHABET.iter().position(|a| a == c) {
                        Some(v) => v as u32,
                        None => return Err(format!("invalid base64 byte {c:#04x}")),
                    }
                };
                n = (n << 6) | v;
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        Ok(out)
    }

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ActionError, ObjectKind, StoreError};

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (raw, text) in cases {
            assert_eq!(base64_bytes::encode(raw), text);
            assert_eq!(base64_bytes::decode(text).as_deref(), Ok(raw));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_bytes::decode(&base64_bytes::encode(&all)), Ok(all));
        for bad in ["Zg=", "Zg=a", "Z===", "Zm9v!A==", "Zg==Zg=="] {
            assert!(base64_bytes::decode(bad).is_err(), "{bad} decoded");
        }
    }

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
