//! Finds the `berth` and `berthd` binaries the cluster tests drive.
//!
//! Cargo builds a package's own binaries for its integration tests, but `berth` and `berthd`
//! belong to `berth-cli`; the README's test command therefore builds every binary first
//! (`cargo build --workspace --bins`). A missing binary is an error saying so, never a skip.

use std::path::PathBuf;

use anyhow::{Context, ensure};

/// The profile directory (`target/debug`) the running test binary was built into.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/debug/deps/<test>-<hash>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary has no target/<profile>/deps parent")?;
    Ok(dir.to_path_buf())
}

/// Path of a workspace binary, checked to exist.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir()?.join(name);
    ensure!(
        path.is_file(),
        "{path:?} is missing: build the binaries first with `cargo build --workspace --bins` \
         (the README's test command does)"
    );
    Ok(path)
}

/// The `berth` client.
pub fn berth() -> anyhow::Result<PathBuf> {
    binary("berth")
}

/// The `berthd` daemon.
pub fn berthd() -> anyhow::Result<PathBuf> {
    binary("berthd")
}
