//! What the store needs to know about each object kind: its id, its meta, its unique name and
//! its secondary index keys, plus [`Object`], a handle on any one stored object.
//!
//! Invariant: index keys are computed only from the object itself, so removing an object
//! removes exactly the keys inserting it added.

use std::sync::Arc;

use berth_proto::v1::{Cluster, Config, Meta, Network, Node, Secret, Service, Task};
use prost_types::Timestamp;

use super::error::ObjectKind;
use super::table::Table;
use super::tables::Tables;

/// A secondary index key: `find(By::ServiceId(..))` lists the objects that carry it.
///
/// Unique names are kept apart (see [`StoreObject::name`] and `get_by_name`), because they are
/// a constraint as well as an index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum By {
    /// Tasks of a service.
    ServiceId(String),
    /// Tasks placed on a node.
    NodeId(String),
    /// Tasks of one slot of a service (every attempt, old and current).
    Slot {
        /// The service.
        service_id: String,
        /// The slot number (0 for global services' tasks).
        slot: u64,
    },
    /// Tasks with this desired state (a `TaskState` value).
    DesiredState(i32),
    /// Tasks whose observed state (`status.state`) is this `TaskState` value.
    State(i32),
}

/// A kind of object the store keeps in a table of its own.
///
/// Implemented for the seven `berth_proto::v1` objects; the store is generic over this trait.
pub trait StoreObject:
    prost::Message + Default + Clone + PartialEq + Send + Sync + 'static
{
    /// The kind, for messages and wire numbers.
    const KIND: ObjectKind;

    /// The object's id (never empty once stored).
    fn id(&self) -> &str;

    /// The store bookkeeping, if set.
    fn meta(&self) -> Option<&Meta>;

    /// The store bookkeeping, created empty when unset.
    fn meta_mut(&mut self) -> &mut Meta;

    /// The name that must be unique among objects of this kind (compared case-insensitively),
    /// or `None` for kinds without unique names (nodes, tasks) and for an empty name.
    fn name(&self) -> Option<&str>;

    /// Appends this object's secondary index keys to `out`.
    fn index_keys(&self, out: &mut Vec<By>);

    /// The table of this kind in `tables`.
    fn table(tables: &Tables) -> &Arc<Table<Self>>;

    /// The table of this kind in `tables`, mutably (copy-on-write through `Arc::make_mut`).
    fn table_mut(tables: &mut Tables) -> &mut Arc<Table<Self>>;

    /// Wraps a shared object into an [`Object`].
    fn into_object(obj: Arc<Self>) -> Object;

    /// The version stored in meta (0 when unset).
    fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.version)
    }
}

fn non_empty(name: &str) -> Option<&str> {
    (!name.is_empty()).then_some(name)
}

macro_rules! common_impl {
    ($ty:ident, $kind:ident, $field:ident) => {
        fn id(&self) -> &str {
            &self.id
        }
        fn meta(&self) -> Option<&Meta> {
            self.meta.as_ref()
        }
        fn meta_mut(&mut self) -> &mut Meta {
            self.meta.get_or_insert_with(Meta::default)
        }
        fn table(tables: &Tables) -> &Arc<Table<Self>> {
            &tables.$field
        }
        fn table_mut(tables: &mut Tables) -> &mut Arc<Table<Self>> {
            &mut tables.$field
        }
        fn into_object(obj: Arc<Self>) -> Object {
            Object::$ty(obj)
        }
    };
}

/// Kinds whose spec carries annotations with a unique name.
macro_rules! named_impl {
    ($ty:ident, $field:ident) => {
        impl StoreObject for $ty {
            const KIND: ObjectKind = ObjectKind::$ty;
            common_impl!($ty, $ty, $field);
            fn name(&self) -> Option<&str> {
                self.spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .and_then(|a| non_empty(&a.name))
            }
            fn index_keys(&self, _out: &mut Vec<By>) {}
        }
    };
}

named_impl!(Service, services);
named_impl!(Network, networks);
named_impl!(Secret, secrets);
named_impl!(Config, configs);
named_impl!(Cluster, clusters);

impl StoreObject for Node {
    const KIND: ObjectKind = ObjectKind::Node;
    common_impl!(Node, Node, nodes);
    /// Node names (host names) need not be unique, as in Swarm.
    fn name(&self) -> Option<&str> {
        None
    }
    fn index_keys(&self, _out: &mut Vec<By>) {}
}

impl StoreObject for Task {
    const KIND: ObjectKind = ObjectKind::Task;
    common_impl!(Task, Task, tasks);
    fn name(&self) -> Option<&str> {
        None
    }
    fn index_keys(&self, out: &mut Vec<By>) {
        if !self.service_id.is_empty() {
            out.push(By::ServiceId(self.service_id.clone()));
            out.push(By::Slot {
                service_id: self.service_id.clone(),
                slot: self.slot,
            });
        }
        if !self.node_id.is_empty() {
            out.push(By::NodeId(self.node_id.clone()));
        }
        out.push(By::DesiredState(self.desired_state));
        out.push(By::State(self.status.as_ref().map_or(0, |s| s.state)));
    }
}

/// Any one stored object, shared (cloning is cheap).
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// A node.
    Node(Arc<Node>),
    /// A service.
    Service(Arc<Service>),
    /// A task.
    Task(Arc<Task>),
    /// A network.
    Network(Arc<Network>),
    /// A secret.
    Secret(Arc<Secret>),
    /// A config.
    Config(Arc<Config>),
    /// The cluster.
    Cluster(Arc<Cluster>),
}

/// Runs `$body` with `$o` bound to the inner `Arc<T>` of any variant.
macro_rules! with_object {
    ($obj:expr, $o:ident => $body:expr) => {
        match $obj {
            Object::Node($o) => $body,
            Object::Service($o) => $body,
            Object::Task($o) => $body,
            Object::Network($o) => $body,
            Object::Secret($o) => $body,
            Object::Config($o) => $body,
            Object::Cluster($o) => $body,
        }
    };
}
pub(crate) use with_object;

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Node(_) => ObjectKind::Node,
            Object::Service(_) => ObjectKind::Service,
            Object::Task(_) => ObjectKind::Task,
            Object::Network(_) => ObjectKind::Network,
            Object::Secret(_) => ObjectKind::Secret,
            Object::Config(_) => ObjectKind::Config,
            Object::Cluster(_) => ObjectKind::Cluster,
        }
    }

    /// The object's id.
    pub fn id(&self) -> &str {
        with_object!(self, o => o.id())
    }

    /// The object's meta.version (0 when unset).
    pub fn version(&self) -> u64 {
        with_object!(self, o => o.version())
    }

    /// The object's meta, if set.
    pub fn meta(&self) -> Option<&Meta> {
        with_object!(self, o => o.meta())
    }
}

macro_rules! object_from {
    ($($ty:ident),*) => {$(
        impl From<$ty> for Object {
            fn from(v: $ty) -> Object {
                Object::$ty(Arc::new(v))
            }
        }
        impl From<Arc<$ty>> for Object {
            fn from(v: Arc<$ty>) -> Object {
                Object::$ty(v)
            }
        }
    )*};
}
object_from!(Node, Service, Task, Network, Secret, Config, Cluster);

/// A timestamp carried in a Raft entry (never read from the local clock inside apply).
pub fn timestamp(seconds: i64, nanos: i32) -> Timestamp {
    Timestamp { seconds, nanos }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Annotations, ServiceSpec, TaskStatus};

    use super::*;

    #[test]
    fn task_index_keys_cover_service_slot_node_and_states() {
        let task = Task {
            id: "t1".into(),
            service_id: "s1".into(),
            slot: 3,
            node_id: "n1".into(),
            desired_state: 512,
            status: Some(TaskStatus {
                state: 192,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut keys = Vec::new();
        task.index_keys(&mut keys);
        keys.sort();
        assert_eq!(
            keys,
            vec![
                By::ServiceId("s1".into()),
                By::NodeId("n1".into()),
                By::Slot {
                    service_id: "s1".into(),
                    slot: 3
                },
                By::DesiredState(512),
                By::State(192),
            ]
        );
        // An unscheduled task of no service carries only its states.
        let mut keys = Vec::new();
        Task {
            id: "t2".into(),
            ..Default::default()
        }
        .index_keys(&mut keys);
        assert_eq!(keys, vec![By::DesiredState(0), By::State(0)]);
    }

    #[test]
    fn names_come_from_spec_annotations_and_empty_is_none() {
        let named = |name: &str| Service {
            id: "s".into(),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(named("web").name(), Some("web"));
        assert_eq!(named("").name(), None);
        assert_eq!(Service::default().name(), None);
        assert_eq!(Node::default().name(), None);
    }
}
