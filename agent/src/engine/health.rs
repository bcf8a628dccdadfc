//! Health checks of the engine's containers: each container with a check (resolved at
//! creation from its request and its image, see [`crate::health::config`]) has a slot holding
//! its health; while it runs, one monitor task probes it by exec-ing the check inside its
//! namespaces and cgroup (the runtime's `exec_output`, on a blocking thread).
//!
//! - A monitor starts when the container starts (or, after a daemon restart, when the
//!   engine adopts it running) and ends when the container exits; at most one per container.
//! - Inspect and list show the health (`ContainerInfo.health`, `.health_detail`); the task
//!   runner watches it through [`Engine::container_health`].
//! - Slots are registered before the runtime creates the container and dropped with its
//!   record, so they never outlive the container.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_proto::v1::{self, ContainerInfo};
use tokio::sync::watch;

use super::{Engine, EngineError, Entry, Inner, error, lock, parse_rfc3339};
use crate::health::{self, BoxFuture, Health, HealthCheck, ProbeOutcome, Prober};
use crate::image::ImageConfig;
use crate::runtime::{ExecConfig, Status};

/// One container's check and health.
pub(super) struct Slot {
    check: HealthCheck,
    health: watch::Sender<Health>,
    /// A monitor runs (or ran) for the current start of the container.
    monitored: AtomicBool,
    /// The container is being stopped: probes that cannot enter it are not failures.
    stopping: AtomicBool,
}

/// The health slots of the engine's containers, by container id.
#[derive(Default)]
pub(super) struct Slots {
    by_id: Mutex<HashMap<String, Arc<Slot>>>,
}

/// The check of a container created with `cfg` from an image with `image`'s config.
pub(super) fn check_of(
    cfg: &v1::ContainerConfig,
    image: &ImageConfig,
) -> Result<Option<HealthCheck>, EngineError> {
    health::resolve(
        cfg.healthcheck.as_ref(),
        image.healthcheck.as_ref(),
        image.shell.as_deref(),
    )
    .map_err(|e| EngineError::InvalidArgument(e.to_string()))
}

impl Slots {
    /// Registers container `id`'s check (nothing when it has none).
    pub(super) fn register(&self, id: &str, check: Option<HealthCheck>) {
        if let Some(check) = check {
            let slot = Slot {
                check,
                health: watch::channel(Health::starting()).0,
                monitored: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
            };
            lock(&self.by_id).insert(id.to_owned(), Arc::new(slot));
        }
    }

    /// Forgets container `id`.
    pub(super) fn remove(&self, id: &str) {
        lock(&self.by_id).remove(id);
    }

    /// Notes that container `id` is being stopped (stop, or forced removal).
    pub(super) fn stopping(&self, id: &str) {
        if let Some(slot) = self.get(id) {
            slot.stopping.store(true, Ordering::SeqCst);
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Slot>> {
        lock(&self.by_id).get(id).cloned()
    }

    /// Sets the health fields of `info`.
    pub(super) fn fill(&self, info: &mut ContainerInfo) {
        if let Some(slot) = self.get(&info.id) {
            let h = slot.health.borrow();
            info.health = h.status as i32;
            info.health_detail = Some(h.to_proto());
        }
    }
}

impl Inner {
    /// The check of a container the engine adopts from its record (its image cannot have
    /// been removed while the container exists).
    pub(super) fn adopted_check(&self, info: &ContainerInfo) -> Option<HealthCheck> {
        let cfg = info.config.clone().unwrap_or_default();
        let image = match self.images.inspect(&info.image_id) {
            Ok(image) => image,
            Err(e) => {
                tracing::warn!(id = %info.id, error = %e, "cannot read the image of a container; its health check is off");
                return None;
            }
        };
        check_of(&cfg, &image.config).unwrap_or_else(|e| {
            tracing::warn!(id = %info.id, error = %e, "health check ignored");
            None
        })
    }
}

/// Runs a check inside one container through the runtime.
struct ExecProber {
    inner: Arc<Inner>,
    id: String,
    slot: Arc<Slot>,
}

impl Prober for ExecProber {
    fn probe(&self, args: Vec<String>, timeout: Duration) -> BoxFuture<'_, Option<ProbeOutcome>> {
        let inner = Arc::clone(&self.inner);
        let id = self.id.clone();
        Box::pin(async move {
            let cfg = ExecConfig {
                args,
                ..ExecConfig::default()
            };
            let ran =
                tokio::task::spawn_blocking(move || inner.runtime.exec_output(&id, &cfg, timeout))
                    .await;
            Some(match ran {
                Ok(Ok(out)) if out.timed_out => ProbeOutcome::timed_out(timeout),
                Ok(Ok(out)) => {
                    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
                    output.push_str(&String::from_utf8_lossy(&out.stderr));
                    ProbeOutcome {
                        exit_code: out.exit_code,
                        output,
                    }
                }
                // Entering a container that is going away fails; that says nothing of its
                // health.
                Ok(Err(_)) if self.slot.stopping.load(Ordering::SeqCst) => return None,
                Ok(Err(e)) => ProbeOutcome {
                    exit_code: -1,
                    output: error::chain(&e),
                },
                Err(e) => ProbeOutcome {
                    exit_code: -1,
                    output: format!("the probe's thread failed: {e}"),
                },
            })
        })
    }
}

impl Engine {
    /// Starts the health monitor of `entry` if it has a check, runs, and has none yet.
    pub(super) async fn start_health_monitor(&self, entry: Arc<Entry>) {
        let id = entry.info.id.clone();
        let Some(slot) = self.inner.health.get(&id) else {
            return;
        };
        let state = {
            let id = id.clone();
            self.blocking(move |inner| Ok(inner.runtime.state(&id)?))
                .await
        };
        let started = match state {
            Ok(st) if st.status == Status::Running => st
                .started
                .as_deref()
                .and_then(parse_rfc3339)
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or_else(SystemTime::now),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(%id, error = %error::chain(&e), "cannot start the health monitor");
                return;
            }
        };
        if slot.monitored.swap(true, Ordering::SeqCst) {
            return;
        }
        let since = SystemTime::now()
            .duration_since(started)
            .unwrap_or_default();
        let started = tokio::time::Instant::now()
            .checked_sub(since)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut exit = entry.exit.subscribe();
        let stop = async move {
            let _ = exit.wait_for(Option::is_some).await;
        };
        let prober = ExecProber {
            inner: Arc::clone(&self.inner),
            id: id.clone(),
            slot: Arc::clone(&slot),
        };
        tracing::debug!(%id, check = ?slot.check, "health monitor started");
        tokio::spawn(async move {
            health::monitor(
                id,
                slot.check.clone(),
                started,
                prober,
                slot.health.clone(),
                stop,
            )
            .await;
        });
    }

    /// The health of container `key` (id, name or unique id prefix) as a watch, or `None`
    /// when it has no health check.
    pub fn container_health(
        &self,
        key: &str,
    ) -> Result<Option<watch::Receiver<Health>>, EngineError> {
        let entry = self.inner.resolve(key)?;
        Ok(self
            .inner
            .health
            .get(&entry.info.id)
            .map(|slot| slot.health.subscribe()))
    }
}
