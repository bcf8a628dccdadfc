//! Berth manager.

pub mod allocator;
pub mod ca;
pub mod control;
pub mod dispatcher;
pub mod logbroker;
pub mod manager;
pub mod orchestrator;

pub mod raft;
pub mod raft_net;
pub mod scheduler;
pub mod secrets;
pub mod store;
