//! Berth test harness.

pub mod bins;
pub mod cleanup;
pub mod cluster;
pub mod image;

pub mod hosts;
pub mod wait;
