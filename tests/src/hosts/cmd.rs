//! Runs iproute2's `ip` (and other setup commands) for the harness.
//!
//! Every failure carries the full command line, its exit status and its stderr, so a broken
//! setup step says exactly what was attempted.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Runs `program args...` to completion and returns its stdout.
///
/// Fails with the command line, exit status and stderr when it does not exit with 0.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("stdout of `{line}` is not UTF-8"))
}

/// Runs `ip args...`.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = run("sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("`sh -c echo nope >&2; exit 3`"), "{msg}");
        assert!(msg.contains("nope"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn success_returns_stdout() {
        assert_eq!(run("sh", &["-c", "echo hi"]).unwrap(), "hi\n");
    }
}
