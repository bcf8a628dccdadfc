//! [`Tables`]: the whole store state as a value — the seven tables, reads over them, the
//! transactional `apply` of a batch, and the deterministic dump used for Raft snapshots.
//!
//! Invariants:
//! - `apply` is a pure function of (state, log index, timestamp, batch): no clock, no I/O, no
//!   randomness, no panic on any batch. Every manager computes the same state and errors.
//! - A batch applies entirely or not at all; on refusal the tables are exactly as before.
//! - Every object written by a batch gets `meta.version` = the batch's log index.
//! - Cloning is O(1) (each table is behind an `Arc`); a write after a clone copies only the
//!   tables it touches (copy-on-write), so a snapshot never changes under its reader.

use std::sync::Arc;

use berth_proto::v1::{Cluster, Config, Network, Node, Secret, Service, Task};
use prost::Message;
use prost::encoding;
use prost_types::Timestamp;

use super::action::{StoreAction, StoreActions};
use super::error::{ActionError, ApplyError, ObjectKind, StoreError};
use super::object::{By, Object, StoreObject, with_object};
use super::table::Table;
use super::watch::{ChangeSet, Event};

/// The store state: seven tables and the log index of the last applied batch.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    version: u64,
    pub(crate) nodes: Arc<Table<Node>>,
    pub(crate) services: Arc<Table<Service>>,
    pub(crate) tasks: Arc<Table<Task>>,
    pub(crate) networks: Arc<Table<Network>>,
    pub(crate) secrets: Arc<Table<Secret>>,
    pub(crate) configs: Arc<Table<Config>>,
    pub(crate) clusters: Arc<Table<Cluster>>,
}

/// How to undo one applied action.
enum Undo {
    /// Put this object back (it was replaced or removed).
    Restore(Object),
    /// Delete this id (it was created).
    Delete(ObjectKind, String),
}

impl Tables {
    /// The log index of the last applied batch (0 for an empty store).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The table of kind `T`.
    pub fn table<T: StoreObject>(&self) -> &Table<T> {
        T::table(self)
    }

    /// The object of kind `T` with this id.
    pub fn get<T: StoreObject>(&self, id: &str) -> Option<Arc<T>> {
        self.table::<T>().get(id).cloned()
    }

    /// The object of kind `T` with this unique name (case-insensitive).
    pub fn get_by_name<T: StoreObject>(&self, name: &str) -> Option<Arc<T>> {
        self.table::<T>().get_by_name(name).cloned()
    }

    /// Every object of kind `T`, in id order.
    pub fn list<T: StoreObject>(&self) -> Vec<Arc<T>> {
        self.table::<T>().iter().cloned().collect()
    }

    /// The objects of kind `T` carrying index key `by`, in id order.
    pub fn find<T: StoreObject>(&self, by: &By) -> Vec<Arc<T>> {
        self.table::<T>().find(by).cloned().collect()
    }

    /// Total number of objects of every kind.
    pub fn object_count(&self) -> usize {
        self.nodes.len()
            + self.services.len()
            + self.tasks.len()
            + self.networks.len()
            + self.secrets.len()
            + self.configs.len()
            + self.clusters.len()
    }

    /// Applies `batch` as the entry at `log_index`, stamping written objects with
    /// `meta.version = log_index` and `timestamp`. All or nothing: on any refused action the
    /// tables are left unchanged and every refused action is listed.
    pub fn apply(
        &mut self,
        log_index: u64,
        timestamp: Timestamp,
        batch: StoreActions,
    ) -> Result<ChangeSet, ApplyError> {
        let mut undo = Vec::with_capacity(batch.actions.len());
        let mut events = Vec::with_capacity(batch.actions.len());
        let mut errors = Vec::new();
        for (index, action) in batch.actions.into_iter().enumerate() {
            match self.apply_action(log_index, timestamp, action) {
                Ok((event, u)) => {
                    events.push(event);
                    undo.push(u);
                }
                Err(error) => errors.push(ActionError { index, error }),
            }
        }
        if !errors.is_empty() {
            for u in undo.into_iter().rev() {
                self.undo(u);
            }
            return Err(ApplyError { errors });
        }
        self.version = log_index;
        Ok(ChangeSet::new(log_index, timestamp, events))
    }

    fn apply_action(
        &mut self,
        index: u64,
        ts: Timestamp,
        action: StoreAction,
    ) -> Result<(Event, Undo), StoreError> {
        match action {
            StoreAction::Create(obj) => with_object!(obj, o => self.create(index, ts, o)),
            StoreAction::Update(obj) => with_object!(obj, o => self.update(index, ts, o)),
            StoreAction::Remove { kind, id } => self.remove_kind(kind, &id),
        }
    }

    fn create<T: StoreObject>(
        &mut self,
        index: u64,
        ts: Timestamp,
        obj: Arc<T>,
    ) -> Result<(Event, Undo), StoreError> {
        let table = T::table(self);
        if obj.id().is_empty() {
            return Err(StoreError::Invalid {
                kind: T::KIND,
                reason: "object id is empty".into(),
            });
        }
        if table.get(obj.id()).is_some() {
            return Err(StoreError::AlreadyExists {
                kind: T::KIND,
                id: obj.id().to_owned(),
            });
        }
        if let Some(name) = obj.name()
            && table.name_owner(name).is_some()
        {
            return Err(StoreError::NameConflict {
                kind: T::KIND,
                name: name.to_owned(),
            });
        }
        let mut obj = obj;
        let o = Arc::make_mut(&mut obj);
        let meta = o.meta_mut();
        meta.version = index;
        meta.created_at = Some(ts);
        meta.updated_at = Some(ts);
        let id = o.id().to_owned();
        Arc::make_mut(T::table_mut(self)).put(obj.clone());
        Ok((
            Event::Created(T::into_object(obj)),
            Undo::Delete(T::KIND, id),
        ))
    }

    fn update<T: StoreObject>(
        &mut self,
        index: u64,
        ts: Timestamp,
        obj: Arc<T>,
    ) -> Result<(Event, Undo), StoreError> {
        let table = T::table(self);
        let Some(old) = table.get(obj.id()) else {
            return Err(StoreError::NotFound {
                kind: T::KIND,
                id: obj.id().to_owned(),
            });
        };
        if obj.version() != old.version() {
            return Err(StoreError::OutOfSequence {
                kind: T::KIND,
                id: obj.id().to_owned(),
                stored: old.version(),
                carried: obj.version(),
            });
        }
        if let Some(name) = obj.name()
            && table
                .name_owner(name)
                .is_some_and(|owner| owner != obj.id())
        {
            return Err(StoreError::NameConflict {
                kind: T::KIND,
                name: name.to_owned(),
            });
        }
        let created_at = old.meta().and_then(|m| m.created_at);
        let mut obj = obj;
        let o = Arc::make_mut(&mut obj);
        let meta = o.meta_mut();
        meta.version = index;
        meta.created_at = created_at;
        meta.updated_at = Some(ts);
        let old = Arc::make_mut(T::table_mut(self)).put(obj.clone());
        // The lookup above found it, and nothing ran in between.
        let old = old
            .map(T::into_object)
            .ok_or_else(|| StoreError::NotFound {
                kind: T::KIND,
                id: obj.id().to_owned(),
            })?;
        Ok((
            Event::Updated {
                old: old.clone(),
                new: T::into_object(obj),
            },
            Undo::Restore(old),
        ))
    }

    fn remove<T: StoreObject>(&mut self, id: &str) -> Result<(Event, Undo), StoreError> {
        if T::table(self).get(id).is_none() {
            return Err(StoreError::NotFound {
                kind: T::KIND,
                id: id.to_owned(),
            });
        }
        match Arc::make_mut(T::table_mut(self)).delete(id) {
            Some(old) => {
                let old = T::into_object(old);
                Ok((Event::Removed(old.clone()), Undo::Restore(old)))
            }
            None => Err(StoreError::NotFound {
                kind: T::KIND,
                id: id.to_owned(),
            }),
        }
    }

    fn remove_kind(&mut self, kind: ObjectKind, id: &str) -> Result<(Event, Undo), StoreError> {
        match kind {
            ObjectKind::Node => self.remove::<Node>(id),
            ObjectKind::Service => self.remove::<Service>(id),
            ObjectKind::Task => self.remove::<Task>(id),
            ObjectKind::Network => self.remove::<Network>(id),
            ObjectKind::Secret => self.remove::<Secret>(id),
            ObjectKind::Config => self.remove::<Config>(id),
            ObjectKind::Cluster => self.remove::<Cluster>(id),
        }
    }

    fn put_back<T: StoreObject>(&mut self, obj: Arc<T>) {
        Arc::make_mut(T::table_mut(self)).put(obj);
    }

    fn delete_kind(&mut self, kind: ObjectKind, id: &str) {
        fn del<T: StoreObject>(tables: &mut Tables, id: &str) {
            Arc::make_mut(T::table_mut(tables)).delete(id);
        }
        match kind {
            ObjectKind::Node => del::<Node>(self, id),
            ObjectKind::Service => del::<Service>(self, id),
            ObjectKind::Task => del::<Task>(self, id),
            ObjectKind::Network => del::<Network>(self, id),
            ObjectKind::Secret => del::<Secret>(self, id),
            ObjectKind::Config => del::<Config>(self, id),
            ObjectKind::Cluster => del::<Cluster>(self, id),
        }
    }

    fn undo(&mut self, u: Undo) {
        match u {
            Undo::Restore(obj) => with_object!(obj, o => self.put_back(o)),
            Undo::Delete(kind, id) => self.delete_kind(kind, &id),
        }
    }

    /// Encodes the whole state deterministically: objects of each kind in id order.
    ///
    /// Layout: `message StoreDump { uint64 version = 1; repeated Node nodes = 2;
    /// repeated Service services = 3; repeated Task tasks = 4; repeated Network networks = 5;
    /// repeated Secret secrets = 6; repeated Config configs = 7; repeated Cluster clusters = 8; }`
    pub fn encode_dump(&self) -> Vec<u8> {
        fn len<T: StoreObject>(tag: u32, t: &Table<T>) -> usize {
            t.iter()
                .map(|o| encoding::message::encoded_len(tag, o.as_ref()))
                .sum()
        }
        fn put<T: StoreObject>(tag: u32, t: &Table<T>, buf: &mut Vec<u8>) {
            for o in t.iter() {
                encoding::message::encode(tag, o.as_ref(), buf);
            }
        }
        let total = encoding::uint64::encoded_len(1, &self.version)
            + len(2, &self.nodes)
            + len(3, &self.services)
            + len(4, &self.tasks)
            + len(5, &self.networks)
            + len(6, &self.secrets)
            + len(7, &self.configs)
            + len(8, &self.clusters);
        let mut buf = Vec::with_capacity(total);
        if self.version != 0 {
            encoding::uint64::encode(1, &self.version, &mut buf);
        }
        put(2, &self.nodes, &mut buf);
        put(3, &self.services, &mut buf);
        put(4, &self.tasks, &mut buf);
        put(5, &self.networks, &mut buf);
        put(6, &self.secrets, &mut buf);
        put(7, &self.configs, &mut buf);
        put(8, &self.clusters, &mut buf);
        buf
    }

    /// Rebuilds the state (with its indexes) from [`Tables::encode_dump`] bytes. Refuses,
    /// without panicking, bytes that do not decode or objects that break the table invariants
    /// (empty or duplicate ids, duplicate names).
    pub fn decode_dump(bytes: &[u8]) -> Result<Tables, StoreError> {
        let err = |reason: String| StoreError::Decode {
            what: "store dump".into(),
            reason,
        };
        let dump = DumpPb::decode(bytes).map_err(|e| err(e.to_string()))?;
        fn fill<T: StoreObject>(
            objects: Vec<T>,
            table: &mut Arc<Table<T>>,
            err: &dyn Fn(String) -> StoreError,
        ) -> Result<(), StoreError> {
            let t = Arc::make_mut(table);
            for obj in objects {
                if obj.id().is_empty() {
                    return Err(err(format!("a {} with an empty id", T::KIND)));
                }
                if t.get(obj.id()).is_some() {
                    return Err(err(format!("{} {:?} appears twice", T::KIND, obj.id())));
                }
                if let Some(name) = obj.name()
                    && t.name_owner(name).is_some()
                {
                    return Err(err(format!("{} name {name:?} appears twice", T::KIND)));
                }
                t.put(Arc::new(obj));
            }
            Ok(())
        }
        let mut tables = Tables {
            version: dump.version,
            ..Tables::default()
        };
        fill(dump.nodes, &mut tables.nodes, &err)?;
        fill(dump.services, &mut tables.services, &err)?;
        fill(dump.tasks, &mut tables.tasks, &err)?;
        fill(dump.networks, &mut tables.networks, &err)?;
        fill(dump.secrets, &mut tables.secrets, &err)?;
        fill(dump.configs, &mut tables.configs, &err)?;
        fill(dump.clusters, &mut tables.clusters, &err)?;
        Ok(tables)
    }
}

/// Decoding side of the dump layout documented on [`Tables::encode_dump`].
#[derive(Clone, PartialEq, prost::Message)]
struct DumpPb {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(message, repeated, tag = "2")]
    nodes: Vec<Node>,
    #[prost(message, repeated, tag = "3")]
    services: Vec<Service>,
    #[prost(message, repeated, tag = "4")]
    tasks: Vec<Task>,
    #[prost(message, repeated, tag = "5")]
    networks: Vec<Network>,
    #[prost(message, repeated, tag = "6")]
    secrets: Vec<Secret>,
    #[prost(message, repeated, tag = "7")]
    configs: Vec<Config>,
    #[prost(message, repeated, tag = "8")]
    clusters: Vec<Cluster>,
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Annotations, Meta, ServiceSpec, TaskStatus};

    use super::*;
    use crate::store::object::timestamp;

    fn ts(s: i64) -> Timestamp {
        timestamp(s, 0)
    }

    fn service(id: &str, name: &str, version: u64) -> Service {
        Service {
            id: id.into(),
            meta: (version > 0).then(|| Meta {
                version,
                ..Default::default()
            }),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(id: &str, service_id: &str, slot: u64, version: u64) -> Task {
        Task {
            id: id.into(),
            meta: (version > 0).then(|| Meta {
                version,
                ..Default::default()
            }),
            service_id: service_id.into(),
            slot,
            desired_state: 512,
            ..Default::default()
        }
    }

    fn batch(actions: Vec<StoreAction>) -> StoreActions {
        StoreActions { actions }
    }

    fn create(o: impl Into<Object>) -> StoreAction {
        StoreAction::Create(o.into())
    }

    fn update(o: impl Into<Object>) -> StoreAction {
        StoreAction::Update(o.into())
    }

    fn remove(kind: ObjectKind, id: &str) -> StoreAction {
        StoreAction::Remove {
            kind,
            id: id.into(),
        }
    }

    /// A store with service s1 "web" and task t1 written at index 10, service s2 "api" at 11.
    fn seeded() -> Tables {
        let mut t = Tables::default();
        t.apply(
            10,
            ts(100),
            batch(vec![
                create(service("s1", "web", 0)),
                create(task("t1", "s1", 1, 0)),
            ]),
        )
        .expect("seed 10");
        t.apply(11, ts(110), batch(vec![create(service("s2", "api", 0))]))
            .expect("seed 11");
        t
    }

    #[test]
    fn create_stamps_version_and_times_from_the_entry() {
        let t = seeded();
        let s1 = t.get::<Service>("s1").expect("s1");
        let meta = s1.meta.expect("meta");
        assert_eq!(
            (meta.version, meta.created_at, meta.updated_at),
            (10, Some(ts(100)), Some(ts(100)))
        );
        assert_eq!(t.version(), 11);
        assert_eq!(t.get::<Task>("t1").map(|t| t.version()), Some(10));
    }

    #[test]
    fn single_action_outcomes() {
        use StoreError::*;
        use berth_proto::v1::Node;
        let kind = ObjectKind::Service;
        let cases: Vec<(&str, StoreAction, Result<(), StoreError>)> = vec![
            ("create new", create(service("s3", "db", 0)), Ok(())),
            (
                "create existing id",
                create(service("s1", "other", 0)),
                Err(AlreadyExists {
                    kind,
                    id: "s1".into(),
                }),
            ),
            (
                "create empty id",
                create(service("", "x", 0)),
                Err(Invalid {
                    kind,
                    reason: "object id is empty".into(),
                }),
            ),
            (
                "create taken name",
                create(service("s3", "web", 0)),
                Err(NameConflict {
                    kind,
                    name: "web".into(),
                }),
            ),
            (
                "create taken name, other case",
                create(service("s3", "WEB", 0)),
                Err(NameConflict {
                    kind,
                    name: "WEB".into(),
                }),
            ),
            (
                "create unnamed objects never conflict",
                create(Node {
                    id: "n1".into(),
                    ..Default::default()
                }),
                Ok(()),
            ),
            (
                "update at stored version",
                update(service("s1", "web", 10)),
                Ok(()),
            ),
            (
                "update renamed to a free name",
                update(service("s1", "frontend", 10)),
                Ok(()),
            ),
            (
                "update case change of own name",
                update(service("s1", "Web", 10)),
                Ok(()),
            ),
            (
                "update at old version",
                update(service("s1", "web", 9)),
                Err(OutOfSequence {
                    kind,
                    id: "s1".into(),
                    stored: 10,
                    carried: 9,
                }),
            ),
            (
                "update without meta",
                update(service("s1", "web", 0)),
                Err(OutOfSequence {
                    kind,
                    id: "s1".into(),
                    stored: 10,
                    carried: 0,
                }),
            ),
            (
                "update renamed onto another's name",
                update(service("s1", "api", 10)),
                Err(NameConflict {
                    kind,
                    name: "api".into(),
                }),
            ),
            (
                "update missing",
                update(service("s9", "x", 1)),
                Err(NotFound {
                    kind,
                    id: "s9".into(),
                }),
            ),
            ("remove existing", remove(ObjectKind::Task, "t1"), Ok(())),
            (
                "remove missing",
                remove(ObjectKind::Task, "t9"),
                Err(NotFound {
                    kind: ObjectKind::Task,
                    id: "t9".into(),
                }),
            ),
            (
                "remove with the wrong kind",
                remove(ObjectKind::Node, "s1"),
                Err(NotFound {
                    kind: ObjectKind::Node,
                    id: "s1".into(),
                }),
            ),
        ];
        for (name, action, want) in cases {
            let mut t = seeded();
            let before = t.encode_dump();
            let got = t.apply(12, ts(120), batch(vec![action])).map(|_| ());
            let want = want.map_err(|error| ApplyError {
                errors: vec![ActionError { index: 0, error }],
            });
            assert_eq!(got, want, "{name}");
            if got.is_err() {
                assert_eq!(
                    t.encode_dump(),
                    before,
                    "{name}: a refused batch changed the store"
                );
            } else {
                assert_eq!(t.version(), 12, "{name}");
            }
        }
    }

    #[test]
    fn update_keeps_created_and_moves_updated() {
        let mut t = seeded();
        let mut s1 = (*t.get::<Service>("s1").expect("s1")).clone();
        s1.spec_version = 7;
        t.apply(15, ts(150), batch(vec![update(s1)]))
            .expect("update");
        let meta = t.get::<Service>("s1").and_then(|s| s.meta).expect("meta");
        assert_eq!(
            (meta.version, meta.created_at, meta.updated_at),
            (15, Some(ts(100)), Some(ts(150)))
        );
    }

    #[test]
    fn a_refused_batch_changes_nothing_and_lists_every_refusal() {
        let mut t = seeded();
        let before = t.encode_dump();
        let snapshot = t.clone();
        let mut t1 = task("t1", "s1", 1, 10);
        t1.node_id = "n1".into();
        let res = t.apply(
            12,
            ts(120),
            batch(vec![
                create(service("s3", "db", 0)),    // ok
                update(t1),                        // ok: moves t1 to node n1
                remove(ObjectKind::Service, "s2"), // ok
                create(task("t2", "s3", 1, 0)),    // ok
                create(service("s4", "DB", 0)),    // name taken by s3 created above
                update(service("s1", "web", 3)),   // stale
            ]),
        );
        let errs = res.expect_err("refused");
        assert_eq!(
            errs.errors.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert!(matches!(
            errs.errors[0].error,
            StoreError::NameConflict { .. }
        ));
        assert!(matches!(
            errs.errors[1].error,
            StoreError::OutOfSequence {
                stored: 10,
                carried: 3,
                ..
            }
        ));
        assert_eq!(t.encode_dump(), before);
        assert_eq!(t.version(), 11);
        // Indexes were rolled back too.
        assert!(t.find::<Task>(&By::NodeId("n1".into())).is_empty());
        assert_eq!(t.find::<Task>(&By::ServiceId("s1".into())).len(), 1);
        assert!(t.get_by_name::<Service>("db").is_none());
        assert!(t.get_by_name::<Service>("api").is_some());
        // And the snapshot taken before never saw any of it.
        assert_eq!(snapshot.encode_dump(), before);
    }

    #[test]
    fn change_sets_report_one_event_per_action() {
        let mut t = seeded();
        let changes = t
            .apply(
                12,
                ts(120),
                batch(vec![
                    create(task("t2", "s1", 2, 0)),
                    update(task("t1", "s1", 1, 10)),
                    remove(ObjectKind::Service, "s2"),
                ]),
            )
            .expect("apply");
        assert_eq!(changes.version, 12);
        assert_eq!(changes.timestamp, ts(120));
        match changes.events.as_slice() {
            [
                Event::Created(c),
                Event::Updated { old, new },
                Event::Removed(r),
            ] => {
                assert_eq!((c.id(), c.version()), ("t2", 12));
                assert_eq!((old.version(), new.version()), (10, 12));
                assert_eq!((r.kind(), r.id()), (ObjectKind::Service, "s2"));
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[test]
    fn snapshots_are_isolated_from_later_writes() {
        let mut t = seeded();
        let snap = t.clone();
        t.apply(
            12,
            ts(120),
            batch(vec![
                create(task("t2", "s1", 2, 0)),
                remove(ObjectKind::Task, "t1"),
            ]),
        )
        .expect("apply");
        assert_eq!(
            snap.list::<Task>()
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            ["t1"]
        );
        assert_eq!(
            t.list::<Task>()
                .iter()
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            ["t2"]
        );
        assert_eq!(snap.version(), 11);
    }

    #[test]
    fn task_indexes_answer_find() {
        let mut t = seeded();
        let mut placed = task("t2", "s1", 2, 0);
        placed.node_id = "n1".into();
        placed.status = Some(TaskStatus {
            state: 192,
            ..Default::default()
        });
        let mut old_attempt = task("t3", "s1", 2, 0);
        old_attempt.desired_state = 640;
        t.apply(
            12,
            ts(120),
            batch(vec![
                create(placed),
                create(old_attempt),
                create(task("t4", "s2", 1, 0)),
            ]),
        )
        .expect("apply");
        let ids = |v: Vec<Arc<Task>>| v.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(t.find(&By::ServiceId("s1".into()))), ["t1", "t2", "t3"]);
        assert_eq!(
            ids(t.find(&By::Slot {
                service_id: "s1".into(),
                slot: 2
            })),
            ["t2", "t3"]
        );
        assert_eq!(ids(t.find(&By::NodeId("n1".into()))), ["t2"]);
        assert_eq!(ids(t.find(&By::DesiredState(640))), ["t3"]);
        assert_eq!(ids(t.find(&By::DesiredState(512))), ["t1", "t2", "t4"]);
        assert_eq!(ids(t.find(&By::State(192))), ["t2"]);
        assert_eq!(t.table::<Task>().count(&By::ServiceId("s2".into())), 1);
    }

    #[test]
    fn dumps_are_deterministic_and_restore_with_indexes() {
        let build = || {
            let mut t = seeded();
            t.apply(
                12,
                ts(120),
                batch(vec![
                    create(task("t2", "s2", 1, 0)),
                    remove(ObjectKind::Service, "s1"),
                ]),
            )
            .expect("apply");
            t
        };
        let (a, b) = (build(), build());
        let dump = a.encode_dump();
        assert_eq!(dump, b.encode_dump());
        let restored = Tables::decode_dump(&dump).expect("decode");
        assert_eq!(restored.encode_dump(), dump);
        assert_eq!(restored.version(), 12);
        assert_eq!(restored.find::<Task>(&By::ServiceId("s2".into())).len(), 1);
        assert!(restored.get_by_name::<Service>("API").is_some());
        assert_eq!(restored.object_count(), 3);
        // The empty store dumps to nothing and back.
        assert_eq!(
            Tables::decode_dump(&Tables::default().encode_dump()).map(|t| t.object_count()),
            Ok(0)
        );
    }

    #[test]
    fn corrupt_dumps_are_refused() {
        let dup_id = DumpPb {
            tasks: vec![task("t1", "", 0, 1), task("t1", "", 0, 2)],
            ..Default::default()
        };
        let dup_name = DumpPb {
            services: vec![service("s1", "web", 1), service("s2", "Web", 1)],
            ..Default::default()
        };
        let empty_id = DumpPb {
            tasks: vec![task("", "", 0, 1)],
            ..Default::default()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", vec![0x0a, 0xff, 0xff, 0xff]),
            ("duplicate id", dup_id.encode_to_vec()),
            ("duplicate name", dup_name.encode_to_vec()),
            ("empty id", empty_id.encode_to_vec()),
        ];
        for (name, bytes) in cases {
            assert!(
                matches!(Tables::decode_dump(&bytes), Err(StoreError::Decode { .. })),
                "{name} was accepted"
            );
        }
    }
}
