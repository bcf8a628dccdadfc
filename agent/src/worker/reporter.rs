//! [`StatusReporter`]: the queue of task statuses waiting to be sent to the dispatcher.
//!
//! One slot per task, latest wins: a status that would move a task backwards (a lower state
//! than the one already queued) is ignored, so the managers never see a task regress even
//! when a send fails and its batch is put back behind newer statuses. The session drains it
//! in batches ([`StatusReporter::take`]) and puts a batch back when the call fails
//! ([`StatusReporter::requeue`]); the queue never grows beyond one entry per task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use berth_proto::v1::{TaskState, TaskStatus, TaskStatusUpdate};
use tokio::sync::Notify;

/// Shared handle on the status queue (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct StatusReporter {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: Mutex<Queue>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    // Latest status per task, and the order tasks were first queued in (oldest first).
    pending: HashMap<String, TaskStatus>,
    order: VecDeque<String>,
}

fn state_of(s: &TaskStatus) -> TaskState {
    TaskState::try_from(s.state).unwrap_or(TaskState::New)
}

impl Queue {
    /// Queues `status` for `task_id` unless a later state is already queued.
    fn put(&mut self, task_id: String, status: TaskStatus) -> bool {
        match self.pending.get_mut(&task_id) {
            Some(queued) => {
                if state_of(queued).can_move_to(state_of(&status)) {
                    *queued = status;
                    true
                } else {
                    false
                }
            }
            None => {
                self.order.push_back(task_id.clone());
                self.pending.insert(task_id, status);
                true
            }
        }
    }
}

impl StatusReporter {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `status` for `task_id` (ignored when a later state is already queued) and wakes
    /// the sender.
    pub fn report(&self, task_id: impl Into<String>, status: TaskStatus) {
        let queued = self.queue().put(task_id.into(), status);
        if queued {
            self.inner.ready.notify_one();
        }
    }

    /// Takes up to `max` queued statuses, oldest task first.
    pub fn take(&self, max: usize) -> Vec<TaskStatusUpdate> {
        let mut q = self.queue();
        let mut out = Vec::with_capacity(max.min(q.order.len()));
        while out.len() < max {
            let Some(task_id) = q.order.pop_front() else {
                break;
            };
            if let Some(status) = q.pending.remove(&task_id) {
                out.push(TaskStatusUpdate {
                    task_id,
                    status: Some(status),
                });
            }
        }
        out
    }

    /// Puts back a batch whose send failed; statuses queued since then win where they are
    /// later.
    pub fn requeue(&self, batch: Vec<TaskStatusUpdate>) {
        let mut q = self.queue();
        for update in batch.into_iter().rev() {
            let Some(status) = update.status else {
                continue;
            };
            match q.pending.get_mut(&update.task_id) {
                Some(newer) => {
                    if !state_of(&status).can_move_to(state_of(newer)) {
                        *newer = status;
                    }
                }
                None => {
                    q.order.push_front(update.task_id.clone());
                    q.pending.insert(update.task_id, status);
                }
            }
        }
        drop(q);
        self.inner.ready.notify_one();
    }

    /// Number of tasks with a status waiting.
    pub fn len(&self) -> usize {
        self.queue().pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until something is queued (returns at once if something already is).
    pub async fn ready(&self) {
        loop {
            let notified = self.inner.ready.notified();
            if !self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(state: TaskState, message: &str) -> TaskStatus {
        TaskStatus {
            state: state as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    fn states(batch: &[TaskStatusUpdate]) -> Vec<(String, TaskState, String)> {
        batch
            .iter()
            .map(|u| {
                let s = u.status.clone().unwrap_or_default();
                (u.task_id.clone(), state_of(&s), s.message)
            })
            .collect()
    }

    #[test]
    fn latest_wins_and_never_backwards() {
        let r = StatusReporter::new();
        r.report("a", st(TaskState::Accepted, "accepted"));
        r.report("b", st(TaskState::Preparing, "preparing"));
        r.report("a", st(TaskState::Running, "started"));
        r.report("a", st(TaskState::Starting, "late"));
        r.report("b", st(TaskState::Preparing, "again"));
        assert_eq!(r.len(), 2);
        let batch = r.take(10);
        assert_eq!(
            states(&batch),
            vec![
                ("a".into(), TaskState::Running, "started".into()),
                ("b".into(), TaskState::Preparing, "again".into()),
            ]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn take_is_bounded_and_oldest_first() {
        let r = StatusReporter::new();
        for i in 0..5 {
            r.report(format!("t{i}"), st(TaskState::Running, ""));
        }
        let first: Vec<String> = r.take(2).into_iter().map(|u| u.task_id).collect();
        assert_eq!(first, vec!["t0", "t1"]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn requeue_keeps_terminal_states_and_newer_reports() {
        let r = StatusReporter::new();
        r.report("a", st(TaskState::Failed, "exit 1"));
        r.report("b", st(TaskState::Running, "started"));
        let batch = r.take(10);
        // While the batch was in flight, b moved on and a got a stale report.
        r.report("b", st(TaskState::Complete, "finished"));
        r.report("c", st(TaskState::Accepted, ""));
        r.requeue(batch);
        let mut got = states(&r.take(10));
        got.sort();
        assert_eq!(
            got,
            vec![
                ("a".into(), TaskState::Failed, "exit 1".into()),
                ("b".into(), TaskState::Complete, "finished".into()),
                ("c".into(), TaskState::Accepted, "".into()),
            ]
        );
        // A requeued terminal status is not overwritten by an older one.
        r.report("a", st(TaskState::Failed, "exit 1"));
        let batch = r.take(10);
        r.report("a", st(TaskState::Running, "stale"));
        r.requeue(batch);
        assert_eq!(
            states(&r.take(10)),
            vec![("a".into(), TaskState::Failed, "exit 1".into())]
        );
    }

    #[tokio::test]
    async fn ready_wakes_on_report() {
        let r = StatusReporter::new();
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.ready().await })
        };
        tokio::task::yield_now().await;
        r.report("a", st(TaskState::Running, ""));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
