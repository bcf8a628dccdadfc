//! Berth manager.

pub mod ca;

pub mod raft;
pub mod store;
