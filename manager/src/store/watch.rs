//! The change stream: every applied batch becomes one [`ChangeSet`] published to subscribers.
//!
//! A subscriber gets a consistent snapshot and a [`Watch`] that yields exactly the change sets
//! applied after that snapshot. The channel is bounded: a subscriber that falls more than its
//! capacity behind gets [`WatchError::Lagged`] and must re-read a snapshot (subscribe again);
//! nothing queues without bound. When the whole store is replaced (a Raft snapshot installed)
//! every watch gets [`WatchError::Reset`] for the same reason.

use std::sync::Arc;

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
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSet {
    /// The Raft log index of the batch; every written object now has this `meta.version`.
    pub version: u64,
    /// The time carried by the batch.
    pub timestamp: Timestamp,
    /// One event per action.
    pub events: Vec<Event>,
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
