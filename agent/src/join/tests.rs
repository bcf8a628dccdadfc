//! The join client against fake CA servers over real mutual TLS on 127.0.0.1: a leader that
//! signs and a follower that redirects, plus servers that misbehave in one way each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::identity::{peer_identity, server_tls_config};
use berth_proto::v1::ca_server::{Ca, CaServer};
use berth_proto::v1::{
    GetRootCaCertificateResponse, IssuanceStatus, IssueNodeCertificateResponse, NodeCertificate,
    NodeCertificateStatusResponse, NodeMembership, RenewNodeCertificateResponse,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response};

use super::*;

struct TestCa {
    pem: String,
    der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn test_ca() -> TestCa {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth-ca");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("ca");
    TestCa {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

fn asn1(t: SystemTime) -> x509_parser::time::ASN1Time {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    x509_parser::time::ASN1Time::from_timestamp(secs as i64).expect("time")
}

/// Signs `csr_pem` like the manager's CA: CN = node id, OU = role, O = cluster.
fn sign(
    ca: &TestCa,
    csr_pem: &str,
    node: &str,
    role: Role,
    validity: (SystemTime, SystemTime),
) -> String {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).expect("csr");
    let mut params =
        rcgen::CertificateParams::new(vec![node.to_owned(), role.as_ou().to_owned()]).expect("p");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, role.as_ou());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "cluster1");
    params.not_before = asn1(validity.0).to_datetime();
    params.not_after = asn1(validity.1).to_datetime();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
        .signed_by(&csr.public_key, &ca.issuer)
        .expect("sign")
        .pem()
}

fn normal_validity() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
}

fn creds_for(
    ca: &TestCa,
    node: &str,
    role: Role,
    validity: (SystemTime, SystemTime),
) -> NodeCredentials {
    let bundle = generate_key_and_csr(node).expect("csr");
    NodeCredentials {
        cert_pem: sign(ca, &bundle.csr_pem, node, role, validity),
        key_pem: bundle.key_pem,
        ca_pem: ca.pem.clone(),
    }
}

/// What a fake manager does.
#[derive(Default)]
struct Behaviour {
    /// Answer Issue/Renew with UNAVAILABLE naming this leader.
    redirect_to: Option<String>,
    /// Serve this root CA instead of the real one.
    served_root: Option<String>,
    /// Sign for this CN instead of the node id.
    wrong_cn: Option<String>,
}

struct FakeCa {
    ca: Arc<TestCa>,
    token: String,
    behaviour: Behaviour,
    issued: Mutex<HashMap<String, String>>,
    seq: AtomicU64,
}

#[tonic::async_trait]
impl Ca for FakeCa {
    async fn get_root_ca_certificate(
        &self,
        _: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let pem = self
            .behaviour
            .served_root
            .clone()
            .unwrap_or(self.ca.pem.clone());
        Ok(Response::new(GetRootCaCertificateResponse {
            certificate: pem.into_bytes(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        if let Some(leader) = &self.behaviour.redirect_to {
            let mut s = Status::unavailable("not the leader");
            s.metadata_mut()
                .insert(LEADER_ADDR_METADATA, leader.parse().expect("ascii"));
            return Err(s);
        }
        let req = req.into_inner();
        if req.token != self.token {
            return Err(Status::permission_denied("invalid join token"));
        }
        let node = format!("node{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let cn = self.behaviour.wrong_cn.clone().unwrap_or(node.clone());
        let csr = String::from_utf8(req.csr).expect("pem");
        let cert = sign(&self.ca, &csr, &cn, Role::Worker, normal_validity());
        self.issued.lock().expect("lock").insert(node.clone(), cert);
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id: node,
            node_membership: NodeMembership::Accepted as i32,
        }))
    }

    async fn node_certificate_status(
        &self,
        req: Request<NodeCertificateStatusRequest>,
    ) -> Result<Response<NodeCertificateStatusResponse>, Status> {
        let id = req.into_inner().node_id;
        let cert = self
            .issued
            .lock()
            .expect("lock")
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found("no such node"))?;
        Ok(Response::new(NodeCertificateStatusResponse {
            status: Some(IssuanceStatus {
                state: IssuanceState::Issued as i32,
                err: String::new(),
            }),
            certificate: Some(NodeCertificate {
                certificate: cert.into_bytes(),
                cn: id,
                ..Default::default()
            }),
            trust_bundle: Vec::new(),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<RenewNodeCertificateResponse>, Status> {
        let caller = peer_identity(&req)?;
        let csr = String::from_utf8(req.into_inner().csr).expect("pem");
        let cert = sign(
            &self.ca,
            &csr,
            &caller.node_id,
            caller.role,
            normal_validity(),
        );
        self.issued
            .lock()
            .expect("lock")
            .insert(caller.node_id.clone(), cert);
        Ok(Response::new(RenewNodeCertificateResponse {
            node_id: caller.node_id,
        }))
    }
}

struct Fake {
    addr: String,
    server: JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(ca: Arc<TestCa>, token: &JoinToken, behaviour: Behaviour) -> Fake {
    install_crypto_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server_creds = creds_for(&ca, "m1", Role::Manager, normal_validity());
    let fake = FakeCa {
        ca,
        token: token.to_string(),
        behaviour,
        issued: Mutex::new(HashMap::new()),
        seq: AtomicU64::new(1),
    };
    let router = Server::builder()
        .tls_config(server_tls_config(&server_creds).expect("tls"))
        .expect("tls")
        .add_service(CaServer::new(fake));
    let server = tokio::spawn(async move {
        let _ = router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Fake { addr, server }
}

#[tokio::test]
async fn joins_through_a_follower_redirect_and_verifies_the_certificate() {
    let ca = Arc::new(test_ca());
    let token = JoinToken::generate(&ca.der).expect("token");
    let leader = start(ca.clone(), &token, Behaviour::default()).await;
    let follower = start(
        ca.clone(),
        &token,
        Behaviour {
            redirect_to: Some(leader.addr.clone()),
            ..Default::default()
        },
    )
    .await;
    let joined = join_cluster(
        &["127.0.0.1:1".to_owned(), follower.addr.clone()],
        &token.to_string(),
        None,
        NodeAvailability::Active,
    )
    .await
    .expect("joined");
    assert_eq!(joined.role, Role::Worker);
    assert_eq!(joined.cluster_id, "cluster1");
    assert_eq!(joined.manager_addr, leader.addr);
    assert!(joined.node_id.starts_with("node"));
    verify(&joined.credentials, &joined.node_id, Some("cluster1")).expect("verifies");
    assert_eq!(joined.credentials.ca_pem, ca.pem);

    // Asking for a role the token does not grant is refused even if a CA signed it.
    let err = join_cluster(
        std::slice::from_ref(&leader.addr),
        &token.to_string(),
        Some(Role::Manager),
        NodeAvailability::Active,
    )
    .await
    .expect_err("wrong role");
    assert!(
        err.to_string().contains("asked to join as manager"),
        "{err}"
    );

    // A wrong secret is a definitive refusal.
    let wrong = token.rotated().expect("rotated");
    let err = join_cluster(
        std::slice::from_ref(&leader.addr),
        &wrong.to_string(),
        None,
        NodeAvailability::Active,
    )
    .await
    .expect_err("wrong secret");
    assert!(
        matches!(
            err,
            JoinError::Refused {
                code: Code::PermissionDenied,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_manager_of_another_cluster_is_not_trusted() {
    let ca = Arc::new(test_ca());
    let token = JoinToken::generate(&ca.der).expect("token");
    let server = start(ca, &token, Behaviour::default()).await;
    let foreign = JoinToken::generate(&test_ca().der).expect("token");
    let err = join_cluster(
        std::slice::from_ref(&server.addr),
        &foreign.to_string(),
        None,
        NodeAvailability::Active,
    )
    .await
    .expect_err("pinned TLS refuses");
    assert!(err.to_string().contains("join token"), "{err}");
}

#[tokio::test]
async fn a_served_root_ca_that_is_not_the_tokens_is_refused() {
    let ca = Arc::new(test_ca());
    let token = JoinToken::generate(&ca.der).expect("token");
    let server = start(
        ca,
        &token,
        Behaviour {
            served_root: Some(test_ca().pem),
            ..Default::default()
        },
    )
    .await;
    let err = join_cluster(
        std::slice::from_ref(&server.addr),
        &token.to_string(),
        None,
        NodeAvailability::Active,
    )
    .await
    .expect_err("mismatch");
    assert!(matches!(err, JoinError::CaMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match the join token"),
        "{err}"
    );
}

#[tokio::test]
async fn a_certificate_for_another_node_is_refused() {
    let ca = Arc::new(test_ca());
    let token = JoinToken::generate(&ca.der).expect("token");
    let server = start(
        ca,
        &token,
        Behaviour {
            wrong_cn: Some("someone-else".into()),
            ..Default::default()
        },
    )
    .await;
    let err = join_cluster(
        std::slice::from_ref(&server.addr),
        &token.to_string(),
        None,
        NodeAvailability::Active,
    )
    .await
    .expect_err("wrong CN");
    assert!(matches!(err, JoinError::BadCertificate(_)), "{err}");
    assert!(err.to_string().contains("someone-else"), "{err}");
}

#[test]
fn verify_refuses_a_certificate_of_another_root() {
    let ca = test_ca();
    let other = test_ca();
    let mut creds = creds_for(&ca, "n1", Role::Worker, normal_validity());
    verify(&creds, "n1", Some("cluster1")).expect("good");
    assert!(verify(&creds, "n1", Some("cluster2")).is_err());
    creds.ca_pem = other.pem;
    let err = verify(&creds, "n1", None).expect_err("other root");
    assert!(err.to_string().contains("root CA"), "{err}");
}

#[tokio::test]
async fn renew_loop_replaces_an_expiring_certificate_on_disk() {
    let ca = Arc::new(test_ca());
    let token = JoinToken::generate(&ca.der).expect("token");
    let server = start(ca.clone(), &token, Behaviour::default()).await;
    let now = SystemTime::now();
    // Past its renewal window already: the loop renews at once.
    let old = creds_for(
        &ca,
        "node7",
        Role::Worker,
        (
            now - Duration::from_secs(100),
            now + Duration::from_secs(20),
        ),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let cert_dir = CertDir::new(dir.path().join("certs"));
    cert_dir.save(&old).expect("save");
    let (tx, mut rx) = watch::channel(old.clone());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(renew_loop(
        cert_dir.clone(),
        vec![server.addr.clone()],
        tx,
        Arc::new(Notify::new()),
        cancel.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("renewed in time")
        .expect("sender alive");
    let renewed = rx.borrow().clone();
    assert_ne!(renewed.key_pem, old.key_pem);
    let id = verify(&renewed, "node7", Some("cluster1")).expect("verifies");
    assert!(id.not_after > now + Duration::from_secs(1800));
    let on_disk = cert_dir.load().expect("load");
    assert_eq!(on_disk.cert_pem, renewed.cert_pem);
    assert_eq!(on_disk.key_pem, renewed.key_pem);
    cancel.cancel();
    task.await.expect("join").expect("loop ends cleanly");
}
