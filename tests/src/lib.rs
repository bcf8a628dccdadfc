//! Berth test harness.

pub mod hosts;
pub mod wait;
