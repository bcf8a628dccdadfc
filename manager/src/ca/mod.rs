//! The cluster's certificate authority: the root CA and the signer of node certificates.
//!
//! The root is an ECDSA P-256 self-signed certificate, CN `berth-ca`, valid 20 years
//! ([`ROOT_CA_VALIDITY`]), created at `swarm init`. Its key must be shared by every manager (any
//! of them may become leader and sign), so the canonical copy lives in the cluster object in
//! Raft; [`RootCa::from_pem`] rebuilds the signer from it and [`RootCa::save`]/[`RootCa::load`]
//! keep a local copy (`ca.crt`, `ca.key` with mode 0600).
//!
//! Signing ([`RootCa::sign_csr`]) takes only the public key from a node's CSR (after checking
//! the CSR's signature and that the key is P-256); subject, SANs, key usages and validity are
//! the CA's: CN = node id, OU = role, O = cluster id, DNS SANs = node id and the role name,
//! EKU server+client auth, a random 127-bit serial, `not_before` backdated one hour for clock
//! skew and `not_after` capped at the root's own expiry. See `berth_proto::identity` for the
//! node side (tokens, TLS configs, role checks, renewal schedule).
//!
//! Root rotation: [`RootCa::rotate`] makes a fresh root and the intermediate that cross-signs
//! it with the current root (same subject and key as the new root, issued by the old one), so
//! a certificate the new root signs, sent with that intermediate, verifies against either
//! root. [`rotation`] runs the cluster-wide procedure (re-issue every node, then swap roots).

pub mod join;
pub mod rotation;
pub mod service;

#[cfg(test)]
mod mtls_tests;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::identity::certs::{
    self, CertError, NodeCredentials, Role, check_private_mode, ensure_private_dir, first_cert_der,
    write_private_file, write_public_file,
};
use berth_proto::identity::tokens::{self, JoinToken, TokenError};
use rustls_pki_types::CertificateDer;

pub use join::JoinTokens;

/// Common name of every Berth root CA.
pub const ROOT_CA_COMMON_NAME: &str = "berth-ca";
/// Lifetime of a root CA (Swarm: 20 years).
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Default lifetime of a node certificate (Swarm: 90 days, `--cert-expiry 2160h`).
pub const DEFAULT_NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Shortest node certificate lifetime [`RootCa::sign_csr`] accepts. Swarm's is 1 hour; Berth
/// accepts 10 seconds so that renewal can be proven end to end in seconds (`berth swarm init
/// --cert-expiry 20s` in the tests). Production keeps the 90-day default.
pub const MIN_NODE_CERT_VALIDITY: Duration = Duration::from_secs(10);
/// How far `not_before` is set in the past, to tolerate clock skew between nodes; at most a
/// tenth of the certificate's validity, so that short certificates renew in the middle of
/// their life and not at once (the renewal point is measured from `not_before`).
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// File name of the root CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the root CA private key in a CA directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// Why the CA could not be created, loaded or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen failed to generate a key or a certificate.
    #[error("failed to generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The stored root CA certificate or key cannot be used.
    #[error("root CA material is unusable: {0}")]
    BadRootMaterial(String),
    /// The CSR could not be parsed, or its signature does not verify.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(#[source] rcgen::Error),
    /// The CSR's key is not ECDSA P-256.
    #[error("certificate signing request must carry an ECDSA P-256 key")]
    UnsupportedKey,
    /// The node id cannot be a certificate CN and DNS name.
    #[error(
        "invalid node id {0:?}: want 1-63 ASCII letters, digits or '-', not starting or ending with '-'"
    )]
    InvalidNodeId(String),
    /// The cluster id cannot be a certificate O.
    #[error("invalid cluster id {0:?}: want 1-64 ASCII letters, digits, '.', '_' or '-'")]
    InvalidClusterId(String),
    /// The requested lifetime is below [`MIN_NODE_CERT_VALIDITY`].
    #[error("certificate validity {requested:?} is shorter than the minimum {minimum:?}")]
    ValidityTooShort {
        /// What was asked for.
        requested: Duration,
        /// [`MIN_NODE_CERT_VALIDITY`].
        minimum: Duration,
    },
    /// `not_after` is not after `not_before`, or outside what X.509 can express.
    #[error("invalid validity period")]
    BadValidity,
    /// rcgen failed to sign.
    #[error("failed to sign the node certificate: {0}")]
    Sign(#[source] rcgen::Error),
    /// Reading or writing the CA directory failed.
    #[error(transparent)]
    Files(#[from] CertError),
    /// A join token could not be made.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// The root CA and its signing key.
pub struct RootCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_after: SystemTime,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &self.digest())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// Creates a new root CA valid from now (backdated [`BACKDATE`]) for [`ROOT_CA_VALIDITY`].
    pub fn generate() -> Result<Self, CaError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
                CaError::Generate {
                    what: "root CA key",
                    source,
                }
            })?;
        let now = SystemTime::now();
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let not_after = now + ROOT_CA_VALIDITY;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ROOT_CA_COMMON_NAME);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, not_before, not_after)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "root CA certificate",
                source,
            })?;
        // The stored not_after is what the certificate says (second precision).
        let cert_der = cert.der().clone();
        let not_after = parse_ca(cert_der.as_ref())?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der,
            not_after,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// Rebuilds the CA from its certificate and key (PEM), checking that the certificate is a
    /// CA certificate and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert_der = first_cert_der(cert_pem)
            .map_err(|e| CaError::BadRootMaterial(format!("certificate: {e}")))?;
        let not_after = parse_ca(cert_der.as_ref())?;
        certs::check_key_matches_cert(key_pem, cert_pem)
            .map_err(|e| CaError::BadRootMaterial(e.to_string()))?;
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| CaError::BadRootMaterial(format!("key: {e}")))?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::BadRootMaterial(format!("certificate: {e}")))?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            not_after,
            issuer,
        })
    }

    /// Writes `ca.crt` and `ca.key` (0600) into `dir`, creating it with mode 0700.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        ensure_private_dir(dir)?;
        write_private_file(&dir.join(CA_KEY_FILE), self.key_pem().as_bytes())?;
        write_public_file(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes())?;
        Ok(())
    }

    /// Reads `ca.crt` and `ca.key` from `dir`, refusing a key readable by group or others.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let key_path = dir.join(CA_KEY_FILE);
        check_private_mode(&key_path)?;
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CertError::Io {
                op: "read",
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(&dir.join(CA_CERT_FILE))?;
        let key_pem = read(&key_path)?;
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The root's private key, PKCS#8 PEM (for the cluster object; handle with care).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// When the root expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The digest join tokens carry for this root (base36 SHA-256 of the DER).
    pub fn digest(&self) -> String {
        // The DER came from a certificate we parsed or made, so it is accepted.
        tokens::ca_digest_of(self.cert_der.as_ref()).unwrap_or_default()
    }

    /// A fresh join token for this root (a new random secret).
    pub fn new_join_token(&self) -> Result<JoinToken, CaError> {
        Ok(JoinToken::generate(self.cert_der.as_ref())?)
    }

    /// Signs `csr_pem` for `node_id` with `role` in `cluster_id`, valid from now (backdated
    /// [`BACKDATE`]) for `validity` (at least [`MIN_NODE_CERT_VALIDITY`]), capped at the root's
    /// expiry. Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<String, CaError> {
        if validity < MIN_NODE_CERT_VALIDITY {
            return Err(CaError::ValidityTooShort {
                requested: validity,
                minimum: MIN_NODE_CERT_VALIDITY,
            });
        }
        let now = SystemTime::now();
        let backdate = BACKDATE.min(validity / 10);
        let not_before = now.checked_sub(backdate).unwrap_or(now);
        let not_after = (now + validity).min(self.not_after);
        self.sign_csr_valid_between(csr_pem, node_id, role, cluster_id, not_before, not_after)
    }

    /// [`RootCa::sign_csr`] with an explicit validity period and no minimum lifetime (tests use
    /// it to make expired certificates). `not_after` is still capped at the root's expiry.
    pub fn sign_csr_valid_between(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, CaError> {
        check_node_id(node_id)?;
        check_cluster_id(cluster_id)?;
        let not_after = not_after.min(self.not_after);
        if not_after <= not_before {
            return Err(CaError::BadValidity);
        }
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(CaError::InvalidCsr)?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::UnsupportedKey);
        }
        // Nothing the node asked for beyond its key is used.
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, role.as_ou());
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, cluster_id);
        params.subject_alt_names = vec![dns_san(node_id)?, dns_san(role.as_ou())?];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, not_before, not_after)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(CaError::Sign)?;
        Ok(cert.pem())
    }

    /// Makes a key, a CSR and the signed certificate in one go, for the node running this CA
    /// (the first manager at `swarm init` has no one to send a CSR to).
    pub fn issue_node_credentials(
        &self,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<NodeCredentials, CaError> {
        let bundle = certs::generate_key_and_csr(node_id)?;
        let cert_pem = self.sign_csr(&bundle.csr_pem, node_id, role, cluster_id, validity)?;
        Ok(NodeCredentials {
            cert_pem,
            key_pem: bundle.key_pem,
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// A new root CA, and the intermediate (PEM) that cross-signs it with this root: the new
    /// root's subject and key, issued by this root, valid until the earlier of the two roots'
    /// expiries. See [`rotation`].
    pub fn rotate(&self) -> Result<(RootCa, String), CaError> {
        let new = RootCa::generate()?;
        let cross = self.cross_sign(&new)?;
        Ok((new, cross))
    }

    /// Signs `other`'s subject and public key as a CA certificate issued by this root.
    fn cross_sign(&self, other: &RootCa) -> Result<String, CaError> {
        let now = SystemTime::now();
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let not_after = self.not_after.min(other.not_after);
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ROOT_CA_COMMON_NAME);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, not_before, not_after)?;
        let cert = params
            .signed_by(other.issuer.key(), &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "cross-signed root CA certificate",
                source,
            })?;
        Ok(cert.pem())
    }
}

/// Parses a root CA certificate: it must be X.509 with CA basic constraints. Returns its
/// `not_after`.
fn parse_ca(der: &[u8]) -> Result<SystemTime, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CaError::BadRootMaterial(format!("certificate: {e}")))?;
    if !cert.is_ca() {
        return Err(CaError::BadRootMaterial(
            "certificate is not a CA certificate".into(),
        ));
    }
    let secs = cert.validity().not_after.timestamp();
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Writes the validity period into `params` (rcgen takes the `time` crate's date type, which
/// x509-parser builds for us from a Unix timestamp).
fn set_validity(
    params: &mut rcgen::CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(), CaError> {
    params.not_before = x509_parser::time::ASN1Time::from_timestamp(unix_secs(not_before)?)
        .map_err(|_| CaError::BadValidity)?
        .to_datetime();
    params.not_after = x509_parser::time::ASN1Time::from_timestamp(unix_secs(not_after)?)
        .map_err(|_| CaError::BadValidity)?
        .to_datetime();
    Ok(())
}

fn unix_secs(t: SystemTime) -> Result<i64, CaError> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).map_err(|_| CaError::BadValidity),
        Err(e) => i64::try_from(e.duration().as_secs())
            .map(|s| -s)
            .map_err(|_| CaError::BadValidity),
    }
}

fn random_serial() -> Result<rcgen::SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| CaError::BadRootMaterial(format!("random: {e}")))?;
    // Positive and exactly 16 bytes long: top bit clear, next bit set.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

fn dns_san(name: &str) -> Result<rcgen::SanType, CaError> {
    let ia5 = rcgen::string::Ia5String::try_from(name)
        .map_err(|_| CaError::InvalidNodeId(name.to_owned()))?;
    Ok(rcgen::SanType::DnsName(ia5))
}

fn check_node_id(node_id: &str) -> Result<(), CaError> {
    let ok = !node_id.is_empty()
        && node_id.len() <= 63
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !node_id.starts_with('-')
        && !node_id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidNodeId(node_id.to_owned()))
    }
}

fn check_cluster_id(cluster_id: &str) -> Result<(), CaError> {
    let ok = !cluster_id.is_empty()
        && cluster_id.len() <= 64
        && cluster_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(CaError::InvalidClusterId(cluster_id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::identity::{NodeIdentity, generate_key_and_csr};
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(tag: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("berth-ca-{tag}-{}-", std::process::id()))
            .tempdir()
            .expect("tempdir")
    }

    #[test]
    fn root_ca_is_a_p256_ca_valid_for_20_years() {
        let ca = RootCa::generate().expect("ca");
        let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
        assert!(cert.is_ca());
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        assert_eq!(cn, vec![ROOT_CA_COMMON_NAME]);
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        let expected = (ROOT_CA_VALIDITY + BACKDATE).as_secs() as i64;
        assert!((life - expected).abs() <= 2, "{life} vs {expected}");
        assert_eq!(
            cert.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        assert_eq!(ca.digest().len(), tokens::DIGEST_LEN);
    }

    #[test]
    fn signed_certificate_carries_cn_ou_o_sans_and_validity() {
        let ca = RootCa::generate().expect("ca");
        let csr = generate_key_and_csr("ignored-name").expect("csr");
        let before = SystemTime::now();
        let pem = ca
            .sign_csr(
                &csr.csr_pem,
                "node7",
                Role::Manager,
                "clusterA",
                DEFAULT_NODE_CERT_VALIDITY,
            )
            .expect("sign");
        let id = NodeIdentity::from_pem(&pem).expect("identity");
        assert_eq!(id.node_id, "node7");
        assert_eq!(id.role, Role::Manager);
        assert_eq!(id.cluster_id, "clusterA");
        assert_eq!(id.serial.len(), 32);
        let skew = Duration::from_secs(5);
        assert!(id.not_before <= before - BACKDATE + skew);
        assert!(id.not_before + skew >= before - BACKDATE);
        let expected_end = before + DEFAULT_NODE_CERT_VALIDITY;
        assert!(id.not_after + skew >= expected_end && id.not_after <= expected_end + skew);

        let der = first_cert_der(&pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse");
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .expect("ext")
            .expect("has SANs")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(sans, vec!["DNSName(node7)", "DNSName(berth-manager)"]);
        assert!(!cert.is_ca());
        let eku = cert
            .extended_key_usage()
            .expect("ext")
            .expect("has EKU")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        // The key in the certificate is the CSR's key.
        berth_proto::identity::certs::check_key_matches_cert(&csr.key_pem, &pem).expect("CSR key");
    }

    #[test]
    fn serials_differ_between_certificates() {
        let ca = RootCa::generate().expect("ca");
        let a = ca
            .issue_node_credentials("n1", Role::Worker, "c", DEFAULT_NODE_CERT_VALIDITY)
            .expect("a");
        let b = ca
            .issue_node_credentials("n1", Role::Worker, "c", DEFAULT_NODE_CERT_VALIDITY)
            .expect("b");
        let sa = NodeIdentity::from_pem(&a.cert_pem).expect("a").serial;
        let sb = NodeIdentity::from_pem(&b.cert_pem).expect("b").serial;
        assert_ne!(sa, sb);
        assert_eq!(a.ca_pem, ca.cert_pem());
    }

    #[test]
    fn csr_fields_do_not_influence_the_certificate() {
        // A CSR that asks to be CN=evil with SAN berth-manager gets the CA's choice.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["berth-manager".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "evil");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "berth-manager");
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let ca = RootCa::generate().expect("ca");
        let pem = ca
            .sign_csr(&csr, "w1", Role::Worker, "c", DEFAULT_NODE_CERT_VALIDITY)
            .expect("sign");
        let id = NodeIdentity::from_pem(&pem).expect("id");
        assert_eq!((id.node_id.as_str(), id.role), ("w1", Role::Worker));
        assert!(!pem_has_san(&pem, "berth-manager"));
    }

    fn pem_has_san(pem: &str, name: &str) -> bool {
        let der = first_cert_der(pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse");
        cert.subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|s| {
                s.value.general_names.iter().any(
                    |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == name),
                )
            })
    }

    #[test]
    fn bad_inputs_are_refused() {
        let ca = RootCa::generate().expect("ca");
        let csr = generate_key_and_csr("x").expect("csr").csr_pem;
        let v = DEFAULT_NODE_CERT_VALIDITY;
        assert!(matches!(
            ca.sign_csr("garbage", "n", Role::Worker, "c", v),
            Err(CaError::InvalidCsr(_))
        ));
        // Flip one byte inside the base64 body: the CSR signature no longer verifies.
        let mut tampered: Vec<u8> = csr.clone().into_bytes();
        let idx = tampered.len() / 2;
        tampered[idx] = if tampered[idx] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("utf8");
        assert!(ca.sign_csr(&tampered, "n", Role::Worker, "c", v).is_err());
        for bad in ["", "-n", "n-", "has space", "under_score", &"a".repeat(64)] {
            assert!(
                matches!(
                    ca.sign_csr(&csr, bad, Role::Worker, "c", v),
                    Err(CaError::InvalidNodeId(_))
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "a b", "x/y", &"c".repeat(65)] {
            assert!(
                matches!(
                    ca.sign_csr(&csr, "n", Role::Worker, bad, v),
                    Err(CaError::InvalidClusterId(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ca.sign_csr(&csr, "n", Role::Worker, "c", Duration::from_secs(5)),
            Err(CaError::ValidityTooShort { .. })
        ));
        let now = SystemTime::now();
        assert!(matches!(
            ca.sign_csr_valid_between(&csr, "n", Role::Worker, "c", now, now),
            Err(CaError::BadValidity)
        ));
        // An Ed25519 key is refused.
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let ed_csr = rcgen::CertificateParams::default()
            .serialize_request(&ed)
            .expect("csr")
            .pem()
            .expect("pem");
        assert!(matches!(
            ca.sign_csr(&ed_csr, "n", Role::Worker, "c", v),
            Err(CaError::UnsupportedKey)
        ));
    }

    #[test]
    fn validity_is_capped_at_the_root_expiry() {
        let ca = RootCa::generate().expect("ca");
        let csr = generate_key_and_csr("x").expect("csr").csr_pem;
        let pem = ca
            .sign_csr(&csr, "n", Role::Worker, "c", ROOT_CA_VALIDITY * 2)
            .expect("sign");
        let id = NodeIdentity::from_pem(&pem).expect("id");
        assert_eq!(id.not_after, ca.not_after());
    }

    #[test]
    fn save_load_and_from_pem_round_trip() {
        let tmp = temp_dir("save");
        let dir = tmp.path().join("ca");
        let ca = RootCa::generate().expect("ca");
        ca.save(&dir).expect("save");
        let mode = std::fs::metadata(dir.join(CA_KEY_FILE))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = RootCa::load(&dir).expect("load");
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.digest(), ca.digest());
        assert_eq!(loaded.not_after(), ca.not_after());
        // The reloaded CA signs certificates that chain to the same root.
        let creds = loaded
            .issue_node_credentials("n1", Role::Worker, "c", DEFAULT_NODE_CERT_VALIDITY)
            .expect("issue");
        let der = first_cert_der(&creds.cert_pem).expect("der");
        let (_, leaf) = x509_parser::parse_x509_certificate(der.as_ref()).expect("leaf");
        let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("root");
        leaf.verify_signature(Some(root.public_key()))
            .expect("signed by the original root key");

        std::fs::set_permissions(
            dir.join(CA_KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        assert!(matches!(
            RootCa::load(&dir),
            Err(CaError::Files(CertError::KeyPermissions { .. }))
        ));
    }

    #[test]
    fn from_pem_refuses_a_foreign_key_and_a_leaf_certificate() {
        let ca = RootCa::generate().expect("ca");
        let other = RootCa::generate().expect("other");
        assert!(matches!(
            RootCa::from_pem(ca.cert_pem(), &other.key_pem()),
            Err(CaError::BadRootMaterial(_))
        ));
        let leaf = ca
            .issue_node_credentials("n1", Role::Worker, "c", DEFAULT_NODE_CERT_VALIDITY)
            .expect("leaf");
        let err = RootCa::from_pem(&leaf.cert_pem, &leaf.key_pem).expect_err("leaf as root");
        assert!(err.to_string().contains("not a CA"), "{err}");
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn rotate_makes_a_new_root_and_a_cross_signed_intermediate() {
        let ca = RootCa::generate().expect("ca");
        let (rotated, cross) = ca.rotate().expect("rotate");
        assert_ne!(rotated.digest(), ca.digest());
        let token = ca.new_join_token().expect("token");
        token.verify_ca(ca.cert_pem().as_bytes()).expect("own root");
        assert!(token.verify_ca(rotated.cert_pem().as_bytes()).is_err());

        // The intermediate: the new root's subject and key, issued (signed) by the old root.
        let cross_der = first_cert_der(&cross).expect("der");
        let (_, x) = x509_parser::parse_x509_certificate(cross_der.as_ref()).expect("parse");
        let (_, new_root) = x509_parser::parse_x509_certificate(rotated.cert_der()).expect("new");
        let (_, old_root) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("old");
        assert!(x.is_ca());
        assert_eq!(x.subject().as_raw(), new_root.subject().as_raw());
        assert_eq!(x.public_key().raw, new_root.public_key().raw);
        assert_eq!(x.issuer().as_raw(), old_root.subject().as_raw());
        assert!(certs::is_signed_by(cross_der.as_ref(), ca.cert_der()));
        assert!(!certs::is_signed_by(cross_der.as_ref(), rotated.cert_der()));
        assert!(x.validity().not_after.timestamp() <= old_root.validity().not_after.timestamp());

        // A leaf of the new root verifies with the new root's key, and so through the
        // intermediate (same key) up to the old root.
        let leaf = rotated
            .issue_node_credentials("n1", Role::Worker, "c", DEFAULT_NODE_CERT_VALIDITY)
            .expect("leaf");
        let leaf_der = first_cert_der(&leaf.cert_pem).expect("leaf der");
        assert!(certs::is_signed_by(leaf_der.as_ref(), rotated.cert_der()));
        assert!(certs::is_signed_by(leaf_der.as_ref(), cross_der.as_ref()));
        assert!(!certs::is_signed_by(leaf_der.as_ref(), ca.cert_der()));
    }
}
