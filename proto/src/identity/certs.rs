//! Node identity: keys, CSRs, certificate parsing and the on-disk certificate directory.
//!
//! A node certificate names its owner in the subject, as in Swarm:
//! - CN = node id, OU = role ([`Role::as_ou`]: `berth-manager` | `berth-worker`),
//!   O = cluster id;
//! - DNS SANs = the node id and the role name, so a TLS client that dials *any* manager
//!   by IP checks the server name [`Role::Manager.as_ou()`](Role::as_ou) (`berth-manager`):
//!   a worker certificate can never pass for a manager's server certificate.
//!
//! The node, not the CA, makes its key: [`generate_key_and_csr`] returns an ECDSA P-256 key
//! and a CSR; the CA ignores everything in the CSR but the public key (and its
//! proof-of-possession signature) and writes subject, SANs and validity itself.
//!
//! Root CA rotation (`berth swarm ca --rotate`, see `berth_manager::ca::rotation`) shapes the
//! files: `node.crt` is the node certificate, followed during a rotation by the intermediate
//! that cross-signs the new root with the old one; `ca.crt` is a *trust bundle* of one root, or
//! two (old and new) while a rotation runs. [`cert_ders`] reads every certificate of such a
//! file and [`is_signed_by`] tells which root signed a certificate.
//!
//! [`CertDir`] keeps a node's `node.crt`, `node.key` and `ca.crt` in one directory. Key files
//! are created with mode 0600 (never widened afterwards) and every file is replaced
//! atomically (temp file, fsync, rename); loading refuses a key readable by group or others
//! and a key that does not belong to the certificate.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The two roles a node certificate can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A manager: Raft member, serves the control API, may sign certificates when leader.
    Manager,
    /// A worker: runs tasks only.
    Worker,
}

impl Role {
    /// The certificate OU (and DNS SAN) for this role: `berth-manager` or `berth-worker`.
    pub fn as_ou(self) -> &'static str {
        match self {
            Role::Manager => "berth-manager",
            Role::Worker => "berth-worker",
        }
    }

    /// Parses a certificate OU back into a role.
    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "berth-manager" => Some(Role::Manager),
            "berth-worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

impl From<Role> for crate::v1::NodeRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Manager => crate::v1::NodeRole::Manager,
            Role::Worker => crate::v1::NodeRole::Worker,
        }
    }
}

impl From<crate::v1::NodeRole> for Role {
    fn from(role: crate::v1::NodeRole) -> Self {
        match role {
            crate::v1::NodeRole::Manager => Role::Manager,
            crate::v1::NodeRole::Worker => Role::Worker,
        }
    }
}

/// Why a key, CSR, certificate or certificate directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed to make a key or a CSR.
    #[error("failed to generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The input holds no PEM certificate.
    #[error("no PEM certificate found")]
    NoCertificate,
    /// The DER is not an X.509 certificate.
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    /// A subject field the identity needs is missing or not a string.
    #[error("certificate subject has no usable {field}")]
    MissingField {
        /// `CN`, `OU` or `O`.
        field: &'static str,
    },
    /// The OU does not name a Berth role.
    #[error("certificate OU {ou:?} is not a berth role (expected berth-manager or berth-worker)")]
    UnknownRole {
        /// The OU found.
        ou: String,
    },
    /// A CA certificate was given where a node certificate was expected.
    #[error("certificate is a CA certificate, not a node certificate")]
    IsCa,
    /// The private key PEM could not be read.
    #[error("private key is not a PKCS#8 PEM key: {0}")]
    BadKey(String),
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
    /// The key file is readable by group or others.
    #[error(
        "refusing key file {path:?} with mode {mode:o}: it must not be readable by group or others (chmod 600)"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file in the certificate directory could not be read or written.
    #[error("failed to {op} {path:?}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Who a node certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node id (subject CN).
    pub node_id: String,
    /// Role (subject OU).
    pub role: Role,
    /// Cluster id (subject O).
    pub cluster_id: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex without separators.
    pub serial: String,
}

impl NodeIdentity {
    /// Parses the first certificate in a PEM string.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let der = first_cert_der(pem)?;
        Self::from_der(der.as_ref())
    }

    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::Parse(e.to_string()))?;
        if cert.is_ca() {
            return Err(CertError::IsCa);
        }
        let subject = cert.subject();
        let node_id = single_attr(subject.iter_common_name(), "CN")?;
        let ou = single_attr(subject.iter_organizational_unit(), "OU")?;
        let cluster_id = single_attr(subject.iter_organization(), "O")?;
        let role = Role::from_ou(&ou).ok_or(CertError::UnknownRole { ou })?;
        let validity = cert.validity();
        Ok(Self {
            node_id,
            role,
            cluster_id,
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }

    /// True when `now` lies inside the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn single_attr<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    field: &'static str,
) -> Result<String, CertError> {
    let value = values.next().ok_or(CertError::MissingField { field })?;
    if values.next().is_some() {
        // Two CNs (or OUs) would make "who is this" ambiguous.
        return Err(CertError::MissingField { field });
    }
    let s = value
        .as_str()
        .map_err(|_| CertError::MissingField { field })?;
    if s.is_empty() {
        return Err(CertError::MissingField { field });
    }
    Ok(s.to_owned())
}

fn system_time(unix_secs: i64) -> SystemTime {
    if unix_secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_secs.unsigned_abs())
    }
}

/// The DER of the first certificate in a PEM string.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, CertError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or(CertError::NoCertificate)?
        .map_err(|_| CertError::NoCertificate)
}

/// The DER of every certificate in a PEM string, in order (a chain or a trust bundle); an
/// error when there is none or one is not valid PEM.
pub fn cert_ders(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let ders = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CertError::NoCertificate)?;
    if ders.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(ders)
}

/// True when `issuer` (DER) signed `cert` (DER): the certificate names the issuer's subject as
/// its issuer and its signature verifies with the issuer's public key. False for anything
/// unparsable.
pub fn is_signed_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(issuer),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// A fresh node key and a CSR carrying its public key.
#[derive(Clone)]
pub struct CsrBundle {
    /// PKCS#8 PEM of the ECDSA P-256 private key; keep it on the node (see [`CertDir`]).
    pub key_pem: String,
    /// PEM CSR to send to the CA.
    pub csr_pem: String,
}

impl fmt::Debug for CsrBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrBundle")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Generates an ECDSA P-256 key and a CSR with subject CN = `common_name` (informational:
/// the CA writes the real subject). A renewing node passes its node id.
pub fn generate_key_and_csr(common_name: &str) -> Result<CsrBundle, CertError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
        CertError::Generate {
            what: "node key",
            source,
        }
    })?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| CertError::Generate {
            what: "CSR",
            source,
        })?;
    Ok(CsrBundle {
        key_pem: key.serialize_pem(),
        csr_pem: csr,
    })
}

/// Checks that `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn check_key_matches_cert(key_pem: &str, cert_pem: &str) -> Result<(), CertError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| CertError::BadKey(e.to_string()))?;
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertError::Parse(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
        Ok(())
    } else {
        Err(CertError::KeyMismatch)
    }
}

/// Everything a node needs for mutual TLS: its certificate, its key and the roots it trusts.
#[derive(Clone)]
pub struct NodeCredentials {
    /// The node certificate (PEM), followed during a root rotation by the cross-signed
    /// intermediate; the whole chain is presented in TLS handshakes.
    pub cert_pem: String,
    /// The node's private key (PKCS#8 PEM).
    pub key_pem: String,
    /// The trust bundle (PEM): the cluster's root CA certificate, and during a root rotation
    /// also the new root.
    pub ca_pem: String,
}

impl fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

impl NodeCredentials {
    /// Parses the node certificate and checks the key belongs to it.
    pub fn identity(&self) -> Result<NodeIdentity, CertError> {
        check_key_matches_cert(&self.key_pem, &self.cert_pem)?;
        NodeIdentity::from_pem(&self.cert_pem)
    }
}

/// A node's certificate directory: `node.crt` (certificate chain), `node.key` (0600) and
/// `ca.crt` (trust bundle).
#[derive(Clone, Debug)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    /// File name of the node certificate.
    pub const CERT_FILE: &'static str = "node.crt";
    /// File name of the node private key (mode 0600).
    pub const KEY_FILE: &'static str = "node.key";
    /// File name of the root CA certificate.
    pub const CA_FILE: &'static str = "ca.crt";

    /// A certificate directory at `dir` (not created until [`CertDir::save`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of the node certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(Self::CERT_FILE)
    }

    /// Path of the node key.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(Self::KEY_FILE)
    }

    /// Path of the root CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(Self::CA_FILE)
    }

    /// True when the certificate, key and CA files all exist.
    pub fn exists(&self) -> bool {
        self.cert_path().is_file() && self.key_path().is_file() && self.ca_path().is_file()
    }

    /// Writes the credentials, creating the directory (mode 0700) if needed. The key is
    /// written first, so a crash between files leaves a key/cert mismatch that
    /// [`CertDir::load`] reports rather than a certificate without its key.
    pub fn save(&self, creds: &NodeCredentials) -> Result<(), CertError> {
        ensure_private_dir(&self.dir)?;
        write_private_file(&self.key_path(), creds.key_pem.as_bytes())?;
        write_public_file(&self.cert_path(), creds.cert_pem.as_bytes())?;
        write_public_file(&self.ca_path(), creds.ca_pem.as_bytes())?;
        Ok(())
    }

    /// Reads the credentials, refusing a group/other-readable key or a key that does not
    /// belong to the certificate.
    pub fn load(&self) -> Result<NodeCredentials, CertError> {
        let key_path = self.key_path();
        check_private_mode(&key_path)?;
        let creds = NodeCredentials {
            cert_pem: read_string(&self.cert_path())?,
            key_pem: read_string(&key_path)?,
            ca_pem: read_string(&self.ca_path())?,
        };
        check_key_matches_cert(&creds.key_pem, &creds.cert_pem)?;
        Ok(creds)
    }

    /// Reads only the root CA certificate.
    pub fn load_ca(&self) -> Result<String, CertError> {
        read_string(&self.ca_path())
    }
}

fn read_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

/// Creates `dir` (and parents) and sets its mode to 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        op: "create directory",
        path: dir.to_owned(),
        source,
    })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| CertError::Io {
        op: "set mode 0700 on",
        path: dir.to_owned(),
        source,
    })
}

/// Fails unless `path` exists and has no group/other permission bits.
pub fn check_private_mode(path: &Path) -> Result<(), CertError> {
    let meta = fs::metadata(path).map_err(|source| CertError::Io {
        op: "stat",
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CertError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Atomically replaces `path` with `contents`, mode 0600 from creation on.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_atomic(path, contents, 0o600)
}

/// Atomically replaces `path` with `contents`, mode 0644.
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_atomic(path, contents, 0o644)
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| CertError::Io {
            op,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    // A stale temp file from a crash may have other permissions; start from nothing.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale", &tmp)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    // The umask may have cleared bits of a 0644 file; set the exact mode explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("set mode on", &tmp))?;
    file.write_all(contents).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    if let Ok(d) = fs::File::open(dir) {
        // Best effort: persist the rename itself.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate with the given subject, for parser tests (the CA signer
    /// lives in the manager; its own tests cover real chains).
    fn self_signed(
        cn: Option<&str>,
        ou: Option<&str>,
        o: Option<&str>,
        ca: bool,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        if let Some(ou) = ou {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationalUnitName, ou);
        }
        if let Some(o) = o {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, o);
        }
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0xab, 0xcd]));
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2030, 4, 2);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = params.self_signed(&key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p =
                std::env::temp_dir().join(format!("berth-certs-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Self(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn role_ou_round_trips() {
        for role in [Role::Manager, Role::Worker] {
            assert_eq!(Role::from_ou(role.as_ou()), Some(role));
        }
        assert_eq!(Role::from_ou("swarm-manager"), None);
        assert_eq!(Role::from_ou("manager"), None);
        assert_eq!(Role::Manager.to_string(), "manager");
        for role in [Role::Manager, Role::Worker] {
            assert_eq!(Role::from(crate::v1::NodeRole::from(role)), role);
        }
        assert_eq!(
            crate::v1::NodeRole::from(Role::Worker),
            crate::v1::NodeRole::Worker
        );
    }

    #[test]
    fn identity_is_parsed_from_subject_validity_and_serial() {
        let (pem, _) = self_signed(
            Some("node1abc"),
            Some("berth-worker"),
            Some("cluster9"),
            false,
        );
        let id = NodeIdentity::from_pem(&pem).expect("parse");
        assert_eq!(id.node_id, "node1abc");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.cluster_id, "cluster9");
        assert_eq!(id.serial, "01abcd");
        // 2030-01-02T00:00:00Z and 2030-04-02T00:00:00Z
        assert_eq!(
            id.not_before,
            UNIX_EPOCH + Duration::from_secs(1_893_542_400)
        );
        assert_eq!(
            id.not_after,
            UNIX_EPOCH + Duration::from_secs(1_901_318_400)
        );
        assert!(id.is_valid_at(id.not_before + Duration::from_secs(1)));
        assert!(!id.is_valid_at(id.not_after + Duration::from_secs(1)));
    }

    #[test]
    fn missing_or_foreign_subject_fields_are_refused() {
        let (pem, _) = self_signed(None, Some("berth-worker"), Some("c"), false);
        assert!(matches!(
            NodeIdentity::from_pem(&pem),
            Err(CertError::MissingField { field: "CN" })
        ));
        let (pem, _) = self_signed(Some("n"), None, Some("c"), false);
        assert!(matches!(
            NodeIdentity::from_pem(&pem),
            Err(CertError::MissingField { field: "OU" })
        ));
        let (pem, _) = self_signed(Some("n"), Some("berth-manager"), None, false);
        assert!(matches!(
            NodeIdentity::from_pem(&pem),
            Err(CertError::MissingField { field: "O" })
        ));
        let (pem, _) = self_signed(Some("n"), Some("swarm-worker"), Some("c"), false);
        assert!(matches!(
            NodeIdentity::from_pem(&pem),
            Err(CertError::UnknownRole { ou }) if ou == "swarm-worker"
        ));
        let (pem, _) = self_signed(Some("n"), Some("berth-manager"), Some("c"), true);
        assert!(matches!(NodeIdentity::from_pem(&pem), Err(CertError::IsCa)));
        assert!(matches!(
            NodeIdentity::from_pem("not pem"),
            Err(CertError::NoCertificate)
        ));
        assert!(matches!(
            NodeIdentity::from_der(&[0x30, 0x03, 0x01, 0x01, 0x00]),
            Err(CertError::Parse(_))
        ));
    }

    #[test]
    fn csr_carries_a_p256_key_and_verifies() {
        let bundle = generate_key_and_csr("somenode").expect("csr");
        assert!(
            bundle
                .csr_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        let params =
            rcgen::CertificateSigningRequestParams::from_pem(&bundle.csr_pem).expect("verifies");
        let key = rcgen::KeyPair::from_pem(&bundle.key_pem).expect("key");
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            params.public_key.algorithm(),
            &rcgen::PKCS_ECDSA_P256_SHA256
        );
        assert!(!format!("{bundle:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn key_match_check_detects_a_foreign_key() {
        let (pem, key) = self_signed(Some("n"), Some("berth-worker"), Some("c"), false);
        check_key_matches_cert(&key, &pem).expect("own key");
        let (_, other_key) = self_signed(Some("n"), Some("berth-worker"), Some("c"), false);
        assert!(matches!(
            check_key_matches_cert(&other_key, &pem),
            Err(CertError::KeyMismatch)
        ));
    }

    #[test]
    fn cert_dir_saves_with_0600_key_and_loads_back() {
        let tmp = TempDir::new("save");
        let dir = CertDir::new(tmp.0.join("certs"));
        assert!(!dir.exists());
        let (cert_pem, key_pem) = self_signed(Some("n1"), Some("berth-worker"), Some("c"), false);
        let (ca_pem, _) = self_signed(Some("ca"), None, None, true);
        let creds = NodeCredentials {
            cert_pem,
            key_pem,
            ca_pem,
        };
        dir.save(&creds).expect("save");
        assert!(dir.exists());
        let key_mode = fs::metadata(dir.key_path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
        let dir_mode = fs::metadata(dir.path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let loaded = dir.load().expect("load");
        assert_eq!(loaded.cert_pem, creds.cert_pem);
        assert_eq!(loaded.key_pem, creds.key_pem);
        assert_eq!(dir.load_ca().expect("ca"), creds.ca_pem);
        assert_eq!(loaded.identity().expect("identity").node_id, "n1");
        assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));

        // Saving again replaces the files and keeps the key private.
        dir.save(&creds).expect("save again");
        let key_mode = fs::metadata(dir.key_path())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
    }

    #[test]
    fn cert_dir_refuses_a_readable_key_and_a_mismatched_key() {
        let tmp = TempDir::new("refuse");
        let dir = CertDir::new(&tmp.0);
        let (cert_pem, key_pem) = self_signed(Some("n1"), Some("berth-worker"), Some("c"), false);
        let (ca_pem, other_key) = self_signed(Some("ca"), None, None, true);
        dir.save(&NodeCredentials {
            cert_pem: cert_pem.clone(),
            key_pem,
            ca_pem: ca_pem.clone(),
        })
        .expect("save");
        fs::set_permissions(dir.key_path(), fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = dir.load().expect_err("group-readable key");
        assert!(
            matches!(err, CertError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );

        dir.save(&NodeCredentials {
            cert_pem,
            key_pem: other_key,
            ca_pem,
        })
        .expect("save");
        assert!(matches!(dir.load(), Err(CertError::KeyMismatch)));
    }

    fn ca(cn: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        (cert, rcgen::Issuer::new(params, key))
    }

    #[test]
    fn bundles_split_and_signatures_name_their_root() {
        // Two roots with the same name, as before and after a rotation.
        let (old, old_issuer) = ca("berth-ca");
        let (new, _) = ca("berth-ca");
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["n1".to_owned()])
            .expect("params")
            .signed_by(&leaf_key, &old_issuer)
            .expect("leaf");
        assert!(is_signed_by(leaf.der(), old.der()));
        assert!(!is_signed_by(leaf.der(), new.der()), "same name, other key");
        assert!(is_signed_by(old.der(), old.der()), "self-signed");
        assert!(!is_signed_by(b"junk", old.der()));

        let bundle = format!("{}{}", old.pem(), new.pem());
        let ders = cert_ders(&bundle).expect("bundle");
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[0].as_ref(), old.der().as_ref());
        assert_eq!(ders[1].as_ref(), new.der().as_ref());
        assert_eq!(
            first_cert_der(&bundle).expect("first").as_ref(),
            old.der().as_ref()
        );
        assert!(matches!(cert_ders("no pem"), Err(CertError::NoCertificate)));
    }

    #[test]
    fn negative_timestamps_map_before_the_epoch() {
        assert_eq!(system_time(-10), UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(system_time(10), UNIX_EPOCH + Duration::from_secs(10));
    }
}
