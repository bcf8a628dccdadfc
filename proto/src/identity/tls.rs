//! Mutual-TLS configuration for node-to-node gRPC, and per-call authorization.
//!
//! Transport rules (every TCP listener of `berthd` uses [`server_tls_config`]):
//! - The server presents its certificate chain followed by its trust bundle, and asks every
//!   client for a certificate that chains to a root of that bundle. A client certificate is
//!   *optional* at the TLS
//!   layer (rustls `WebPkiClientVerifier::allow_unauthenticated`, tonic
//!   `client_auth_optional(true)`) because a joining node has none yet and must still reach
//!   the CA's join RPC. A certificate that is presented is fully verified: signed by the
//!   root CA, inside its validity period, and usable for client auth — an unknown issuer or
//!   an expired certificate fails the handshake.
//! - Therefore every RPC except the CA's join/root-CA calls starts with [`require_role`],
//!   which refuses a caller without a certificate (`Unauthenticated`), with a removed node id
//!   ([`IsRemoved`], `PermissionDenied`), or with the wrong role (`PermissionDenied`).
//! - Root CA rotation: the trust bundle ([`NodeCredentials::ca_pem`]) holds one root, or two
//!   (old and new) while `berth swarm ca --rotate` runs; a certificate signed by the new root
//!   travels with the intermediate that cross-signs the new root with the old one, so a peer
//!   that still trusts only the old root verifies it too. Every configuration here takes all
//!   roots of the bundle and the whole chain, so nodes can renew in any order.
//! - Clients trust only the bundle's roots and check the server name [`MANAGER_SERVER_NAME`]
//!   (`berth-manager`): every manager certificate carries that DNS SAN (see
//!   [`super::certs`]), so any manager can be dialled by IP and a worker cannot pose as one.
//! - A node that has only a join token dials with [`join_endpoint`]: the server is trusted
//!   if its chain contains a certificate whose digest is the token's and the server
//!   certificate verifies against that certificate ([`TokenPinnedVerifier`]).
//!
//! ALPN is `h2` on both sides (tonic sets it). The crypto provider is ring; binaries call
//! [`install_crypto_provider`] before building any configuration.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use super::certs::{CertError, NodeCredentials, NodeIdentity, Role, cert_ders};
use super::tokens::{JoinToken, ca_digest_of};

/// The TLS server name clients check when dialling a manager; every manager certificate
/// carries it as a DNS SAN.
pub const MANAGER_SERVER_NAME: &str = "berth-manager";

/// How long a server waits for a client to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The node credentials are unusable.
    #[error("node credentials are unusable: {0}")]
    Credentials(#[from] CertError),
    /// The root CA PEM holds no certificate.
    #[error("root CA PEM holds no certificate")]
    NoCaCertificate,
    /// tonic refused the endpoint configuration.
    #[error("failed to configure TLS on the endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// rustls refused the server configuration (a root, the chain or the key).
    #[error("failed to build the TLS server configuration: {0}")]
    Server(String),
}

/// Installs ring as the process-wide rustls crypto provider. Idempotent; call it first in
/// every binary and in every test that builds TLS configurations.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn ring_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
}

fn check_ca_pem(ca_pem: &str) -> Result<(), TlsError> {
    super::certs::first_cert_der(ca_pem)
        .map(|_| ())
        .map_err(|_| TlsError::NoCaCertificate)
}

/// Server side: presents `creds` (certificate chain + trust bundle), verifies client
/// certificates against the bundle's roots, and accepts clients without a certificate (see
/// module docs).
pub fn server_tls_config(creds: &NodeCredentials) -> Result<ServerTlsConfig, TlsError> {
    creds.identity()?;
    check_ca_pem(&creds.ca_pem)?;
    let chain = format!(
        "{}{}",
        with_newline(&creds.cert_pem),
        with_newline(&creds.ca_pem)
    );
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, &creds.key_pem))
        .client_ca_root(Certificate::from_pem(&creds.ca_pem))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// [`server_tls_config`] as a rustls configuration (ALPN `h2`), for a server that swaps its
/// configuration while it runs (berthd's cluster port takes a renewed certificate or a new
/// trust bundle for the next handshake without closing). The handshake timeout is the
/// acceptor's to apply ([`HANDSHAKE_TIMEOUT`]).
pub fn server_rustls_config(creds: &NodeCredentials) -> Result<Arc<ServerConfig>, TlsError> {
    creds.identity()?;
    let server = |e: &dyn std::fmt::Display| TlsError::Server(e.to_string());
    let mut roots = RootCertStore::empty();
    for root in cert_ders(&creds.ca_pem).map_err(|_| TlsError::NoCaCertificate)? {
        roots.add(root).map_err(|e| server(&e))?;
    }
    let provider = ring_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| server(&e))?;
    let mut chain = cert_ders(&creds.cert_pem)?;
    chain.extend(cert_ders(&creds.ca_pem)?);
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).map_err(|e| server(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| server(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| server(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client side for a node with credentials: trusts only the bundle's roots, presents the
/// node's certificate chain, and expects the server to be a manager ([`MANAGER_SERVER_NAME`]). Call
/// `.domain_name(..)` on the result to dial another kind of server.
pub fn client_tls_config(creds: &NodeCredentials) -> Result<ClientTlsConfig, TlsError> {
    creds.identity()?;
    check_ca_pem(&creds.ca_pem)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&creds.ca_pem))
        .identity(Identity::from_pem(&creds.cert_pem, &creds.key_pem))
        .domain_name(MANAGER_SERVER_NAME))
}

/// Client side without a certificate (a joining node that already checked the root CA
/// against its token): trusts only `ca_pem`, expects a manager.
pub fn anonymous_client_tls_config(ca_pem: &str) -> Result<ClientTlsConfig, TlsError> {
    check_ca_pem(ca_pem)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(MANAGER_SERVER_NAME))
}

/// Configures `endpoint` for a node that holds only a join token: no client certificate,
/// and the server is trusted through [`TokenPinnedVerifier`].
pub fn join_endpoint(endpoint: Endpoint, token: &JoinToken) -> Result<Endpoint, TlsError> {
    Ok(endpoint.tls_config_with_verifier(
        ClientTlsConfig::new().domain_name(MANAGER_SERVER_NAME),
        Arc::new(TokenPinnedVerifier::new(token)),
    )?)
}

/// Trusts a server when its certificate chain includes the root CA named by a join token
/// (by digest) and the server certificate verifies against that root for the requested
/// server name, as a normal WebPKI check would with that root configured.
#[derive(Debug)]
pub struct TokenPinnedVerifier {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl TokenPinnedVerifier {
    /// A verifier pinned to `token`'s root CA digest.
    pub fn new(token: &JoinToken) -> Self {
        Self {
            digest: token.ca_digest().to_owned(),
            provider: ring_provider(),
        }
    }
}

impl ServerCertVerifier for TokenPinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates
            .iter()
            .find(|c| ca_digest_of(c.as_ref()).is_ok_and(|d| d == self.digest))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server did not present the root CA named by the join token".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(root.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("building verifier: {e}")))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Answers "has this node been removed from the cluster?" for [`require_role`]; the manager
/// implements it over its store. Closures `Fn(&str) -> bool` implement it too.
pub trait IsRemoved: Send + Sync {
    /// True when `node_id`'s certificates must be refused.
    fn is_removed(&self, node_id: &str) -> bool;
}

impl<F> IsRemoved for F
where
    F: Fn(&str) -> bool + Send + Sync,
{
    fn is_removed(&self, node_id: &str) -> bool {
        self(node_id)
    }
}

/// An [`IsRemoved`] that removes no one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoneRemoved;

impl IsRemoved for NoneRemoved {
    fn is_removed(&self, _node_id: &str) -> bool {
        false
    }
}

/// A shared, in-memory deny list of removed node ids.
#[derive(Clone, Debug, Default)]
pub struct Revocations {
    removed: Arc<RwLock<HashSet<String>>>,
}

impl Revocations {
    /// An empty deny list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses `node_id` from now on.
    pub fn revoke(&self, node_id: impl Into<String>) {
        let mut set = self.removed.write().unwrap_or_else(|e| e.into_inner());
        set.insert(node_id.into());
    }

    /// Replaces the whole list (e.g. after reading the store).
    pub fn replace_all(&self, node_ids: impl IntoIterator<Item = String>) {
        let mut set = self.removed.write().unwrap_or_else(|e| e.into_inner());
        *set = node_ids.into_iter().collect();
    }
}

impl IsRemoved for Revocations {
    fn is_removed(&self, node_id: &str) -> bool {
        let set = self.removed.read().unwrap_or_else(|e| e.into_inner());
        set.contains(node_id)
    }
}

/// The identity in the caller's TLS certificate. `Unauthenticated` when there is no
/// certificate (a plain-TCP or unix-socket call, or a TLS client without one) or it is not a
/// Berth node certificate.
pub fn peer_identity<T>(req: &Request<T>) -> Result<NodeIdentity, Status> {
    let certs = req.peer_certs();
    identity_from_chain(certs.as_deref().map(Vec::as_slice))
}

/// Certificates parsed by [`identity_from_chain`], by their DER bytes: every RPC authorizes
/// its caller, and parsing X.509 cost more than the rest of a status update. The identity is a
/// pure function of the bytes (validity is checked per call), so caching it is exact. Bounded:
/// cleared when full.
static IDENTITIES: std::sync::LazyLock<std::sync::Mutex<HashMap<Vec<u8>, NodeIdentity>>> =
    std::sync::LazyLock::new(Default::default);

/// Certificates kept in [`IDENTITIES`] at most.
const IDENTITY_CACHE_MAX: usize = 4096;

fn identity_from_chain(certs: Option<&[CertificateDer<'_>]>) -> Result<NodeIdentity, Status> {
    let leaf = certs.and_then(|c| c.first()).ok_or_else(|| {
        Status::unauthenticated("this call needs a node certificate and the caller presented none")
    })?;
    let cache = || {
        IDENTITIES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(id) = cache().get(leaf.as_ref()) {
        return Ok(id.clone());
    }
    let id = NodeIdentity::from_der(leaf.as_ref()).map_err(|e| {
        Status::unauthenticated(format!(
            "caller certificate is not a berth node certificate: {e}"
        ))
    })?;
    let mut cached = cache();
    if cached.len() >= IDENTITY_CACHE_MAX {
        cached.clear();
    }
    cached.insert(leaf.as_ref().to_vec(), id.clone());
    Ok(id)
}

/// Authorizes a call: the caller must present a node certificate whose role is in `roles`,
/// that is still valid now, and whose node has not been removed. Returns the caller's identity.
pub fn require_role<T>(
    req: &Request<T>,
    roles: &[Role],
    removed: &dyn IsRemoved,
) -> Result<NodeIdentity, Status> {
    let certs = req.peer_certs();
    authorize(
        certs.as_deref().map(Vec::as_slice),
        roles,
        removed,
        SystemTime::now(),
    )
}

/// [`require_role`] on an already extracted peer chain at time `now`.
pub fn authorize(
    peer_certs: Option<&[CertificateDer<'_>]>,
    roles: &[Role],
    removed: &dyn IsRemoved,
    now: SystemTime,
) -> Result<NodeIdentity, Status> {
    let id = identity_from_chain(peer_certs)?;
    // The handshake checked validity; a long-lived connection can outlive the certificate.
    if !id.is_valid_at(now) {
        return Err(Status::unauthenticated(format!(
            "certificate of node {} is outside its validity period; renew it",
            id.node_id
        )));
    }
    if removed.is_removed(&id.node_id) {
        return Err(Status::permission_denied(format!(
            "node {} has been removed from the cluster",
            id.node_id
        )));
    }
    if !roles.contains(&id.role) {
        let wanted: Vec<String> = roles.iter().map(Role::to_string).collect();
        return Err(Status::permission_denied(format!(
            "node {} is a {}; this call needs role {}",
            id.node_id,
            id.role,
            wanted.join(" or ")
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    struct TestCa {
        cert: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn test_ca(cn: &str) -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("ca");
        TestCa {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(
        ca: &TestCa,
        node: &str,
        role: Role,
        offset_days: (i64, i64),
    ) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec![node.to_owned(), role.as_ou().to_owned()])
                .expect("params");
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
        let now = x509_parser::time::ASN1Time::now().timestamp();
        params.not_before =
            x509_parser::time::ASN1Time::from_timestamp(now + offset_days.0 * 86400)
                .expect("time")
                .to_datetime();
        params.not_after = x509_parser::time::ASN1Time::from_timestamp(now + offset_days.1 * 86400)
            .expect("time")
            .to_datetime();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params
            .signed_by(&key, &ca.issuer)
            .expect("sign")
            .der()
            .clone()
    }

    #[test]
    fn authorize_accepts_the_right_role_and_returns_the_identity() {
        let ca = test_ca("ca");
        let cert = leaf(&ca, "worker1", Role::Worker, (-1, 30));
        let id = authorize(
            Some(std::slice::from_ref(&cert)),
            &[Role::Worker, Role::Manager],
            &NoneRemoved,
            SystemTime::now(),
        )
        .expect("authorized");
        assert_eq!(id.node_id, "worker1");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "cluster1");
    }

    #[test]
    fn authorize_refuses_missing_cert_wrong_role_removed_and_expired() {
        let ca = test_ca("ca");
        let worker = leaf(&ca, "worker1", Role::Worker, (-1, 30));
        let now = SystemTime::now();

        let err = authorize(None, &[Role::Worker], &NoneRemoved, now).expect_err("no cert");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(
            err.message().contains("presented none"),
            "{}",
            err.message()
        );
        let err = authorize(Some(&[]), &[Role::Worker], &NoneRemoved, now).expect_err("empty");
        assert_eq!(err.code(), Code::Unauthenticated);

        let err = authorize(
            Some(std::slice::from_ref(&worker)),
            &[Role::Manager],
            &NoneRemoved,
            now,
        )
        .expect_err("worker on manager call");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "node worker1 is a worker; this call needs role manager"
        );

        let revocations = Revocations::new();
        revocations.revoke("worker1");
        let err = authorize(
            Some(std::slice::from_ref(&worker)),
            &[Role::Worker],
            &revocations,
            now,
        )
        .expect_err("removed");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("removed"), "{}", err.message());
        revocations.replace_all(Vec::new());
        authorize(
            Some(std::slice::from_ref(&worker)),
            &[Role::Worker],
            &revocations,
            now,
        )
        .expect("restored");
        let closure = |id: &str| id == "worker1";
        assert!(
            authorize(
                Some(std::slice::from_ref(&worker)),
                &[Role::Worker],
                &closure,
                now
            )
            .is_err()
        );

        let expired = leaf(&ca, "old", Role::Worker, (-30, -1));
        let err = authorize(
            Some(std::slice::from_ref(&expired)),
            &[Role::Worker],
            &NoneRemoved,
            now,
        )
        .expect_err("expired");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.message().contains("validity"), "{}", err.message());

        let ca_der = ca.cert.der().clone();
        let err = authorize(
            Some(std::slice::from_ref(&ca_der)),
            &[Role::Worker],
            &NoneRemoved,
            now,
        )
        .expect_err("CA cert as identity");
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    #[test]
    fn peer_identity_without_tls_is_unauthenticated() {
        let err = peer_identity(&Request::new(())).expect_err("no TLS");
        assert_eq!(err.code(), Code::Unauthenticated);
        let err =
            require_role(&Request::new(()), &[Role::Manager], &NoneRemoved).expect_err("no TLS");
        assert_eq!(err.code(), Code::Unauthenticated);
    }

    fn server_name() -> ServerName<'static> {
        ServerName::try_from(MANAGER_SERVER_NAME).expect("name")
    }

    #[test]
    fn pinned_verifier_trusts_only_the_token_root() {
        install_crypto_provider();
        let ca = test_ca("berth-ca");
        let other = test_ca("berth-ca");
        let manager = leaf(&ca, "m1", Role::Manager, (-1, 30));
        let token = JoinToken::generate(ca.cert.der().as_ref()).expect("token");
        let verifier = TokenPinnedVerifier::new(&token);
        let now = UnixTime::now();
        let ca_der = ca.cert.der().clone();
        let other_der = other.cert.der().clone();

        verifier
            .verify_server_cert(
                &manager,
                std::slice::from_ref(&ca_der),
                &server_name(),
                &[],
                now,
            )
            .expect("chain to the token's root verifies");

        // No root in the chain: refused.
        let err = verifier
            .verify_server_cert(&manager, &[], &server_name(), &[], now)
            .expect_err("no root");
        assert!(err.to_string().contains("join token"), "{err}");

        // A different root that the server claims: its digest is not the token's.
        let err = verifier
            .verify_server_cert(
                &manager,
                std::slice::from_ref(&other_der),
                &server_name(),
                &[],
                now,
            )
            .expect_err("other root");
        assert!(err.to_string().contains("join token"), "{err}");

        // The token's root in the chain, but the leaf was signed by another CA.
        let forged = leaf(&other, "m1", Role::Manager, (-1, 30));
        verifier
            .verify_server_cert(
                &forged,
                std::slice::from_ref(&ca_der),
                &server_name(),
                &[],
                now,
            )
            .expect_err("leaf not signed by the token root");

        // A worker certificate lacks the berth-manager SAN.
        let worker = leaf(&ca, "w1", Role::Worker, (-1, 30));
        verifier
            .verify_server_cert(
                &worker,
                std::slice::from_ref(&ca_der),
                &server_name(),
                &[],
                now,
            )
            .expect_err("worker cannot serve as a manager");
    }
}
