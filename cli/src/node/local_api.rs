//! The local API: `berth` talks to its own `berthd` over a unix socket that only root may use.
//!
//! The socket file is mode 0600 in a 0700 directory, and every call also checks the caller's
//! uid from the socket's peer credentials.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use berth_proto::v1::local_node_server::{LocalNode, LocalNodeServer};
use berth_proto::v1::{InfoRequest, InfoResponse, LocalSwarmState};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::StateDir;

/// The local API service.
#[derive(Debug)]
pub struct LocalApi {
    state: StateDir,
}

impl LocalApi {
    /// A service over the daemon's state.
    pub fn new(state: StateDir) -> Self {
        Self { state }
    }
}

/// Binds the socket: removes a stale socket file, creates the parent directory (0700) and
/// restricts the socket to root (0600).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {parent:?}"))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing stale socket {path:?}")),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {path:?}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {path:?} to root"))?;
    Ok(listener)
}

/// Serves `api` on `listener` until `cancel` fires.
pub async fn serve(
    api: Arc<LocalApi>,
    listener: UnixListener,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(LocalNodeServer::from_arc(api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), cancel.cancelled_owned())
        .await
}

/// Refuses callers that are not root (uid 0).
fn require_root<T>(request: &Request<T>) -> Result<(), Status> {
    let uid = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    match uid {
        Some(0) => Ok(()),
        Some(uid) => Err(Status::permission_denied(format!(
            "the berthd socket is for root only (caller uid {uid})"
        ))),
        None => Err(Status::permission_denied(
            "caller's credentials are unknown",
        )),
    }
}

#[tonic::async_trait]
impl LocalNode for LocalApi {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        require_root(&request)?;
        Ok(Response::new(InfoResponse {
            swarm_state: LocalSwarmState::Inactive as i32,
            engine_version: crate::VERSION.to_string(),
            data_dir: self.state.root().display().to_string(),
            hostname: nix::unistd::gethostname()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..Default::default()
        }))
    }
}
