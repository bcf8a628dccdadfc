//! Berth manager.

pub mod ca;

pub mod store;
