//! The updater with the other leader loops on a local store under paused time, with simulated
//! agents: rolling updates keep the promised number of tasks running at every write, a
//! failing update rolls back, and an update survives a leadership change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use berth_proto::v1::{
    FailureAction, Node, NodeState, Service, Task, TaskState, UpdateConfig, UpdateOrder,
    UpdateState,
};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::plan::update_state;
use super::rollout::is_task_dirty;
use crate::orchestrator::fixture::*;
use crate::orchestrator::task::{desired, is_assigned, is_runnable, observed};
use crate::orchestrator::*;
use crate::scheduler::SchedulerConfig;
use crate::store::{Store, StoreActions, StoreObject, Tables};

/// Image whose containers exit 1 right after they start.
const BAD: &str = "busybox:bad";

/// Records, after every write, how many tasks of service "web" run (observed RUNNING, wanted
/// running) — the least and the most ever seen once the first `floor_after` were running.
struct CountingWriter {
    inner: LocalWriter,
    seen: Mutex<(usize, usize, bool)>,
}

impl CountingWriter {
    fn apply(&self, batch: StoreActions) -> Result<u64, WriteFailure> {
        let result = self.inner.apply(batch);
        if result.is_ok() {
            let running = running(&self.inner.store().snapshot());
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if seen.2 {
                seen.0 = seen.0.min(running);
                seen.1 = seen.1.max(running);
            }
        }
        result
    }

    /// Starts recording (once the service is up).
    fn record(&self, from: usize) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = (from, from, true);
    }

    fn seen(&self) -> (usize, usize) {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        (s.0, s.1)
    }
}

impl Writer for CountingWriter {
    fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>> {
        let result = self.apply(batch);
        Box::pin(async move { result })
    }
}

fn running(tables: &Tables) -> usize {
    tables
        .find::<Task>(&crate::store::By::ServiceId("web".into()))
        .iter()
        .filter(|t| observed(t) == TaskState::Running && desired(t) == TaskState::Running)
        .count()
}

fn image(t: &Task) -> &str {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

/// Simulated agents: every 20 ms each task on a READY node moves one step the way its agent
/// would; stopping takes 100 ms; a task of [`BAD`] fails one step after it started.
async fn agents(store: Store, writer: Arc<CountingWriter>, cancel: CancellationToken) {
    let mut stopping: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let tables = store.snapshot();
        let mut b = StoreActions::new();
        for t in tables.table::<Task>().iter() {
            let Some(node) = tables.get::<Node>(&t.node_id) else {
                continue;
            };
            if node.status.as_ref().map_or(0, |s| s.state) != NodeState::Ready as i32 {
                continue;
            }
            let (obs, want) = (observed(t), desired(t));
            if !is_assigned(t) || obs.is_terminal() {
                continue;
            }
            let next = if want >= TaskState::Shutdown {
                let since = *stopping
                    .entry(t.id.clone())
                    .or_insert_with(tokio::time::Instant::now);
                if obs == TaskState::Running && since.elapsed() < Duration::from_millis(100) {
                    continue;
                }
                TaskState::Shutdown
            } else if obs == TaskState::Running && image(t) == BAD {
                TaskState::Failed
            } else if want == TaskState::Ready && obs < TaskState::Ready {
                TaskState::Ready
            } else if want == TaskState::Running && obs < TaskState::Running {
                TaskState::Running
            } else {
                continue;
            };
            let mut t = (**t).clone();
            let status = t.status.get_or_insert_with(Default::default);
            status.state = next as i32;
            if next == TaskState::Failed {
                status.err = "task: non-zero exit (1)".into();
            }
            b.update(t);
        }
        drop(tables);
        if !b.is_empty() {
            let _ = writer.apply(b);
        }
    }
}

struct Cluster {
    store: Store,
    writer: Arc<CountingWriter>,
    cancel: CancellationToken,
    leader: watch::Sender<bool>,
}

impl Cluster {
    fn start() -> Cluster {
        let store = Store::new();
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(at(1_000_000)));
        let writer = Arc::new(CountingWriter {
            inner: LocalWriter::new(store.clone(), clock.clone()),
            seen: Mutex::new((0, 0, false)),
        });
        let cancel = CancellationToken::new();
        let (leader, leadership) = watch::channel(true);
        let cfg = LeaderConfig {
            orchestrator: OrchestratorConfig::with_clock(clock.clone()),
            scheduler: SchedulerConfig::with_clock(clock),
        };
        let components = LeaderComponents::new(store.clone(), writer.clone(), cfg);
        tokio::spawn(components.run(leadership, cancel.clone()));
        tokio::spawn(agents(store.clone(), writer.clone(), cancel.clone()));
        Cluster {
            store,
            writer,
            cancel,
            leader,
        }
    }

    fn write(&self, f: impl FnOnce(&Tables, &mut StoreActions)) {
        let mut b = StoreActions::new();
        f(&self.store.snapshot(), &mut b);
        self.writer.apply(b).expect("test write applies");
    }

    /// Six replicas of "web" on three nodes, all running.
    async fn web(&self, cfg: UpdateConfig) {
        let mut svc = replicated("web", 6, None);
        svc.spec.as_mut().expect("spec").update = Some(cfg);
        self.write(|_, b| {
            for o in crate::objs![node("n1"), node("n2"), node("n3"), svc] {
                b.create(o);
            }
        });
        self.until("6 running", Duration::from_secs(5), |t| running(t) == 6)
            .await;
        self.writer.record(6);
    }

    /// What `berth service update --image` asks of the Control API.
    fn update_image(&self, to: &str) {
        self.write(|tables, b| {
            let mut s = (*tables.get::<Service>("web").expect("web")).clone();
            s.previous_spec = s.spec.clone();
            s.previous_spec_version = s.spec_version;
            s.spec_version = s.version();
            s.update_status = None;
            if let Some(c) = s
                .spec
                .as_mut()
                .and_then(|s| s.task.as_mut())
                .and_then(|t| t.container.as_mut())
            {
                c.image = to.into();
            }
            b.update(s);
        });
    }

    async fn until(&self, what: &str, limit: Duration, probe: impl Fn(&Tables) -> bool) {
        let start = tokio::time::Instant::now();
        while !probe(&self.store.snapshot()) {
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    dump(&self.store.snapshot())
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn state(&self) -> (UpdateState, String) {
        let s = self.store.get::<Service>("web").expect("web");
        let message = s
            .update_status
            .as_ref()
            .map(|u| u.message.clone())
            .unwrap_or_default();
        (update_state(&s), message)
    }

    /// Runnable tasks of "web" per image.
    fn images(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self
            .store
            .find::<Task>(&crate::store::By::ServiceId("web".into()))
        {
            if is_runnable(&t) {
                *m.entry(image(&t).to_string()).or_default() += 1;
            }
        }
        m
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn dump(tables: &Tables) -> String {
    let mut s = String::new();
    if let Some(svc) = tables.get::<Service>("web") {
        s.push_str(&format!("service status {:?}\n", svc.update_status));
        for t in tables.find::<Task>(&crate::store::By::ServiceId("web".into())) {
            s.push_str(&format!(
                "task {} slot={} node={} image={} dirty={} observed={:?} desired={:?}\n",
                &t.id[..6.min(t.id.len())],
                t.slot,
                t.node_id,
                image(&t),
                is_task_dirty(&svc, &t),
                observed(&t),
                desired(&t),
            ));
        }
    }
    s
}

fn config(parallelism: u64, order: UpdateOrder, action: FailureAction) -> UpdateConfig {
    UpdateConfig {
        parallelism: Some(parallelism),
        delay: Some(prost_types::Duration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        failure_action: action as i32,
        monitor: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        max_failure_ratio: 0.0,
        order: order as i32,
    }
}

fn completed(c: &Cluster, state: UpdateState, image: &str) -> impl Fn(&Tables) -> bool {
    let image = image.to_string();
    let _ = c;
    move |t: &Tables| {
        let Some(s) = t.get::<Service>("web") else {
            return false;
        };
        let tasks = t.find::<Task>(&crate::store::By::ServiceId("web".into()));
        update_state(&s) == state
            && tasks
                .iter()
                .filter(|t| is_runnable(t))
                .all(|t| super::rollout::is_up(t) && self::image(t) == image)
            && running(t) == 6
    }
}

#[tokio::test(start_paused = true)]
async fn stop_first_keeps_all_but_parallelism_running() {
    let c = Cluster::start();
    c.web(config(2, UpdateOrder::StopFirst, FailureAction::Pause))
        .await;
    c.update_image("busybox:2");
    c.until(
        "update completed",
        Duration::from_secs(30),
        completed(&c, UpdateState::Completed, "busybox:2"),
    )
    .await;
    let (least, most) = c.writer.seen();
    assert_eq!((least, most), (4, 6), "running tasks during the update");
    assert_eq!(c.state().1, "update completed");
    assert_eq!(c.images(), BTreeMap::from([("busybox:2".to_string(), 6)]));
}

#[tokio::test(start_paused = true)]
async fn start_first_briefly_runs_more_and_never_fewer() {
    let c = Cluster::start();
    c.web(config(2, UpdateOrder::StartFirst, FailureAction::Pause))
        .await;
    c.update_image("busybox:2");
    c.until(
        "update completed",
        Duration::from_secs(30),
        completed(&c, UpdateState::Completed, "busybox:2"),
    )
    .await;
    let (least, most) = c.writer.seen();
    assert_eq!((least, most), (6, 8), "running tasks during the update");
}

#[tokio::test(start_paused = true)]
async fn a_failing_update_rolls_back_or_pauses() {
    let c = Cluster::start();
    c.web(config(1, UpdateOrder::StopFirst, FailureAction::Rollback))
        .await;
    c.update_image(BAD);
    c.until(
        "rollback completed",
        Duration::from_secs(30),
        completed(&c, UpdateState::RollbackCompleted, "busybox"),
    )
    .await;
    let (state, message) = c.state();
    assert_eq!(state, UpdateState::RollbackCompleted);
    assert!(
        message.starts_with("rollback completed (update rolled back due to failure or early termination of task svc-web.1.")
            && message.contains("it failed (task: non-zero exit (1))"),
        "{message}"
    );
    // Only one slot was tried: 5 kept running throughout.
    assert_eq!(c.writer.seen().0, 5);

    let c = Cluster::start();
    c.web(config(1, UpdateOrder::StopFirst, FailureAction::Pause))
        .await;
    c.update_image(BAD);
    c.until("paused", Duration::from_secs(30), |t| {
        t.get::<Service>("web")
            .is_some_and(|s| update_state(&s) == UpdateState::Paused)
    })
    .await;
    assert!(c.state().1.contains("it failed"), "{:?}", c.state());
    // Paused: the other five keep the old image.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.images().get("busybox"), Some(&5), "{:?}", c.images());
}

#[tokio::test(start_paused = true)]
async fn an_update_survives_a_leadership_change() {
    let c = Cluster::start();
    c.web(config(1, UpdateOrder::StopFirst, FailureAction::Pause))
        .await;
    c.update_image("busybox:2");
    c.until("two slots updated", Duration::from_secs(30), |t| {
        t.find::<Task>(&crate::store::By::ServiceId("web".into()))
            .iter()
            .filter(|t| image(t) == "busybox:2" && super::rollout::is_up(t))
            .count()
            >= 2
    })
    .await;
    c.leader.send_replace(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.state().0, UpdateState::Updating);
    c.leader.send_replace(true);
    c.until(
        "update completed by the next leadership",
        Duration::from_secs(30),
        completed(&c, UpdateState::Completed, "busybox:2"),
    )
    .await;
    assert_eq!(c.writer.seen().0, 5);
}
