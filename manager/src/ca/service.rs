//! The CA gRPC service, backed by the replicated store.
//!
//! - GetRootCACertificate: anyone (no client certificate needed); any manager answers.
//! - IssueNodeCertificate (join): the token is checked against the cluster object's *current*
//!   join tokens, so a rotated token stops working as soon as the rotation returns. It decides
//!   the role (a requested role must match it). The CSR is signed at once with CN = node id,
//!   OU = role, O = cluster id and the cluster's certificate expiry, and the Node object is
//!   created through Raft (membership ACCEPTED, availability from the request, certificate
//!   ISSUED) in one write; a refused request writes nothing.
//! - NodeCertificateStatus: any manager answers from its replica, long-polling briefly until
//!   the node's certificate is ISSUED or FAILED.
//! - RenewNodeCertificate: authenticated by the caller's current certificate (refused for
//!   removed nodes); the new certificate carries the Node object's current role, so a
//!   promotion or demotion takes effect at the next renewal.
//!
//! Root CA rotation ([`super::rotation`]): while one runs, Issue and Renew sign with the new
//! root and store the certificate followed by the cross-signed intermediate, and
//! NodeCertificateStatus answers the trust bundle (the cluster's root, plus the new root while
//! a rotation runs) next to the certificate, which the node then trusts.
//!
//! Issue and Renew sign and write, so they run on the leader only (whose replica has every
//! committed token rotation and removal applied): a follower answers UNAVAILABLE with the
//! leader's address in the `berth-leader-addr` metadata and the node retries there. The root
//! CA key is read from the cluster object on each call, so any manager that becomes leader
//! signs with the same root.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::identity::{IsRemoved, JoinToken, Role, require_role};
use berth_proto::ids;
use berth_proto::v1::ca_server::{Ca, CaServer};
use berth_proto::v1::{
    Cluster, GetRootCaCertificateRequest, GetRootCaCertificateResponse, IssuanceState,
    IssuanceStatus, IssueNodeCertificateRequest, IssueNodeCertificateResponse, Node,
    NodeAvailability, NodeCertificate, NodeCertificateStatusRequest, NodeCertificateStatusResponse,
    NodeMembership, NodeRole, NodeSpec, NodeState, NodeStatus, RenewNodeCertificateRequest,
    RenewNodeCertificateResponse,
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::join::{JoinError, JoinTokens};
use super::rotation::{Signer, trust_bundle};
use super::{CaError, DEFAULT_NODE_CERT_VALIDITY};
use crate::control::status::propose_status;
use crate::raft_net::Replica;
use crate::store::StoreActions;

/// How long NodeCertificateStatus waits for a certificate that is not issued yet.
const STATUS_LONG_POLL: Duration = Duration::from_secs(5);

/// The CA service of one manager.
#[derive(Debug, Clone)]
pub struct CaService {
    replica: Arc<Replica>,
}

impl CaService {
    /// The service over `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        CaService { replica }
    }

    /// The tonic server to mount.
    pub fn into_server(self) -> CaServer<Self> {
        CaServer::new(self)
    }

    fn cluster(&self) -> Result<Arc<Cluster>, Status> {
        self.replica
            .store()
            .list::<Cluster>()
            .into_iter()
            .next()
            .ok_or_else(|| {
                Status::unavailable("this manager has not caught up with the cluster yet")
            })
    }
}

/// The node certificate validity the cluster asks for.
pub fn cert_validity(cluster: &Cluster) -> Duration {
    cluster
        .spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .and_then(|c| c.node_cert_expiry)
        .and_then(|d| u64::try_from(d.seconds).ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_NODE_CERT_VALIDITY, Duration::from_secs)
}

/// The cluster's signer, rebuilt from the cluster object.
fn signer(cluster: &Cluster) -> Result<Signer, Status> {
    Signer::of(cluster).map_err(|e| Status::internal(e.to_string()))
}

fn token_pair(cluster: &Cluster) -> Result<JoinTokens, Status> {
    let tokens = cluster
        .root_ca
        .as_ref()
        .and_then(|ca| ca.join_tokens.as_ref())
        .ok_or_else(|| Status::internal("the cluster object has no join tokens"))?;
    let parse = |s: &str| {
        JoinToken::parse(s)
            .map_err(|e| Status::internal(format!("stored join token is unusable: {e}")))
    };
    Ok(JoinTokens::from_tokens(
        parse(&tokens.worker)?,
        parse(&tokens.manager)?,
    ))
}

fn sign_status(e: CaError) -> Status {
    match e {
        CaError::InvalidCsr(_) | CaError::UnsupportedKey | CaError::InvalidNodeId(_) => {
            Status::invalid_argument(e.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

fn issued(role: Role, csr: Vec<u8>, cert_pem: String, node_id: &str) -> NodeCertificate {
    NodeCertificate {
        role: NodeRole::from(role) as i32,
        csr,
        status: Some(IssuanceStatus {
            state: IssuanceState::Issued as i32,
            err: String::new(),
        }),
        certificate: cert_pem.into_bytes(),
        cn: node_id.to_owned(),
    }
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn get_root_ca_certificate(
        &self,
        _request: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let cluster = self.cluster()?;
        let certificate = cluster
            .root_ca
            .as_ref()
            .map(|ca| ca.ca_cert.clone())
            .unwrap_or_default();
        Ok(Response::new(GetRootCaCertificateResponse { certificate }))
    }

    async fn issue_node_certificate(
        &self,
        request: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let req = request.into_inner();
        self.replica.leader()?;
        let cluster = self.cluster()?;
        let role = token_pair(&cluster)?
            .role_of(&req.token)
            .map_err(|e| match e {
                JoinError::Malformed(_) => Status::invalid_argument(e.to_string()),
                JoinError::OtherCluster | JoinError::WrongSecret => {
                    Status::permission_denied(e.to_string())
                }
            })?;
        if let Some(asked) = req.role {
            let asked = NodeRole::try_from(asked)
                .map_err(|_| Status::invalid_argument("unknown node role"))?;
            if Role::from(asked) != role {
                return Err(Status::invalid_argument(format!(
                    "this join token admits {role}s, but the node asked to join as a {}",
                    Role::from(asked)
                )));
            }
        }
        let availability = NodeAvailability::try_from(req.availability)
            .map_err(|_| Status::invalid_argument("unknown node availability"))?;
        let existing = if req.node_id.is_empty() {
            None
        } else {
            if self.replica.revocations().is_removed(&req.node_id) {
                return Err(Status::permission_denied(format!(
                    "node {} has been removed from the cluster",
                    req.node_id
                )));
            }
            if !ids::is_id(&req.node_id) {
                return Err(Status::invalid_argument(format!(
                    "{:?} is not a node id",
                    req.node_id
                )));
            }
            self.replica.store().get::<Node>(&req.node_id)
        };
        let node_id = if req.node_id.is_empty() {
            ids::try_new_id().map_err(|e| Status::internal(e.to_string()))?
        } else {
            req.node_id.clone()
        };
        let csr = String::from_utf8(req.csr.clone())
            .map_err(|_| Status::invalid_argument("the CSR is not PEM text"))?;
        let cert_pem = signer(&cluster)?
            .sign_csr(&csr, &node_id, role, &cluster.id, cert_validity(&cluster))
            .map_err(sign_status)?;
        let certificate = issued(role, req.csr, cert_pem, &node_id);
        let mut batch = StoreActions::new();
        match existing {
            Some(stored) => {
                let mut node = (*stored).clone();
                let spec = node.spec.get_or_insert_with(Default::default);
                spec.desired_role = NodeRole::from(role) as i32;
                node.role = NodeRole::from(role) as i32;
                node.certificate = Some(certificate);
                batch.update(node);
            }
            None => {
                batch.create(Node {
                    id: node_id.clone(),
                    spec: Some(NodeSpec {
                        annotations: None,
                        desired_role: NodeRole::from(role) as i32,
                        membership: NodeMembership::Accepted as i32,
                        availability: availability as i32,
                    }),
                    status: Some(NodeStatus {
                        state: NodeState::Unknown as i32,
                        message: "joined; waiting for its first session".into(),
                        addr: String::new(),
                    }),
                    role: NodeRole::from(role) as i32,
                    certificate: Some(certificate),
                    ..Default::default()
                });
            }
        }
        self.replica
            .propose_and_wait(&batch)
            .await
            .map_err(|e| propose_status(&e))?;
        tracing::info!(node_id = %node_id, %role, "node joined the cluster");
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id,
            node_membership: NodeMembership::Accepted as i32,
        }))
    }

    async fn node_certificate_status(
        &self,
        request: Request<NodeCertificateStatusRequest>,
    ) -> Result<Response<NodeCertificateStatusResponse>, Status> {
        let node_id = request.into_inner().node_id;
        let deadline = Instant::now() + STATUS_LONG_POLL;
        loop {
            let node = self.replica.store().get::<Node>(&node_id);
            let certificate = node.as_ref().and_then(|n| n.certificate.clone());
            let state = certificate
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .map_or(IssuanceState::Unknown as i32, |s| s.state);
            let done =
                state == IssuanceState::Issued as i32 || state == IssuanceState::Failed as i32;
            if done || Instant::now() >= deadline {
                if node.is_none() {
                    return Err(Status::not_found(format!("node {node_id} not found")));
                }
                let status = certificate.as_ref().and_then(|c| c.status.clone());
                let trust_bundle = self
                    .cluster()
                    .map(|c| trust_bundle(&c).into_bytes())
                    .unwrap_or_default();
                return Ok(Response::new(NodeCertificateStatusResponse {
                    status,
                    certificate,
                    trust_bundle,
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn renew_node_certificate(
        &self,
        request: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let caller = require_role(
            &request,
            &[Role::Manager, Role::Worker],
            self.replica.revocations(),
        )?;
        self.replica.leader()?;
        let cluster = self.cluster()?;
        if caller.cluster_id != cluster.id {
            return Err(Status::permission_denied(format!(
                "node {} belongs to another cluster",
                caller.node_id
            )));
        }
        let node = self
            .replica
            .store()
            .get::<Node>(&caller.node_id)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "node {} is not part of this cluster",
                    caller.node_id
                ))
            })?;
        let role = Role::from(
            NodeRole::try_from(node.role).map_err(|_| Status::internal("unknown stored role"))?,
        );
        let csr_bytes = request.into_inner().csr;
        let csr = String::from_utf8(csr_bytes.clone())
            .map_err(|_| Status::invalid_argument("the CSR is not PEM text"))?;
        let cert_pem = signer(&cluster)?
            .sign_csr(&csr, &node.id, role, &cluster.id, cert_validity(&cluster))
            .map_err(sign_status)?;
        let certificate = issued(role, csr_bytes, cert_pem, &node.id);
        self.replica
            .update_node(&node.id, |n| {
                n.certificate = Some(certificate.clone());
                true
            })
            .await
            .map_err(|e| propose_status(&e))?
            .ok_or_else(|| Status::permission_denied(format!("node {} was removed", node.id)))?;
        tracing::info!(node_id = %node.id, %role, "node certificate renewed");
        Ok(Response::new(RenewNodeCertificateResponse {
            node_id: node.id.clone(),
        }))
    }
}
