//! The leader-only loops of a manager: orchestrators, task reaper, scheduler and dispatcher,
//! started when this manager becomes leader and stopped when it loses leadership, and the
//! [`Writer`] they write through.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatcher::{self, DispatcherConfig, DispatcherSlot};
use futures::future::BoxFuture;

use crate::orchestrator::{LeaderComponents, LeaderConfig, WriteFailure, Writer};
use crate::raft::RaftNode;
use crate::raft_net::Replica;
use crate::secrets::Keyring;
use crate::store::StoreActions;

/// Writes leader decisions straight into this manager's Raft member (never forwarded: a loop
/// that is not the leader any more must stop, not write through someone else).
pub(crate) struct ReplicaWriter(pub(crate) Arc<Replica>);

impl Writer for ReplicaWriter {
    fn write(&self, batch: StoreActions) -> BoxFuture<'_, Result<u64, WriteFailure>> {
        Box::pin(async move {
            let raft = self
                .0
                .raft()
                .map_err(|status| WriteFailure::Fatal(status.message().to_string()))?;
            <RaftNode as Writer>::write(&raft, batch).await
        })
    }
}

/// Starts the leader-only loops under `tasks`; they follow this manager's leadership until
/// `cancel`.
pub(crate) fn spawn(
    replica: &Arc<Replica>,
    slot: &DispatcherSlot,
    keyring: &Keyring,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    let Ok(raft) = replica.raft() else {
        return;
    };
    let leadership = raft.leadership_changes();
    drop(raft);
    let store = replica.store().clone();
    let writer: Arc<dyn Writer> = Arc::new(ReplicaWriter(replica.clone()));
    let components = LeaderComponents::new(store.clone(), writer.clone(), LeaderConfig::default());
    let (stop, watch) = (cancel.clone(), leadership.clone());
    tasks.spawn(async move {
        if let Err(err) = components.run(watch, stop).await {
            tracing::warn!("leader components stopped: {err}");
        }
    });
    tasks.spawn(dispatcher::run_while_leader(
        store,
        writer,
        slot.clone(),
        DispatcherConfig {
            keyring: keyring.clone(),
            ..DispatcherConfig::default()
        },
        leadership,
        cancel.clone(),
    ));
}
