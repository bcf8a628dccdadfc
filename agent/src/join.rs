//! The node side of joining a cluster and of keeping its certificate fresh.
//!
//! Joining ([`join_cluster`]):
//! 1. dial a manager with [`join_endpoint`]: TLS trusts the server only if its chain holds the
//!    root CA whose digest the join token carries (no certificate of our own yet);
//! 2. fetch the root CA and check it against the token again ([`JoinToken::verify_ca`]) —
//!    a mismatch is refused with a clear error;
//! 3. make a key and CSR here (the key never leaves the node), send CSR + token
//!    (`IssueNodeCertificate`); a follower answers UNAVAILABLE naming the leader, which we
//!    follow;
//! 4. poll `NodeCertificateStatus` until ISSUED, then verify the certificate: it is for our
//!    key, chains to the root CA, and names the node id we were given (CN), the role (OU; the
//!    one asked for, if any) and a cluster (O).
//!
//! Renewal ([`renew_once`], [`renew_loop`]): at a random point between 50 % and 80 % of the
//! certificate's validity ([`berth_proto::identity::renewal`]), or at once when asked (after a
//! promotion or demotion, or when the leader sets the certificate status ROTATE during a root
//! CA rotation), send a new CSR authenticated by the current certificate, poll for the
//! certificate of the new key, verify it (same node and cluster; the role may change), and
//! save it with [`CertDir::save`] (each file replaced atomically, key first).
//!
//! Root CA rotation: the certificate answered may be a chain (the certificate, then the
//! intermediate cross-signing the new root), and the answer carries the trust bundle the node
//! must use from then on (one root, or the old and the new one). A joining node keeps the
//! bundle only if it contains the root its token names; a renewing node keeps the bundle the
//! certificate verifies against (an answer without one keeps the current bundle).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_proto::identity::certs::{CertError, cert_ders, check_key_matches_cert};
use berth_proto::identity::renewal::{random_jitter, renewal_delay};
use berth_proto::identity::{
    CertDir, JoinToken, NodeCredentials, NodeIdentity, Role, TlsError, TokenError,
    client_tls_config, generate_key_and_csr, install_crypto_provider, join_endpoint,
};
use berth_proto::v1::ca_client::CaClient;
use berth_proto::v1::{
    GetRootCaCertificateRequest, IssuanceState, IssueNodeCertificateRequest, NodeAvailability,
    NodeCertificateStatusRequest, NodeRole, RenewNodeCertificateRequest,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{ServerName, UnixTime};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// gRPC metadata key in which a non-leader manager names the leader's address.
pub const LEADER_ADDR_METADATA: &str = "berth-leader-addr";

/// How long a join or renewal waits for its certificate.
pub const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Connect timeout to a manager.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Leader redirects followed per manager address.
const MAX_REDIRECTS: usize = 3;

/// Why joining or renewing failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The join token is malformed.
    #[error("invalid join token: {0}")]
    Token(#[from] TokenError),
    /// A TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Making a key or reading a certificate failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// No manager could be reached.
    #[error("could not reach a manager: {0}")]
    Unreachable(String),
    /// The manager's root CA is not the one the join token names.
    #[error("the root CA served by {addr} does not match the join token: {source}")]
    CaMismatch {
        /// The manager dialled.
        addr: String,
        /// The mismatch.
        #[source]
        source: TokenError,
    },
    /// A manager refused the request.
    #[error("{addr} refused: {message}")]
    Refused {
        /// The manager that answered.
        addr: String,
        /// gRPC code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The certificate received is not the one asked for.
    #[error("the certificate received is unusable: {0}")]
    BadCertificate(String),
    /// The certificate was not issued in time.
    #[error("no certificate was issued within {0:?}")]
    Timeout(Duration),
}

/// A node's new identity after joining.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The node id the cluster assigned (the certificate's CN).
    pub node_id: String,
    /// The role the token granted (the certificate's OU).
    pub role: Role,
    /// The cluster id (the certificate's O).
    pub cluster_id: String,
    /// Certificate, key and root CA, to save in the node's [`CertDir`].
    pub credentials: NodeCredentials,
    /// The manager that issued the certificate (the leader at the time).
    pub manager_addr: String,
}

enum Attempt<T> {
    Done(T),
    Redirect(String),
}

fn refused(addr: &str, s: &Status) -> JoinError {
    JoinError::Refused {
        addr: addr.to_owned(),
        code: s.code(),
        message: s.message().to_owned(),
    }
}

fn redirect_of(s: &Status) -> Option<String> {
    (s.code() == Code::Unavailable)
        .then(|| {
            s.metadata()
                .get(LEADER_ADDR_METADATA)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .flatten()
        .filter(|a| !a.is_empty())
}

/// Errors worth trying another manager for (the others are definitive refusals).
fn is_transient(e: &JoinError) -> bool {
    match e {
        JoinError::Unreachable(_) | JoinError::Timeout(_) => true,
        JoinError::Refused { code, .. } => {
            matches!(
                code,
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
            )
        }
        _ => false,
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, JoinError> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| JoinError::Unreachable(format!("{addr}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT))
}

async fn connect(addr: &str, ep: Endpoint) -> Result<Channel, JoinError> {
    ep.connect().await.map_err(|e| {
        // The chain carries the TLS reason, e.g. the token-pinned CA check.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        JoinError::Unreachable(format!("{addr}: {msg}"))
    })
}

/// Joins the cluster through any of `remote_addrs` with `token`; see the module docs.
/// `role` = `None` accepts whatever role the token grants.
pub async fn join_cluster(
    remote_addrs: &[String],
    token: &str,
    role: Option<Role>,
    availability: NodeAvailability,
) -> Result<Joined, JoinError> {
    install_crypto_provider();
    let token = JoinToken::parse(token)?;
    let raw = token.to_string();
    let mut last = JoinError::Unreachable("no manager address given".into());
    for start in remote_addrs {
        let mut addr = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            match join_at(&addr, &token, &raw, role, availability).await {
                Ok(Attempt::Done(joined)) => return Ok(joined),
                Ok(Attempt::Redirect(next)) => addr = next,
                Err(e) if is_transient(&e) => {
                    tracing::debug!(%addr, error = %e, "join attempt failed; trying the next manager");
                    last = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(last)
}

async fn join_at(
    addr: &str,
    token: &JoinToken,
    raw_token: &str,
    role: Option<Role>,
    availability: NodeAvailability,
) -> Result<Attempt<Joined>, JoinError> {
    let channel = connect(addr, join_endpoint(endpoint(addr)?, token)?).await?;
    let mut ca = CaClient::new(channel);
    let root = ca
        .get_root_ca_certificate(GetRootCaCertificateRequest {})
        .await
        .map_err(|s| refused(addr, &s))?
        .into_inner()
        .certificate;
    token
        .verify_ca(&root)
        .map_err(|source| JoinError::CaMismatch {
            addr: addr.to_owned(),
            source,
        })?;
    let ca_pem = String::from_utf8(root)
        .map_err(|_| JoinError::BadCertificate("the root CA is not PEM text".into()))?;
    let bundle = generate_key_and_csr("joining-node")?;
    let issued = ca
        .issue_node_certificate(IssueNodeCertificateRequest {
            csr: bundle.csr_pem.clone().into_bytes(),
            token: raw_token.to_owned(),
            role: role.map(|r| NodeRole::from(r) as i32),
            availability: availability as i32,
            node_id: String::new(),
        })
        .await;
    let node_id = match issued {
        Ok(r) => r.into_inner().node_id,
        Err(s) => {
            if let Some(next) = redirect_of(&s) {
                return Ok(Attempt::Redirect(next));
            }
            return Err(refused(addr, &s));
        }
    };
    let issued = wait_for_certificate(&mut ca, addr, &node_id, &bundle.key_pem).await?;
    // The bundle came over the token-pinned channel; keep it only if it holds the token's root.
    let ca_pem = match issued.trust_bundle {
        Some(trusted) if bundle_holds(token, &trusted) => trusted,
        Some(_) => {
            return Err(JoinError::BadCertificate(
                "the trust bundle does not contain the root CA named by the join token".into(),
            ));
        }
        None => ca_pem,
    };
    let credentials = NodeCredentials {
        cert_pem: issued.cert_pem,
        key_pem: bundle.key_pem,
        ca_pem,
    };
    let identity = verify(&credentials, &node_id, None)?;
    if let Some(want) = role
        && identity.role != want
    {
        return Err(JoinError::BadCertificate(format!(
            "asked to join as {want}, got a {} certificate",
            identity.role
        )));
    }
    tracing::info!(node_id = %node_id, role = %identity.role, manager = %addr, "joined the cluster");
    Ok(Attempt::Done(Joined {
        node_id,
        role: identity.role,
        cluster_id: identity.cluster_id,
        credentials,
        manager_addr: addr.to_owned(),
    }))
}

/// True when one of the certificates in `bundle` (PEM) is the root `token` names.
fn bundle_holds(token: &JoinToken, bundle: &str) -> bool {
    cert_ders(bundle).is_ok_and(|roots| roots.iter().any(|r| token.verify_ca(r).is_ok()))
}

/// An issued certificate and the trust bundle answered with it.
struct Issued {
    /// The certificate, possibly followed by an intermediate (PEM).
    cert_pem: String,
    /// The roots to trust (PEM); `None` from a manager that sends none.
    trust_bundle: Option<String>,
}

/// Polls the node's certificate until one for `key_pem` is ISSUED.
async fn wait_for_certificate(
    ca: &mut CaClient<Channel>,
    addr: &str,
    node_id: &str,
    key_pem: &str,
) -> Result<Issued, JoinError> {
    let deadline = Instant::now() + ISSUANCE_TIMEOUT;
    loop {
        let mut request = tonic::Request::new(NodeCertificateStatusRequest {
            node_id: node_id.to_owned(),
        });
        request.set_timeout(Duration::from_secs(10));
        match ca.node_certificate_status(request).await {
            Ok(r) => {
                let r = r.into_inner();
                let state = r.status.as_ref().map_or(0, |s| s.state);
                if state == IssuanceState::Failed as i32 {
                    let err = r.status.map(|s| s.err).unwrap_or_default();
                    return Err(JoinError::BadCertificate(format!(
                        "the CA failed to issue it: {err}"
                    )));
                }
                if state == IssuanceState::Issued as i32
                    && let Some(cert) = r.certificate
                {
                    let pem = String::from_utf8(cert.certificate).map_err(|_| {
                        JoinError::BadCertificate("the certificate is not PEM text".into())
                    })?;
                    // An older certificate (before a renewal lands) is for another key.
                    if check_key_matches_cert(key_pem, &pem).is_ok() {
                        let trust_bundle = (!r.trust_bundle.is_empty())
                            .then(|| String::from_utf8(r.trust_bundle))
                            .transpose()
                            .map_err(|_| {
                                JoinError::BadCertificate("the trust bundle is not PEM text".into())
                            })?;
                        return Ok(Issued {
                            cert_pem: pem,
                            trust_bundle,
                        });
                    }
                }
            }
            // A follower may not have applied the new node yet.
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) if s.code() == Code::DeadlineExceeded => {}
            Err(s) => return Err(refused(addr, &s)),
        }
        if Instant::now() > deadline {
            return Err(JoinError::Timeout(ISSUANCE_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that `creds` hold a certificate for their key that chains (through the
/// intermediates that follow it, if any) to a root of their trust bundle, valid now, for node
/// `node_id` (and cluster `cluster_id` when given). Returns its identity.
pub fn verify(
    creds: &NodeCredentials,
    node_id: &str,
    cluster_id: Option<&str>,
) -> Result<NodeIdentity, JoinError> {
    let bad = |m: String| JoinError::BadCertificate(m);
    let identity = creds.identity()?;
    if identity.node_id != node_id {
        return Err(bad(format!(
            "it names node {} (CN), expected {node_id}",
            identity.node_id
        )));
    }
    if let Some(cluster) = cluster_id
        && identity.cluster_id != cluster
    {
        return Err(bad(format!(
            "it names cluster {} (O), expected {cluster}",
            identity.cluster_id
        )));
    }
    let mut chain = cert_ders(&creds.cert_pem)?.into_iter();
    let leaf = chain.next().ok_or(CertError::NoCertificate)?;
    let intermediates: Vec<_> = chain.collect();
    let mut roots = RootCertStore::empty();
    for root in cert_ders(&creds.ca_pem)? {
        roots
            .add(root)
            .map_err(|e| bad(format!("the root CA is unusable: {e}")))?;
    }
    let verifier = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| bad(format!("cannot build a verifier: {e}")))?;
    // Node certificates carry their node id as a DNS name.
    let name = ServerName::try_from(node_id.to_owned())
        .map_err(|_| bad(format!("{node_id:?} is not a DNS name")))?;
    verifier
        .verify_server_cert(&leaf, &intermediates, &name, &[], UnixTime::now())
        .map_err(|e| bad(format!("it does not verify against the root CA: {e}")))?;
    Ok(identity)
}

/// Renews `creds` through any of `managers` (following leader redirects): a new key and CSR,
/// authenticated by the current certificate. The role of the new certificate is the node's
/// current role in the cluster.
pub async fn renew_once(
    creds: &NodeCredentials,
    managers: &[String],
) -> Result<NodeCredentials, JoinError> {
    install_crypto_provider();
    let current = creds.identity()?;
    let tls = client_tls_config(creds)?;
    let mut last = JoinError::Unreachable("no manager address given".into());
    for start in managers {
        let mut addr = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let attempt = async {
                let ep = endpoint(&addr)?
                    .tls_config(tls.clone())
                    .map_err(|e| JoinError::Unreachable(format!("{addr}: {e}")))?;
                let mut ca = CaClient::new(connect(&addr, ep).await?);
                let bundle = generate_key_and_csr(&current.node_id)?;
                if let Err(s) = ca
                    .renew_node_certificate(RenewNodeCertificateRequest {
                        csr: bundle.csr_pem.clone().into_bytes(),
                    })
                    .await
                {
                    return match redirect_of(&s) {
                        Some(next) => Ok(Attempt::Redirect(next)),
                        None => Err(refused(&addr, &s)),
                    };
                }
                let issued =
                    wait_for_certificate(&mut ca, &addr, &current.node_id, &bundle.key_pem).await?;
                let renewed = NodeCredentials {
                    cert_pem: issued.cert_pem,
                    key_pem: bundle.key_pem,
                    ca_pem: issued.trust_bundle.unwrap_or_else(|| creds.ca_pem.clone()),
                };
                verify(&renewed, &current.node_id, Some(&current.cluster_id))?;
                Ok(Attempt::Done(renewed))
            };
            match attempt.await {
                Ok(Attempt::Done(renewed)) => return Ok(renewed),
                Ok(Attempt::Redirect(next)) => addr = next,
                Err(e) if is_transient(&e) => {
                    last = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(last)
}

/// Keeps the certificate in `cert_dir` fresh until `cancel`: renews it in its renewal window
/// (or when `renew_now` is notified), saves it, and publishes it on `updates`. Failed
/// renewals are retried with a backoff of up to a minute; an error is returned only when the
/// certificate directory cannot be read or written.
pub async fn renew_loop(
    cert_dir: CertDir,
    managers: Vec<String>,
    updates: watch::Sender<NodeCredentials>,
    renew_now: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<(), JoinError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let creds = cert_dir.load()?;
        let id = creds.identity()?;
        let delay = renewal_delay(
            id.not_before,
            id.not_after,
            SystemTime::now(),
            random_jitter(),
        );
        tracing::debug!(node_id = %id.node_id, ?delay, "next certificate renewal");
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
            _ = renew_now.notified() => {}
        }
        match renew_once(&creds, &managers).await {
            Ok(renewed) => {
                cert_dir.save(&renewed)?;
                let role = renewed.identity().map(|i| i.role);
                tracing::info!(node_id = %id.node_id, ?role, "certificate renewed");
                updates.send_replace(renewed);
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::warn!(node_id = %id.node_id, error = %e, ?backoff, "certificate renewal failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests;
