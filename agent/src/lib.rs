//! Berth node agent.

pub mod image;
pub mod runtime;
pub mod worker;
