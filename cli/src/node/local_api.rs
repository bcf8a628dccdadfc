//! The local API: `berth` talks to its own `berthd` over a unix socket that only root may use.
//!
//! The socket file is mode 0600 in a 0700 directory, and every call also checks the caller's
//! uid from the socket's peer credentials.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use berth_agent::engine::{Engine, MessageStream};
use berth_proto::v1 as pb;
use berth_proto::v1::local_node_server::{LocalNode, LocalNodeServer};
use berth_proto::v1::{
    InfoRequest, InfoResponse, SwarmInitRequest, SwarmInitResponse, SwarmJoinRequest,
    SwarmJoinResponse, SwarmLeaveRequest, SwarmLeaveResponse,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::StateDir;
use super::forward::{self, Forward};
use super::swarm::Swarm;

/// The local API service.
#[derive(Debug)]
pub struct LocalApi {
    engine: Arc<Engine>,
    state: Arc<StateDir>,
    swarm: Arc<Swarm>,
}

impl LocalApi {
    /// A service over the daemon's state and its swarm side.
    pub fn new(state: Arc<StateDir>, swarm: Arc<Swarm>, engine: Arc<Engine>) -> Self {
        Self {
            state,
            swarm,
            engine,
        }
    }
}

/// A daemon-side failure as the user's error: the whole cause chain, as one message.
fn internal(err: anyhow::Error) -> Status {
    Status::failed_precondition(format!("{err:#}"))
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
    control: forward::Target,
    listener: UnixListener,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(LocalNodeServer::from_arc(api))
        .add_service(Forward::<forward::Control>::new(control.clone()))
        .add_service(Forward::<forward::Logs>::new(control))
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
    // ---- local containers and images: thin delegation to the agent's engine ----

    async fn image_load(
        &self,
        request: Request<tonic::Streaming<pb::ImageLoadChunk>>,
    ) -> Result<Response<pb::ImageLoadResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.image_load(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn image_pull(
        &self,
        request: Request<pb::ImagePullRequest>,
    ) -> Result<Response<MessageStream<pb::ImagePullMessage>>, Status> {
        require_root(&request)?;
        let reply = self.engine.image_pull(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn image_list(
        &self,
        request: Request<pb::ImageListRequest>,
    ) -> Result<Response<pb::ImageListResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.image_list(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn image_inspect(
        &self,
        request: Request<pb::ImageInspectRequest>,
    ) -> Result<Response<pb::ImageInspectResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.image_inspect(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn image_remove(
        &self,
        request: Request<pb::ImageRemoveRequest>,
    ) -> Result<Response<pb::ImageRemoveResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.image_remove(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_create(
        &self,
        request: Request<pb::ContainerCreateRequest>,
    ) -> Result<Response<pb::ContainerCreateResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_create(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_start(
        &self,
        request: Request<pb::ContainerStartRequest>,
    ) -> Result<Response<pb::ContainerStartResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_start(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_wait(
        &self,
        request: Request<pb::ContainerWaitRequest>,
    ) -> Result<Response<pb::ContainerWaitResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_wait(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_list(
        &self,
        request: Request<pb::ContainerListRequest>,
    ) -> Result<Response<pb::ContainerListResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_list(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_inspect(
        &self,
        request: Request<pb::ContainerInspectRequest>,
    ) -> Result<Response<pb::ContainerInspectResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_inspect(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_logs(
        &self,
        request: Request<pb::ContainerLogsRequest>,
    ) -> Result<Response<MessageStream<pb::ContainerLogsMessage>>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_logs(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_stop(
        &self,
        request: Request<pb::ContainerStopRequest>,
    ) -> Result<Response<pb::ContainerStopResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_stop(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_kill(
        &self,
        request: Request<pb::ContainerKillRequest>,
    ) -> Result<Response<pb::ContainerKillResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_kill(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_remove(
        &self,
        request: Request<pb::ContainerRemoveRequest>,
    ) -> Result<Response<pb::ContainerRemoveResponse>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_remove(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn container_exec(
        &self,
        request: Request<pb::ContainerExecRequest>,
    ) -> Result<Response<MessageStream<pb::ContainerExecMessage>>, Status> {
        require_root(&request)?;
        let reply = self.engine.container_exec(request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        require_root(&request)?;
        let mut info = InfoResponse {
            engine_version: crate::VERSION.to_string(),
            data_dir: self.state.root().display().to_string(),
            hostname: super::swarm::hostname(),
            ..Default::default()
        };
        self.swarm.describe(&mut info).await;
        Ok(Response::new(info))
    }

    async fn swarm_init(
        &self,
        request: Request<SwarmInitRequest>,
    ) -> Result<Response<SwarmInitResponse>, Status> {
        require_root(&request)?;
        let node_id = self
            .swarm
            .init(request.into_inner())
            .await
            .map_err(internal)?;
        Ok(Response::new(SwarmInitResponse { node_id }))
    }

    async fn swarm_join(
        &self,
        request: Request<SwarmJoinRequest>,
    ) -> Result<Response<SwarmJoinResponse>, Status> {
        require_root(&request)?;
        let (node_id, role) = self
            .swarm
            .join(request.into_inner())
            .await
            .map_err(internal)?;
        Ok(Response::new(SwarmJoinResponse {
            node_id,
            role: role as i32,
        }))
    }

    async fn swarm_leave(
        &self,
        request: Request<SwarmLeaveRequest>,
    ) -> Result<Response<SwarmLeaveResponse>, Status> {
        require_root(&request)?;
        self.swarm
            .leave(request.into_inner().force)
            .await
            .map_err(internal)?;
        Ok(Response::new(SwarmLeaveResponse {}))
    }
}
