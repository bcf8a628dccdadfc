//! Berth manager.

pub mod ca;
pub mod orchestrator;

pub mod raft;
pub mod scheduler;
pub mod store;
