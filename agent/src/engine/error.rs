//! The engine's error type and the one place that maps it to gRPC statuses for the local
//! container and image calls. Messages are the ones a Docker user knows
//! (`No such container: web`), because the CLI prints them as they are.

use std::io;

use crate::image::ImageError;
use crate::image::pull::PullError;
use crate::runtime::RuntimeError;

/// Errors of the local container and image engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No container has this id, id prefix or name.
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    /// No image has this reference, id or id prefix.
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// An id prefix matches several containers.
    #[error("multiple IDs found with provided prefix: {0}")]
    Ambiguous(String),
    /// The requested container name is taken.
    #[error(
        "Conflict. The container name \"/{name}\" is already in use by container \"{id}\". \
         You have to remove (or rename) that container to be able to reuse that name."
    )]
    NameInUse {
        /// The name asked for.
        name: String,
        /// The container that has it.
        id: String,
    },
    /// The request is malformed (bad name, signal, limit, command...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request does not fit the object's state (not running, running, in use...).
    #[error("{0}")]
    Conflict(String),
    /// An image store operation failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A registry pull failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// A runtime operation failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Local file handling failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A worker task died (a bug, reported rather than hidden).
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Shorthand for [`EngineError::Io`].
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> EngineError {
        let what = what.into();
        move |source| EngineError::Io { what, source }
    }
}

/// The error and its causes, joined by ": " (gRPC statuses carry one message).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !part.is_empty() && !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

impl From<EngineError> for tonic::Status {
    fn from(err: EngineError) -> tonic::Status {
        use tonic::Code;
        let message = chain(&err);
        let code = match &err {
            EngineError::NoSuchContainer(_) | EngineError::NoSuchImage(_) => Code::NotFound,
            EngineError::Ambiguous(_) | EngineError::InvalidArgument(_) => Code::InvalidArgument,
            EngineError::NameInUse { .. } => Code::AlreadyExists,
            EngineError::Conflict(_) => Code::FailedPrecondition,
            EngineError::Image(e) => match e.root_cause() {
                ImageError::NotFound { .. } => Code::NotFound,
                ImageError::InUse { .. } | ImageError::MultipleNames { .. } => {
                    Code::FailedPrecondition
                }
                ImageError::Io { .. } => Code::Internal,
                _ => Code::InvalidArgument,
            },
            EngineError::Pull(e) => match e {
                PullError::ManifestNotFound { .. } => Code::NotFound,
                PullError::Unauthorized { .. } | PullError::Denied { .. } => Code::PermissionDenied,
                PullError::Connect { .. }
                | PullError::Tls { .. }
                | PullError::Http { .. }
                | PullError::Timeout { .. } => Code::Unavailable,
                PullError::Io { .. } => Code::Internal,
                _ => Code::InvalidArgument,
            },
            EngineError::Runtime(e) => match e {
                RuntimeError::Plan(_) => Code::InvalidArgument,
                RuntimeError::NotFound(_) => Code::NotFound,
                RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
                RuntimeError::InvalidState { .. } => Code::FailedPrecondition,
                _ => Code::Internal,
            },
            EngineError::Io { .. } | EngineError::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_docker_messages_and_codes() {
        let s = tonic::Status::from(EngineError::NoSuchContainer("web".into()));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "No such container: web");
        let s = tonic::Status::from(EngineError::NameInUse {
            name: "web".into(),
            id: "abc".into(),
        });
        assert_eq!(s.code(), tonic::Code::AlreadyExists);
        assert!(
            s.message()
                .starts_with("Conflict. The container name \"/web\"")
        );
        let s = tonic::Status::from(EngineError::Io {
            what: "writing x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        });
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(s.message().starts_with("writing x: "), "{}", s.message());
    }
}
