//! Task calls: get and list (read-only; tasks are written by the orchestrator, scheduler and
//! dispatcher). Task names filter on the display form (`<service>.<slot>` or
//! `<service>.<node id>`), the names `berth service ps` prints. "Up to date" means made from
//! the service's current spec (the updater's notion of a clean task), whatever its version.

use std::cmp::Reverse;

use berth_proto::naming::task_display_name;
use berth_proto::v1::list_tasks_request::Filters;
use berth_proto::v1::{Service, Task};

use super::filters::{id_matches, labels_match, name_matches};
use super::status::ControlError;
use crate::orchestrator::update::is_task_dirty;
use crate::raft_net::Replica;
use crate::store::StoreObject;

/// The task with this id.
pub fn get(replica: &Replica, id: &str) -> Result<Task, ControlError> {
    replica
        .store()
        .get::<Task>(id)
        .map(|t| (*t).clone())
        .ok_or_else(|| ControlError::not_found("task", id))
}

/// The tasks matching `f`, sorted by service, slot (or node), then newest first.
pub fn list(replica: &Replica, f: &Filters) -> Vec<Task> {
    let mut tasks: Vec<Task> = replica.store().view(|t| {
        t.table::<Task>()
            .iter()
            .filter(|task| {
                let labels = task
                    .annotations
                    .as_ref()
                    .map(|a| a.labels.clone())
                    .unwrap_or_default();
                let up_to_date = !f.up_to_date
                    || t.get::<Service>(&task.service_id)
                        .is_some_and(|s| !is_task_dirty(&s, task));
                id_matches(&task.id, &f.id_prefixes)
                    && name_matches(&task_display_name(task), &f.names, &f.name_prefixes)
                    && labels_match(&labels, &f.labels)
                    && (f.service_ids.is_empty() || f.service_ids.contains(&task.service_id))
                    && (f.node_ids.is_empty() || f.node_ids.contains(&task.node_id))
                    && (f.desired_states.is_empty()
                        || f.desired_states.contains(&task.desired_state))
                    && (f.slots.is_empty() || f.slots.contains(&task.slot))
                    && up_to_date
            })
            .map(|task| (**task).clone())
            .collect()
    });
    tasks.sort_by_key(|t| {
        (
            t.service_id.clone(),
            t.slot,
            t.node_id.clone(),
            Reverse(
                t.meta
                    .as_ref()
                    .and_then(|m| m.created_at)
                    .map(|c| (c.seconds, c.nanos)),
            ),
            Reverse(t.version()),
        )
    });
    tasks
}
