//! Container health checks: which check a container has ([`config`]: the request's over the
//! image's `HEALTHCHECK`, Docker's defaults), how probe results move its health
//! ([`state`]: STARTING → HEALTHY | UNHEALTHY, start period, retries), and the probe loop of a
//! running container ([`monitor`]) over a [`Prober`] seam.
//!
//! ```text
//! engine: create ── resolve(request, image) ──▶ HealthCheck (None = no check)
//!         start  ── monitor(check, Prober = exec in the container) ──▶ watch<Health>
//!                                                                        │
//!   inspect/ps (ContainerInfo.health) ◀──────────────────────────────────┤
//!   task runner: RUNNING once HEALTHY, FAILED + stopped once UNHEALTHY ◀─┘
//! ```
//!
//! This module runs nothing by itself and knows no container: the engine owns one monitor
//! per running container that has a check and supplies the prober (an exec into the
//! container's namespaces and cgroup); the worker's task runner decides what health means
//! for a task. Health is not persisted: after a daemon restart a running container is
//! STARTING again until its next probe.

pub mod config;
pub mod monitor;
pub mod state;

pub use config::{HealthCheck, resolve};
pub use monitor::{BoxFuture, ProbeOutcome, Prober, monitor};
pub use state::{Health, ProbeResult};

/// Why a health check configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// The test is not `NONE`, `CMD args…` or `CMD-SHELL command`.
    #[error("invalid healthcheck test {test:?}: {reason}")]
    InvalidTest {
        /// The test as configured.
        test: Vec<String>,
        /// What is wrong with it.
        reason: &'static str,
    },
}
