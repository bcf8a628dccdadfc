//! The binary form of a log entry, used on disk and on the wire: the entry without its store
//! batch as JSON, then the batch's raw protobuf bytes. A secret or config near its size limit
//! is one ~1 MiB batch; spelled as JSON text it took 100-200 ms to parse in a debug build, more
//! than openraft 0.9's AppendEntries deadline (one heartbeat interval), so it never replicated.
//! Raw bytes cost a copy.
//!
//! Layout: `u32` little-endian length of the JSON header, the header, the batch bytes (empty for
//! entries without a batch: leader blanks and membership changes).

use openraft::{Entry, EntryPayload};

use super::types::{RaftRequest, TypeConfig};

/// Encodes `entry` into its binary form.
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, serde_json::Error> {
    let (payload, batch): (EntryPayload<TypeConfig>, &[u8]) = match &entry.payload {
        EntryPayload::Normal(req) => (
            EntryPayload::Normal(RaftRequest {
                seconds: req.seconds,
                nanos: req.nanos,
                actions: Vec::new(),
            }),
            &req.actions,
        ),
        other => (other.clone(), &[]),
    };
    let header = serde_json::to_vec(&Entry::<TypeConfig> {
        log_id: entry.log_id,
        payload,
    })?;
    let len = u32::try_from(header.len()).map_err(serde::ser::Error::custom)?;
    let mut out = Vec::with_capacity(4 + header.len() + batch.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(batch);
    Ok(out)
}

/// Decodes what [`encode_entry`] wrote; the error says what is malformed.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, String> {
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or("log entry shorter than its header length")?;
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|e| e.to_string())?;
    if rest.len() < len {
        return Err(format!(
            "log entry header of {len} bytes is cut at {}",
            rest.len()
        ));
    }
    let (header, batch) = rest.split_at(len);
    let mut entry: Entry<TypeConfig> =
        serde_json::from_slice(header).map_err(|e| format!("log entry header: {e}"))?;
    match &mut entry.payload {
        EntryPayload::Normal(req) => req.actions = batch.to_vec(),
        _ if !batch.is_empty() => {
            return Err(format!(
                "log entry {} carries {} batch bytes but is not a normal entry",
                entry.log_id.index,
                batch.len()
            ));
        }
        _ => {}
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, LogId, Membership};

    use super::*;

    fn log_id(index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    #[test]
    fn every_payload_kind_round_trips() {
        let voters = BTreeSet::from([1u64, 2]);
        let nodes = BTreeMap::from([
            (1u64, openraft::BasicNode::new("a:1")),
            (2, openraft::BasicNode::new("b:2")),
        ]);
        let entries = [
            Entry::<TypeConfig> {
                log_id: log_id(1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2),
                payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
            },
            Entry {
                log_id: log_id(3),
                payload: EntryPayload::Normal(RaftRequest {
                    seconds: 9,
                    nanos: 8,
                    actions: (0..=255).cycle().take(1 << 20).collect(),
                }),
            },
            Entry {
                log_id: log_id(4),
                payload: EntryPayload::Normal(RaftRequest {
                    seconds: 1,
                    nanos: 0,
                    actions: Vec::new(),
                }),
            },
        ];
        for entry in entries {
            let bytes = encode_entry(&entry).expect("encode");
            assert_eq!(decode_entry(&bytes).expect("decode"), entry);
        }
    }

    #[test]
    fn a_megabyte_batch_is_stored_raw_not_as_text() {
        let entry = Entry::<TypeConfig> {
            log_id: log_id(7),
            payload: EntryPayload::Normal(RaftRequest {
                seconds: 1,
                nanos: 2,
                actions: vec![0xAB; 1 << 20],
            }),
        };
        let bytes = encode_entry(&entry).expect("encode");
        assert!(bytes.len() < (1 << 20) + 200, "{} bytes", bytes.len());
        assert!(bytes.ends_with(&[0xAB; 64]));
    }

    #[test]
    fn malformed_bytes_are_refused_with_the_reason() {
        assert!(decode_entry(b"\x01").unwrap_err().contains("shorter"));
        assert!(decode_entry(b"\xff\0\0\0{}").unwrap_err().contains("cut"));
        assert!(
            decode_entry(b"\x02\0\0\0{x")
                .unwrap_err()
                .contains("header")
        );
        let blank = Entry::<TypeConfig> {
            log_id: log_id(5),
            payload: EntryPayload::Blank,
        };
        let mut bytes = encode_entry(&blank).expect("encode");
        bytes.push(1);
        assert!(
            decode_entry(&bytes)
                .unwrap_err()
                .contains("not a normal entry")
        );
    }
}
