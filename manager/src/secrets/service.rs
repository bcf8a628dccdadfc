//! Handing the data key from manager to manager: the ManagerKeys gRPC service, and the
//! background fetch a manager without the key runs until it has it.
//!
//! - Serving: the caller must present a manager certificate of a node that is not removed
//!   ([`require_role`]) and whose Node object in this replica is, or is becoming, a manager.
//!   A manager without the key answers UNAVAILABLE.
//! - Fetching ([`fetch_until_held`]): asks the given addresses (the join addresses) and every
//!   manager address in the local store, in turn, with backoff, until one answers; the key is
//!   then written to the state directory and held.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::identity::{Role, require_role};
use berth_proto::v1::manager_keys_client::ManagerKeysClient;
use berth_proto::v1::manager_keys_server::{ManagerKeys, ManagerKeysServer};
use berth_proto::v1::{GetDataKeyRequest, GetDataKeyResponse, Node, NodeRole};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{DataKey, Keyring};
use crate::raft_net::Replica;

/// The ManagerKeys service of one manager.
#[derive(Debug, Clone)]
pub struct KeysService {
    replica: Arc<Replica>,
    keyring: Keyring,
}

impl KeysService {
    /// The service handing out `keyring`'s key to the managers of `replica`'s cluster.
    pub fn new(replica: Arc<Replica>, keyring: Keyring) -> Self {
        KeysService { replica, keyring }
    }

    /// The tonic server to mount.
    pub fn into_server(self) -> ManagerKeysServer<Self> {
        ManagerKeysServer::new(self)
    }
}

fn is_manager(node: &Node) -> bool {
    node.role == NodeRole::Manager as i32
        || node
            .spec
            .as_ref()
            .is_some_and(|s| s.desired_role == NodeRole::Manager as i32)
}

#[tonic::async_trait]
impl ManagerKeys for KeysService {
    async fn get_data_key(
        &self,
        request: Request<GetDataKeyRequest>,
    ) -> Result<Response<GetDataKeyResponse>, Status> {
        let caller = require_role(&request, &[Role::Manager], self.replica.revocations())?;
        let node = self.replica.store().get::<Node>(&caller.node_id);
        if !node.as_deref().is_some_and(is_manager) {
            return Err(Status::permission_denied(format!(
                "node {} is not a manager of this cluster",
                caller.node_id
            )));
        }
        let key = self
            .keyring
            .require()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(to = %caller.node_id, key_id = %key.id(), "handed the data key to a manager");
        Ok(Response::new(GetDataKeyResponse {
            key: key.bytes().to_vec(),
            key_id: key.id().to_owned(),
        }))
    }
}

/// Manager addresses to ask: `seeds` first, then every other manager the store knows.
fn candidates(replica: &Replica, seeds: &[String]) -> Vec<String> {
    let mut addrs: Vec<String> = seeds.to_vec();
    for node in replica.store().list::<Node>() {
        if node.id == replica.node_id() || node.role != NodeRole::Manager as i32 {
            continue;
        }
        if let Some(ms) = &node.manager_status
            && !ms.addr.is_empty()
            && !addrs.contains(&ms.addr)
        {
            addrs.push(ms.addr.clone());
        }
    }
    addrs.retain(|a| a != replica.advertise_addr());
    addrs
}

async fn fetch_once(replica: &Replica, addr: &str) -> Result<DataKey, String> {
    let channel = replica.peers().channel(addr).map_err(|e| e.to_string())?;
    let mut client = ManagerKeysClient::new(channel);
    let mut request = Request::new(GetDataKeyRequest {});
    request.set_timeout(Duration::from_secs(5));
    let answer = client
        .get_data_key(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let key = DataKey::from_bytes(&answer.key).map_err(|e| e.to_string())?;
    if key.id() != answer.key_id {
        return Err(format!(
            "the key received does not match its id {}",
            answer.key_id
        ));
    }
    Ok(key)
}

/// Until `keyring` holds a key (or `cancel`): asks `seeds` and the managers in the store for
/// it, then saves it.
pub async fn fetch_until_held(
    replica: Arc<Replica>,
    keyring: Keyring,
    seeds: Vec<String>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if keyring.key().is_some() {
            return;
        }
        let mut last = None;
        for addr in candidates(&replica, &seeds) {
            match fetch_once(&replica, &addr).await {
                Ok(key) => {
                    let id = key.id().to_owned();
                    match keyring.install(key) {
                        Ok(()) => {
                            tracing::info!(from = %addr, key_id = %id, "received the cluster's data key");
                            return;
                        }
                        Err(e) => last = Some(format!("saving it: {e}")),
                    }
                }
                Err(e) => last = Some(format!("{addr}: {e}")),
            }
        }
        tracing::debug!(error = ?last, "no manager handed out the data key yet; retrying");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
