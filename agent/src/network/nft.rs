//! Applies nftables scripts with the `nft` command (installed by `deploy/install-deps.sh`), in
//! the daemon's own namespace or, through `nsenter --net=PATH`, in a bound one.
//!
//! Scripts come from [`super::plan`] and replace Berth's table atomically (one `nft -f`
//! transaction), so a reader never sees half a ruleset.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::NetworkError;

/// Runs `script` with `nft -f -` inside the namespace bound at `netns` (`None`: here).
pub async fn apply(netns: Option<&Path>, script: &str) -> Result<(), NetworkError> {
    let mut cmd = match netns {
        Some(path) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", path.display())).arg("nft");
            c
        }
        None => Command::new("nft"),
    };
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = match netns {
        Some(p) => format!("nft in {p:?}"),
        None => "nft".to_owned(),
    };
    let mut child = cmd.spawn().map_err(|source| NetworkError::Io {
        what: format!("starting {what}"),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|source| NetworkError::Io {
                what: format!("writing to {what}"),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| NetworkError::Io {
            what: format!("waiting for {what}"),
            source,
        })?;
    if !out.status.success() {
        return Err(NetworkError::Nft {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            script: script.to_owned(),
        });
    }
    Ok(())
}
