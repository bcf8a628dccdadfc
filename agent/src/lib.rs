//! Berth node agent.

pub mod engine;
pub mod health;
pub mod image;
pub mod join;
pub mod network;
pub mod logs;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod worker;
