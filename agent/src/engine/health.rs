//! Health checks of the engine's containers: each container with a check (resolved at
//! creation from its request and its image, see [`crate::health::config`]) has a slot holding
//! its health; while it runs, one monitor task probes it by exec-ing the check inside its
//! namespaces and cgroup (the runtime's `exec`).
//!
//! - A probe is killed at its timeout (its exec helper, which takes the probe process with
//!   it); nothing waits for processes the probe forked and left behind (as in Docker).
//! - A monitor starts when the container starts (or, after a daemon restart, when the
//!   engine adopts it running) and ends when the container exits; at most one per container.
//! - Inspect and list show the health (`ContainerInfo.health`, `.health_detail`); the task
//!   runner watches it through [`Engine::container_health`].
//! - Slots are registered before the runtime creates the container and dropped with its
//!   record, so they never outlive the container.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_proto::v1::{self, ContainerInfo};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use super::{Engine, EngineError, Entry, Inner, error, lock, parse_rfc3339};
use crate::health::state::MAX_OUTPUT;
use crate::health::{self, BoxFuture, Health, HealthCheck, ProbeOutcome, Prober};
use crate::image::ImageConfig;
use crate::runtime::{ExecConfig, Status, sys};

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

/// How long a probe's output is still read after it exited (a background child of the
/// probe may keep the pipes open forever).
const DRAIN: Duration = Duration::from_millis(200);

/// Reads `fd` to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_capped(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(Ok(mut rx)) = fd.map(pipe::Receiver::from_owned_fd) else {
        return kept;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Runs `args` in container `id` and kills it at `timeout`. The exec helper's setup runs on
/// a blocking thread; the wait and the output do not hold one past the timeout, so a probe
/// whose hung grandchild keeps the pipes open costs nothing once killed.
async fn run_probe(
    inner: Arc<Inner>,
    id: String,
    args: Vec<String>,
    timeout: Duration,
) -> Result<ProbeOutcome, EngineError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let cfg = ExecConfig {
        args,
        ..ExecConfig::default()
    };
    let process = tokio::task::spawn_blocking(move || inner.runtime.exec(&id, &cfg))
        .await
        .map_err(|e| EngineError::Internal(format!("the probe's thread failed: {e}")))??;
    let mut child = process.child;
    // The helper: killing it kills the probe (PR_SET_PDEATHSIG), not the probe's children.
    let helper = sys::pidfd_open(child.id() as i32).ok();
    let out = child.stdout.take().map(OwnedFd::from);
    let err = child.stderr.take().map(OwnedFd::from);
    let mut output = tokio::spawn(async move {
        let (mut out, err) = tokio::join!(read_capped(out), read_capped(err));
        out.extend_from_slice(&err);
        out
    });
    let mut waiter = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::select! {
        status = &mut waiter => status,
        () = tokio::time::sleep_until(deadline) => {
            if let Some(fd) = &helper {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
            let _ = waiter.await;
            output.abort();
            return Ok(ProbeOutcome::timed_out(timeout));
        }
    };
    let exit_code = match status {
        Ok(Ok(s)) => match (s.code(), s.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        },
        Ok(Err(e)) => return Err(EngineError::io("waiting for the probe")(e)),
        Err(e) => {
            return Err(EngineError::Internal(format!(
                "the probe's waiter failed: {e}"
            )));
        }
    };
    let bytes = match tokio::time::timeout(DRAIN, &mut output).await {
        Ok(Ok(bytes)) => bytes,
        _ => {
            output.abort();
            Vec::new()
        }
    };
    Ok(ProbeOutcome {
        exit_code,
        output: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Runs a check inside one container, in its namespaces and cgroup (the runtime's exec).
struct ExecProber {
    inner: Arc<Inner>,
    id: String,
    slot: Arc<Slot>,
}

impl Prober for ExecProber {
    fn probe(&self, args: Vec<String>, timeout: Duration) -> BoxFuture<'_, Option<ProbeOutcome>> {
        let ran = run_probe(Arc::clone(&self.inner), self.id.clone(), args, timeout);
        Box::pin(async move {
            match ran.await {
                Ok(outcome) => Some(outcome),
                // Entering a container that is going away fails; that says nothing of its
                // health.
                Err(_) if self.slot.stopping.load(Ordering::SeqCst) => None,
                Err(e) => Some(ProbeOutcome {
                    exit_code: -1,
                    output: error::chain(&e),
                }),
            }
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
