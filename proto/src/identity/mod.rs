//! Berth's mTLS identity layer, shared by managers and agents: join tokens, node keys and
//! CSRs, node certificate parsing, the on-disk certificate directory, rustls/tonic TLS
//! configurations, per-call role checks and the certificate renewal schedule.
//!
//! The CA that *signs* certificates is the manager's (`berth_manager::ca`); everything a node
//! needs to hold, present and check an identity lives here.
//!
//! Invariants:
//! - a node certificate's subject is CN = node id, OU = role (`berth-manager` /
//!   `berth-worker`), O = cluster id, and its DNS SANs are the node id and the OU;
//! - private keys never leave the node that generated them and are stored with mode 0600;
//! - every RPC other than the CA's join calls authorizes its caller with
//!   [`tls::require_role`]; the TLS layer alone only proves "chains to a root of our trust
//!   bundle" (one root CA, two during a root rotation).

pub mod certs;
pub mod renewal;
pub mod tls;
pub mod tokens;

pub use certs::{
    CertDir, CertError, CsrBundle, NodeCredentials, NodeIdentity, Role, generate_key_and_csr,
};
pub use tls::{
    IsRemoved, MANAGER_SERVER_NAME, NoneRemoved, Revocations, TlsError, TokenPinnedVerifier,
    anonymous_client_tls_config, client_tls_config, install_crypto_provider, join_endpoint,
    peer_identity, require_role, server_rustls_config, server_tls_config,
};
pub use tokens::{JoinToken, TokenError};
