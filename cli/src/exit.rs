//! How both binaries end: `Error: <what is wrong>` on stderr and a non-zero exit code.

use std::process::ExitCode;

/// A failure that ends the command with a chosen exit code, like Docker's `cli.StatusError`:
/// `berth run` exits with its container's code (silently), or 125 when it could not create
/// the container.
#[derive(Debug)]
pub struct StatusError {
    /// The process exit code.
    pub code: u8,
    /// Printed as `Error: <message>` when set.
    pub message: Option<String>,
}

impl StatusError {
    /// Exit with `code` after printing `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: Some(message.into()),
        }
    }

    /// Exit with `code` without a message.
    pub fn silent(code: u8) -> Self {
        Self {
            code,
            message: None,
        }
    }
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

impl std::error::Error for StatusError {}

/// Runs `body` and turns its outcome into the process exit code, printing errors the way
/// Docker's CLI does: one `Error: ` line with the whole cause chain.
pub fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if err.downcast_ref::<StatusError>().is_some() => {
            let status = err.downcast_ref::<StatusError>();
            if let Some(m) = status.and_then(|s| s.message.as_ref()) {
                eprintln!("Error: {m}");
            }
            ExitCode::from(status.map_or(1, |s| s.code))
        }
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
