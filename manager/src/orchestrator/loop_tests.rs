//! The loops together on a local store under paused time: LeaderComponents running the
//! orchestrators, reaper and scheduler, a writer that checks the one-runnable-task-per-slot
//! invariant after every batch, and simulated agents that move tasks as real ones would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use berth_proto::v1::{
    Node, NodeAvailability, NodeState, Placement, RestartCondition, Service, Task, TaskState,
};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fixture::*;
use super::task::{desired, is_assigned, is_runnable, observed};
use super::*;
use crate::scheduler::SchedulerConfig;
use crate::store::{Object, Store, StoreActions, StoreObject, Tables};

/// A LocalWriter that records every state in which a slot has two runnable tasks, or (when
/// `strict`) two tasks observed RUNNING on nodes that are not DOWN.
struct CheckedWriter {
    inner: LocalWriter,
    strict: Mutex<bool>,
    violations: Mutex<Vec<String>>,
}

impl CheckedWriter {
    fn check(&self, tables: &Tables) {
        let strict = *self.strict.lock().unwrap_or_else(PoisonError::into_inner);
        let mut runnable: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut running: BTreeMap<(String, String), usize> = BTreeMap::new();
        for t in tables.table::<Task>().iter() {
            let slot = if t.slot > 0 {
                t.slot.to_string()
            } else {
                t.node_id.clone()
            };
            let key = (t.service_id.clone(), slot);
            if is_runnable(t) {
                *runnable.entry(key.clone()).or_default() += 1;
            }
            let node_up = tables.get::<Node>(&t.node_id).is_some_and(|n| {
                n.status.as_ref().map_or(0, |s| s.state) != NodeState::Down as i32
            });
            if observed(t) == TaskState::Running && node_up {
                *running.entry(key).or_default() += 1;
            }
        }
        let mut v = self
            .violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (k, n) in runnable {
            if n > 1 {
                v.push(format!(
                    "v{}: slot {k:?} has {n} runnable tasks",
                    tables.version()
                ));
            }
        }
        if strict {
            for (k, n) in running {
                if n > 1 {
                    v.push(format!("v{}: slot {k:?} runs {n} tasks", tables.version()));
                }
            }
        }
    }

    fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl CheckedWriter {
    fn apply(&self, batch: StoreActions) -> Result<u64, WriteFailure> {
        let result = self.inner.apply(batch);
        if result.is_ok() {
            self.check(&self.inner.store().snapshot());
        }
        result
    }
}

impl Writer for CheckedWriter {
    fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>> {
        let result = self.apply(batch);
        Box::pin(async move { result })
    }
}

struct Cluster {
    store: Store,
    writer: Arc<CheckedWriter>,
    cancel: CancellationToken,
    leader: watch::Sender<bool>,
    supervisor: JoinHandle<Result<(), LeaderError>>,
    agents: JoinHandle<()>,
    started: tokio::time::Instant,
}

fn config(clock: Arc<dyn Clock>) -> LeaderConfig {
    LeaderConfig {
        orchestrator: OrchestratorConfig::with_clock(clock.clone()),
        scheduler: SchedulerConfig::with_clock(clock),
    }
}

impl Cluster {
    /// Leader components (leading from the start) and agents for every node.
    fn start() -> Cluster {
        let store = Store::new();
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(at(1_000_000)));
        let writer = Arc::new(CheckedWriter {
            inner: LocalWriter::new(store.clone(), clock.clone()),
            strict: Mutex::new(false),
            violations: Mutex::new(Vec::new()),
        });
        let cancel = CancellationToken::new();
        let (leader, leadership) = watch::channel(true);
        let components = LeaderComponents::new(store.clone(), writer.clone(), config(clock));
        let supervisor = tokio::spawn(components.run(leadership, cancel.clone()));
        let agents = tokio::spawn(agents(store.clone(), writer.clone(), cancel.clone()));
        Cluster {
            store,
            writer,
            cancel,
            leader,
            supervisor,
            agents,
            started: tokio::time::Instant::now(),
        }
    }

    fn write(&self, f: impl FnOnce(&Tables, &mut StoreActions)) {
        let mut b = StoreActions::new();
        f(&self.store.snapshot(), &mut b);
        self.writer.apply(b).expect("test write applies");
    }

    fn create(&self, objs: Vec<Object>) {
        self.write(|_, b| {
            for o in objs {
                b.create(o);
            }
        });
    }

    /// Rewrites the stored object `id` with `f`.
    fn edit<T: StoreObject + Into<Object>>(&self, id: &str, f: impl FnOnce(&mut T)) {
        self.write(|tables, b| {
            let mut o = (*tables.get::<T>(id).expect("object exists")).clone();
            f(&mut o);
            b.update(o);
        });
    }

    async fn until(
        &self,
        what: &str,
        limit: Duration,
        probe: impl Fn(&Tables) -> bool,
    ) -> Duration {
        let start = tokio::time::Instant::now();
        loop {
            if probe(&self.store.snapshot()) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    dump(&self.store.snapshot())
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) -> Vec<String> {
        self.cancel.cancel();
        self.supervisor
            .await
            .expect("supervisor")
            .expect("supervisor result");
        self.agents.await.expect("agents");
        let _ = self.started;
        drop(self.leader);
        self.writer.violations()
    }
}

fn dump(tables: &Tables) -> String {
    let mut s = String::new();
    for n in tables.table::<Node>().iter() {
        let st = n.status.as_ref().map_or(0, |s| s.state);
        let av = n.spec.as_ref().map_or(0, |s| s.availability);
        s.push_str(&format!("node {} state={st} availability={av}\n", n.id));
    }
    for t in tables.table::<Task>().iter() {
        s.push_str(&format!(
            "task {} svc={} slot={} node={} observed={:?} desired={:?} err={:?}\n",
            &t.id[..6.min(t.id.len())],
            t.service_id,
            t.slot,
            t.node_id,
            observed(t),
            desired(t),
            t.status.as_ref().map(|s| s.err.as_str()).unwrap_or("")
        ));
    }
    s
}

/// How long a simulated container takes to stop (its stop grace period at work).
const STOP_TIME: Duration = Duration::from_millis(200);

/// Simulated agents: every 20 ms, each task on a READY node moves one step the way its agent
/// would (ASSIGNED → READY while desired READY, → RUNNING when desired RUNNING; stopped
/// [`STOP_TIME`] after desired became SHUTDOWN or REMOVE). Agents of DOWN nodes do nothing
/// (cut off).
async fn agents(store: Store, writer: Arc<CheckedWriter>, cancel: CancellationToken) {
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
                if obs == TaskState::Running && since.elapsed() < STOP_TIME {
                    continue;
                }
                TaskState::Shutdown
            } else if want == TaskState::Ready && obs < TaskState::Ready {
                TaskState::Ready
            } else if want == TaskState::Running && obs < TaskState::Running {
                TaskState::Running
            } else {
                continue;
            };
            let mut t = (**t).clone();
            t.status.get_or_insert_with(Default::default).state = next as i32;
            b.update(t);
        }
        drop(tables);
        if !b.is_empty() {
            // Refused when an orchestrator wrote a task meanwhile: try again next tick.
            let _ = writer.apply(b);
        }
    }
}

fn tasks_of(tables: &Tables, svc: &str) -> Vec<Arc<Task>> {
    tables
        .find::<Task>(&crate::store::By::ServiceId(svc.into()))
        .into_iter()
        .collect()
}

/// Running tasks of `svc` per node.
fn running_per_node(tables: &Tables, svc: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks_of(tables, svc) {
        if observed(&t) == TaskState::Running && is_runnable(&t) {
            *m.entry(t.node_id.clone()).or_default() += 1;
        }
    }
    m
}

fn count(m: &BTreeMap<String, usize>) -> usize {
    m.values().sum()
}

fn per_node(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(start_paused = true)]
async fn replicated_service_spreads_and_scales() {
    let c = Cluster::start();
    c.create(crate::objs![
        node("n1"),
        node("n2"),
        node("n3"),
        replicated("web", 6, None)
    ]);
    c.until("6 replicas running 2/2/2", Duration::from_secs(2), |t| {
        running_per_node(t, "web") == per_node(&[("n1", 2), ("n2", 2), ("n3", 2)])
    })
    .await;
    c.edit::<Service>("web", |s| *s = scaled(s.clone(), 9));
    c.until("9 replicas 3/3/3", Duration::from_secs(2), |t| {
        running_per_node(t, "web") == per_node(&[("n1", 3), ("n2", 3), ("n3", 3)])
    })
    .await;
    c.edit::<Service>("web", |s| *s = scaled(s.clone(), 2));
    c.until(
        "2 replicas, the rest stopped and deleted",
        Duration::from_secs(3),
        |t| {
            let tasks = tasks_of(t, "web");
            let mut slots: Vec<u64> = tasks.iter().map(|t| t.slot).collect();
            slots.sort();
            count(&running_per_node(t, "web")) == 2 && slots == vec![1, 2]
        },
    )
    .await;
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_failed_task_is_replaced_after_the_restart_delay() {
    let c = Cluster::start();
    c.create(crate::objs![node("n1"), replicated("web", 1, None)]);
    c.until("running", Duration::from_secs(1), |t| {
        count(&running_per_node(t, "web")) == 1
    })
    .await;
    let first = tasks_of(&c.store.snapshot(), "web")[0].id.clone();
    c.edit::<Task>(&first, |t| {
        t.status.get_or_insert_with(Default::default).state = TaskState::Failed as i32;
    });
    // The replacement exists at once, prepared but held in READY for the 5 s delay.
    let waited = c
        .until("replacement READY", Duration::from_secs(1), |t| {
            tasks_of(t, "web")
                .iter()
                .any(|t| t.id != first && observed(t) == TaskState::Ready)
        })
        .await;
    let started = c
        .until("replacement RUNNING", Duration::from_secs(7), |t| {
            count(&running_per_node(t, "web")) == 1
        })
        .await;
    let total = waited + started;
    assert!(
        total >= Duration::from_secs(5) && total < Duration::from_millis(5300),
        "replacement ran after {total:?}, want the 5 s delay"
    );
    let tasks = tasks_of(&c.store.snapshot(), "web");
    let old = tasks
        .iter()
        .find(|t| t.id == first)
        .expect("old task kept in history");
    assert_eq!(
        (observed(old), desired(old)),
        (TaskState::Failed, TaskState::Shutdown)
    );
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn without_delay_a_replacement_is_assigned_within_100ms() {
    let c = Cluster::start();
    let svc = replicated("web", 1, Some(restart(RestartCondition::Any, 0, 0, 0)));
    c.create(crate::objs![node("n1"), svc]);
    c.until("running", Duration::from_secs(1), |t| {
        count(&running_per_node(t, "web")) == 1
    })
    .await;
    let first = tasks_of(&c.store.snapshot(), "web")[0].id.clone();
    c.edit::<Task>(&first, |t| {
        t.status.get_or_insert_with(Default::default).state = TaskState::Failed as i32;
    });
    let took = c
        .until("replacement assigned", Duration::from_secs(1), |t| {
            tasks_of(t, "web")
                .iter()
                .any(|t| t.id != first && is_assigned(t) && desired(t) == TaskState::Running)
        })
        .await;
    assert!(took <= Duration::from_millis(100), "took {took:?}");
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn restart_policy_on_failure_with_max_attempts() {
    let c = Cluster::start();
    let svc = replicated(
        "job",
        1,
        Some(restart(RestartCondition::OnFailure, 0, 2, 0)),
    );
    c.create(crate::objs![node("n1"), svc]);
    for attempt in 1..=3 {
        c.until("a running attempt", Duration::from_secs(1), |t| {
            count(&running_per_node(t, "job")) == 1
        })
        .await;
        let current = tasks_of(&c.store.snapshot(), "job")
            .into_iter()
            .find(|t| is_runnable(t))
            .expect("runnable task");
        c.edit::<Task>(&current.id, |t| {
            t.status.get_or_insert_with(Default::default).state = TaskState::Failed as i32;
        });
        c.until("the failure handled", Duration::from_secs(1), |t| {
            t.get::<Task>(&current.id)
                .is_some_and(|t| desired(&t) == TaskState::Shutdown)
        })
        .await;
        let tasks = tasks_of(&c.store.snapshot(), "job");
        // Two restarts allowed: after the third failure the slot stays empty.
        assert_eq!(
            tasks.len(),
            if attempt < 3 { attempt + 1 } else { 3 },
            "attempt {attempt}"
        );
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(tasks_of(&c.store.snapshot(), "job").len(), 3);
    assert!(
        tasks_of(&c.store.snapshot(), "job")
            .iter()
            .all(|t| !is_runnable(t))
    );
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_down_node_is_replaced_within_a_second_and_stopped_when_it_returns() {
    let c = Cluster::start();
    c.create(crate::objs![
        node("n1"),
        node("n2"),
        node("n3"),
        replicated("web", 6, None)
    ]);
    c.until("6 running", Duration::from_secs(2), |t| {
        count(&running_per_node(t, "web")) == 6
    })
    .await;
    c.edit::<Node>("n1", |n| *n = with_state(n.clone(), NodeState::Down));
    let took = c
        .until("6 running off n1", Duration::from_secs(2), |t| {
            let m = running_per_node(t, "web");
            count(&m) == 6 && !m.contains_key("n1")
        })
        .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // n1 comes back: its old tasks are stopped, never restarted; each slot runs once.
    c.edit::<Node>("n1", |n| *n = with_state(n.clone(), NodeState::Ready));
    c.until("n1's old tasks stopped", Duration::from_secs(2), |t| {
        tasks_of(t, "web")
            .iter()
            .filter(|t| t.node_id == "n1")
            .all(|t| observed(t) == TaskState::Shutdown)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tables = c.store.snapshot();
    for slot in 1..=6 {
        let running = tasks_of(&tables, "web")
            .iter()
            .filter(|t| t.slot == slot && observed(t) == TaskState::Running)
            .count();
        assert_eq!(running, 1, "slot {slot}\n{}", dump(&tables));
    }
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn drain_moves_tasks_off_and_never_runs_a_slot_twice() {
    let c = Cluster::start();
    *c.writer.strict.lock().expect("lock") = true;
    c.create(crate::objs![
        node("n1"),
        node("n2"),
        replicated("web", 4, None)
    ]);
    c.until("4 running", Duration::from_secs(2), |t| {
        count(&running_per_node(t, "web")) == 4
    })
    .await;
    c.edit::<Node>("n1", |n| {
        *n = with_availability(n.clone(), NodeAvailability::Drain)
    });
    c.until("all on n2", Duration::from_secs(2), |t| {
        running_per_node(t, "web") == per_node(&[("n2", 4)])
    })
    .await;
    // Pause takes no new tasks but keeps running ones.
    c.edit::<Node>("n1", |n| {
        *n = with_availability(n.clone(), NodeAvailability::Pause)
    });
    c.edit::<Service>("web", |s| *s = scaled(s.clone(), 6));
    c.until("6 on n2", Duration::from_secs(2), |t| {
        running_per_node(t, "web") == per_node(&[("n2", 6)])
    })
    .await;
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_global_service_reaches_a_late_joining_node_and_leaves_a_drained_one() {
    let c = Cluster::start();
    c.create(crate::objs![node("n1"), node("n2"), global("mon", None)]);
    c.until("2 running", Duration::from_secs(1), |t| {
        running_per_node(t, "mon") == per_node(&[("n1", 1), ("n2", 1)])
    })
    .await;
    c.create(crate::objs![node("n3")]);
    c.until("n3 joined", Duration::from_secs(1), |t| {
        running_per_node(t, "mon") == per_node(&[("n1", 1), ("n2", 1), ("n3", 1)])
    })
    .await;
    c.edit::<Node>("n2", |n| {
        *n = with_availability(n.clone(), NodeAvailability::Drain)
    });
    c.until("n2 drained", Duration::from_secs(1), |t| {
        running_per_node(t, "mon") == per_node(&[("n1", 1), ("n3", 1)])
    })
    .await;
    c.edit::<Node>("n2", |n| {
        *n = with_availability(n.clone(), NodeAvailability::Active)
    });
    c.until("n2 back", Duration::from_secs(1), |t| {
        running_per_node(t, "mon") == per_node(&[("n1", 1), ("n2", 1), ("n3", 1)])
    })
    .await;
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn an_unsatisfiable_constraint_says_why_and_runs_once_a_label_is_added() {
    let c = Cluster::start();
    let mut svc = replicated("db", 2, None);
    if let Some(t) = svc.spec.as_mut().and_then(|s| s.task.as_mut()) {
        t.placement = Some(Placement {
            constraints: vec!["node.labels.disk==ssd".into()],
            ..Default::default()
        });
    }
    c.create(crate::objs![
        node("n1"),
        node("n2"),
        with_state(node("n3"), NodeState::Down),
        svc
    ]);
    let want =
        "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available)";
    c.until("the reason on both tasks", Duration::from_secs(1), |t| {
        let tasks = tasks_of(t, "db");
        tasks.len() == 2
            && tasks.iter().all(|t| {
                observed(t) == TaskState::Pending
                    && t.status.as_ref().is_some_and(|s| s.err == want)
            })
    })
    .await;
    c.edit::<Node>("n2", |n| *n = with_labels(n.clone(), &[("disk", "ssd")]));
    c.until("running on n2", Duration::from_secs(1), |t| {
        running_per_node(t, "db") == per_node(&[("n2", 2)])
    })
    .await;
    assert_eq!(c.stop().await, Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn leader_components_stop_on_lost_leadership_and_restart_on_regain() {
    let c = Cluster::start();
    c.create(crate::objs![node("n1"), replicated("a", 1, None)]);
    c.until("a running", Duration::from_secs(1), |t| {
        count(&running_per_node(t, "a")) == 1
    })
    .await;
    c.leader.send(false).expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.create(crate::objs![replicated("b", 2, None)]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        tasks_of(&c.store.snapshot(), "b").is_empty(),
        "a follower created tasks"
    );
    c.leader.send(true).expect("send");
    c.until("b running", Duration::from_secs(2), |t| {
        count(&running_per_node(t, "b")) == 2
    })
    .await;
    assert_eq!(c.stop().await, Vec::<String>::new());
}

/// A writer that, the first time a batch updates tasks, changes one of them first (as an
/// agent's status update would), so that the batch is refused.
struct Interfering {
    inner: LocalWriter,
    interfered: Mutex<bool>,
    refusals: Mutex<usize>,
}

impl Writer for Interfering {
    fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>> {
        let mut done = self
            .interfered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*done
            && let Some(crate::store::StoreAction::Update(Object::Task(t))) = batch.actions.get(3)
        {
            *done = true;
            let mut b = StoreActions::new();
            let mut current = (*self.inner.store().get::<Task>(&t.id).expect("task")).clone();
            current.status.get_or_insert_with(Default::default).message = "touched".into();
            b.update(current);
            self.inner.apply(b).expect("interfering write");
        }
        drop(done);
        let result = self.inner.apply(batch);
        if result.is_err() {
            *self.refusals.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        }
        Box::pin(async move { result })
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_batch_is_retried_without_the_conflicting_task() {
    let store = Store::with_watch_capacity(4);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(at(1_000_000)));
    let writer = Arc::new(Interfering {
        inner: LocalWriter::new(store.clone(), clock.clone()),
        interfered: Mutex::new(false),
        refusals: Mutex::new(0),
    });
    let setup = LocalWriter::new(store.clone(), clock.clone());
    let svc = replicated("s", 20, None);
    let mut b = StoreActions::new();
    b.create(node("n1")).create(node("n2")).create(svc.clone());
    setup.apply(b).expect("setup");
    let mut b = StoreActions::new();
    for i in 1..=20 {
        b.create(task(
            &format!("t{i:02}"),
            &svc,
            i,
            "",
            TaskState::Pending,
            TaskState::Running,
        ));
    }
    setup.apply(b).expect("tasks");
    let cancel = CancellationToken::new();
    let sched = crate::scheduler::Scheduler::new(
        store.clone(),
        writer.clone(),
        SchedulerConfig::with_clock(clock),
    );
    let handle = tokio::spawn(sched.run(cancel.clone()));
    let start = tokio::time::Instant::now();
    loop {
        let assigned = store
            .list::<Task>()
            .iter()
            .filter(|t| observed(t) == TaskState::Assigned)
            .count();
        if assigned == 20 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            dump(&store.snapshot())
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(*writer.refusals.lock().expect("lock"), 1);
    let per: BTreeMap<String, usize> =
        store
            .list::<Task>()
            .iter()
            .fold(BTreeMap::new(), |mut m, t| {
                *m.entry(t.node_id.clone()).or_default() += 1;
                m
            });
    assert_eq!(per, per_node(&[("n1", 10), ("n2", 10)]));
    cancel.cancel();
    handle.await.expect("join").expect("scheduler");
}

/// A reconciler that counts decisions and asks to be woken 2 s after each.
struct Ticking {
    decides: Arc<Mutex<Vec<SystemTime>>>,
    wake: Option<SystemTime>,
    dirty: bool,
}

impl Reconciler for Ticking {
    fn name(&self) -> &'static str {
        "ticking"
    }
    fn observe(&mut self, _: &crate::store::ChangeSet) {}
    fn mark_all(&mut self) {
        self.dirty = true;
    }
    fn mark_refused(&mut self, _: &Unit) {}
    fn is_dirty(&self) -> bool {
        self.dirty
    }
    fn decide(&mut self, _: &Tables, now: SystemTime) -> Vec<Unit> {
        self.dirty = false;
        self.decides.lock().expect("lock").push(now);
        self.wake = Some(now + Duration::from_secs(2));
        Vec::new()
    }
    fn next_wake(&self) -> Option<SystemTime> {
        self.wake
    }
}

#[tokio::test(start_paused = true)]
async fn the_loop_wakes_on_its_timer_without_any_change() {
    let store = Store::new();
    let clock = Arc::new(TokioClock::new(at(0)));
    let writer = LocalWriter::new(store.clone(), clock.clone());
    let decides = Arc::new(Mutex::new(Vec::new()));
    let r = Ticking {
        decides: decides.clone(),
        wake: None,
        dirty: false,
    };
    let cancel = CancellationToken::new();
    let pace = Pace {
        max_batch: 10,
        resync: Duration::from_secs(3600),
        gap: Duration::ZERO,
        max_delay: Duration::ZERO,
        min_interval: Duration::ZERO,
        backoff: Duration::from_secs(1),
    };
    let run = {
        let cancel = cancel.clone();
        tokio::spawn(async move { drive(r, &store, &writer, clock.as_ref(), &pace, &cancel).await })
    };
    tokio::time::sleep(Duration::from_millis(6500)).await;
    cancel.cancel();
    run.await.expect("join").expect("drive");
    let got = decides.lock().expect("lock").clone();
    assert_eq!(got, vec![at(0), at(2), at(4), at(6)]);
}

#[tokio::test(start_paused = true)]
async fn a_store_reset_makes_the_scheduler_look_again() {
    let store = Store::new();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(at(1_000_000)));
    let writer = Arc::new(LocalWriter::new(store.clone(), clock.clone()));
    let svc = replicated("s", 1, None);
    let mut b = StoreActions::new();
    b.create(svc.clone());
    b.create(task(
        "t1",
        &svc,
        1,
        "",
        TaskState::Pending,
        TaskState::Running,
    ));
    writer.apply(b).expect("setup");
    let cfg = SchedulerConfig {
        retry_interval: Duration::from_secs(3),
        ..SchedulerConfig::with_clock(clock)
    };
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(
        crate::scheduler::Scheduler::new(store.clone(), writer.clone(), cfg).run(cancel.clone()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = store.get::<Task>("t1").expect("t1");
    assert_eq!(
        t.status.as_ref().map(|s| s.err.as_str()),
        Some("no suitable node (the cluster has no nodes)")
    );
    // Replace the store contents with a node added: every watcher resubscribes, and the
    // scheduler places the task at once; this checks the reset path.
    let mut tables = store.snapshot();
    let mut b = StoreActions::new();
    b.create(node("n1"));
    tables
        .apply(tables.version() + 1, to_timestamp(at(1_000_001)), b)
        .expect("apply");
    store.replace(tables);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.get::<Task>("t1").map(|t| observed(&t)),
        Some(TaskState::Assigned)
    );
    cancel.cancel();
    handle.await.expect("join").expect("scheduler");
}
