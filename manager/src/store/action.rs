//! Store writes as data: a [`StoreAction`] creates, updates or removes one object; a
//! [`StoreActions`] batch is one transaction and one Raft entry. Both encode to protobuf
//! bytes (the payload of a Raft entry) and decode back without panicking on any input.
//!
//! Wire layout (proto3, encoded by hand from shared objects so nothing is cloned, decoded with
//! derived messages that describe the same layout):
//! ```text
//! message StoreActions { repeated Action actions = 1; }
//! message Action {
//!   Op op = 1;                     // 1 create, 2 update, 3 remove
//!   oneof object { Node node = 2; Service service = 3; Task task = 4; Network network = 5;
//!                  Secret secret = 6; Config config = 7; Cluster cluster = 8; }
//!   int32 remove_kind = 9;         // ObjectKind wire number, remove only
//!   string remove_id = 10;         // remove only
//! }
//! ```

use std::sync::Arc;

use berth_proto::v1::{Cluster, Config, Network, Node, Secret, Service, Task};
use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{self, WireType};

use super::error::{ObjectKind, StoreError};
use super::object::{Object, with_object};

/// One write of one object.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreAction {
    /// Create the object; its id must be new (and its name free, for named kinds).
    Create(Object),
    /// Replace the stored object with the same id. `meta.version` must be the stored version
    /// (the version the writer read), or the whole batch fails "update out of sequence".
    Update(Object),
    /// Remove the object of this kind with this id.
    Remove {
        /// Kind of the object.
        kind: ObjectKind,
        /// Its id.
        id: String,
    },
}

impl StoreAction {
    /// The kind of the object this action writes.
    pub fn kind(&self) -> ObjectKind {
        match self {
            StoreAction::Create(o) | StoreAction::Update(o) => o.kind(),
            StoreAction::Remove { kind, .. } => *kind,
        }
    }

    /// The id of the object this action writes.
    pub fn id(&self) -> &str {
        match self {
            StoreAction::Create(o) | StoreAction::Update(o) => o.id(),
            StoreAction::Remove { id, .. } => id,
        }
    }
}

/// A batch of actions applied as one transaction: all of them or none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreActions {
    /// The actions, applied in order.
    pub actions: Vec<StoreAction>,
}

const OP_CREATE: i32 = 1;
const OP_UPDATE: i32 = 2;
const OP_REMOVE: i32 = 3;
const TAG_REMOVE_KIND: u32 = 9;
const TAG_REMOVE_ID: u32 = 10;

/// The oneof tag of an object kind inside `Action`.
fn object_tag(kind: ObjectKind) -> u32 {
    match kind {
        ObjectKind::Node => 2,
        ObjectKind::Service => 3,
        ObjectKind::Task => 4,
        ObjectKind::Network => 5,
        ObjectKind::Secret => 6,
        ObjectKind::Config => 7,
        ObjectKind::Cluster => 8,
    }
}

impl StoreActions {
    /// An empty batch.
    pub fn new() -> Self {
        StoreActions::default()
    }

    /// Appends a create of `obj`.
    pub fn create(&mut self, obj: impl Into<Object>) -> &mut Self {
        self.actions.push(StoreAction::Create(obj.into()));
        self
    }

    /// Appends an update of `obj` (carrying the version it was read at in `meta.version`).
    pub fn update(&mut self, obj: impl Into<Object>) -> &mut Self {
        self.actions.push(StoreAction::Update(obj.into()));
        self
    }

    /// Appends a removal.
    pub fn remove(&mut self, kind: ObjectKind, id: impl Into<String>) -> &mut Self {
        self.actions.push(StoreAction::Remove {
            kind,
            id: id.into(),
        });
        self
    }

    /// Number of actions.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether the batch has no action.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Encodes the batch as protobuf bytes (deterministic for objects without map fields).
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self
            .actions
            .iter()
            .map(|a| {
                let l = action_len(a);
                encoding::key_len(1) + encoding::encoded_len_varint(l as u64) + l
            })
            .sum();
        let mut buf = Vec::with_capacity(len);
        for action in &self.actions {
            encoding::encode_key(1, WireType::LengthDelimited, &mut buf);
            encoding::encode_varint(action_len(action) as u64, &mut buf);
            encode_action(action, &mut buf);
        }
        buf
    }

    /// Decodes bytes made by [`StoreActions::encode`]. Fails (never panics) on anything else.
    pub fn decode(bytes: &[u8]) -> Result<StoreActions, StoreError> {
        let decode_err = |reason: String| StoreError::Decode {
            what: "store actions".into(),
            reason,
        };
        let pb = ActionsPb::decode(bytes).map_err(|e| decode_err(e.to_string()))?;
        let mut actions = Vec::with_capacity(pb.actions.len());
        for (i, a) in pb.actions.into_iter().enumerate() {
            let action = match (a.op, a.object) {
                (OP_CREATE, Some(obj)) => StoreAction::Create(obj.into_object()),
                (OP_UPDATE, Some(obj)) => StoreAction::Update(obj.into_object()),
                (OP_REMOVE, None) => {
                    let kind = ObjectKind::from_wire(a.remove_kind).ok_or_else(|| {
                        decode_err(format!("action {i}: unknown object kind {}", a.remove_kind))
                    })?;
                    StoreAction::Remove {
                        kind,
                        id: a.remove_id,
                    }
                }
                (op, obj) => {
                    return Err(decode_err(format!(
                        "action {i}: op {op} with{} an object",
                        if obj.is_some() { "" } else { "out" }
                    )));
                }
            };
            actions.push(action);
        }
        Ok(StoreActions { actions })
    }
}

impl From<Vec<StoreAction>> for StoreActions {
    fn from(actions: Vec<StoreAction>) -> Self {
        StoreActions { actions }
    }
}

fn action_len(action: &StoreAction) -> usize {
    match action {
        StoreAction::Create(o) => encoding::int32::encoded_len(1, &OP_CREATE) + object_len(o),
        StoreAction::Update(o) => encoding::int32::encoded_len(1, &OP_UPDATE) + object_len(o),
        StoreAction::Remove { kind, id } => {
            encoding::int32::encoded_len(1, &OP_REMOVE)
                + encoding::int32::encoded_len(TAG_REMOVE_KIND, &kind.to_wire())
                + encoding::string::encoded_len(TAG_REMOVE_ID, id)
        }
    }
}

fn object_len(obj: &Object) -> usize {
    let tag = object_tag(obj.kind());
    with_object!(obj, o => encoding::message::encoded_len(tag, o.as_ref()))
}

fn encode_object(obj: &Object, buf: &mut impl BufMut) {
    let tag = object_tag(obj.kind());
    with_object!(obj, o => encoding::message::encode(tag, o.as_ref(), buf))
}

fn encode_action(action: &StoreAction, buf: &mut impl BufMut) {
    match action {
        StoreAction::Create(o) => {
            encoding::int32::encode(1, &OP_CREATE, buf);
            encode_object(o, buf);
        }
        StoreAction::Update(o) => {
            encoding::int32::encode(1, &OP_UPDATE, buf);
            encode_object(o, buf);
        }
        StoreAction::Remove { kind, id } => {
            encoding::int32::encode(1, &OP_REMOVE, buf);
            encoding::int32::encode(TAG_REMOVE_KIND, &kind.to_wire(), buf);
            encoding::string::encode(TAG_REMOVE_ID, id, buf);
        }
    }
}

/// Decoding side of the wire layout in the module docs.
#[derive(Clone, PartialEq, prost::Message)]
struct ActionsPb {
    #[prost(message, repeated, tag = "1")]
    actions: Vec<ActionPb>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ActionPb {
    #[prost(int32, tag = "1")]
    op: i32,
    #[prost(oneof = "ObjectPb", tags = "2, 3, 4, 5, 6, 7, 8")]
    object: Option<ObjectPb>,
    #[prost(int32, tag = "9")]
    remove_kind: i32,
    #[prost(string, tag = "10")]
    remove_id: String,
}

// Decoded values are moved into an `Arc` right away; boxing each would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
enum ObjectPb {
    #[prost(message, tag = "2")]
    Node(Node),
    #[prost(message, tag = "3")]
    Service(Service),
    #[prost(message, tag = "4")]
    Task(Task),
    #[prost(message, tag = "5")]
    Network(Network),
    #[prost(message, tag = "6")]
    Secret(Secret),
    #[prost(message, tag = "7")]
    Config(Config),
    #[prost(message, tag = "8")]
    Cluster(Cluster),
}

impl ObjectPb {
    fn into_object(self) -> Object {
        match self {
            ObjectPb::Node(o) => Object::Node(Arc::new(o)),
            ObjectPb::Service(o) => Object::Service(Arc::new(o)),
            ObjectPb::Task(o) => Object::Task(Arc::new(o)),
            ObjectPb::Network(o) => Object::Network(Arc::new(o)),
            ObjectPb::Secret(o) => Object::Secret(Arc::new(o)),
            ObjectPb::Config(o) => Object::Config(Arc::new(o)),
            ObjectPb::Cluster(o) => Object::Cluster(Arc::new(o)),
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Annotations, Meta, ServiceSpec, TaskStatus};

    use super::*;

    fn sample() -> StoreActions {
        let mut b = StoreActions::new();
        b.create(Node {
            id: "n1".into(),
            ..Default::default()
        })
        .create(Service {
            id: "s1".into(),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .update(Task {
            id: "t1".into(),
            meta: Some(Meta {
                version: 42,
                ..Default::default()
            }),
            service_id: "s1".into(),
            slot: 1,
            status: Some(TaskStatus {
                state: 512,
                message: "started".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .create(Network {
            id: "w1".into(),
            ..Default::default()
        })
        .create(Secret {
            id: "x1".into(),
            ..Default::default()
        })
        .create(Config {
            id: "c1".into(),
            ..Default::default()
        })
        .update(Cluster {
            id: "k1".into(),
            ..Default::default()
        })
        .remove(ObjectKind::Task, "t0");
        b
    }

    #[test]
    fn every_kind_and_op_round_trips() {
        let batch = sample();
        let bytes = batch.encode();
        assert_eq!(StoreActions::decode(&bytes), Ok(batch.clone()));
        // The hand encoder and the derived decoder agree on the layout byte for byte.
        let reencoded = ActionsPb::decode(bytes.as_slice())
            .expect("decodes")
            .encode_to_vec();
        assert_eq!(reencoded, bytes);
        assert_eq!(StoreActions::decode(&[]), Ok(StoreActions::new()));
    }

    #[test]
    fn garbage_and_inconsistent_actions_are_errors_not_panics() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated", {
                let full = sample().encode();
                full[..full.len() - 3].to_vec()
            }),
            ("random bytes", vec![0xff, 0x01, 0x02, 0x80, 0x80]),
            (
                "remove of an unknown kind",
                ActionsPb {
                    actions: vec![ActionPb {
                        op: OP_REMOVE,
                        object: None,
                        remove_kind: 99,
                        remove_id: "x".into(),
                    }],
                }
                .encode_to_vec(),
            ),
            (
                "create without object",
                ActionsPb {
                    actions: vec![ActionPb {
                        op: OP_CREATE,
                        object: None,
                        remove_kind: 0,
                        remove_id: String::new(),
                    }],
                }
                .encode_to_vec(),
            ),
            (
                "remove with object",
                ActionsPb {
                    actions: vec![ActionPb {
                        op: OP_REMOVE,
                        object: Some(ObjectPb::Task(Task::default())),
                        remove_kind: 3,
                        remove_id: "t".into(),
                    }],
                }
                .encode_to_vec(),
            ),
            (
                "unknown op",
                ActionsPb {
                    actions: vec![ActionPb {
                        op: 7,
                        object: Some(ObjectPb::Node(Node::default())),
                        remove_kind: 0,
                        remove_id: String::new(),
                    }],
                }
                .encode_to_vec(),
            ),
        ];
        for (name, bytes) in cases {
            match StoreActions::decode(&bytes) {
                Err(StoreError::Decode { .. }) => {}
                other => panic!("{name}: expected a decode error, got {other:?}"),
            }
        }
    }
}
