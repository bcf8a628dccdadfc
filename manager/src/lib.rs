//! Berth manager.

pub mod ca;
