//! The on-disk state of one container: `<state_root>/<id>/`.
//!
//! ```text
//! plan.json        the ContainerPlan (written by the runtime before the helper starts)
//! state.json       ContainerRecord: supervisor + init pids and start times (supervisor)
//! start.fifo       `start` writes one byte here; the supervisor releases the container
//! reply.fifo       the supervisor answers `start` here ("ok" or an error)
//! started          present once the container process has exec'd (supervisor)
//! exit.json        ExitInfo, written by the supervisor after the container exits
//! supervisor.log   the supervisor's own stderr
//! upper/ work/     overlay upper and work directories
//! rootfs/          overlay mount point (mounted only inside the container's mount ns)
//! <id>-json.log    container stdout/stderr (logs module), plus rotated .1, .2 …
//! ```
//!
//! Every file is written atomically (temp file + rename), so a reader after a crash sees
//! either the old or the new content. This layout is all a restarted daemon needs to
//! re-attach: pids are re-validated against their recorded start times.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cgroups::Cgroup;

/// File names inside a container's state directory.
pub mod files {
    /// The plan.
    pub const PLAN: &str = "plan.json";
    /// Pids and start times.
    pub const STATE: &str = "state.json";
    /// Start trigger.
    pub const START_FIFO: &str = "start.fifo";
    /// Start acknowledgement.
    pub const REPLY_FIFO: &str = "reply.fifo";
    /// Exec'd marker.
    pub const STARTED: &str = "started";
    /// Exit status.
    pub const EXIT: &str = "exit.json";
    /// Supervisor stderr.
    pub const SUPERVISOR_LOG: &str = "supervisor.log";
}

/// Identity of the running container processes, written by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Container id.
    pub id: String,
    /// Host pid of the supervisor (parent of the container's PID 1).
    pub supervisor_pid: i32,
    /// Its start time in clock ticks since boot.
    pub supervisor_start: u64,
    /// Host pid of the container's PID 1.
    pub init_pid: i32,
    /// Its start time.
    pub init_start: u64,
    /// When the container was created (RFC 3339).
    pub created: String,
    /// When its process exec'd, if it was started together with its creation.
    #[serde(default)]
    pub started: Option<String>,
    /// The container's cgroup.
    pub cgroup: Cgroup,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, Docker style: the status, or 128 + signal.
    pub exit_code: i32,
    /// The terminating signal, if killed by one.
    pub signal: Option<i32>,
    /// The cgroup saw an OOM kill.
    pub oom_killed: bool,
    /// When the exit was recorded (RFC 3339).
    pub finished: String,
    /// Why the container never ran or its status is unknown.
    pub error: Option<String>,
}

/// Writes `data` to `path` atomically.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
    }
    fs::rename(&tmp, path)
}

/// Serialises `value` as JSON to `path` atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_atomic(path, &data)
}

/// Reads JSON from `path`; `Ok(None)` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Path of file `name` in `dir`.
pub fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(files::EXIT);
        assert_eq!(read_json::<ExitInfo>(&p).unwrap(), None);
        let e = ExitInfo {
            exit_code: 137,
            signal: Some(9),
            oom_killed: true,
            finished: "2026-01-01T00:00:00.000000000Z".into(),
            error: None,
        };
        write_json(&p, &e).unwrap();
        assert_eq!(read_json::<ExitInfo>(&p).unwrap(), Some(e));
        assert!(!p.with_extension("tmp").exists());
        fs::write(&p, b"{broken").unwrap();
        assert!(read_json::<ExitInfo>(&p).is_err());
    }
}
