//! What secrets and configs share: data size checks, listing, "in use by" checks, and
//! versioned rotation (beyond Swarm, where both are immutable).
//!
//! Rotation of object `NAME` (id `old`, version label `v`, 1 when absent), in ONE store
//! batch, so the cluster never sees half of it:
//! 1. the old object is renamed `NAME.v<v>` if a service's current or previous spec uses
//!    it (a rollback must still find the old content), or removed otherwise; older versions
//!    of the same line (`…previous` labels) that nothing uses any more are removed too;
//! 2. a new object (new id) takes `NAME`, with the new data, the old labels, and the labels
//!    `berth.<kind>.version = v + 1` and `berth.<kind>.previous = old`;
//! 3. every service whose spec uses `old` gets a new spec using the new id (previous spec =
//!    the old one, as a service update does), which the orchestrator rolls out.
//!
//! Object versions are checked: a rotation based on a stale read of the object fails "out of
//! sequence"; one that raced a write of a service it moves is rebuilt and retried.

use std::collections::HashSet;

use berth_proto::ids;
use berth_proto::v1::{Annotations, Config, ContainerSpec, Secret, Service};

use super::filters::{id_matches, labels_match, name_matches};
use super::status::ControlError;
use crate::raft_net::{ProposeError, Replica};
use crate::store::{Object, ObjectKind, StoreActions, StoreError, StoreObject, Tables};

/// A secret or a config.
pub trait Payload: StoreObject + Into<Object> {
    /// "secret" or "config".
    const WHAT: &'static str;
    /// The store kind.
    const OBJECT_KIND: ObjectKind;

    /// Name and labels.
    fn annotations(&self) -> Option<&Annotations>;
    /// Name and labels, created when missing.
    fn annotations_mut(&mut self) -> &mut Annotations;
    /// The ids of this kind a container spec references.
    fn used_by(c: &ContainerSpec) -> Vec<&str>;
    /// Makes every reference to `old` in `c` point at `new`.
    fn retarget(c: &mut ContainerSpec, old: &str, new: &str);

    /// The object's name ("" when unset).
    fn object_name(&self) -> &str {
        self.annotations().map_or("", |a| a.name.as_str())
    }
    /// The label holding this object's version.
    fn version_label() -> String {
        format!("berth.{}.version", Self::WHAT)
    }
    /// The label holding the id of the version this one replaced.
    fn previous_label() -> String {
        format!("berth.{}.previous", Self::WHAT)
    }
    /// This object's version (1 when never rotated).
    fn data_version(&self) -> u64 {
        self.annotations()
            .and_then(|a| a.labels.get(&Self::version_label()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }
}

impl Payload for Secret {
    const WHAT: &'static str = "secret";
    const OBJECT_KIND: ObjectKind = ObjectKind::Secret;

    fn annotations(&self) -> Option<&Annotations> {
        self.spec.as_ref().and_then(|s| s.annotations.as_ref())
    }
    fn annotations_mut(&mut self) -> &mut Annotations {
        self.spec
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
    }
    fn used_by(c: &ContainerSpec) -> Vec<&str> {
        c.secrets.iter().map(|r| r.secret_id.as_str()).collect()
    }
    fn retarget(c: &mut ContainerSpec, old: &str, new: &str) {
        for r in &mut c.secrets {
            if r.secret_id == old {
                r.secret_id = new.to_owned();
            }
        }
    }
}

impl Payload for Config {
    const WHAT: &'static str = "config";
    const OBJECT_KIND: ObjectKind = ObjectKind::Config;

    fn annotations(&self) -> Option<&Annotations> {
        self.spec.as_ref().and_then(|s| s.annotations.as_ref())
    }
    fn annotations_mut(&mut self) -> &mut Annotations {
        self.spec
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
    }
    fn used_by(c: &ContainerSpec) -> Vec<&str> {
        c.configs.iter().map(|r| r.config_id.as_str()).collect()
    }
    fn retarget(c: &mut ContainerSpec, old: &str, new: &str) {
        for r in &mut c.configs {
            if r.config_id == old {
                r.config_id = new.to_owned();
            }
        }
    }
}

/// Refuses data outside 1 byte ..< `max` bytes, as Swarm does.
pub fn check_size(what: &str, len: usize, max: usize) -> Result<(), ControlError> {
    if len == 0 || len >= max {
        return Err(ControlError::InvalidArgument(format!(
            "{what} data must be larger than 0 and less than {} KiB (got {len} bytes)",
            max / 1024
        )));
    }
    Ok(())
}

fn container(spec: Option<&berth_proto::v1::ServiceSpec>) -> Option<&ContainerSpec> {
    spec.and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
}

fn service_name(s: &Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

/// Names of the services whose current spec (and, with `previous`, previous spec) uses the
/// object `id` of kind `T`, sorted.
pub fn users<T: Payload>(services: &[&Service], id: &str, previous: bool) -> Vec<String> {
    let mut names: Vec<String> = services
        .iter()
        .filter(|s| {
            let uses = |spec| container(spec).is_some_and(|c| T::used_by(c).contains(&id));
            uses(s.spec.as_ref()) || (previous && uses(s.previous_spec.as_ref()))
        })
        .map(|s| service_name(s).to_owned())
        .collect();
    names.sort();
    names
}

/// The objects matching the filters, sorted by name.
pub fn list<T: Payload>(
    tables: &Tables,
    names: &[String],
    name_prefixes: &[String],
    id_prefixes: &[String],
    labels: &std::collections::HashMap<String, String>,
) -> Vec<T> {
    let mut found: Vec<T> = tables
        .list::<T>()
        .iter()
        .filter(|o| {
            let empty = Default::default();
            let object_labels = o.annotations().map_or(&empty, |a| &a.labels);
            id_matches(o.id(), id_prefixes)
                && name_matches(o.object_name(), names, name_prefixes)
                && labels_match(object_labels, labels)
        })
        .map(|o| (**o).clone())
        .collect();
    found.sort_by(|a, b| a.object_name().cmp(b.object_name()));
    found
}

/// Refuses removing an object a service uses, naming the services (Swarm's message).
pub fn check_unused<T: Payload>(tables: &Tables, obj: &T) -> Result<(), ControlError> {
    let services = tables.list::<Service>();
    let refs: Vec<&Service> = services.iter().map(|s| &**s).collect();
    let users = users::<T>(&refs, obj.id(), false);
    if users.is_empty() {
        return Ok(());
    }
    let noun = if users.len() == 1 {
        "service"
    } else {
        "services"
    };
    Err(ControlError::FailedPrecondition(format!(
        "{} '{}' is in use by the following {noun}: {}",
        T::WHAT,
        obj.object_name(),
        users.join(", ")
    )))
}

/// What a rotation wrote.
#[derive(Debug)]
pub struct Rotated {
    /// The new object's id.
    pub id: String,
    /// The services moved onto it.
    pub service_ids: Vec<String>,
}

/// How many times a rotation is rebuilt when a service it moves was written meanwhile (the
/// orchestrators write services too: update status, endpoints).
const ROTATE_ATTEMPTS: usize = 5;

/// Rotates `old_id` (read at `version`): see the module docs. `make_new(id, annotations)`
/// builds the new object with its data.
pub async fn rotate<T: Payload>(
    replica: &Replica,
    old_id: &str,
    version: u64,
    make_new: impl Fn(&str, Annotations) -> Result<T, ControlError>,
) -> Result<Rotated, ControlError> {
    let new_id = ids::try_new_id().map_err(|e| ControlError::Internal(e.to_string()))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (batch, service_ids) = rotation_batch(replica, old_id, version, &new_id, &make_new)?;
        match replica.propose_and_wait(&batch).await {
            Ok(_) => {
                return Ok(Rotated {
                    id: new_id,
                    service_ids,
                });
            }
            Err(ProposeError::Refused(e))
                if attempt < ROTATE_ATTEMPTS
                    && matches!(e.first(), Some(StoreError::OutOfSequence { .. })) =>
            {
                // A service moved meanwhile: let this replica see it, then rebuild (the
                // rotated object's own version is checked again on the rebuild).
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The one batch of a rotation, from the current store (see the module docs).
fn rotation_batch<T: Payload>(
    replica: &Replica,
    old_id: &str,
    version: u64,
    new_id: &str,
    make_new: &impl Fn(&str, Annotations) -> Result<T, ControlError>,
) -> Result<(StoreActions, Vec<String>), ControlError> {
    replica.store().view(|t| -> Result<_, ControlError> {
        let old = t
            .get::<T>(old_id)
            .ok_or_else(|| ControlError::not_found(T::WHAT, old_id))?;
        if old.version() != version {
            return Err(ControlError::FailedPrecondition(format!(
                "update out of sequence: {} {old_id:?} is at version {}, the rotation was based on version {version}",
                T::WHAT,
                old.version()
            )));
        }
        let name = old.object_name().to_owned();
        let v = old.data_version();
        let mut annotations = old.annotations().cloned().unwrap_or_default();
        annotations
            .labels
            .insert(T::version_label(), (v + 1).to_string());
        annotations
            .labels
            .insert(T::previous_label(), old_id.to_owned());
        annotations.name = name.clone();
        let new = make_new(new_id, annotations)?;

        // The services after the rotation.
        let mut services: Vec<Service> = t.list::<Service>().iter().map(|s| (**s).clone()).collect();
        let mut moved = Vec::new();
        for s in &mut services {
            let uses = container(s.spec.as_ref()).is_some_and(|c| T::used_by(c).contains(&old_id));
            if !uses {
                continue;
            }
            let mut spec = s.spec.clone().unwrap_or_default();
            if let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) {
                T::retarget(c, old_id, new_id);
            }
            s.previous_spec = s.spec.replace(spec);
            s.previous_spec_version = s.spec_version;
            s.spec_version = s.version();
            s.update_status = None;
            moved.push(s.id.clone());
        }
        let after: Vec<&Service> = services.iter().collect();
        let still_used = |id: &str| !users::<T>(&after, id, true).is_empty();

        let mut batch = StoreActions::new();
        if still_used(old_id) {
            let mut kept = (*old).clone();
            let a = kept.annotations_mut();
            a.name = format!("{name}.v{v}");
            a.labels.insert(T::version_label(), v.to_string());
            batch.update(kept);
        } else {
            batch.remove(T::OBJECT_KIND, old_id);
        }
        // Older versions of this line that nothing uses any more.
        let mut seen = HashSet::from([old_id.to_owned()]);
        let mut previous = old
            .annotations()
            .and_then(|a| a.labels.get(&T::previous_label()))
            .cloned();
        while let Some(id) = previous.take() {
            if !seen.insert(id.clone()) {
                break;
            }
            let Some(ancestor) = t.get::<T>(&id) else { break };
            if !still_used(&id) {
                batch.remove(T::OBJECT_KIND, id.clone());
            }
            previous = ancestor
                .annotations()
                .and_then(|a| a.labels.get(&T::previous_label()))
                .cloned();
        }
        batch.create(new);
        for s in services.into_iter().filter(|s| moved.contains(&s.id)) {
            batch.update(s);
        }
        Ok((batch, moved))
    })
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{SecretReference, ServiceSpec, TaskSpec};

    use super::*;

    fn service(name: &str, secret: &str, previous: Option<&str>) -> Service {
        let spec = |id: &str| ServiceSpec {
            annotations: Some(Annotations {
                name: name.into(),
                ..Default::default()
            }),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    secrets: vec![SecretReference {
                        secret_id: id.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Service {
            id: name.into(),
            spec: Some(spec(secret)),
            previous_spec: previous.map(spec),
            ..Default::default()
        }
    }

    #[test]
    fn users_are_named_and_sorted() {
        let a = service("web", "s1", None);
        let b = service("api", "s1", None);
        let c = service("db", "s2", Some("s1"));
        let all = [&a, &b, &c];
        assert_eq!(users::<Secret>(&all, "s1", false), ["api", "web"]);
        assert_eq!(users::<Secret>(&all, "s1", true), ["api", "db", "web"]);
        assert!(users::<Config>(&all, "s1", true).is_empty());
    }

    #[test]
    fn sizes_follow_swarm() {
        assert!(check_size("secret", 1, 500 * 1024).is_ok());
        assert!(check_size("secret", 500 * 1024 - 1, 500 * 1024).is_ok());
        let err = check_size("secret", 500 * 1024, 500 * 1024).unwrap_err();
        assert!(err.to_string().contains("less than 500 KiB"), "{err}");
        assert!(check_size("config", 0, 1000 * 1024).is_err());
    }

    #[test]
    fn versions_come_from_labels() {
        let mut s = Secret::default();
        assert_eq!(s.data_version(), 1);
        s.annotations_mut()
            .labels
            .insert(Secret::version_label(), "4".into());
        assert_eq!(s.data_version(), 4);
        assert_eq!(Secret::previous_label(), "berth.secret.previous");
    }
}
