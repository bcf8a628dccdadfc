//! Berth's wire API: the protobuf objects and gRPC services every component speaks.

pub mod identity;

pub mod ids;
pub mod naming;
pub mod task_state;

/// Code generated from `proto/*.proto` (package `berth.v1`).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("berth.v1");
}
