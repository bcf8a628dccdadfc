//! The updater (leader only): rolls every service's tasks onto its current spec when the spec
//! changes — rolling updates, automatic and manual rollbacks — and keeps the service's
//! `update_status` {state, started_at, completed_at, message} in the store.
//!
//! - [`rollout`]: the effective update/rollback configuration, which tasks are dirty (made
//!   from another spec) and which are up (RUNNING, and healthy if they have a health check).
//! - [`plan`]: the pure decisions for one service ([`plan_update`]; see its docs for batches,
//!   stop-first/start-first, monitoring, failure actions and the progress deadline).
//! - [`Updater`]: the loop that feeds it from the store and writes its decisions.
//!
//! Who owns what, beside the orchestrators:
//! - the updater replaces *dirty* tasks (running, not ended); the orchestrators keep owning
//!   missing slots, ended tasks (restart policy, with the current spec), scaling and nodes;
//! - a slot may briefly hold two runnable tasks during a start-first replacement (the old one
//!   of another spec, the new one of the current spec); the orchestrators leave the old one
//!   out of their decisions ([`orchestrator_view`]) and the updater retires it once the new
//!   one is up — also when the update is paused;
//! - the updater writes `Service.update_status`, and `spec`/`previous_spec` only for an
//!   automatic rollback; the Control API resets the status on every user update and sets
//!   ROLLBACK_STARTED for `berth service rollback`.
//!
//! Architecture invariant: every decision is derived from the store (status, specs, tasks and
//! their timestamps), so an update survives a leader change: the new leader's updater resumes
//! it from the store.

pub mod plan;
pub mod rollout;

#[cfg(test)]
mod loop_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use berth_proto::v1::Service;
use tokio_util::sync::CancellationToken;

pub use plan::{UpdateDecision, UpdateMemory, UpdatePlan, UpdaterSettings, plan_update, to_unit};
pub use rollout::{Rollout, is_task_dirty, is_up, orchestrator_view};

use super::driver::{Reconciler, drive};
use super::writer::{Unit, Writer};
use super::{OrchestratorConfig, OrchestratorError};
use crate::store::{ChangeSet, Event, Object, Store, StoreAction, Tables};

struct UpdateLoop {
    all: bool,
    services: BTreeSet<String>,
    timers: BTreeMap<String, SystemTime>,
    memory: HashMap<String, UpdateMemory>,
    settings: UpdaterSettings,
}

impl Reconciler for UpdateLoop {
    fn name(&self) -> &'static str {
        "updater"
    }

    fn observe(&mut self, changes: &ChangeSet) {
        for event in &changes.events {
            match event.object() {
                Object::Service(s) => {
                    self.services.insert(s.id.clone());
                }
                Object::Task(t) => {
                    if let Event::Updated {
                        old: Object::Task(o),
                        ..
                    } = event
                        && o.service_id != t.service_id
                    {
                        self.services.insert(o.service_id.clone());
                    }
                    if !t.service_id.is_empty() {
                        self.services.insert(t.service_id.clone());
                    }
                }
                _ => {}
            }
        }
    }

    fn mark_all(&mut self) {
        self.all = true;
    }

    fn mark_refused(&mut self, unit: &Unit) {
        for action in unit {
            match action {
                StoreAction::Create(Object::Task(t)) | StoreAction::Update(Object::Task(t)) => {
                    self.services.insert(t.service_id.clone());
                }
                StoreAction::Update(Object::Service(s)) => {
                    self.services.insert(s.id.clone());
                }
                _ => self.all = true,
            }
        }
    }

    fn is_dirty(&self) -> bool {
        self.all || !self.services.is_empty()
    }

    fn decide(&mut self, tables: &Tables, now: SystemTime) -> Vec<Unit> {
        let mut ids = std::mem::take(&mut self.services);
        if std::mem::take(&mut self.all) {
            ids.extend(tables.list::<Service>().iter().map(|s| s.id.clone()));
        }
        ids.extend(
            self.timers
                .iter()
                .filter(|(_, w)| **w <= now)
                .map(|(id, _)| id.clone()),
        );
        let mut units = Vec::new();
        for id in ids {
            let Some(service) = tables.get::<Service>(&id) else {
                self.timers.remove(&id);
                self.memory.remove(&id);
                continue;
            };
            let memory = self.memory.entry(id.clone()).or_default();
            let plan = plan_update(tables, &service, now, memory, &self.settings);
            match plan.wake_at {
                Some(w) => {
                    self.timers.insert(id.clone(), w);
                }
                None => {
                    self.timers.remove(&id);
                }
            }
            for d in &plan.decisions {
                tracing::debug!(service = %id, decision = ?d, "updater");
                if matches!(
                    d,
                    UpdateDecision::Pause { .. }
                        | UpdateDecision::Rollback { .. }
                        | UpdateDecision::Complete { .. }
                        | UpdateDecision::Begin
                ) {
                    tracing::info!(service = %id, decision = ?d, "updater");
                }
                units.extend(to_unit(tables, &service, d, now));
            }
        }
        units
    }

    fn next_wake(&self) -> Option<SystemTime> {
        self.timers.values().min().copied()
    }
}

/// Rolls services onto their current spec (leader only).
pub struct Updater {
    store: Store,
    writer: Arc<dyn Writer>,
    cfg: OrchestratorConfig,
}

impl Updater {
    /// An updater reading `store` and writing through `writer`.
    pub fn new(store: Store, writer: Arc<dyn Writer>, cfg: OrchestratorConfig) -> Self {
        Updater { store, writer, cfg }
    }

    /// Runs until `cancel` fires (Ok) or this manager stops being the leader (Err).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), OrchestratorError> {
        let r = UpdateLoop {
            all: true,
            services: BTreeSet::new(),
            timers: BTreeMap::new(),
            memory: HashMap::new(),
            settings: self.cfg.updater,
        };
        drive(
            r,
            &self.store,
            self.writer.as_ref(),
            self.cfg.clock.as_ref(),
            &self.cfg.pace(),
            &cancel,
        )
        .await
    }
}
