//! Berth node agent.

pub mod engine;
pub mod health;
pub mod image;
pub mod join;
pub mod logs;
pub mod network;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod worker;
