//! [`PullError`]: how a registry pull fails, worded for the user who typed `berth image pull`.

use std::io;
use std::path::PathBuf;

use super::super::digest::Digest;
use super::super::error::ImageError;

/// Errors of a registry pull.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference names Docker Hub and this node does not pull from it.
    #[error(
        "pulling {reference} from Docker Hub is disabled on this node (set \
         BERTH_ALLOW_DOCKER_HUB=1 for berthd, or name a registry: host[:port]/repository:tag)"
    )]
    HubDisabled {
        /// The reference asked for.
        reference: String,
    },
    /// The TCP connection could not be made.
    #[error("cannot reach registry {registry}")]
    Connect {
        /// `host:port`.
        registry: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed (unknown CA, plain HTTP server, wrong name...).
    #[error("TLS handshake with {registry} failed: {reason}{hint}")]
    Tls {
        /// `host:port`.
        registry: String,
        /// rustls' reason.
        reason: String,
        /// What to do about it (may be empty).
        hint: String,
    },
    /// The TLS settings of a registry could not be built.
    #[error("TLS settings for {registry}: {reason}")]
    TlsConfig {
        /// `host:port`.
        registry: String,
        /// What is wrong.
        reason: String,
    },
    /// An HTTP exchange failed below the status line (connection reset, bad framing).
    #[error("HTTP request to {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// Cause.
        #[source]
        source: hyper::Error,
    },
    /// The registry stopped answering.
    #[error("registry timed out ({what} {url})")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The URL.
        url: String,
    },
    /// A URL (from the reference, a redirect or a challenge) is not usable.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Too many redirects.
    #[error("too many redirects fetching {url}")]
    TooManyRedirects {
        /// The first URL.
        url: String,
    },
    /// The registry wants credentials we lack, or refused the ones given.
    #[error("unauthorized: {reason}")]
    Unauthorized {
        /// The registry's message, or ours.
        reason: String,
    },
    /// The registry refused access (403).
    #[error("denied: {reason}")]
    Denied {
        /// The registry's message.
        reason: String,
    },
    /// The token server did not hand out a token.
    #[error("getting a token from {realm}: {reason}")]
    Token {
        /// The token endpoint.
        realm: String,
        /// Why.
        reason: String,
    },
    /// A `WWW-Authenticate` challenge we cannot answer.
    #[error("unsupported authentication challenge {challenge:?}")]
    Challenge {
        /// The header.
        challenge: String,
    },
    /// The manifest (tag or digest) does not exist.
    #[error("manifest for {reference} not found: {reason}")]
    ManifestNotFound {
        /// The reference.
        reference: String,
        /// The registry's message.
        reason: String,
    },
    /// Any other unexpected HTTP status.
    #[error("{what}: registry answered {status}: {reason}")]
    Status {
        /// What was fetched.
        what: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's message.
        reason: String,
    },
    /// A manifest kind we do not handle.
    #[error("unsupported manifest {what}: {reason}")]
    Unsupported {
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
    /// A document is malformed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which document.
        what: String,
        /// Why.
        reason: String,
    },
    /// Content does not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob or manifest.
        what: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A blob is not the size its descriptor says.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes received (at least).
        actual: u64,
    },
    /// A document is larger than we read into memory.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// Which document.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// No manifest of the index is for the wanted platform.
    #[error("no matching manifest for {os}/{arch} in the manifest list entries of {reference}")]
    NoMatchingPlatform {
        /// The reference.
        reference: String,
        /// OS wanted.
        os: String,
        /// Architecture wanted.
        arch: String,
    },
    /// A credentials file is unreadable or malformed.
    #[error("registry credentials in {path:?}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Local file handling failed.
    #[error("{what} {path:?}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The store refused the pulled image.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl PullError {
    /// Shorthand for [`PullError::Io`].
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PullError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`PullError::Invalid`].
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        PullError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// Whether the image simply cannot be pulled here (as opposed to a pull that failed):
    /// the worker reports such a task's image as missing.
    pub fn is_not_pullable(&self) -> bool {
        matches!(self, PullError::HubDisabled { .. })
    }
}
