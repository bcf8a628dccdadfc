//! The restart policy: whether a task that ended gets a replacement in its slot, and how long
//! the replacement waits before it starts.
//!
//! Docker's defaults: condition ANY, delay 5 s, unlimited attempts, no window. Restart history
//! is not kept in memory (Swarm's is, and is lost on leader change): it is derived from the
//! slot's task history in the store, so a new leader makes the same decisions. Each earlier
//! task of the slot (same spec version) that ended on its own counts as one restart; with a
//! window, only those last written within it count. The task reaper keeps at least
//! `max_attempts + 1` tasks per slot so that this count stays exact.

use std::time::{Duration, SystemTime};

use berth_proto::v1::{RestartCondition, Task, TaskState};

use super::clock::from_duration;
use super::task::{ended_by_itself, observed, updated_at};

/// Default restart delay (Docker's).
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);

/// A task's restart policy with Docker's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait between the end of a task and the start of its replacement.
    pub delay: Duration,
    /// Restarts allowed within `window`; 0 = unlimited.
    pub max_attempts: u64,
    /// Window restarts are counted over; `None` = forever.
    pub window: Option<Duration>,
}

impl RestartPolicy {
    /// The policy in `task`'s spec (defaults when unset).
    pub fn of(task: &Task) -> RestartPolicy {
        let p = task.spec.as_ref().and_then(|s| s.restart.as_ref());
        RestartPolicy {
            condition: p
                .and_then(|p| RestartCondition::try_from(p.condition).ok())
                .unwrap_or(RestartCondition::Any),
            delay: p
                .and_then(|p| p.delay.as_ref())
                .map_or(DEFAULT_RESTART_DELAY, from_duration),
            max_attempts: p.map_or(0, |p| p.max_attempts),
            window: p
                .and_then(|p| p.window.as_ref())
                .map(from_duration)
                .filter(|w| !w.is_zero()),
        }
    }

    /// Whether `ended` (a task of the slot whose container ended) may be replaced, given the
    /// slot's other tasks `history` (which may include `ended` itself; it is skipped).
    pub fn allows_restart(
        &self,
        ended: &Task,
        history: &[std::sync::Arc<Task>],
        now: SystemTime,
    ) -> bool {
        let condition_met = match self.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => observed(ended) != TaskState::Complete,
            RestartCondition::Any => true,
        };
        if !condition_met {
            return false;
        }
        if self.max_attempts == 0 {
            return true;
        }
        let since = self.window.and_then(|w| now.checked_sub(w));
        let restarts = history
            .iter()
            .filter(|t| t.id != ended.id)
            .filter(|t| t.spec_version == ended.spec_version && ended_by_itself(t))
            .filter(|t| since.is_none_or(|s| updated_at(t) >= s))
            .count() as u64;
        restarts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_proto::v1::{Meta, TaskSpec, TaskStatus};
    use prost_types::Duration as PbDuration;

    use super::*;
    use crate::orchestrator::clock::to_timestamp;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn policy(
        condition: RestartCondition,
        max: u64,
        window: u64,
    ) -> berth_proto::v1::RestartPolicy {
        berth_proto::v1::RestartPolicy {
            condition: condition as i32,
            delay: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            max_attempts: max,
            window: Some(PbDuration {
                seconds: window as i64,
                nanos: 0,
            }),
        }
    }

    fn task(
        id: &str,
        state: TaskState,
        updated: u64,
        p: Option<berth_proto::v1::RestartPolicy>,
    ) -> Arc<Task> {
        Arc::new(Task {
            id: id.into(),
            spec: Some(TaskSpec {
                restart: p,
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            meta: Some(Meta {
                updated_at: Some(to_timestamp(at(updated))),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn defaults_are_dockers() {
        let p = RestartPolicy::of(&Task::default());
        assert_eq!(
            p,
            RestartPolicy {
                condition: RestartCondition::Any,
                delay: Duration::from_secs(5),
                max_attempts: 0,
                window: None
            }
        );
    }

    #[test]
    fn conditions() {
        use RestartCondition::*;
        use TaskState::*;
        // (condition, how the task ended, restart?)
        let table = [
            (Any, Complete, true),
            (Any, Failed, true),
            (Any, Rejected, true),
            (Any, Shutdown, true),
            (OnFailure, Complete, false),
            (OnFailure, Failed, true),
            (OnFailure, Rejected, true),
            (None, Failed, false),
            (None, Complete, false),
        ];
        for (cond, state, want) in table {
            let t = task("t", state, 0, Some(policy(cond, 0, 0)));
            let p = RestartPolicy::of(&t);
            assert_eq!(
                p.allows_restart(&t, std::slice::from_ref(&t), at(100)),
                want,
                "{cond:?} {state:?}"
            );
        }
    }

    #[test]
    fn max_attempts_count_earlier_ends_in_the_slot() {
        let p = Some(policy(RestartCondition::Any, 2, 0));
        let t1 = task("t1", TaskState::Failed, 10, p);
        let t2 = task("t2", TaskState::Failed, 20, p);
        let t3 = task("t3", TaskState::Failed, 30, p);
        let pol = RestartPolicy::of(&t1);
        // First failure: no earlier restart. Second: one. Third: two = max, give up.
        assert!(pol.allows_restart(&t1, std::slice::from_ref(&t1), at(40)));
        assert!(pol.allows_restart(&t2, &[t1.clone(), t2.clone()], at(40)));
        assert!(!pol.allows_restart(&t3, &[t1.clone(), t2.clone(), t3.clone()], at(40)));
        // Tasks stopped on request (SHUTDOWN: drain, node down) are not restarts.
        let s = task("s", TaskState::Shutdown, 25, p);
        assert!(pol.allows_restart(&t2, &[t1.clone(), s, t2.clone()], at(40)));
        // An earlier spec version's failures do not count.
        let mut old = (*t1).clone();
        old.spec_version = 99;
        assert!(pol.allows_restart(&t3, &[Arc::new(old), t2.clone(), t3.clone()], at(40)));
    }

    #[test]
    fn window_forgets_old_restarts() {
        let p = Some(policy(RestartCondition::Any, 1, 60));
        let t1 = task("t1", TaskState::Failed, 100, p);
        let t2 = task("t2", TaskState::Failed, 130, p);
        let pol = RestartPolicy::of(&t2);
        assert_eq!(pol.window, Some(Duration::from_secs(60)));
        // t1 ended 30 s before now: within the window, one restart used, give up.
        assert!(!pol.allows_restart(&t2, &[t1.clone(), t2.clone()], at(130)));
        // 61 s after t1: it fell out of the window.
        assert!(pol.allows_restart(&t2, &[t1, t2.clone()], at(161)));
    }
}
