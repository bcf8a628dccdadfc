//! The ways a store write or read fails, and the object kinds they name.
//!
//! These errors are part of every Raft apply result, so they are plain data (serde, `Clone`,
//! `PartialEq`): every manager computes the same error for the same log entry.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One of the seven kinds of object the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// A machine in the cluster.
    Node,
    /// A user's service.
    Service,
    /// One attempt to run one replica of a service.
    Task,
    /// An overlay network.
    Network,
    /// A secret.
    Secret,
    /// A config.
    Config,
    /// The cluster-wide settings singleton.
    Cluster,
}

impl ObjectKind {
    /// Every kind, in the order tables are dumped.
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Node,
        ObjectKind::Service,
        ObjectKind::Task,
        ObjectKind::Network,
        ObjectKind::Secret,
        ObjectKind::Config,
        ObjectKind::Cluster,
    ];

    /// The lowercase name used in messages ("service", "task").
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Node => "node",
            ObjectKind::Service => "service",
            ObjectKind::Task => "task",
            ObjectKind::Network => "network",
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
            ObjectKind::Cluster => "cluster",
        }
    }

    /// The stable wire number of this kind (used in encoded remove actions).
    pub fn to_wire(self) -> i32 {
        match self {
            ObjectKind::Node => 1,
            ObjectKind::Service => 2,
            ObjectKind::Task => 3,
            ObjectKind::Network => 4,
            ObjectKind::Secret => 5,
            ObjectKind::Config => 6,
            ObjectKind::Cluster => 7,
        }
    }

    /// The kind with wire number `n`, if there is one.
    pub fn from_wire(n: i32) -> Option<ObjectKind> {
        ObjectKind::ALL.into_iter().find(|k| k.to_wire() == n)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one store action (or a whole encoded batch) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// The object to update or remove does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// Kind of the missing object.
        kind: ObjectKind,
        /// Its id.
        id: String,
    },
    /// An object with this id already exists.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// Kind of the object.
        kind: ObjectKind,
        /// Its id.
        id: String,
    },
    /// Another object of this kind already has this name (names compare case-insensitively).
    #[error("name conflicts with an existing object: {kind} {name:?} already exists")]
    NameConflict {
        /// Kind of the object.
        kind: ObjectKind,
        /// The conflicting name, as written in the refused object.
        name: String,
    },
    /// The update was computed from a version that is no longer the stored one.
    #[error(
        "update out of sequence: {kind} {id:?} is at version {stored}, the update was based on version {carried}"
    )]
    OutOfSequence {
        /// Kind of the object.
        kind: ObjectKind,
        /// Its id.
        id: String,
        /// The version in the store.
        stored: u64,
        /// The version the update carried.
        carried: u64,
    },
    /// The object cannot be stored as it is (for example an empty id).
    #[error("invalid {kind}: {reason}")]
    Invalid {
        /// Kind of the object.
        kind: ObjectKind,
        /// What is wrong with it.
        reason: String,
    },
    /// An encoded batch of actions or a store dump could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded ("store actions", "store dump").
        what: String,
        /// The decoder's message.
        reason: String,
    },
}

/// One refused action of a batch, with its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("action {index}: {error}")]
pub struct ActionError {
    /// Position of the action in its batch (0-based).
    pub index: usize,
    /// Why it was refused.
    pub error: StoreError,
}

/// A refused batch: nothing of it was applied. Lists every action that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyError {
    /// The refused actions, in batch order; never empty.
    pub errors: Vec<ActionError>,
}

impl ApplyError {
    /// A refusal of the whole batch for one reason not tied to an action (index 0).
    pub fn whole(error: StoreError) -> Self {
        ApplyError {
            errors: vec![ActionError { index: 0, error }],
        }
    }

    /// The first refused action's error.
    pub fn first(&self) -> Option<&StoreError> {
        self.errors.first().map(|e| &e.error)
    }
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [] => f.write_str("store actions refused"),
            [one] => write!(f, "{}", one.error),
            [first, rest @ ..] => write!(
                f,
                "{} (and {} more refused actions)",
                first.error,
                rest.len()
            ),
        }
    }
}

impl std::error::Error for ApplyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_wire_numbers() {
        for kind in ObjectKind::ALL {
            assert_eq!(ObjectKind::from_wire(kind.to_wire()), Some(kind));
        }
        assert_eq!(ObjectKind::from_wire(0), None);
        assert_eq!(ObjectKind::from_wire(8), None);
    }

    #[test]
    fn messages_carry_the_swarm_phrases() {
        let e = StoreError::OutOfSequence {
            kind: ObjectKind::Service,
            id: "s1".into(),
            stored: 7,
            carried: 5,
        };
        assert!(e.to_string().starts_with("update out of sequence"), "{e}");
        let e = StoreError::NameConflict {
            kind: ObjectKind::Service,
            name: "web".into(),
        };
        assert!(
            e.to_string()
                .starts_with("name conflicts with an existing object"),
            "{e}"
        );
    }

    #[test]
    fn apply_error_display_counts_the_rest() {
        let err = |i| ActionError {
            index: i,
            error: StoreError::NotFound {
                kind: ObjectKind::Task,
                id: format!("t{i}"),
            },
        };
        assert_eq!(
            ApplyError {
                errors: vec![err(0)]
            }
            .to_string(),
            "task \"t0\" not found"
        );
        assert_eq!(
            ApplyError {
                errors: vec![err(0), err(3), err(4)]
            }
            .to_string(),
            "task \"t0\" not found (and 2 more refused actions)"
        );
    }
}
