//! Berth manager.
