//! Berth node agent.
