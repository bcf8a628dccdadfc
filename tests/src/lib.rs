//! Berth test harness.

pub mod image;

pub mod hosts;
pub mod wait;
