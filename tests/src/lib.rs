//! Berth test harness.

pub mod bins;
pub mod image;

pub mod hosts;
pub mod wait;
