//! The Control service: what `berth` asks of the managers (nodes, tasks, services, the cluster
//! object, join tokens, Raft status).
//!
//! - Every call is for managers only: the caller's certificate must carry the manager role and
//!   its node must not be on the cluster's removed-node deny list.
//! - Reads are answered from this manager's replica; writes are store batches committed
//!   through Raft ([`crate::raft_net::Replica::propose_and_wait`]: forwarded to the leader from
//!   a follower, then waited for locally so the answer shows the write).
//! - Updates carry the version the caller read; the store refuses a stale one ("update out of
//!   sequence"). Errors become statuses in [`status`] only.
//! - Networks ([`networks`]) are written unallocated; the allocator gives them their subnet
//!   and VXLAN id. Removal is refused while a service or a live task uses one.
//! - Secret data is sealed with the cluster's data key before it is proposed and never
//!   returned ([`secrets`], [`crate::secrets`]); configs are stored as given ([`configs`]).
//!
//! Submodules: [`nodes`] (incl. the demotion quorum check), [`services`], [`tasks`],
//! [`cluster`] (cluster object, join tokens, Raft status), [`secrets`], [`configs`] and what
//! they share ([`payload`]: sizes, in-use checks, rotation), [`filters`], [`status`].

pub mod cluster;
pub mod configs;
pub mod filters;
pub mod networks;
pub mod nodes;
pub mod payload;
pub mod secrets;
pub mod services;
pub mod status;
pub mod tasks;

use std::sync::Arc;

use berth_proto::identity::{Role, require_role};
use berth_proto::v1::control_server::{Control, ControlServer};
use berth_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::raft_net::Replica;
use crate::secrets::Keyring;

/// The Control service of one manager.
#[derive(Debug, Clone)]
pub struct ControlService {
    replica: Arc<Replica>,
    keyring: Keyring,
}

impl ControlService {
    /// The service over `replica`, without a data key (creating secrets is refused).
    pub fn new(replica: Arc<Replica>) -> Self {
        Self::with_keyring(replica, Keyring::in_memory(None))
    }

    /// The service over `replica`, sealing secrets with `keyring`'s key.
    pub fn with_keyring(replica: Arc<Replica>, keyring: Keyring) -> Self {
        ControlService { replica, keyring }
    }

    /// The tonic server to mount.
    pub fn into_server(self) -> ControlServer<Self> {
        ControlServer::new(self)
            .max_decoding_message_size(crate::raft_net::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(crate::raft_net::MAX_MESSAGE_SIZE)
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        require_role(req, &[Role::Manager], self.replica.revocations())?;
        Ok(())
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_node(&self, request: Request<GetNodeRequest>) -> Answer<GetNodeResponse> {
        self.authorize(&request)?;
        let node = nodes::get(&self.replica, &request.into_inner().node_id)?;
        Ok(Response::new(GetNodeResponse { node: Some(node) }))
    }

    async fn list_nodes(&self, request: Request<ListNodesRequest>) -> Answer<ListNodesResponse> {
        self.authorize(&request)?;
        let filters = request.into_inner().filters.unwrap_or_default();
        Ok(Response::new(ListNodesResponse {
            nodes: nodes::list(&self.replica, &filters),
        }))
    }

    async fn update_node(&self, request: Request<UpdateNodeRequest>) -> Answer<UpdateNodeResponse> {
        self.authorize(&request)?;
        let node = nodes::update(&self.replica, request.into_inner()).await?;
        Ok(Response::new(UpdateNodeResponse { node: Some(node) }))
    }

    async fn remove_node(&self, request: Request<RemoveNodeRequest>) -> Answer<RemoveNodeResponse> {
        self.authorize(&request)?;
        nodes::remove(&self.replica, request.into_inner()).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn get_task(&self, request: Request<GetTaskRequest>) -> Answer<GetTaskResponse> {
        self.authorize(&request)?;
        let task = tasks::get(&self.replica, &request.into_inner().task_id)?;
        Ok(Response::new(GetTaskResponse { task: Some(task) }))
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Answer<ListTasksResponse> {
        self.authorize(&request)?;
        let filters = request.into_inner().filters.unwrap_or_default();
        Ok(Response::new(ListTasksResponse {
            tasks: tasks::list(&self.replica, &filters),
        }))
    }

    async fn create_service(
        &self,
        request: Request<CreateServiceRequest>,
    ) -> Answer<CreateServiceResponse> {
        self.authorize(&request)?;
        let service = services::create(&self.replica, request.into_inner()).await?;
        Ok(Response::new(CreateServiceResponse {
            service: Some(service),
        }))
    }

    async fn get_service(&self, request: Request<GetServiceRequest>) -> Answer<GetServiceResponse> {
        self.authorize(&request)?;
        let service = services::get(&self.replica, &request.into_inner().service_id)?;
        Ok(Response::new(GetServiceResponse {
            service: Some(service),
        }))
    }

    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Answer<ListServicesResponse> {
        self.authorize(&request)?;
        let filters = request.into_inner().filters.unwrap_or_default();
        Ok(Response::new(ListServicesResponse {
            services: services::list(&self.replica, &filters),
        }))
    }

    async fn list_service_statuses(
        &self,
        request: Request<ListServiceStatusesRequest>,
    ) -> Answer<ListServiceStatusesResponse> {
        self.authorize(&request)?;
        Ok(Response::new(ListServiceStatusesResponse {
            statuses: services::statuses(&self.replica, &request.into_inner().service_ids),
        }))
    }

    async fn update_service(
        &self,
        request: Request<UpdateServiceRequest>,
    ) -> Answer<UpdateServiceResponse> {
        self.authorize(&request)?;
        let service = services::update(&self.replica, request.into_inner()).await?;
        Ok(Response::new(UpdateServiceResponse {
            service: Some(service),
        }))
    }

    async fn remove_service(
        &self,
        request: Request<RemoveServiceRequest>,
    ) -> Answer<RemoveServiceResponse> {
        self.authorize(&request)?;
        services::remove(&self.replica, &request.into_inner().service_id).await?;
        Ok(Response::new(RemoveServiceResponse {}))
    }

    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> Answer<CreateNetworkResponse> {
        self.authorize(&request)?;
        let network = networks::create(&self.replica, request.into_inner()).await?;
        Ok(Response::new(CreateNetworkResponse {
            network: Some(network),
        }))
    }

    async fn get_network(&self, request: Request<GetNetworkRequest>) -> Answer<GetNetworkResponse> {
        self.authorize(&request)?;
        let network = networks::get(&self.replica, &request.into_inner().network_id)?;
        Ok(Response::new(GetNetworkResponse {
            network: Some(network),
        }))
    }

    async fn list_networks(
        &self,
        request: Request<ListNetworksRequest>,
    ) -> Answer<ListNetworksResponse> {
        self.authorize(&request)?;
        let filters = request.into_inner().filters.unwrap_or_default();
        Ok(Response::new(ListNetworksResponse {
            networks: networks::list(&self.replica, &filters),
        }))
    }

    async fn remove_network(
        &self,
        request: Request<RemoveNetworkRequest>,
    ) -> Answer<RemoveNetworkResponse> {
        self.authorize(&request)?;
        networks::remove(&self.replica, &request.into_inner().network_id).await?;
        Ok(Response::new(RemoveNetworkResponse {}))
    }

    async fn create_secret(
        &self,
        request: Request<CreateSecretRequest>,
    ) -> Answer<CreateSecretResponse> {
        self.authorize(&request)?;
        let secret = secrets::create(&self.replica, &self.keyring, request.into_inner()).await?;
        Ok(Response::new(CreateSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn get_secret(&self, request: Request<GetSecretRequest>) -> Answer<GetSecretResponse> {
        self.authorize(&request)?;
        let secret = secrets::get(&self.replica, &request.into_inner().secret_id)?;
        Ok(Response::new(GetSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn list_secrets(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Answer<ListSecretsResponse> {
        self.authorize(&request)?;
        Ok(Response::new(ListSecretsResponse {
            secrets: secrets::list(&self.replica, request.into_inner()),
        }))
    }

    async fn update_secret(
        &self,
        request: Request<UpdateSecretRequest>,
    ) -> Answer<UpdateSecretResponse> {
        self.authorize(&request)?;
        let secret = secrets::update(&self.replica, &self.keyring, request.into_inner()).await?;
        Ok(Response::new(UpdateSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn remove_secret(
        &self,
        request: Request<RemoveSecretRequest>,
    ) -> Answer<RemoveSecretResponse> {
        self.authorize(&request)?;
        secrets::remove(&self.replica, &request.into_inner().secret_id).await?;
        Ok(Response::new(RemoveSecretResponse {}))
    }

    async fn rotate_secret(
        &self,
        request: Request<RotateSecretRequest>,
    ) -> Answer<RotateSecretResponse> {
        self.authorize(&request)?;
        let (secret, service_ids) =
            secrets::rotate(&self.replica, &self.keyring, request.into_inner()).await?;
        Ok(Response::new(RotateSecretResponse {
            secret: Some(secret),
            service_ids,
        }))
    }

    async fn create_config(
        &self,
        request: Request<CreateConfigRequest>,
    ) -> Answer<CreateConfigResponse> {
        self.authorize(&request)?;
        let config = configs::create(&self.replica, request.into_inner()).await?;
        Ok(Response::new(CreateConfigResponse {
            config: Some(config),
        }))
    }

    async fn get_config(&self, request: Request<GetConfigRequest>) -> Answer<GetConfigResponse> {
        self.authorize(&request)?;
        let config = configs::get(&self.replica, &request.into_inner().config_id)?;
        Ok(Response::new(GetConfigResponse {
            config: Some(config),
        }))
    }

    async fn list_configs(
        &self,
        request: Request<ListConfigsRequest>,
    ) -> Answer<ListConfigsResponse> {
        self.authorize(&request)?;
        Ok(Response::new(ListConfigsResponse {
            configs: configs::list(&self.replica, request.into_inner()),
        }))
    }

    async fn update_config(
        &self,
        request: Request<UpdateConfigRequest>,
    ) -> Answer<UpdateConfigResponse> {
        self.authorize(&request)?;
        let config = configs::update(&self.replica, request.into_inner()).await?;
        Ok(Response::new(UpdateConfigResponse {
            config: Some(config),
        }))
    }

    async fn remove_config(
        &self,
        request: Request<RemoveConfigRequest>,
    ) -> Answer<RemoveConfigResponse> {
        self.authorize(&request)?;
        configs::remove(&self.replica, &request.into_inner().config_id).await?;
        Ok(Response::new(RemoveConfigResponse {}))
    }

    async fn rotate_config(
        &self,
        request: Request<RotateConfigRequest>,
    ) -> Answer<RotateConfigResponse> {
        self.authorize(&request)?;
        let (config, service_ids) = configs::rotate(&self.replica, request.into_inner()).await?;
        Ok(Response::new(RotateConfigResponse {
            config: Some(config),
            service_ids,
        }))
    }

    async fn get_cluster(&self, request: Request<GetClusterRequest>) -> Answer<GetClusterResponse> {
        self.authorize(&request)?;
        let cluster = cluster::get(&self.replica, &request.into_inner().cluster_id)?;
        Ok(Response::new(GetClusterResponse {
            cluster: Some(cluster),
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Answer<ListClustersResponse> {
        self.authorize(&request)?;
        Ok(Response::new(ListClustersResponse {
            clusters: cluster::list(&self.replica),
        }))
    }

    async fn update_cluster(
        &self,
        request: Request<UpdateClusterRequest>,
    ) -> Answer<UpdateClusterResponse> {
        self.authorize(&request)?;
        let cluster = cluster::update(&self.replica, request.into_inner()).await?;
        Ok(Response::new(UpdateClusterResponse {
            cluster: Some(cluster),
        }))
    }

    async fn get_join_tokens(
        &self,
        request: Request<GetJoinTokensRequest>,
    ) -> Answer<GetJoinTokensResponse> {
        self.authorize(&request)?;
        Ok(Response::new(GetJoinTokensResponse {
            join_tokens: Some(cluster::join_tokens(&self.replica)?),
        }))
    }

    async fn rotate_join_token(
        &self,
        request: Request<RotateJoinTokenRequest>,
    ) -> Answer<RotateJoinTokenResponse> {
        self.authorize(&request)?;
        let role = NodeRole::try_from(request.into_inner().role).map_err(|_| {
            Status::from(status::ControlError::InvalidArgument(
                "unknown node role".into(),
            ))
        })?;
        let tokens = cluster::rotate_join_token(&self.replica, role.into()).await?;
        Ok(Response::new(RotateJoinTokenResponse {
            join_tokens: Some(tokens),
        }))
    }

    async fn get_raft_status(
        &self,
        request: Request<GetRaftStatusRequest>,
    ) -> Answer<GetRaftStatusResponse> {
        self.authorize(&request)?;
        Ok(Response::new(cluster::raft_status(&self.replica)?))
    }
}
