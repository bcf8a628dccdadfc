//! The daemon's plumbing on real processes: `berthd` starts, serves its local API on a
//! root-only unix socket to the real `berth` CLI, refuses a second daemon on the same state
//! directory, and stops cleanly on SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context;
use berth_tests::{bins, wait};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A `berthd` child killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(dir: &Path) -> anyhow::Result<Daemon> {
    let child = Command::new(bins::berthd()?)
        .arg("--data-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("run/berthd.sock"))
        .args([
            "--cgroup-parent",
            &format!("berth-test-{}", std::process::id()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting berthd")?;
    Ok(Daemon(child))
}

fn berth(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let host = format!("unix://{}", dir.join("run/berthd.sock").display());
    Command::new(bins::berth()?)
        .args(["-H", &host])
        .args(args)
        .output()
        .context("running berth")
}

fn wait_ready(dir: &Path) -> anyhow::Result<()> {
    wait::wait_until(
        Duration::from_secs(10),
        "berthd answers `berth info`",
        || Ok(berth(dir, &["info"])?.status.success()),
    )?;
    Ok(())
}

#[test]
fn berth_info_reaches_the_local_daemon() -> anyhow::Result<()> {
    wait::init_test_logging();
    let tmp = tempfile::tempdir()?;
    let _daemon = start_daemon(tmp.path())?;
    wait_ready(tmp.path())?;

    let out = berth(tmp.path(), &["info"])?;
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("Swarm: inactive"), "{text}");
    assert!(
        text.contains(&format!("Server Version: {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains(&tmp.path().join("state").display().to_string()),
        "{text}"
    );

    let out = berth(tmp.path(), &["info", "--format", "json"])?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["Swarm"], "inactive");
    assert_eq!(json["IsManager"], false);
    Ok(())
}

#[test]
fn the_socket_is_for_root_only() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir()?;
    let _daemon = start_daemon(tmp.path())?;
    wait_ready(tmp.path())?;

    let socket = tmp.path().join("run/berthd.sock");
    let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Let `nobody` reach the socket's directory so that only the socket's own checks stand.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        tmp.path().join("run"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let out = Command::new(bins::berth()?)
        .args(["-H", &format!("unix://{}", socket.display()), "info"])
        .uid(65534)
        .gid(65534)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.starts_with("Error: "), "{err}");
    assert!(err.contains("ermission denied"), "{err}");
    Ok(())
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let _daemon = start_daemon(tmp.path())?;
    wait_ready(tmp.path())?;

    let out = Command::new(bins::berthd()?)
        .arg("--data-dir")
        .arg(tmp.path().join("state"))
        .arg("--socket")
        .arg(tmp.path().join("other.sock"))
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("Error: ") && err.contains("in use by another berthd"),
        "{err}"
    );
    // The first daemon still answers.
    assert!(berth(tmp.path(), &["info"])?.status.success());
    Ok(())
}

#[test]
fn sigterm_stops_the_daemon_cleanly() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut daemon = start_daemon(tmp.path())?;
    wait_ready(tmp.path())?;

    let pid = Pid::from_raw(i32::try_from(daemon.0.id())?);
    kill(pid, Signal::SIGTERM)?;
    let mut status = None;
    wait::wait_until(Duration::from_secs(5), "berthd exits after SIGTERM", || {
        status = daemon.0.try_wait()?;
        Ok(status.is_some())
    })?;
    assert!(status.context("no exit status")?.success(), "{status:?}");
    assert!(
        !tmp.path().join("run/berthd.sock").exists(),
        "socket left behind"
    );
    Ok(())
}

#[test]
fn a_missing_daemon_is_a_clear_error() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = berth(tmp.path(), &["info"])?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.starts_with("Error: cannot connect to the Berth daemon"),
        "{err}"
    );
    Ok(())
}
