//! Service calls: create, get, list, task counts, update (or roll back) and remove.
//!
//! Validation is basic and explicit: the name (a DNS label, [`berth_proto::naming`]), an image,
//! non-negative resources (a memory limit of at least 4 MiB), a failure ratio in 0..=1, no
//! ingress ports with DNS round robin. Name and mode cannot change after creation.
//!
//! `spec_version` marks which spec tasks were made from. It is set when the spec changes:
//! 0 at creation, and on an update the `meta.version` the update was based on. Versions only
//! grow, so every spec change gets a new, larger `spec_version` (it is not the log index of the
//! write itself, which is unknown until it commits).
//!
//! Removing a service removes the object and sets every task of it to desired state REMOVE in
//! the same batch; the orchestrator and agents take them down.

use berth_proto::ids;
use berth_proto::naming::validate_service_name;
use berth_proto::v1::list_services_request::Filters;
use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    CreateServiceRequest, ResolutionMode, Service, ServiceSpec, ServiceStatus, Task, TaskState,
    UpdateServiceRequest, UpdateState, UpdateStatus,
};

use super::filters::{id_matches, labels_match, name_matches};
use super::status::ControlError;
use crate::raft::now;
use crate::raft_net::{ProposeError, Replica};
use crate::store::{By, ObjectKind, StoreActions, StoreError, StoreObject};

/// Smallest memory limit a container can start with (Swarm's).
const MIN_MEMORY_LIMIT: i64 = 4 * 1024 * 1024;

/// Checks a service spec (see the module docs).
pub fn validate(spec: &ServiceSpec) -> Result<(), ControlError> {
    let invalid = ControlError::InvalidArgument;
    let name = spec.annotations.as_ref().map_or("", |a| a.name.as_str());
    validate_service_name(name).map_err(|e| invalid(e.to_string()))?;
    let task = spec
        .task
        .as_ref()
        .ok_or_else(|| invalid("service spec has no task spec".into()))?;
    let container = task
        .container
        .as_ref()
        .ok_or_else(|| invalid("task spec has no container spec".into()))?;
    if container.image.trim().is_empty() {
        return Err(invalid("container image reference must be provided".into()));
    }
    if let Some(res) = &task.resources {
        for (what, r) in [("limits", &res.limits), ("reservations", &res.reservations)] {
            let Some(r) = r else { continue };
            if r.nano_cpus < 0 || r.memory_bytes < 0 || r.pids < 0 {
                return Err(invalid(format!("resource {what} must not be negative")));
            }
        }
        if let Some(l) = &res.limits
            && l.memory_bytes > 0
            && l.memory_bytes < MIN_MEMORY_LIMIT
        {
            return Err(invalid(format!(
                "memory limit {} bytes is below the minimum of 4MiB",
                l.memory_bytes
            )));
        }
    }
    for (what, cfg) in [("update", &spec.update), ("rollback", &spec.rollback)] {
        if let Some(c) = cfg
            && !(0.0..=1.0).contains(&c.max_failure_ratio)
        {
            return Err(invalid(format!(
                "{what} max failure ratio must be between 0 and 1"
            )));
        }
    }
    if let Some(ep) = &spec.endpoint
        && ep.mode == ResolutionMode::Dnsrr as i32
        && ep
            .ports
            .iter()
            .any(|p| p.publish_mode == berth_proto::v1::PublishMode::Ingress as i32)
    {
        return Err(invalid(
            "port published with ingress mode can't be used with dnsrr mode".into(),
        ));
    }
    Ok(())
}

fn service_name(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

/// Creates a service; its name must be free.
pub async fn create(replica: &Replica, req: CreateServiceRequest) -> Result<Service, ControlError> {
    let mut spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("service spec is required".into()))?;
    validate(&spec)?;
    replica
        .store()
        .view(|t| super::networks::resolve_service(t, &mut spec, ""))?;
    let id = ids::try_new_id().map_err(|e| ControlError::Internal(e.to_string()))?;
    let service = Service {
        id: id.clone(),
        spec: Some(spec),
        spec_version: 0,
        ..Default::default()
    };
    let mut batch = StoreActions::new();
    batch.create(service);
    replica.propose_and_wait(&batch).await?;
    get(replica, &id)
}

/// The service with this id.
pub fn get(replica: &Replica, id: &str) -> Result<Service, ControlError> {
    replica
        .store()
        .get::<Service>(id)
        .map(|s| (*s).clone())
        .ok_or_else(|| ControlError::not_found("service", id))
}

/// The services matching `f`, sorted by name.
pub fn list(replica: &Replica, f: &Filters) -> Vec<Service> {
    let mut services: Vec<Service> = replica
        .store()
        .list::<Service>()
        .iter()
        .filter(|s| {
            let labels = s
                .spec
                .as_ref()
                .and_then(|s| s.annotations.as_ref())
                .map(|a| a.labels.clone())
                .unwrap_or_default();
            id_matches(&s.id, &f.id_prefixes)
                && name_matches(service_name(s), &f.names, &f.name_prefixes)
                && labels_match(&labels, &f.labels)
        })
        .map(|s| (**s).clone())
        .collect();
    services.sort_by(|a, b| service_name(a).cmp(service_name(b)));
    services
}

/// Desired and running task counts of the given services (all when `ids` is empty).
pub fn statuses(replica: &Replica, ids: &[String]) -> Vec<ServiceStatus> {
    replica.store().view(|t| {
        t.table::<Service>()
            .iter()
            .filter(|s| ids.is_empty() || ids.contains(&s.id))
            .map(|s| {
                let wanted: Vec<_> = t
                    .table::<Task>()
                    .find(&By::ServiceId(s.id.clone()))
                    .filter(|task| task.desired_state == TaskState::Running as i32)
                    .collect();
                // A global service wants a task on every node its constraints admit: as
                // Docker does, count the tasks the orchestrator made for those nodes.
                let desired_tasks = match s.spec.as_ref().and_then(|s| s.mode.as_ref()) {
                    Some(Mode::Replicated(r)) => r.replicas,
                    Some(Mode::Global(_)) => wanted.len() as u64,
                    None => 1,
                };
                let running_tasks = wanted
                    .iter()
                    .filter(|task| {
                        task.status
                            .as_ref()
                            .is_some_and(|st| st.state == TaskState::Running as i32)
                    })
                    .count() as u64;
                ServiceStatus {
                    service_id: s.id.clone(),
                    desired_tasks,
                    running_tasks,
                }
            })
            .collect()
    })
}

/// The answer to an update based on a version that is no longer the stored one.
pub const OUT_OF_SEQUENCE: &str =
    "update out of sequence: the service was changed meanwhile; re-run the command";

/// Replaces a service's spec, or swaps it with the previous one (rollback).
///
/// The request carries the `meta.version` the caller read; if the service changed since, the
/// update is refused with [`OUT_OF_SEQUENCE`] (also when the change lands between this check
/// and the commit: the store refuses the stale version). A new spec resets `update_status`, so
/// the updater starts a rolling update of the tasks it makes dirty (and only then); a rollback
/// swaps `spec` and `previous_spec` (and their versions) and sets ROLLBACK_STARTED.
pub async fn update(replica: &Replica, req: UpdateServiceRequest) -> Result<Service, ControlError> {
    let stored = replica
        .store()
        .get::<Service>(&req.service_id)
        .ok_or_else(|| ControlError::not_found("service", &req.service_id))?;
    if stored.meta.as_ref().map_or(0, |m| m.version) != req.service_version {
        return Err(ControlError::FailedPrecondition(OUT_OF_SEQUENCE.into()));
    }
    let mut service = (*stored).clone();
    service.meta_mut().version = req.service_version;
    if req.rollback {
        let Some(previous) = service.previous_spec.take() else {
            return Err(ControlError::FailedPrecondition(format!(
                "service {} does not have a previous spec to roll back to",
                req.service_id
            )));
        };
        let current = service.spec.replace(previous);
        service.previous_spec = current;
        std::mem::swap(
            &mut service.spec_version,
            &mut service.previous_spec_version,
        );
        service.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted as i32,
            started_at: Some(now()),
            completed_at: None,
            message: "manually requested rollback".into(),
        });
    } else {
        let mut spec = req
            .spec
            .ok_or_else(|| ControlError::InvalidArgument("service spec is required".into()))?;
        validate(&spec)?;
        replica
            .store()
            .view(|t| super::networks::resolve_service(t, &mut spec, &req.service_id))?;
        let old = stored.spec.clone().unwrap_or_default();
        if old.annotations.as_ref().map(|a| &a.name) != spec.annotations.as_ref().map(|a| &a.name) {
            return Err(ControlError::Unimplemented(
                "renaming services is not supported".into(),
            ));
        }
        let same_mode = matches!(
            (&old.mode, &spec.mode),
            (
                None | Some(Mode::Replicated(_)),
                None | Some(Mode::Replicated(_))
            ) | (Some(Mode::Global(_)), Some(Mode::Global(_)))
        );
        if !same_mode {
            return Err(ControlError::Unimplemented(
                "service mode change is not allowed".into(),
            ));
        }
        service.previous_spec = service.spec.replace(spec);
        service.previous_spec_version = service.spec_version;
        service.spec_version = req.service_version;
        service.update_status = None;
    }
    let mut batch = StoreActions::new();
    batch.update(service);
    match replica.propose_and_wait(&batch).await {
        Err(ProposeError::Refused(e))
            if e.errors
                .iter()
                .any(|a| matches!(a.error, StoreError::OutOfSequence { .. })) =>
        {
            return Err(ControlError::FailedPrecondition(OUT_OF_SEQUENCE.into()));
        }
        other => other?,
    };
    get(replica, &req.service_id)
}

/// Removes a service and marks its tasks for removal.
pub async fn remove(replica: &Replica, id: &str) -> Result<(), ControlError> {
    // The tasks are marked REMOVE with the versions read here; the agents and the
    // orchestrators keep updating them, so a refused batch (a task moved meanwhile) is rebuilt
    // from a fresh read a few times instead of failing the user's `service rm`.
    let mut attempts = 0;
    loop {
        if replica.store().get::<Service>(id).is_none() {
            return Err(ControlError::not_found("service", id));
        }
        let mut batch = StoreActions::new();
        batch.remove(ObjectKind::Service, id);
        for task in replica.store().find::<Task>(&By::ServiceId(id.to_owned())) {
            if task.desired_state < TaskState::Remove as i32 {
                let mut task = (*task).clone();
                task.desired_state = TaskState::Remove as i32;
                batch.update(task);
            }
        }
        match replica.propose_and_wait(&batch).await {
            Ok(_) => return Ok(()),
            Err(ProposeError::Refused(_)) if attempts < 5 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{
        Annotations, ContainerSpec, EndpointSpec, PortConfig, ResourceRequirements, Resources,
        TaskSpec,
    };

    use super::*;

    fn spec(name: &str, image: &str) -> ServiceSpec {
        ServiceSpec {
            annotations: Some(Annotations {
                name: name.into(),
                ..Default::default()
            }),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn validation_refuses_what_swarm_refuses() {
        assert!(validate(&spec("web", "busybox")).is_ok());
        for (bad, why) in [
            (spec("", "busybox"), "empty name"),
            (spec("-web", "busybox"), "bad edge"),
            (spec("web", " "), "no image"),
        ] {
            assert!(
                matches!(validate(&bad), Err(ControlError::InvalidArgument(_))),
                "{why}"
            );
        }
        let mut s = spec("web", "busybox");
        s.task = None;
        assert!(validate(&s).is_err());
        let mut s = spec("web", "busybox");
        if let Some(t) = s.task.as_mut() {
            t.resources = Some(ResourceRequirements {
                limits: Some(Resources {
                    memory_bytes: 1024,
                    ..Default::default()
                }),
                reservations: None,
            });
        }
        let err = validate(&s).expect_err("tiny memory limit");
        assert!(err.to_string().contains("4MiB"), "{err}");
        let mut s = spec("web", "busybox");
        s.endpoint = Some(EndpointSpec {
            mode: ResolutionMode::Dnsrr as i32,
            ports: vec![PortConfig {
                target_port: 80,
                ..Default::default()
            }],
        });
        assert!(validate(&s).is_err());
    }
}
