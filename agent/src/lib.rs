//! Berth node agent.

pub mod image;
pub mod runtime;
