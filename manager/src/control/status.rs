//! The one place where manager errors become gRPC statuses, for the Control service and for
//! the CA and Raft membership services that share its write path.
//!
//! | error | code | message |
//! |---|---|---|
//! | unknown id | NOT_FOUND | `node abc not found` |
//! | id or name taken | ALREADY_EXISTS | the store's message |
//! | stale `meta.version` | FAILED_PRECONDITION | `update out of sequence: ...` |
//! | spec fails validation | INVALID_ARGUMENT | what is wrong |
//! | refused state change (quorum, demote first, not down) | FAILED_PRECONDITION | why |
//! | no leader can commit | UNAVAILABLE | `no quorum: ... (a majority of managers must be reachable; ...)` |
//! | leader-only call on a follower | UNAVAILABLE | leader's address in the message and in the `berth-leader-addr` metadata |

use tonic::{Code, Status};

use crate::raft_net::{LEADER_ADDR_METADATA, ProposeError};
use crate::store::{ApplyError, StoreError};

/// What every no-quorum answer tells the user to do.
pub const NO_QUORUM_HINT: &str = "a majority of managers must be reachable; if they are lost for good, run `berth swarm init --force-new-cluster` on a surviving manager";

/// Why a Control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The object does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Kind of object ("node", "service").
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The request is malformed or the spec fails validation.
    #[error("{0}")]
    InvalidArgument(String),
    /// The change is refused in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The change is not supported.
    #[error("{0}")]
    Unimplemented(String),
    /// Committing the change failed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl ControlError {
    /// A NOT_FOUND for `kind` `id`.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        ControlError::NotFound {
            kind,
            id: id.into(),
        }
    }
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        match e {
            ControlError::NotFound { .. } => Status::not_found(e.to_string()),
            ControlError::InvalidArgument(m) => Status::invalid_argument(m),
            ControlError::FailedPrecondition(m) => Status::failed_precondition(m),
            ControlError::Unimplemented(m) => Status::unimplemented(m),
            ControlError::Propose(p) => propose_status(&p),
            ControlError::Internal(m) => Status::internal(m),
        }
    }
}

/// UNAVAILABLE for a write no leader could commit.
pub fn no_quorum_status(detail: &str) -> Status {
    Status::unavailable(format!("no quorum: {detail} ({NO_QUORUM_HINT})"))
}

/// UNAVAILABLE for a leader-only call on a follower: names the leader (message and metadata),
/// or says there is none.
pub fn not_leader_status(leader_addr: Option<&str>) -> Status {
    match leader_addr {
        Some(addr) => {
            let mut status = Status::unavailable(format!(
                "this manager is not the leader; the leader is at {addr}"
            ));
            if let Ok(value) = addr.parse() {
                status.metadata_mut().insert(LEADER_ADDR_METADATA, value);
            }
            status
        }
        None => no_quorum_status("the cluster has no leader"),
    }
}

/// UNAVAILABLE while this manager shuts down.
pub fn shutting_down_status() -> Status {
    Status::unavailable("this manager is shutting down; try another manager")
}

/// The status of a store refusal.
pub fn store_error_status(e: &StoreError) -> Status {
    let code = match e {
        StoreError::NotFound { .. } => Code::NotFound,
        StoreError::AlreadyExists { .. } | StoreError::NameConflict { .. } => Code::AlreadyExists,
        StoreError::OutOfSequence { .. } => Code::FailedPrecondition,
        StoreError::Invalid { .. } => Code::InvalidArgument,
        StoreError::Decode { .. } => Code::Internal,
    };
    let message = match e {
        StoreError::NotFound { kind, id } => format!("{kind} {id} not found"),
        other => other.to_string(),
    };
    Status::new(code, message)
}

fn apply_error_status(e: &ApplyError) -> Status {
    match e.first() {
        Some(first) => {
            let status = store_error_status(first);
            Status::new(
                status.code(),
                e.to_string().replace(&first.to_string(), status.message()),
            )
        }
        None => Status::internal(e.to_string()),
    }
}

/// The status of a failed proposal.
pub fn propose_status(e: &ProposeError) -> Status {
    match e {
        ProposeError::Refused(apply) => apply_error_status(apply),
        ProposeError::NoQuorum { detail } => no_quorum_status(detail),
        ProposeError::NotLeader { leader_addr } => not_leader_status(leader_addr.as_deref()),
        ProposeError::Membership(m) => {
            Status::failed_precondition(format!("raft membership change refused: {m}"))
        }
        ProposeError::ShuttingDown => shutting_down_status(),
        ProposeError::Forward {
            leader_addr,
            message,
        } => no_quorum_status(&format!("the leader at {leader_addr} failed: {message}")),
        ProposeError::Fatal(f) => Status::internal(format!("raft stopped: {f}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_net::leader_addr_of;
    use crate::store::{ActionError, ObjectKind};

    #[test]
    fn each_error_gets_its_code_and_message() {
        let s = Status::from(ControlError::not_found("node", "abc"));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "node abc not found")
        );

        let stale = ProposeError::Refused(ApplyError {
            errors: vec![ActionError {
                index: 0,
                error: StoreError::OutOfSequence {
                    kind: ObjectKind::Node,
                    id: "n".into(),
                    stored: 5,
                    carried: 3,
                },
            }],
        });
        let s = propose_status(&stale);
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(
            s.message().starts_with("update out of sequence"),
            "{}",
            s.message()
        );

        let gone = ProposeError::Refused(ApplyError::whole(StoreError::NotFound {
            kind: ObjectKind::Service,
            id: "s1".into(),
        }));
        let s = propose_status(&gone);
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "service s1 not found")
        );

        let s = propose_status(&ProposeError::NoQuorum {
            detail: "no leader".into(),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().starts_with("no quorum: no leader"),
            "{}",
            s.message()
        );
        assert!(
            s.message().contains("--force-new-cluster"),
            "{}",
            s.message()
        );

        let s = not_leader_status(Some("127.0.0.1:4377"));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(leader_addr_of(&s).as_deref(), Some("127.0.0.1:4377"));
        assert!(s.message().contains("127.0.0.1:4377"));
        let s = not_leader_status(None);
        assert!(s.message().starts_with("no quorum"), "{}", s.message());
        assert_eq!(leader_addr_of(&s), None);

        let s = Status::from(ControlError::InvalidArgument("bad name".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
