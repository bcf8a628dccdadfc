//! The updater's decisions for one service: a pure function of the store, the time and a
//! little [`UpdateMemory`] (fixture in, decision table out).
//!
//! A *slot* is a replica number (or a node of a global service). A slot is
//! - **dirty** when it has no runnable task of the current spec and its newest runnable task is
//!   of another spec and has not ended (an ended one is the restart policy's: the orchestrator
//!   replaces it with a task of the current spec);
//! - **in flight** when its runnable task of the current spec was created since the update
//!   started and is not up yet (RUNNING, and healthy if it has a health check), and the slot
//!   has not failed in this update.
//!
//! While an update (or rollback) is active: every dirty slot is replaced, `parallelism` at a
//! time (0 = all); a new batch starts once no slot is in flight and `delay` has passed since
//! the last one settled. Stop-first retires the old task and creates its replacement in one
//! write (the replacement waits in READY until the old one stopped; the orchestrator starts
//! it); start-first creates the replacement beside the old task, which is retired once the new
//! one is up (see [`super::rollout::orchestrator_view`]).
//!
//! A task created since the update started counts as **failed** when it ends on its own
//! before it was up for `monitor`, when it reports UNHEALTHY, or — unlike Swarm, so that an
//! update never hangs — when it is not up within its **progress deadline**: its stop grace
//! period (for the task it replaces) + its health check's start period + `monitor` +
//! [`UpdaterSettings::progress_grace`] (30 s by default) after it was created. When failures
//! exceed `max_failure_ratio` of the slots, the failure action applies: PAUSE (status PAUSED,
//! the message names the task and why), CONTINUE, or ROLLBACK (spec := previous spec, status
//! ROLLBACK_STARTED; the rollback then runs with the rollback configuration, and its own
//! failures pause it: ROLLBACK_PAUSED). The update completes when no slot is dirty or in
//! flight, no slot waits for the orchestrator to replace an ended task, and the last new task
//! has been up for `monitor`.
//!
//! Everything the decisions need is in the store (status, spec, tasks), so a new leader
//! resumes an update where the old one left it; the memory only remembers when tasks were
//! first seen up, which failures were counted, and when the last batch settled. A new leader
//! starts those afresh: it watches new tasks for a full monitor period again, and counts a task
//! that ended before it took over as failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_proto::naming::task_name;
use berth_proto::v1::{
    FailureAction, HealthState, Service, Task, TaskState, UpdateOrder, UpdateState, UpdateStatus,
};

use super::super::clock::{from_timestamp, to_timestamp};
use super::super::slot::may_run;
use super::super::task::{
    SlotKey, by_age, created_at, ended_by_itself, is_runnable, new_task, observed, replicas,
    retired,
};
use super::super::writer::Unit;
use super::rollout::{
    Rollout, declares_healthcheck, health, health_start_period, is_task_dirty, is_up, stop_grace,
};
use crate::store::{By, StoreAction, Tables};

/// Status message of a running update (Swarm's).
pub const MSG_UPDATING: &str = "update in progress";
/// Status message of a completed update (Swarm's).
pub const MSG_COMPLETED: &str = "update completed";
/// Status message of a completed rollback (Swarm's).
pub const MSG_ROLLBACK_COMPLETED: &str = "rollback completed";
/// Status message of a rollback asked for by the user (Swarm's).
pub const MSG_MANUAL_ROLLBACK: &str = "manually requested rollback";

/// Settings of the updater.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdaterSettings {
    /// Added to a new task's progress deadline beside its stop grace period, health start
    /// period and the monitor period (default 30 s).
    pub progress_grace: Duration,
}

impl Default for UpdaterSettings {
    fn default() -> Self {
        UpdaterSettings {
            progress_grace: Duration::from_secs(30),
        }
    }
}

/// One decision of the updater about one service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpdateDecision {
    /// Tasks are dirty and no update is active or paused: start one (status UPDATING).
    Begin,
    /// Replace dirty `task` with a task of the current spec in its slot.
    Replace {
        /// The dirty task.
        task: String,
        /// Stop-first (retire it in the same write) or start-first (create beside it).
        order: UpdateOrder,
    },
    /// Retire `task`, a dirty task beside an up-to-date one of its slot (start-first).
    RetireStale {
        /// The dirty task.
        task: String,
    },
    /// Too many failures: status PAUSED (or ROLLBACK_PAUSED) with `message`.
    Pause {
        /// Names the task and why it failed.
        message: String,
    },
    /// Too many failures with failure action ROLLBACK: restore the previous spec and start a
    /// rollback (status ROLLBACK_STARTED with `message`).
    Rollback {
        /// Names the task and why it failed.
        message: String,
    },
    /// Every slot runs the current spec and the monitor period passed: status COMPLETED (or
    /// ROLLBACK_COMPLETED) with `message`.
    Complete {
        /// The status message.
        message: String,
    },
}

/// The decisions for one service and when to look again if nothing changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdatePlan {
    /// The decisions; each becomes one unit of store actions.
    pub decisions: Vec<UpdateDecision>,
    /// The earliest time a decision may change with time alone (delay, deadline, monitor).
    pub wake_at: Option<SystemTime>,
}

impl UpdatePlan {
    fn wake(&mut self, at: SystemTime) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    task: String,
    slot: SlotKey,
    name: String,
    reason: String,
}

/// What the updater remembers about one service between decisions (see the module docs:
/// nothing here is needed to resume an update).
#[derive(Debug, Clone, Default)]
pub struct UpdateMemory {
    /// The update remembered: (is a rollback, started at).
    update: Option<(bool, SystemTime)>,
    /// When each new task was first seen up.
    up_since: HashMap<String, SystemTime>,
    /// Failures counted, in order.
    failures: Vec<Failure>,
    failed: HashSet<String>,
    /// Slots in flight after the last decision.
    in_flight: usize,
    /// When the last batch settled (no slot in flight any more).
    settled_at: Option<SystemTime>,
    /// The service version at which no slot was dirty and no update active.
    clean_version: Option<u64>,
}

impl UpdateMemory {
    fn reset_for(&mut self, key: (bool, SystemTime)) {
        *self = UpdateMemory {
            update: Some(key),
            ..UpdateMemory::default()
        };
    }
}

/// The service's update state (NONE when it has no status).
pub fn update_state(service: &Service) -> UpdateState {
    service
        .update_status
        .as_ref()
        .and_then(|s| UpdateState::try_from(s.state).ok())
        .unwrap_or(UpdateState::None)
}

/// Whether an update or rollback is rolling out.
pub fn is_active(state: UpdateState) -> bool {
    matches!(state, UpdateState::Updating | UpdateState::RollbackStarted)
}

fn is_rollback(state: UpdateState) -> bool {
    matches!(
        state,
        UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted
    )
}

/// The service's tasks by slot, oldest first: replicas 1..=N, or nodes of a global service.
fn slots_of(tables: &Tables, service: &Service) -> BTreeMap<SlotKey, Vec<Arc<Task>>> {
    let limit = replicas(service);
    let mut slots: BTreeMap<SlotKey, Vec<Arc<Task>>> = BTreeMap::new();
    for t in tables.find::<Task>(&By::ServiceId(service.id.clone())) {
        let key = match limit {
            Some(n) if t.slot >= 1 && t.slot <= n => SlotKey::Replica(t.slot),
            None if t.slot == 0 && !t.node_id.is_empty() => SlotKey::Node(t.node_id.clone()),
            _ => continue,
        };
        slots.entry(key).or_default().push(t);
    }
    for tasks in slots.values_mut() {
        tasks.sort_by(by_age);
    }
    slots
}

/// A slot as the updater sees it.
struct SlotView {
    /// The newest runnable task of the current spec.
    fresh: Option<Arc<Task>>,
    /// Runnable tasks of another spec.
    stale: Vec<Arc<Task>>,
}

impl SlotView {
    fn of(service: &Service, tasks: &[Arc<Task>]) -> SlotView {
        let mut fresh = None;
        let mut stale = Vec::new();
        for t in tasks.iter().filter(|t| is_runnable(t)) {
            if is_task_dirty(service, t) {
                stale.push(t.clone());
            } else {
                fresh = Some(t.clone());
            }
        }
        SlotView { fresh, stale }
    }

    /// The task to replace, when the slot is dirty.
    fn dirty(&self) -> Option<&Arc<Task>> {
        if self.fresh.is_some() {
            return None;
        }
        self.stale.last().filter(|t| !observed(t).is_terminal())
    }

    /// Whether the slot's task ended and waits for the orchestrator to replace it (with a task
    /// of the current spec, by its restart policy).
    fn in_transit(&self) -> bool {
        self.fresh.is_none() && self.stale.last().is_some_and(|t| observed(t).is_terminal())
    }

    /// Stale tasks that may be retired now: all once the fresh task is up, else those that
    /// cannot be running anyway.
    fn retirable<'a>(&'a self, tables: &'a Tables) -> impl Iterator<Item = &'a Arc<Task>> + 'a {
        let fresh_up = self.fresh.as_ref().is_some_and(|f| is_up(f));
        self.stale
            .iter()
            .filter(move |s| self.fresh.is_some() && (fresh_up || !may_run(tables, s)))
    }
}

/// Why an ended task ended, for status messages.
fn end_reason(t: &Task) -> String {
    let status = t.status.clone().unwrap_or_default();
    let verb = match observed(t) {
        TaskState::Complete => "it completed",
        TaskState::Rejected => "it was rejected",
        _ => "it failed",
    };
    let container = status.container_status.unwrap_or_default();
    let mut reason = if !status.err.is_empty() {
        format!("{verb} ({})", status.err)
    } else if container.exit_code != 0 {
        format!("{verb} (exit code {})", container.exit_code)
    } else {
        verb.to_string()
    };
    if container.oom_killed {
        reason.push_str(" (OOM killed)");
    }
    reason
}

/// How long a new task has to come up, counted from its creation.
fn progress_deadline(t: &Task, monitor: Duration, settings: &UpdaterSettings) -> Duration {
    stop_grace(t) + health_start_period(t) + monitor + settings.progress_grace
}

fn late_reason(t: &Task, deadline: Duration) -> String {
    let status = t.status.clone().unwrap_or_default();
    let want = if declares_healthcheck(t) || health(t) != HealthState::None {
        "running and healthy"
    } else {
        "running"
    };
    let mut now = observed(t).docker_name().to_string();
    if observed(t) == TaskState::Running && health(t) == HealthState::Starting {
        now = "running, health starting".into();
    }
    let detail = if !status.err.is_empty() {
        format!(": {}", status.err)
    } else if !status.message.is_empty() {
        format!(": {}", status.message)
    } else {
        String::new()
    };
    format!(
        "it was not {want} within {}s of its creation (progress deadline; still {now}{detail})",
        deadline.as_secs()
    )
}

/// The decisions for `service` at `now` (see the module docs).
pub fn plan_update(
    tables: &Tables,
    service: &Service,
    now: SystemTime,
    memory: &mut UpdateMemory,
    settings: &UpdaterSettings,
) -> UpdatePlan {
    let mut plan = UpdatePlan::default();
    let state = update_state(service);
    let active = is_active(state);
    let version = service.meta.as_ref().map_or(0, |m| m.version);
    if !active && memory.clean_version == Some(version) {
        return plan;
    }
    let slots = slots_of(tables, service);
    let views: BTreeMap<&SlotKey, SlotView> = slots
        .iter()
        .map(|(k, tasks)| (k, SlotView::of(service, tasks)))
        .collect();
    let dirty: Vec<&Arc<Task>> = views.values().filter_map(SlotView::dirty).collect();
    let mut unresolved: Vec<&SlotKey> = Vec::new();
    for (key, view) in &views {
        let mut retiring = 0;
        for t in view.retirable(tables) {
            plan.decisions
                .push(UpdateDecision::RetireStale { task: t.id.clone() });
            retiring += 1;
        }
        if retiring < view.stale.len() && view.fresh.is_some() {
            unresolved.push(key);
        }
    }

    if !active {
        memory.update = None;
        let can_begin = matches!(
            state,
            UpdateState::None | UpdateState::Completed | UpdateState::RollbackCompleted
        );
        if can_begin && !dirty.is_empty() {
            plan.decisions.push(UpdateDecision::Begin);
        }
        memory.clean_version =
            (dirty.is_empty() && plan.decisions.is_empty() && unresolved.is_empty())
                .then_some(version);
        return plan;
    }
    memory.clean_version = None;

    let rollback = is_rollback(state);
    let status = service.update_status.clone().unwrap_or_default();
    let started = status
        .started_at
        .as_ref()
        .or_else(|| service.meta.as_ref().and_then(|m| m.updated_at.as_ref()))
        .map_or(SystemTime::UNIX_EPOCH, from_timestamp);
    if memory.update != Some((rollback, started)) {
        memory.reset_for((rollback, started));
    }
    let cfg = Rollout::for_service(service, rollback);

    // Watch the tasks made since the update started.
    for (key, tasks) in &slots {
        for t in tasks {
            if is_task_dirty(service, t) || created_at(t) < started || memory.failed.contains(&t.id)
            {
                continue;
            }
            if is_runnable(t) && is_up(t) {
                memory.up_since.entry(t.id.clone()).or_insert(now);
            }
            let slot_failed = memory.failures.iter().any(|f| &f.slot == key);
            let reason = if ended_by_itself(t) {
                let ended = t
                    .status
                    .as_ref()
                    .and_then(|s| s.timestamp.as_ref())
                    .map_or(now, from_timestamp);
                let survived = memory.up_since.get(&t.id).is_some_and(|up| {
                    ended.duration_since(*up).unwrap_or(Duration::ZERO) >= cfg.monitor
                });
                (!survived).then(|| end_reason(t))
            } else if !is_runnable(t) {
                None
            } else if health(t) == HealthState::Unhealthy {
                Some("it became unhealthy".to_string())
            } else if !is_up(t) && !slot_failed && !memory.up_since.contains_key(&t.id) {
                let deadline = progress_deadline(t, cfg.monitor, settings);
                let due = created_at(t) + deadline;
                if now >= due {
                    Some(late_reason(t, deadline))
                } else {
                    plan.wake(due);
                    None
                }
            } else {
                None
            };
            if let Some(reason) = reason {
                memory.failed.insert(t.id.clone());
                memory.failures.push(Failure {
                    task: t.id.clone(),
                    slot: key.clone(),
                    name: task_name(t),
                    reason,
                });
            }
        }
    }

    // Too many failures: the failure action.
    let total = replicas(service)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(slots.len())
        .max(1);
    if let Some(last) = memory.failures.last()
        && memory.failures.len() as f64 / total as f64 > f64::from(cfg.max_failure_ratio)
    {
        let what = if rollback { "rollback" } else { "update" };
        let cause = format!(
            "failure or early termination of task {}: {}",
            last.name, last.reason
        );
        match cfg.failure_action {
            FailureAction::Continue => {}
            FailureAction::Rollback if !rollback => {
                let decision = if service.previous_spec.is_some() {
                    UpdateDecision::Rollback {
                        message: format!("update rolled back due to {cause}"),
                    }
                } else {
                    UpdateDecision::Pause {
                        message: format!(
                            "update paused due to {cause} (no previous spec to roll back to)"
                        ),
                    }
                };
                return UpdatePlan {
                    decisions: vec![decision],
                    wake_at: None,
                };
            }
            FailureAction::Pause | FailureAction::Rollback => {
                return UpdatePlan {
                    decisions: vec![UpdateDecision::Pause {
                        message: format!("{what} paused due to {cause}"),
                    }],
                    wake_at: None,
                };
            }
        }
    }

    // Slots in flight, and the next batch.
    let failed_slots: HashSet<&SlotKey> = memory.failures.iter().map(|f| &f.slot).collect();
    let in_flight = views
        .iter()
        .filter(|(key, view)| {
            view.fresh.as_ref().is_some_and(|f| {
                !is_up(f)
                    && created_at(f) >= started
                    && !memory.up_since.contains_key(&f.id)
                    && !failed_slots.contains(*key)
            })
        })
        .count();
    if memory.in_flight > 0 && in_flight == 0 {
        memory.settled_at = Some(now);
    }
    let mut replaced = 0;
    if in_flight == 0 && !dirty.is_empty() {
        let ready_at = memory.settled_at.map(|s| s + cfg.delay);
        match ready_at {
            Some(at) if now < at => plan.wake(at),
            _ => {
                for t in dirty.iter().take(cfg.batch_size(dirty.len())) {
                    plan.decisions.push(UpdateDecision::Replace {
                        task: t.id.clone(),
                        order: cfg.order,
                    });
                    replaced += 1;
                }
            }
        }
    }
    memory.in_flight = in_flight + replaced;

    // Done when nothing is left to replace and the last new task survived the monitor.
    let blocking_pairs = unresolved.iter().any(|k| !failed_slots.contains(*k));
    let in_transit = views.values().any(SlotView::in_transit);
    if dirty.is_empty() && in_flight == 0 && !blocking_pairs && !in_transit {
        let last_up = views
            .values()
            .filter_map(|v| v.fresh.as_ref())
            .filter_map(|f| memory.up_since.get(&f.id))
            .max()
            .copied();
        let done_at = last_up.map(|u| u + cfg.monitor);
        match done_at {
            Some(at) if now < at => plan.wake(at),
            _ => plan.decisions.push(UpdateDecision::Complete {
                message: completion_message(rollback, &status, &memory.failures),
            }),
        }
    }
    plan
}

fn completion_message(rollback: bool, status: &UpdateStatus, failures: &[Failure]) -> String {
    let mut message = if rollback {
        if status.message.is_empty() || status.message == MSG_MANUAL_ROLLBACK {
            MSG_ROLLBACK_COMPLETED.to_string()
        } else {
            format!("{MSG_ROLLBACK_COMPLETED} ({})", status.message)
        }
    } else {
        MSG_COMPLETED.to_string()
    };
    if let Some(last) = failures.last() {
        message.push_str(&format!(
            "; {} task(s) failed or ended early, the last one {}: {}",
            failures.len(),
            last.name,
            last.reason
        ));
    }
    message
}

fn with_status(service: &Service, status: UpdateStatus) -> Service {
    let mut s = service.clone();
    s.update_status = Some(status);
    s
}

/// The store actions of `decision` about `service`, as one unit (`None` when its task is
/// gone).
pub fn to_unit(
    tables: &Tables,
    service: &Service,
    decision: &UpdateDecision,
    now: SystemTime,
) -> Option<Unit> {
    let stamp = Some(to_timestamp(now));
    let status = service.update_status.clone().unwrap_or_default();
    let rollback = is_rollback(update_state(service));
    let unit = match decision {
        UpdateDecision::Begin => vec![StoreAction::Update(
            with_status(
                service,
                UpdateStatus {
                    state: UpdateState::Updating as i32,
                    started_at: stamp,
                    completed_at: None,
                    message: MSG_UPDATING.into(),
                },
            )
            .into(),
        )],
        UpdateDecision::Replace { task, order } => {
            let old = tables.get::<Task>(task)?;
            let slot = SlotKey::of(&old);
            let alive = may_run(tables, &old);
            if *order == UpdateOrder::StartFirst && alive {
                vec![StoreAction::Create(
                    new_task(service, &slot, TaskState::Running, now).into(),
                )]
            } else {
                let desired = if alive {
                    TaskState::Ready
                } else {
                    TaskState::Running
                };
                vec![
                    StoreAction::Update(retired(&old, TaskState::Shutdown, now).into()),
                    StoreAction::Create(new_task(service, &slot, desired, now).into()),
                ]
            }
        }
        UpdateDecision::RetireStale { task } => {
            let old = tables.get::<Task>(task)?;
            vec![StoreAction::Update(
                retired(&old, TaskState::Shutdown, now).into(),
            )]
        }
        UpdateDecision::Pause { message } => {
            let state = if rollback {
                UpdateState::RollbackPaused
            } else {
                UpdateState::Paused
            };
            vec![StoreAction::Update(
                with_status(
                    service,
                    UpdateStatus {
                        state: state as i32,
                        started_at: status.started_at,
                        completed_at: None,
                        message: message.clone(),
                    },
                )
                .into(),
            )]
        }
        UpdateDecision::Rollback { message } => {
            let mut s = service.clone();
            s.spec = s.previous_spec.take();
            s.spec_version = std::mem::take(&mut s.previous_spec_version);
            s.update_status = Some(UpdateStatus {
                state: UpdateState::RollbackStarted as i32,
                started_at: stamp,
                completed_at: None,
                message: message.clone(),
            });
            vec![StoreAction::Update(s.into())]
        }
        UpdateDecision::Complete { message } => {
            let state = if rollback {
                UpdateState::RollbackCompleted
            } else {
                UpdateState::Completed
            };
            vec![StoreAction::Update(
                with_status(
                    service,
                    UpdateStatus {
                        state: state as i32,
                        started_at: status.started_at,
                        completed_at: stamp,
                        message: message.clone(),
                    },
                )
                .into(),
            )]
        }
    };
    Some(unit)
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{ContainerStatus, UpdateConfig};

    use super::*;
    use crate::objs;
    use crate::orchestrator::fixture::*;
    use crate::store::{StoreActions, StoreObject};

    use TaskState::{Failed, Pending, Preparing, Ready, Running, Shutdown};
    use UpdateDecision::*;

    fn secs(s: u64) -> prost_types::Duration {
        prost_types::Duration {
            seconds: s as i64,
            nanos: 0,
        }
    }

    /// Three replicas a, b, c of `s` on n1/n2 at time 2, then an update at 10 to image
    /// busybox:2 with `cfg` (the previous spec kept, like the Control API does).
    fn updated(cfg: UpdateConfig) -> Fx {
        let svc = replicated("s", 3, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), node("n2"), svc.clone()]);
        fx.create(
            2,
            objs![
                running("a", &svc, 1, "n1"),
                running("b", &svc, 2, "n1"),
                running("c", &svc, 3, "n2")
            ],
        );
        let mut new = (*fx.tables.get::<Service>("s").expect("s")).clone();
        new.previous_spec = new.spec.clone();
        new.previous_spec_version = new.spec_version;
        new.spec_version = new.version();
        let spec = new.spec.as_mut().expect("spec");
        spec.update = Some(cfg);
        spec.task
            .as_mut()
            .and_then(|t| t.container.as_mut())
            .expect("container")
            .image = "busybox:2".into();
        fx.update(10, objs![new]);
        fx
    }

    fn cfg(
        parallelism: u64,
        delay: u64,
        action: FailureAction,
        order: UpdateOrder,
    ) -> UpdateConfig {
        UpdateConfig {
            parallelism: Some(parallelism),
            delay: Some(secs(delay)),
            failure_action: action as i32,
            monitor: Some(secs(1)),
            max_failure_ratio: 0.0,
            order: order as i32,
        }
    }

    /// Decides at `now` and writes the decisions at `now`.
    fn step(fx: &mut Fx, mem: &mut UpdateMemory, now: u64) -> UpdatePlan {
        let service = fx.tables.get::<Service>("s").expect("s");
        let mut plan = plan_update(
            &fx.tables,
            &service,
            at(now),
            mem,
            &UpdaterSettings::default(),
        );
        let mut b = StoreActions::new();
        for d in &plan.decisions {
            b.actions
                .extend(to_unit(&fx.tables, &service, d, at(now)).expect("unit"));
        }
        if !b.is_empty() {
            fx.apply(now, b);
        }
        plan.decisions.sort();
        plan
    }

    fn state(fx: &Fx) -> (UpdateState, String) {
        let s = fx.tables.get::<Service>("s").expect("s");
        let st = s.update_status.clone().unwrap_or_default();
        (update_state(&s), st.message)
    }

    /// Edits the stored task `id` at time `now`.
    fn set(fx: &mut Fx, id: &str, now: u64, f: impl FnOnce(&mut Task)) {
        let mut t = (*fx.tables.get::<Task>(id).expect("task")).clone();
        f(&mut t);
        let status = t.status.get_or_insert_with(Default::default);
        status.timestamp = Some(to_timestamp(at(now)));
        fx.update(now, objs![t]);
    }

    /// The runnable task of `slot` of the current spec, if any.
    fn fresh(fx: &Fx, slot: u64) -> Option<Arc<Task>> {
        let service = fx.tables.get::<Service>("s").expect("s");
        fx.tables
            .find::<Task>(&By::Slot {
                service_id: "s".into(),
                slot,
            })
            .into_iter()
            .filter(|t| is_runnable(t) && !is_task_dirty(&service, t))
            .max_by(by_age)
    }

    /// The fresh task of `slot` placed on n1 and observed in `st`.
    fn progress(fx: &mut Fx, slot: u64, now: u64, st: TaskState) -> String {
        let t = fresh(fx, slot).expect("fresh task");
        set(fx, &t.id, now, |t| {
            t.node_id = "n1".into();
            t.status.get_or_insert_with(Default::default).state = st as i32;
        });
        t.id.clone()
    }

    fn replace(id: &str, order: UpdateOrder) -> UpdateDecision {
        Replace {
            task: id.into(),
            order,
        }
    }

    #[test]
    fn an_update_begins_only_when_tasks_are_dirty_and_nothing_is_paused() {
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        assert_eq!(step(&mut fx, &mut mem, 11).decisions, vec![Begin]);
        let s = fx.tables.get::<Service>("s").expect("s");
        let status = s.update_status.clone().expect("status");
        assert_eq!(update_state(&s), UpdateState::Updating);
        assert_eq!(status.message, MSG_UPDATING);
        assert_eq!(status.started_at, Some(to_timestamp(at(11))));

        // A paused update does not restart by itself.
        let mut paused = (*s).clone();
        paused.update_status = Some(UpdateStatus {
            state: UpdateState::Paused as i32,
            ..Default::default()
        });
        fx.update(12, objs![paused]);
        assert_eq!(step(&mut fx, &mut mem, 13), UpdatePlan::default());

        // A service whose tasks match its spec has nothing to do (and is cheap next time).
        let svc = replicated("s", 1, None);
        let mut fx = Fx::new();
        fx.create(1, objs![node("n1"), svc.clone()]);
        fx.create(2, objs![running("a", &svc, 1, "n1")]);
        let mut mem = UpdateMemory::default();
        assert_eq!(step(&mut fx, &mut mem, 3), UpdatePlan::default());
        assert!(mem.clean_version.is_some());
    }

    #[test]
    fn stop_first_batches_keep_parallelism_and_wait_the_delay() {
        let mut fx = updated(cfg(2, 5, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        let plan = step(&mut fx, &mut mem, 12);
        let stop = UpdateOrder::StopFirst;
        assert_eq!(plan.decisions, vec![replace("a", stop), replace("b", stop)]);
        // The old tasks are retired, their replacements wait in READY for them to stop.
        for (old, slot) in [("a", 1), ("b", 2)] {
            let t = fx.tables.get::<Task>(old).expect("old");
            assert_eq!(t.desired_state, Shutdown as i32);
            let new = fresh(&fx, slot).expect("replacement");
            assert_eq!(new.desired_state, Ready as i32);
        }
        // Nothing more while they are in flight; the deadline is the next wake-up.
        let plan = step(&mut fx, &mut mem, 13);
        assert_eq!(plan.decisions, vec![]);
        assert_eq!(plan.wake_at, Some(at(12 + 10 + 1 + 30)));
        progress(&mut fx, 1, 14, Running);
        assert_eq!(step(&mut fx, &mut mem, 14).decisions, vec![]);
        progress(&mut fx, 2, 15, Running);
        // Settled at 15: the next batch after the 5 s delay.
        let plan = step(&mut fx, &mut mem, 15);
        assert_eq!((plan.decisions, plan.wake_at), (vec![], Some(at(20))));
        assert_eq!(
            step(&mut fx, &mut mem, 20).decisions,
            vec![replace("c", stop)]
        );
        progress(&mut fx, 3, 21, Running);
        // Complete once the last one has been up for the monitor period (1 s).
        let plan = step(&mut fx, &mut mem, 21);
        assert_eq!((plan.decisions, plan.wake_at), (vec![], Some(at(22))));
        assert_eq!(
            step(&mut fx, &mut mem, 22).decisions,
            vec![Complete {
                message: MSG_COMPLETED.into()
            }]
        );
        let s = fx.tables.get::<Service>("s").expect("s");
        let status = s.update_status.clone().expect("status");
        assert_eq!(update_state(&s), UpdateState::Completed);
        assert_eq!(status.completed_at, Some(to_timestamp(at(22))));
        // Done: nothing more, and no timer.
        assert_eq!(step(&mut fx, &mut mem, 23), UpdatePlan::default());
    }

    #[test]
    fn parallelism_zero_replaces_every_slot_at_once() {
        let mut fx = updated(cfg(0, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        assert_eq!(step(&mut fx, &mut mem, 12).decisions.len(), 3);
    }

    #[test]
    fn start_first_runs_the_new_task_beside_the_old_until_it_is_up() {
        let start = UpdateOrder::StartFirst;
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, start));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        assert_eq!(
            step(&mut fx, &mut mem, 12).decisions,
            vec![replace("a", start)]
        );
        // The old task keeps running; the new one wants RUNNING at once.
        assert_eq!(
            fx.tables.get::<Task>("a").expect("a").desired_state,
            Running as i32
        );
        let new = fresh(&fx, 1).expect("new");
        assert_eq!(new.desired_state, Running as i32);
        progress(&mut fx, 1, 13, Preparing);
        assert_eq!(step(&mut fx, &mut mem, 13).decisions, vec![]);
        progress(&mut fx, 1, 14, Running);
        // Up: the old one is retired and the next slot starts in the same decision.
        assert_eq!(
            step(&mut fx, &mut mem, 14).decisions,
            vec![replace("b", start), RetireStale { task: "a".into() }]
        );
        assert_eq!(
            fx.tables.get::<Task>("a").expect("a").desired_state,
            Shutdown as i32
        );
    }

    #[test]
    fn a_failed_task_pauses_the_update_naming_it() {
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        progress(&mut fx, 1, 13, Running);
        let id = progress(&mut fx, 1, 13, Failed);
        set(&mut fx, &id, 13, |t| {
            let status = t.status.get_or_insert_with(Default::default);
            status.err = "task: non-zero exit (1)".into();
            status.container_status = Some(ContainerStatus {
                exit_code: 1,
                ..Default::default()
            });
        });
        let plan = step(&mut fx, &mut mem, 13);
        let [Pause { message }] = plan.decisions.as_slice() else {
            panic!("expected a pause: {plan:?}")
        };
        assert_eq!(
            message,
            &format!(
                "update paused due to failure or early termination of task svc-s.1.{id}: it failed (task: non-zero exit (1))"
            )
        );
        assert_eq!(state(&fx).0, UpdateState::Paused);
        // Paused: no further replacement even though b and c are dirty.
        assert_eq!(step(&mut fx, &mut mem, 14), UpdatePlan::default());
    }

    #[test]
    fn a_task_that_never_comes_up_fails_at_its_progress_deadline() {
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        let new = fresh(&fx, 1).expect("new");
        set(&mut fx, &new.id, 13, |t| {
            let status = t.status.get_or_insert_with(Default::default);
            status.state = Pending as i32;
            status.err = "no suitable node (insufficient memory on 2 nodes)".into();
        });
        // Deadline: 10 s stop grace + 1 s monitor + 30 s grace after creation at 12.
        let plan = step(&mut fx, &mut mem, 52);
        assert_eq!((plan.decisions, plan.wake_at), (vec![], Some(at(53))));
        let plan = step(&mut fx, &mut mem, 53);
        let [Pause { message }] = plan.decisions.as_slice() else {
            panic!("expected a pause: {plan:?}")
        };
        assert!(
            message.contains(&format!("task svc-s.1.{}", new.id))
                && message.contains("was not running within 41s")
                && message.contains("still pending: no suitable node"),
            "{message}"
        );
    }

    #[test]
    fn unhealthy_counts_and_starting_health_is_not_up() {
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        let id = progress(&mut fx, 1, 13, Running);
        set(&mut fx, &id, 13, |t| {
            t.status.get_or_insert_with(Default::default).health = HealthState::Starting as i32;
        });
        assert_eq!(step(&mut fx, &mut mem, 14).decisions, vec![], "in flight");
        set(&mut fx, &id, 15, |t| {
            t.status.get_or_insert_with(Default::default).health = HealthState::Unhealthy as i32;
        });
        let plan = step(&mut fx, &mut mem, 15);
        assert!(
            matches!(plan.decisions.as_slice(), [Pause { message }] if message.ends_with("it became unhealthy")),
            "{plan:?}"
        );
    }

    #[test]
    fn failure_action_rollback_restores_the_previous_spec_and_rolls_back() {
        let mut fx = updated(cfg(1, 0, FailureAction::Rollback, UpdateOrder::StopFirst));
        let old_spec = fx
            .tables
            .get::<Service>("s")
            .and_then(|s| s.previous_spec.clone());
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        let id = progress(&mut fx, 1, 13, Failed);
        let plan = step(&mut fx, &mut mem, 13);
        assert!(
            matches!(plan.decisions.as_slice(), [Rollback { message }]
                if message.starts_with("update rolled back due to failure or early termination of task svc-s.1.")
                    && message.ends_with("it failed")),
            "{plan:?}"
        );
        let s = fx.tables.get::<Service>("s").expect("s");
        assert_eq!(s.spec, old_spec);
        assert_eq!((s.previous_spec.as_ref(), s.spec_version), (None, 1));
        assert_eq!(update_state(&s), UpdateState::RollbackStarted);
        // The rollback: the failed slot is dirty now (b and c are clean again). The failed task
        // itself is the orchestrator's (restart policy); its restart would be of the old spec.
        let plan = step(&mut fx, &mut mem, 14);
        assert_eq!(
            plan.decisions,
            vec![],
            "{id} ended: not dirty for the updater"
        );
        // The orchestrator restarts it with the restored spec; once up, the rollback completes.
        let mut restarted = fx.tables.get::<Task>(&id).map(|t| (*t).clone()).expect("t");
        restarted.desired_state = Shutdown as i32;
        let svc = fx.tables.get::<Service>("s").expect("s");
        let mut b = StoreActions::new();
        b.update(restarted);
        b.create(running("a2", &svc, 1, "n1"));
        fx.apply(15, b);
        // The rollback configuration applies now: its default monitor is 5 s.
        let plan = step(&mut fx, &mut mem, 15);
        assert_eq!((plan.decisions, plan.wake_at), (vec![], Some(at(20))));
        let plan = step(&mut fx, &mut mem, 20);
        let [Complete { message }] = plan.decisions.as_slice() else {
            panic!("expected completion: {plan:?}")
        };
        assert!(
            message.starts_with("rollback completed (update rolled back due to failure"),
            "{message}"
        );
        assert_eq!(state(&fx).0, UpdateState::RollbackCompleted);
    }

    #[test]
    fn continue_goes_on_and_a_tolerated_ratio_does_not_stop() {
        let mut c = cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst);
        c.max_failure_ratio = 0.4;
        let mut fx = updated(c);
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        progress(&mut fx, 1, 13, Failed);
        // 1 of 3 failed = 0.33 <= 0.4: the slot settles as failed and b is next.
        assert_eq!(
            step(&mut fx, &mut mem, 13).decisions,
            vec![replace("b", UpdateOrder::StopFirst)]
        );
        progress(&mut fx, 2, 14, Failed);
        // 2 of 3 > 0.4: pause.
        assert!(matches!(
            step(&mut fx, &mut mem, 14).decisions.as_slice(),
            [Pause { .. }]
        ));

        let mut fx = updated(cfg(1, 0, FailureAction::Continue, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        for (slot, next, now) in [(1, Some("b"), 13), (2, Some("c"), 14), (3, None, 15)] {
            if now == 13 {
                step(&mut fx, &mut mem, 12);
            }
            progress(&mut fx, slot, now, Failed);
            let plan = step(&mut fx, &mut mem, now);
            match next {
                Some(task) => {
                    assert_eq!(plan.decisions, vec![replace(task, UpdateOrder::StopFirst)])
                }
                None => assert!(
                    matches!(plan.decisions.as_slice(), [Complete { message }]
                        if message.starts_with("update completed; 3 task(s) failed")),
                    "{plan:?}"
                ),
            }
        }
    }

    #[test]
    fn a_task_failing_after_its_monitor_period_is_not_an_update_failure() {
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        progress(&mut fx, 1, 13, Running);
        assert_eq!(
            step(&mut fx, &mut mem, 13).decisions,
            vec![replace("b", UpdateOrder::StopFirst)]
        );
        progress(&mut fx, 1, 20, Failed);
        assert_eq!(step(&mut fx, &mut mem, 20).decisions, vec![]);
    }

    #[test]
    fn a_new_leader_resumes_from_the_store() {
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        progress(&mut fx, 1, 13, Running);
        // Leader change: a fresh memory sees slot 1 done and goes on with b.
        let mut fresh_mem = UpdateMemory::default();
        assert_eq!(
            step(&mut fx, &mut fresh_mem, 14).decisions,
            vec![replace("b", UpdateOrder::StopFirst)]
        );
        // A failure the old leader had not acted on is still seen.
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, UpdateOrder::StopFirst));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        progress(&mut fx, 1, 13, Failed);
        let mut fresh_mem = UpdateMemory::default();
        assert!(matches!(
            step(&mut fx, &mut fresh_mem, 14).decisions.as_slice(),
            [Pause { .. }]
        ));
    }

    #[test]
    fn a_paused_start_first_slot_keeps_its_old_task_until_the_new_one_is_up() {
        let start = UpdateOrder::StartFirst;
        let mut fx = updated(cfg(1, 0, FailureAction::Pause, start));
        let mut mem = UpdateMemory::default();
        step(&mut fx, &mut mem, 11);
        step(&mut fx, &mut mem, 12);
        let failed = progress(&mut fx, 1, 13, Failed);
        assert!(matches!(
            step(&mut fx, &mut mem, 13).decisions.as_slice(),
            [Pause { .. }]
        ));
        // Paused with the old task a still running beside a failed new one: a stays.
        assert_eq!(step(&mut fx, &mut mem, 14).decisions, vec![]);
        // The restart policy's next attempt comes up: a is retired even though paused.
        let svc = fx.tables.get::<Service>("s").expect("s");
        let mut b = StoreActions::new();
        let mut f = (*fx.tables.get::<Task>(&failed).expect("f")).clone();
        f.desired_state = Shutdown as i32;
        b.update(f);
        b.create(running("a2", &svc, 1, "n1"));
        fx.apply(15, b);
        assert_eq!(
            step(&mut fx, &mut mem, 15).decisions,
            vec![RetireStale { task: "a".into() }]
        );
    }
}
