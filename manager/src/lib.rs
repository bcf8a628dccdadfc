//! Berth manager.

pub mod allocator;
pub mod ca;
pub mod orchestrator;
pub mod control;
pub mod dispatcher;
pub mod logbroker;
pub mod manager;

pub mod raft;
pub mod scheduler;
pub mod secrets;
pub mod raft_net;
pub mod store;
