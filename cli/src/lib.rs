//! The `berth` client and the `berthd` daemon: argument parsing, output and process plumbing.
//!
//! The binaries in `src/bin/` stay thin: they parse arguments with the types defined here and
//! hand over to the agent and manager crates.

pub mod client;
pub mod commands;
pub mod daemon;
pub mod duration;
pub mod exit;
pub mod node;
pub mod table;

/// The version both binaries report, from the workspace's package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
