//! Berth node agent.

pub mod image;
