//! How both binaries end: `Error: <what is wrong>` on stderr and a non-zero exit code.

use std::process::ExitCode;

/// Runs `body` and turns its outcome into the process exit code, printing errors the way
/// Docker's CLI does: one `Error: ` line with the whole cause chain.
pub fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
