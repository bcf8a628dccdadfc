//! Real mutual-TLS tests: a tonic server on 127.0.0.1 with `server_tls_config`, serving the
//! generated CA and Raft services through small test implementations that authorize calls
//! with `require_role`, dialled by clients holding various certificates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use berth_proto::identity::{
    JoinToken, NodeCredentials, Revocations, Role, anonymous_client_tls_config, client_tls_config,
    generate_key_and_csr, install_crypto_provider, join_endpoint, require_role, server_tls_config,
};
use berth_proto::v1;
use berth_proto::v1::ca_client::CaClient;
use berth_proto::v1::ca_server::{Ca, CaServer};
use berth_proto::v1::raft_client::RaftClient;
use berth_proto::v1::raft_server::{Raft, RaftServer};
use tokio::sync::oneshot;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Response, Status};

use super::{DEFAULT_NODE_CERT_VALIDITY, JoinTokens, RootCa};

const CLUSTER: &str = "cluster-test";

/// Test CA service: the two unauthenticated calls of a join, plus a renewal call that echoes
/// the caller's certificate identity after `require_role`.
struct TestCa {
    root: std::sync::Arc<RootCa>,
    tokens: std::sync::Arc<Mutex<JoinTokens>>,
    revocations: Revocations,
    issued: Mutex<HashMap<String, String>>,
    next: AtomicUsize,
}

#[tonic::async_trait]
impl Ca for TestCa {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<v1::GetRootCaCertificateRequest>,
    ) -> Result<Response<v1::GetRootCaCertificateResponse>, Status> {
        Ok(Response::new(v1::GetRootCaCertificateResponse {
            certificate: self.root.cert_pem().as_bytes().to_vec(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<v1::IssueNodeCertificateRequest>,
    ) -> Result<Response<v1::IssueNodeCertificateResponse>, Status> {
        let req = req.into_inner();
        let role = {
            let tokens = self
                .tokens
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            tokens
                .role_of(&req.token)
                .map_err(|e| Status::permission_denied(e.to_string()))?
        };
        let node_id = format!("joined{}", self.next.fetch_add(1, Ordering::Relaxed));
        let csr = String::from_utf8(req.csr).map_err(|_| Status::invalid_argument("csr"))?;
        let cert = self
            .root
            .sign_csr(&csr, &node_id, role, CLUSTER, DEFAULT_NODE_CERT_VALIDITY)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.issued
            .lock()
            .map_err(|_| Status::internal("poisoned"))?
            .insert(node_id.clone(), cert);
        Ok(Response::new(v1::IssueNodeCertificateResponse {
            node_id,
            node_membership: 0,
        }))
    }

    async fn node_certificate_status(
        &self,
        req: Request<v1::NodeCertificateStatusRequest>,
    ) -> Result<Response<v1::NodeCertificateStatusResponse>, Status> {
        let node_id = req.into_inner().node_id;
        let issued = self
            .issued
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        let cert = issued
            .get(&node_id)
            .ok_or_else(|| Status::not_found(node_id.clone()))?;
        Ok(Response::new(v1::NodeCertificateStatusResponse {
            status: Some(v1::IssuanceStatus {
                state: v1::IssuanceState::Issued as i32,
                err: String::new(),
            }),
            certificate: Some(v1::NodeCertificate {
                certificate: cert.as_bytes().to_vec(),
                cn: node_id,
                ..Default::default()
            }),
            trust_bundle: Vec::new(),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<v1::RenewNodeCertificateRequest>,
    ) -> Result<Response<v1::RenewNodeCertificateResponse>, Status> {
        let id = require_role(&req, &[Role::Worker, Role::Manager], &self.revocations)?;
        Ok(Response::new(v1::RenewNodeCertificateResponse {
            node_id: format!("{}|{}|{}", id.node_id, id.role.as_ou(), id.cluster_id),
        }))
    }
}

/// Test Raft service: manager-only, echoes the caller's node id.
struct TestRaft {
    revocations: Revocations,
}

impl TestRaft {
    fn reply<T>(&self, req: &Request<T>) -> Result<Response<v1::RaftReply>, Status> {
        let id = require_role(req, &[Role::Manager], &self.revocations)?;
        Ok(Response::new(v1::RaftReply {
            payload: id.node_id.into_bytes(),
        }))
    }
}

#[tonic::async_trait]
impl Raft for TestRaft {
    async fn vote(&self, req: Request<v1::RaftRequest>) -> Result<Response<v1::RaftReply>, Status> {
        self.reply(&req)
    }
    async fn append_entries(
        &self,
        req: Request<v1::RaftRequest>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        self.reply(&req)
    }
    async fn install_snapshot(
        &self,
        req: Request<v1::RaftRequest>,
    ) -> Result<Response<v1::RaftReply>, Status> {
        self.reply(&req)
    }
}

/// A cluster fixture: root CA, tokens, deny list and a running mTLS server. Dropping it
/// stops the server.
struct Fixture {
    root: std::sync::Arc<RootCa>,
    tokens: std::sync::Arc<Mutex<JoinTokens>>,
    revocations: Revocations,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.abort();
    }
}

impl Fixture {
    async fn start() -> anyhow::Result<Self> {
        let root = std::sync::Arc::new(RootCa::generate()?);
        let server_creds = root.issue_node_credentials(
            "manager0",
            Role::Manager,
            CLUSTER,
            DEFAULT_NODE_CERT_VALIDITY,
        )?;
        Self::start_with(root, &server_creds).await
    }

    async fn start_with(
        root: std::sync::Arc<RootCa>,
        server_creds: &NodeCredentials,
    ) -> anyhow::Result<Self> {
        install_crypto_provider();
        let tokens = std::sync::Arc::new(Mutex::new(JoinTokens::generate(&root)?));
        let revocations = Revocations::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(server_tls_config(server_creds)?)?
            .add_service(CaServer::new(TestCa {
                root: root.clone(),
                tokens: tokens.clone(),
                revocations: revocations.clone(),
                issued: Mutex::new(HashMap::new()),
                next: AtomicUsize::new(1),
            }))
            .add_service(RaftServer::new(TestRaft {
                revocations: revocations.clone(),
            }));
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Self {
            root,
            tokens,
            revocations,
            addr,
            shutdown: Some(tx),
            server,
        })
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        Ok(Endpoint::from_shared(format!("https://{}", self.addr))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10)))
    }

    async fn channel(&self, tls: ClientTlsConfig) -> anyhow::Result<Channel> {
        Ok(self.endpoint()?.tls_config(tls)?.connect().await?)
    }

    fn creds(&self, node_id: &str, role: Role) -> anyhow::Result<NodeCredentials> {
        Ok(self
            .root
            .issue_node_credentials(node_id, role, CLUSTER, DEFAULT_NODE_CERT_VALIDITY)?)
    }

    fn token(&self, role: Role) -> String {
        self.tokens
            .lock()
            .map(|t| t.get(role).to_string())
            .unwrap_or_default()
    }
}

/// Calls the unauthenticated GetRootCACertificate: success means the TLS layer admitted us.
async fn try_get_root(ep: Endpoint, tls: ClientTlsConfig) -> Result<String, String> {
    let ep = ep.tls_config(tls).map_err(|e| format!("config: {e}"))?;
    let channel = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let reply = CaClient::new(channel)
        .get_root_ca_certificate(v1::GetRootCaCertificateRequest {})
        .await
        .map_err(|s| format!("rpc: {s:?}"))?;
    String::from_utf8(reply.into_inner().certificate).map_err(|e| e.to_string())
}

async fn renew_echo(channel: Channel) -> Result<String, Status> {
    CaClient::new(channel)
        .renew_node_certificate(v1::RenewNodeCertificateRequest { csr: Vec::new() })
        .await
        .map(|r| r.into_inner().node_id)
}

async fn raft_vote(channel: Channel) -> Result<String, Status> {
    RaftClient::new(channel)
        .vote(v1::RaftRequest::default())
        .await
        .map(|r| String::from_utf8_lossy(&r.into_inner().payload).into_owned())
}

#[tokio::test]
async fn worker_certificate_is_identified_from_the_peer_chain() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let worker = fx.creds("worker1", Role::Worker)?;
    let channel = fx.channel(client_tls_config(&worker)?).await?;
    let echo = renew_echo(channel).await?;
    assert_eq!(echo, format!("worker1|berth-worker|{CLUSTER}"));

    let manager = fx.creds("manager1", Role::Manager)?;
    let channel = fx.channel(client_tls_config(&manager)?).await?;
    assert_eq!(raft_vote(channel.clone()).await?, "manager1");
    assert_eq!(
        renew_echo(channel).await?,
        format!("manager1|berth-manager|{CLUSTER}")
    );
    Ok(())
}

#[tokio::test]
async fn client_without_certificate_reaches_join_calls_only() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let tls = anonymous_client_tls_config(fx.root.cert_pem())?;
    let root_pem = try_get_root(fx.endpoint()?, tls.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(root_pem, fx.root.cert_pem());

    let channel = fx.channel(tls).await?;
    let err = renew_echo(channel.clone()).await.expect_err("no cert");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("presented none"),
        "{}",
        err.message()
    );
    let err = raft_vote(channel).await.expect_err("no cert");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn worker_calling_a_manager_only_service_is_denied() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let worker = fx.creds("worker2", Role::Worker)?;
    let channel = fx.channel(client_tls_config(&worker)?).await?;
    let err = raft_vote(channel).await.expect_err("worker on raft");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "node worker2 is a worker; this call needs role manager"
    );
    Ok(())
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_by_tls() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let other = RootCa::generate()?;
    let mut foreign = other.issue_node_credentials(
        "intruder",
        Role::Manager,
        CLUSTER,
        DEFAULT_NODE_CERT_VALIDITY,
    )?;
    // The intruder trusts our root, so only the server's check of its certificate can fail.
    foreign.ca_pem = fx.root.cert_pem().to_owned();
    let result = try_get_root(fx.endpoint()?, client_tls_config(&foreign)?).await;
    let err = result.expect_err("foreign certificate must not get through TLS");
    // Same issuer name as our root, wrong key: the server's chain check fails the handshake
    // (rustls reports the bad signature as a DecryptError alert).
    assert!(
        err.contains("fatal alert"),
        "refused by TLS, not a handler: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn expired_certificate_is_refused_by_tls() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let bundle = generate_key_and_csr("old")?;
    let now = SystemTime::now();
    let cert_pem = fx.root.sign_csr_valid_between(
        &bundle.csr_pem,
        "oldnode",
        Role::Manager,
        CLUSTER,
        now - Duration::from_secs(3 * 86400),
        now - Duration::from_secs(86400),
    )?;
    let expired = NodeCredentials {
        cert_pem,
        key_pem: bundle.key_pem,
        ca_pem: fx.root.cert_pem().to_owned(),
    };
    let err = try_get_root(fx.endpoint()?, client_tls_config(&expired)?)
        .await
        .expect_err("expired certificate must not get through TLS");
    assert!(
        err.contains("fatal alert: CertificateExpired"),
        "refused by TLS, not a handler: {err}"
    );

    // A current certificate for the same role gets through: only the dates differed.
    let bundle = generate_key_and_csr("fresh")?;
    let fresh = NodeCredentials {
        cert_pem: fx.root.sign_csr(
            &bundle.csr_pem,
            "fresh",
            Role::Manager,
            CLUSTER,
            DEFAULT_NODE_CERT_VALIDITY,
        )?,
        key_pem: bundle.key_pem,
        ca_pem: fx.root.cert_pem().to_owned(),
    };
    try_get_root(fx.endpoint()?, client_tls_config(&fresh)?)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

#[tokio::test]
async fn removed_node_is_refused_by_require_role() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let worker = fx.creds("worker3", Role::Worker)?;
    let channel = fx.channel(client_tls_config(&worker)?).await?;
    renew_echo(channel.clone()).await?;
    fx.revocations.revoke("worker3");
    let err = renew_echo(channel).await.expect_err("removed");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "node worker3 has been removed from the cluster"
    );
    Ok(())
}

#[tokio::test]
async fn worker_certificate_cannot_serve_as_a_manager() -> anyhow::Result<()> {
    let root = std::sync::Arc::new(RootCa::generate()?);
    let worker_server =
        root.issue_node_credentials("worker9", Role::Worker, CLUSTER, DEFAULT_NODE_CERT_VALIDITY)?;
    let fx = Fixture::start_with(root, &worker_server).await?;
    let client = fx.creds("manager2", Role::Manager)?;
    let err = try_get_root(fx.endpoint()?, client_tls_config(&client)?)
        .await
        .expect_err("a worker certificate lacks the berth-manager name");
    assert!(err.contains("NotValidForName"), "{err}");
    Ok(())
}

/// Joins through the token-pinned endpoint: fetch and check the root, send a CSR with the
/// token, collect the certificate. Returns the new credentials.
async fn join(fx: &Fixture, token: &str) -> anyhow::Result<NodeCredentials> {
    let parsed = JoinToken::parse(token)?;
    let channel = join_endpoint(fx.endpoint()?, &parsed)?
        .connect()
        .await
        .context("pinned connect")?;
    let mut ca = CaClient::new(channel);
    let root = ca
        .get_root_ca_certificate(v1::GetRootCaCertificateRequest {})
        .await?
        .into_inner()
        .certificate;
    parsed.verify_ca(&root)?;
    let bundle = generate_key_and_csr("new-node")?;
    let node_id = ca
        .issue_node_certificate(v1::IssueNodeCertificateRequest {
            csr: bundle.csr_pem.into_bytes(),
            token: token.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .node_id;
    let status = ca
        .node_certificate_status(v1::NodeCertificateStatusRequest { node_id })
        .await?
        .into_inner();
    let cert = status.certificate.context("no certificate")?.certificate;
    Ok(NodeCredentials {
        cert_pem: String::from_utf8(cert)?,
        key_pem: bundle.key_pem,
        ca_pem: String::from_utf8(root)?,
    })
}

#[tokio::test]
async fn join_with_a_token_yields_working_credentials_for_its_role() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let worker = join(&fx, &fx.token(Role::Worker)).await?;
    let id = worker.identity()?;
    assert_eq!(id.role, Role::Worker);
    let channel = fx.channel(client_tls_config(&worker)?).await?;
    assert_eq!(
        renew_echo(channel.clone()).await?,
        format!("{}|berth-worker|{CLUSTER}", id.node_id)
    );
    assert_eq!(
        raft_vote(channel).await.expect_err("worker").code(),
        Code::PermissionDenied
    );

    let manager = join(&fx, &fx.token(Role::Manager)).await?;
    assert_eq!(manager.identity()?.role, Role::Manager);
    let channel = fx.channel(client_tls_config(&manager)?).await?;
    assert_eq!(raft_vote(channel).await?, manager.identity()?.node_id);
    Ok(())
}

#[tokio::test]
async fn join_token_for_another_ca_cannot_connect() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let other = RootCa::generate()?;
    let foreign = other.new_join_token()?;
    assert!(foreign.verify_ca(fx.root.cert_pem().as_bytes()).is_err());
    let err = join(&fx, &foreign.to_string())
        .await
        .expect_err("pinned verifier must refuse a server of another CA");
    let text = format!("{err:#} {err:?}");
    assert!(text.contains("pinned connect"), "{text}");
    assert!(text.contains("root CA named by the join token"), "{text}");
    Ok(())
}

#[tokio::test]
async fn rotated_token_replaces_the_old_secret() -> anyhow::Result<()> {
    let fx = Fixture::start().await?;
    let old = fx.token(Role::Worker);
    fx.tokens
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .rotate(Role::Worker)?;
    let new = fx.token(Role::Worker);
    assert_ne!(old, new);
    assert_eq!(
        JoinToken::parse(&old)?.ca_digest(),
        JoinToken::parse(&new)?.ca_digest()
    );

    let err = join(&fx, &old).await.expect_err("old secret");
    let status = err.downcast_ref::<Status>().context("a gRPC status")?;
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("secret"), "{}", status.message());
    assert_eq!(join(&fx, &new).await?.identity()?.role, Role::Worker);
    Ok(())
}

/// The three credential shapes of a root rotation: before it (old root), re-issued during it
/// (new root's certificate + cross-signed intermediate, both roots trusted) and after it (new
/// root alone).
struct RotationStages {
    old: std::sync::Arc<RootCa>,
    new: std::sync::Arc<RootCa>,
    cross: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Before,
    During,
    After,
}

impl RotationStages {
    fn new() -> anyhow::Result<Self> {
        let old = RootCa::generate()?;
        let (new, cross) = old.rotate()?;
        Ok(Self {
            old: std::sync::Arc::new(old),
            new: std::sync::Arc::new(new),
            cross,
        })
    }

    fn creds(&self, stage: Stage, node_id: &str, role: Role) -> anyhow::Result<NodeCredentials> {
        let v = DEFAULT_NODE_CERT_VALIDITY;
        Ok(match stage {
            Stage::Before => self.old.issue_node_credentials(node_id, role, CLUSTER, v)?,
            Stage::During => {
                let mut c = self.new.issue_node_credentials(node_id, role, CLUSTER, v)?;
                c.cert_pem = format!("{}{}", c.cert_pem, self.cross);
                c.ca_pem = format!("{}{}", self.old.cert_pem(), self.new.cert_pem());
                c
            }
            Stage::After => self.new.issue_node_credentials(node_id, role, CLUSTER, v)?,
        })
    }
}

#[tokio::test]
async fn rotation_stages_interoperate_over_mutual_tls() -> anyhow::Result<()> {
    use Stage::{After, Before, During};
    let stages = RotationStages::new()?;
    // Which (server, client) pairs must work: any two stages that coexist in a cluster.
    // Before/After never coexist among live nodes, and must refuse each other: a node that
    // finished the rotation no longer trusts the old root.
    let table = [
        (Before, Before, true),
        (Before, During, true),
        (During, Before, true),
        (During, During, true),
        (During, After, true),
        (After, During, true),
        (After, After, true),
        (Before, After, false),
        (After, Before, false),
    ];
    for (server_stage, client_stage, works) in table {
        let server = stages.creds(server_stage, "manager0", Role::Manager)?;
        let fx = Fixture::start_with(stages.old.clone(), &server).await?;
        let client = stages.creds(client_stage, "manager1", Role::Manager)?;
        let result = match fx.channel(client_tls_config(&client)?).await {
            Ok(channel) => raft_vote(channel).await.map_err(|s| format!("{s:?}")),
            Err(e) => Err(format!("{e:?}")),
        };
        match (works, result) {
            (true, Ok(echo)) => assert_eq!(echo, "manager1"),
            (true, Err(e)) => panic!("server {server_stage:?} / client {client_stage:?}: {e}"),
            (false, Ok(_)) => {
                panic!("server {server_stage:?} accepted client {client_stage:?}")
            }
            (false, Err(_)) => {}
        }
    }
    Ok(())
}

#[tokio::test]
async fn join_tokens_of_either_root_pin_a_manager_during_a_rotation() -> anyhow::Result<()> {
    let stages = RotationStages::new()?;
    let old_token = stages.old.new_join_token()?;
    let new_token = stages.new.new_join_token()?;
    let pinned = |fx: &Fixture, token: &JoinToken| -> anyhow::Result<Endpoint> {
        Ok(join_endpoint(fx.endpoint()?, token)?)
    };
    // During: the server presents both roots, so tokens naming either one connect.
    let server = stages.creds(Stage::During, "manager0", Role::Manager)?;
    let fx = Fixture::start_with(stages.old.clone(), &server).await?;
    pinned(&fx, &old_token)?.connect().await?;
    pinned(&fx, &new_token)?.connect().await?;
    // After: only the new root is presented; a token naming the old one is refused.
    let server = stages.creds(Stage::After, "manager0", Role::Manager)?;
    let fx = Fixture::start_with(stages.new.clone(), &server).await?;
    pinned(&fx, &new_token)?.connect().await?;
    let err = pinned(&fx, &old_token)?
        .connect()
        .await
        .expect_err("old token after the swap");
    let text = format!("{err:?}");
    assert!(text.contains("root CA named by the join token"), "{text}");
    Ok(())
}
