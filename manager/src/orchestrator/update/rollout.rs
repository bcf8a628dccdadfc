//! What the updater reads off a service and a task: the effective update (or rollback)
//! configuration with Docker's defaults filled in, whether a task is *dirty* (made from
//! another spec than its service's current one), whether a task is *up* (RUNNING, and healthy
//! if it has a health check), and which tasks of a slot the orchestrators leave to the
//! updater.
//!
//! Dirty is a comparison of specs, never of versions: a task is dirty when its task spec
//! differs from the service's (`force_update` is part of it, so `--force` dirties every task),
//! or when its endpoint spec differs from the one a new task would get. A rollback that
//! restores the previous spec therefore makes the tasks of that spec clean again at once.

use std::time::Duration;

use berth_proto::v1::{
    EndpointSpec, FailureAction, HealthState, Service, Task, TaskState, UpdateConfig, UpdateOrder,
};

use super::super::clock::from_duration;
use super::super::task::{is_runnable, observed};

/// Docker's default monitor period.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// Docker's default stop grace period, used for the progress deadline when a task spec does
/// not set one.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// An update or rollback configuration with every default applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollout {
    /// Slots replaced at once; 0 = all.
    pub parallelism: u64,
    /// Wait after a batch settled before the next one starts.
    pub delay: Duration,
    /// PAUSE, CONTINUE or ROLLBACK.
    pub failure_action: FailureAction,
    /// How long each new task is watched after it came up.
    pub monitor: Duration,
    /// Failed fraction of the slots tolerated.
    pub max_failure_ratio: f32,
    /// STOP_FIRST or START_FIRST.
    pub order: UpdateOrder,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout::of(None)
    }
}

impl Rollout {
    /// `config` with Docker's defaults: parallelism 1, delay 0, pause, monitor 5 s, ratio 0,
    /// stop-first.
    pub fn of(config: Option<&UpdateConfig>) -> Rollout {
        let Some(c) = config else {
            return Rollout {
                parallelism: 1,
                delay: Duration::ZERO,
                failure_action: FailureAction::Pause,
                monitor: DEFAULT_MONITOR,
                max_failure_ratio: 0.0,
                order: UpdateOrder::StopFirst,
            };
        };
        Rollout {
            parallelism: c.parallelism.unwrap_or(1),
            delay: c.delay.as_ref().map_or(Duration::ZERO, from_duration),
            failure_action: FailureAction::try_from(c.failure_action)
                .unwrap_or(FailureAction::Pause),
            monitor: c.monitor.as_ref().map_or(DEFAULT_MONITOR, from_duration),
            max_failure_ratio: c.max_failure_ratio,
            order: UpdateOrder::try_from(c.order).unwrap_or(UpdateOrder::StopFirst),
        }
    }

    /// The configuration of the update (`rollback` false) or rollback of `service`.
    pub fn for_service(service: &Service, rollback: bool) -> Rollout {
        let spec = service.spec.as_ref();
        let config = if rollback {
            spec.and_then(|s| s.rollback.as_ref())
        } else {
            spec.and_then(|s| s.update.as_ref())
        };
        Rollout::of(config)
    }

    /// How many slots a batch takes out of `dirty`.
    pub fn batch_size(&self, dirty: usize) -> usize {
        match usize::try_from(self.parallelism) {
            Ok(0) | Err(_) => dirty,
            Ok(p) => p.min(dirty),
        }
    }
}

/// The endpoint spec a new task of `service` gets (see `task::new_task`): the allocated
/// endpoint's spec if the service has one, else its spec's.
fn endpoint_for_new_tasks(service: &Service) -> Option<&EndpointSpec> {
    match &service.endpoint {
        Some(e) => e.spec.as_ref(),
        None => service.spec.as_ref().and_then(|s| s.endpoint.as_ref()),
    }
}

fn same_endpoint(a: Option<&EndpointSpec>, b: Option<&EndpointSpec>) -> bool {
    let empty = EndpointSpec::default();
    a.unwrap_or(&empty) == b.unwrap_or(&empty)
}

/// Whether `task` was made from another spec than `service`'s current one.
pub fn is_task_dirty(service: &Service, task: &Task) -> bool {
    let wanted = service.spec.as_ref().and_then(|s| s.task.as_ref());
    if task.spec.as_ref() != wanted {
        return true;
    }
    match &task.endpoint {
        Some(e) => !same_endpoint(e.spec.as_ref(), endpoint_for_new_tasks(service)),
        None => false,
    }
}

/// Whether the task's spec declares a health check (an explicit `NONE` disables the image's).
pub fn declares_healthcheck(task: &Task) -> bool {
    task.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.first())
        .is_some_and(|first| first != "NONE")
}

/// The health the task's agent last reported.
pub fn health(task: &Task) -> HealthState {
    task.status
        .as_ref()
        .and_then(|s| HealthState::try_from(s.health).ok())
        .unwrap_or(HealthState::None)
}

/// Whether the task is up: observed RUNNING, and HEALTHY — or without a health check
/// (health NONE and none declared in its spec; a check from the image shows up as a reported
/// health STARTING/HEALTHY/UNHEALTHY). This is the hook the health checks plug into.
pub fn is_up(task: &Task) -> bool {
    if observed(task) != TaskState::Running {
        return false;
    }
    match health(task) {
        HealthState::Healthy => true,
        HealthState::None => !declares_healthcheck(task),
        HealthState::Starting | HealthState::Unhealthy => false,
    }
}

/// The stop grace period of a task's container (Docker's 10 s when unset).
pub fn stop_grace(task: &Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.stop_grace_period.as_ref())
        .map_or(DEFAULT_STOP_GRACE, from_duration)
}

/// The health check's start period, during which a task may stay STARTING.
pub fn health_start_period(task: &Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.start_period.as_ref())
        .map_or(Duration::ZERO, from_duration)
}

/// The tasks of one slot (oldest first) the orchestrators decide about: all of them, except
/// that while a slot has a runnable task of the current spec, its runnable dirty tasks belong
/// to the updater (a start-first replacement runs beside the task it replaces until it is up;
/// the updater then retires the old one). `None` when nothing is left out.
pub fn orchestrator_view<T: AsRef<Task> + Clone>(service: &Service, tasks: &[T]) -> Option<Vec<T>> {
    let runnable = |t: &&T| is_runnable(t.as_ref());
    let has_clean = tasks
        .iter()
        .filter(runnable)
        .any(|t| !is_task_dirty(service, t.as_ref()));
    let has_dirty = tasks
        .iter()
        .filter(runnable)
        .any(|t| is_task_dirty(service, t.as_ref()));
    if !(has_clean && has_dirty) {
        return None;
    }
    Some(
        tasks
            .iter()
            .filter(|t| !(is_runnable(t.as_ref()) && is_task_dirty(service, t.as_ref())))
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_proto::v1::{Endpoint, HealthConfig, PortConfig, TaskStatus};

    use super::*;
    use crate::orchestrator::fixture::{desired_as, replicated, running, task};

    fn with_image(mut s: Service, image: &str) -> Service {
        if let Some(c) = s
            .spec
            .as_mut()
            .and_then(|s| s.task.as_mut())
            .and_then(|t| t.container.as_mut())
        {
            c.image = image.into();
        }
        s
    }

    #[test]
    fn defaults_are_dockers() {
        let r = Rollout::of(None);
        assert_eq!(
            (r.parallelism, r.delay, r.monitor, r.order),
            (1, Duration::ZERO, DEFAULT_MONITOR, UpdateOrder::StopFirst)
        );
        assert_eq!(r.failure_action, FailureAction::Pause);
        let c = UpdateConfig {
            parallelism: Some(0),
            monitor: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            order: UpdateOrder::StartFirst as i32,
            failure_action: FailureAction::Rollback as i32,
            ..Default::default()
        };
        let r = Rollout::of(Some(&c));
        assert_eq!(r.batch_size(7), 7, "parallelism 0 = all");
        assert_eq!(r.monitor, Duration::from_secs(1));
        assert_eq!(r.order, UpdateOrder::StartFirst);
        // Unset parallelism in a set config is Docker's 1.
        let r = Rollout::of(Some(&UpdateConfig::default()));
        assert_eq!(r.batch_size(7), 1);
    }

    #[test]
    fn dirty_compares_specs() {
        let svc = replicated("s", 2, None);
        let t = running("t", &svc, 1, "n1");
        assert!(!is_task_dirty(&svc, &t));
        let newer = with_image(svc.clone(), "busybox:2");
        assert!(is_task_dirty(&newer, &t));
        // --force: only force_update moved.
        let mut forced = svc.clone();
        if let Some(task) = forced.spec.as_mut().and_then(|s| s.task.as_mut()) {
            task.force_update += 1;
        }
        assert!(is_task_dirty(&forced, &t));
        // Published ports changed: the task's endpoint is stale.
        let mut ported = svc.clone();
        let mut with_ep = t.clone();
        with_ep.endpoint = Some(Endpoint::default());
        assert!(!is_task_dirty(&ported, &with_ep), "empty = unset");
        ported.spec.as_mut().expect("spec").endpoint = Some(EndpointSpec {
            ports: vec![PortConfig {
                target_port: 80,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(is_task_dirty(&ported, &with_ep));
    }

    #[test]
    fn up_means_running_and_healthy_if_checked() {
        let svc = replicated("s", 1, None);
        let mut t = running("t", &svc, 1, "n1");
        assert!(is_up(&t));
        fn status(t: &mut Task) -> &mut TaskStatus {
            t.status.as_mut().expect("status")
        }
        status(&mut t).health = HealthState::Starting as i32;
        assert!(!is_up(&t));
        status(&mut t).health = HealthState::Healthy as i32;
        assert!(is_up(&t));
        status(&mut t).health = HealthState::Unhealthy as i32;
        assert!(!is_up(&t));
        // A declared check not reported yet is not up; NONE disables the image's.
        status(&mut t).health = HealthState::None as i32;
        let container = t
            .spec
            .as_mut()
            .and_then(|s| s.container.as_mut())
            .expect("container");
        container.healthcheck = Some(HealthConfig {
            test: vec!["CMD-SHELL".into(), "true".into()],
            ..Default::default()
        });
        assert!(!is_up(&t));
        let container = t
            .spec
            .as_mut()
            .and_then(|s| s.container.as_mut())
            .expect("container");
        container.healthcheck = Some(HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        });
        assert!(is_up(&t));
        let starting = task("u", &svc, 1, "n1", TaskState::Starting, TaskState::Running);
        assert!(!is_up(&starting));
    }

    #[test]
    fn orchestrators_leave_start_first_pairs_to_the_updater() {
        let old = replicated("s", 1, None);
        let new = with_image(old.clone(), "busybox:2");
        let a = Arc::new(running("a", &old, 1, "n1"));
        let b = Arc::new(task(
            "b",
            &new,
            1,
            "n1",
            TaskState::Starting,
            TaskState::Running,
        ));
        let view = orchestrator_view(&new, &[a.clone(), b.clone()]).expect("filtered");
        assert_eq!(
            view.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        // Rolled back: the old one is clean again, the new one is left out.
        let view = orchestrator_view(&old, &[a.clone(), b.clone()]).expect("filtered");
        assert_eq!(
            view.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        // One runnable task, or only retired history beside it: nothing to leave out.
        assert!(orchestrator_view(&new, std::slice::from_ref(&a)).is_none());
        let retired = Arc::new(desired_as((*a).clone(), TaskState::Shutdown));
        assert!(orchestrator_view(&new, &[retired, b]).is_none());
    }
}
