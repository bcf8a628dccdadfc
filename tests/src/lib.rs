//! Berth test harness.
