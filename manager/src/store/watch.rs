//! The change stream: every applied batch becomes one [`ChangeSet`] published to subscribers.
//!
//! A subscriber gets a consistent snapshot and a [`Watch`] that yields exactly the change sets
//! applied after that snapshot. The channel is bounded: a subscriber that falls more than its
//! capacity behind gets [`WatchError::Lagged`] and must re-read a snapshot (subscribe again);
//! nothing queues without bound. When the whole store is replaced (a Raft snapshot installed)
//! every watch gets [`WatchError::Reset`] for the same reason.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prost_types::Timestamp;
use tokio::sync::broadcast;

use super::object::Object;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The object was created.
    Created(Object),
    /// The object was replaced.
    Updated {
        /// The object as it was.
        old: Object,
        /// The object as it is now.
        new: Object,
    },
    /// The object was removed (this is its last stored value).
    Removed(Object),
}

impl Event {
    /// The object as it is after the event (the removed object for removals).
    pub fn object(&self) -> &Object {
        match self {
            Event::Created(o) | Event::Removed(o) => o,
            Event::Updated { new, .. } => new,
        }
    }
}

/// The effect of one applied batch, in action order.
#[derive(Debug, Clone)]
pub struct ChangeSet {
    /// The Raft log index of the batch; every written object now has this `meta.version`.
    pub version: u64,
    /// The time carried by the batch.
    pub timestamp: Timestamp,
    /// One event per action.
    pub events: Vec<Event>,
    /// [`EventIndex`], built on first use.
    index: OnceLock<EventIndex>,
}

impl PartialEq for ChangeSet {
    fn eq(&self, other: &Self) -> bool {
        // The index is derived from the events.
        self.version == other.version
            && self.timestamp == other.timestamp
            && self.events == other.events
    }
}

/// Positions in [`ChangeSet::events`] grouped for readers that care about one node: each
/// session of the dispatcher looks up its node instead of scanning every event of a batch
/// that may place thousands of tasks on other nodes.
#[derive(Debug, Clone, Default)]
pub struct EventIndex {
    /// Task events by the node of the task before or after the event ("" for unplaced).
    tasks_by_node: HashMap<String, Vec<usize>>,
    /// Events of every kind but tasks.
    others: Vec<usize>,
}

impl EventIndex {
    fn build(events: &[Event]) -> EventIndex {
        let mut index = EventIndex::default();
        for (i, event) in events.iter().enumerate() {
            let (before, after) = match event {
                Event::Created(Object::Task(t)) | Event::Removed(Object::Task(t)) => (t, t),
                Event::Updated {
                    old: Object::Task(o),
                    new: Object::Task(t),
                } => (o, t),
                _ => {
                    index.others.push(i);
                    continue;
                }
            };
            index
                .tasks_by_node
                .entry(after.node_id.clone())
                .or_default()
                .push(i);
            if before.node_id != after.node_id {
                index
                    .tasks_by_node
                    .entry(before.node_id.clone())
                    .or_default()
                    .push(i);
            }
        }
        index
    }

    /// Positions of the events of tasks that were or are on `node_id`, in order.
    pub fn tasks_of_node(&self, node_id: &str) -> &[usize] {
        self.tasks_by_node.get(node_id).map_or(&[], Vec::as_slice)
    }

    /// Positions of the events of objects other than tasks, in order.
    pub fn others(&self) -> &[usize] {
        &self.others
    }
}

impl ChangeSet {
    /// The change set of a batch applied at `version`.
    pub fn new(version: u64, timestamp: Timestamp, events: Vec<Event>) -> ChangeSet {
        ChangeSet {
            version,
            timestamp,
            events,
            index: OnceLock::new(),
        }
    }

    /// The events grouped by node ([`EventIndex`]); built once, by the first caller, and
    /// shared by every subscriber of this change set.
    pub fn index(&self) -> &EventIndex {
        self.index.get_or_init(|| EventIndex::build(&self.events))
    }
}

/// What the store publishes.
#[derive(Debug, Clone)]
pub(crate) enum Published {
    Changes(Arc<ChangeSet>),
    /// The whole store was replaced from a dump at this version.
    Reset(u64),
}

/// Why a watch cannot yield the next change set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The subscriber fell behind and `missed` change sets were dropped; subscribe again.
    #[error("watch lagged behind by {missed} change sets; re-read a snapshot")]
    Lagged {
        /// How many change sets were dropped.
        missed: u64,
    },
    /// The store was replaced wholesale (Raft snapshot installed); subscribe again.
    #[error("store was reset to version {version}; re-read a snapshot")]
    Reset {
        /// The version of the installed snapshot.
        version: u64,
    },
    /// The store is gone.
    #[error("store closed")]
    Closed,
}

/// A subscription to the change stream (see the module docs).
#[derive(Debug)]
pub struct Watch {
    rx: broadcast::Receiver<Published>,
}

impl Watch {
    pub(crate) fn new(rx: broadcast::Receiver<Published>) -> Self {
        Watch { rx }
    }

    /// Waits for the next change set.
    pub async fn recv(&mut self) -> Result<Arc<ChangeSet>, WatchError> {
        match self.rx.recv().await {
            Ok(p) => Self::unwrap(p),
            Err(broadcast::error::RecvError::Lagged(missed)) => Err(WatchError::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => Err(WatchError::Closed),
        }
    }

    /// The next change set if one is ready, `Ok(None)` if none is.
    pub fn try_recv(&mut self) -> Result<Option<Arc<ChangeSet>>, WatchError> {
        match self.rx.try_recv() {
            Ok(p) => Self::unwrap(p).map(Some),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Err(WatchError::Lagged { missed })
            }
            Err(broadcast::error::TryRecvError::Closed) => Err(WatchError::Closed),
        }
    }

    fn unwrap(p: Published) -> Result<Arc<ChangeSet>, WatchError> {
        match p {
            Published::Changes(c) => Ok(c),
            Published::Reset(version) => Err(WatchError::Reset { version }),
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Secret, Task};

    use super::*;

    fn task(id: &str, node: &str) -> Object {
        Object::Task(Arc::new(Task {
            id: id.into(),
            node_id: node.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn the_index_finds_each_nodes_task_events_and_the_rest() {
        let changes = ChangeSet::new(
            7,
            Timestamp::default(),
            vec![
                Event::Created(task("a", "n1")),
                Event::Updated {
                    old: task("b", ""),
                    new: task("b", "n2"),
                },
                Event::Created(Object::Secret(Arc::new(Secret::default()))),
                Event::Updated {
                    old: task("c", "n1"),
                    new: task("c", "n2"),
                },
                Event::Removed(task("d", "n1")),
            ],
        );
        let index = changes.index();
        assert_eq!(index.tasks_of_node("n1"), &[0, 3, 4]);
        assert_eq!(index.tasks_of_node("n2"), &[1, 3]);
        assert_eq!(index.tasks_of_node(""), &[1]);
        assert_eq!(index.tasks_of_node("n3"), &[] as &[usize]);
        assert_eq!(index.others(), &[2]);
        // Built once and shared.
        assert!(std::ptr::eq(index, changes.index()));
        // Equality ignores whether the index was built.
        let fresh = ChangeSet::new(7, Timestamp::default(), changes.events.clone());
        assert_eq!(fresh, changes);
    }
}
