//! The worker's local task database: what a restarted agent needs to adopt its tasks and to
//! re-send their last statuses.
//!
//! Layout: one file per task, `<dir>/<task id>.task`, holding the protobuf encoding of the
//! task as the managers last sent it with its `status` replaced by the last status this
//! node observed. Files are replaced atomically (written to a temporary file in the same
//! directory, then renamed); terminal statuses are also fsynced (file and directory) before
//! they are reported, so a finished task's end survives a crash of the machine, not only of
//! `berthd`.
//!
//! Invariant: a stored status never moves backwards (the worker only writes statuses it has
//! already checked with `can_move_to`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use berth_proto::v1::Task;
use prost::Message;

const SUFFIX: &str = ".task";
const TMP_PREFIX: &str = ".tmp-";

/// Why the task database failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskDbError {
    /// A file operation failed.
    #[error("task db: failed to {what} {path:?}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A task id that cannot be a file name.
    #[error("task db: refusing task id {0:?} (not a plain identifier)")]
    BadId(String),
}

/// The task database (see the module docs). `None` directory = nothing persisted (simulated
/// nodes in benchmarks).
#[derive(Debug)]
pub struct TaskDb {
    dir: Option<PathBuf>,
    counter: AtomicU64,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl TaskDb {
    /// Opens (creating) the database in `dir` and returns it with every stored task. Files
    /// that do not decode are skipped with a warning; leftover temporary files are deleted.
    pub fn open(dir: Option<&Path>) -> Result<(TaskDb, Vec<Task>), TaskDbError> {
        let db = TaskDb {
            dir: dir.map(Path::to_path_buf),
            counter: AtomicU64::new(0),
        };
        let Some(dir) = dir else {
            return Ok((db, Vec::new()));
        };
        fs::create_dir_all(dir).map_err(|source| TaskDbError::Io {
            what: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let entries = fs::read_dir(dir).map_err(|source| TaskDbError::Io {
            what: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut tasks = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| TaskDbError::Io {
                what: "list",
                path: dir.to_path_buf(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(TMP_PREFIX) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let bytes = fs::read(&path).map_err(|source| TaskDbError::Io {
                what: "read",
                path: path.clone(),
                source,
            })?;
            match Task::decode(bytes.as_slice()) {
                Ok(task) if task.id == id => tasks.push(task),
                Ok(task) => {
                    tracing::warn!(?path, stored_id = %task.id, "task db: file name and task id differ; skipped")
                }
                Err(e) => tracing::warn!(?path, error = %e, "task db: undecodable record skipped"),
            }
        }
        tasks.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((db, tasks))
    }

    /// Whether records are written to disk.
    pub fn is_persistent(&self) -> bool {
        self.dir.is_some()
    }

    fn path_of(dir: &Path, id: &str) -> Result<PathBuf, TaskDbError> {
        if !valid_id(id) {
            return Err(TaskDbError::BadId(id.to_owned()));
        }
        Ok(dir.join(format!("{id}{SUFFIX}")))
    }

    /// Stores `task` (replacing its record atomically). `durable` also fsyncs the file and
    /// the directory before returning.
    pub fn put(&self, task: &Task, durable: bool) -> Result<(), TaskDbError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = Self::path_of(dir, &task.id)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| TaskDbError::Io { what, path, source }
        };
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io("create", &tmp))?;
            f.write_all(&task.encode_to_vec())
                .map_err(io("write", &tmp))?;
            if durable {
                f.sync_all().map_err(io("sync", &tmp))?;
            }
            drop(f);
            fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
            if durable {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("sync", dir))?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Deletes `task_id`'s record (no error if there is none).
    pub fn delete(&self, task_id: &str) -> Result<(), TaskDbError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = Self::path_of(dir, task_id)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TaskDbError::Io {
                what: "delete",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{TaskState, TaskStatus};

    use super::*;

    fn task(id: &str, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "svc".into(),
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn records_round_trip_and_are_replaced() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (db, tasks) = TaskDb::open(Some(dir.path()))?;
        assert!(tasks.is_empty());
        db.put(&task("b", TaskState::Running), false)?;
        db.put(&task("a", TaskState::Accepted), false)?;
        db.put(&task("a", TaskState::Failed), true)?;
        drop(db);
        // A stray temporary file and garbage record from a crash are cleaned or skipped.
        fs::write(dir.path().join(".tmp-1-2"), b"half")?;
        fs::write(dir.path().join("zz.task"), [0xff, 0xff, 0xff])?;
        let (db, tasks) = TaskDb::open(Some(dir.path()))?;
        let got: Vec<(String, i32)> = tasks
            .iter()
            .map(|t| (t.id.clone(), t.status.clone().unwrap_or_default().state))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), TaskState::Failed as i32),
                ("b".into(), TaskState::Running as i32)
            ]
        );
        assert!(!dir.path().join(".tmp-1-2").exists());
        db.delete("a")?;
        db.delete("a")?;
        let (_, tasks) = TaskDb::open(Some(dir.path()))?;
        assert_eq!(tasks.len(), 1);
        Ok(())
    }

    #[test]
    fn hostile_ids_are_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (db, _) = TaskDb::open(Some(dir.path()))?;
        for id in ["../x", "a/b", "", ".hidden"] {
            assert!(matches!(
                db.put(&task(id, TaskState::Running), false),
                Err(TaskDbError::BadId(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn memory_mode_persists_nothing() -> anyhow::Result<()> {
        let (db, tasks) = TaskDb::open(None)?;
        assert!(tasks.is_empty() && !db.is_persistent());
        db.put(&task("a", TaskState::Running), true)?;
        db.delete("a")?;
        Ok(())
    }
}
