//! The host side of a task's files: a private tmpfs under the agent's task-files root,
//! filled from a [`FilesPlan`], bind-mounted into the container at creation, then detached
//! from the host (see the module docs of [`super`]).
//!
//! The root (`<state>/agent/task-files`) is mode 0700 and each tmpfs's root is 0700, so no
//! other host user can reach the files while they are briefly visible on the host.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_proto::v1::{Mount, MountType};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{FilesPlan, TaskFilesError};

const PAGE: usize = 4096;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TaskFilesError {
    let path = path.to_owned();
    move |source| TaskFilesError::Io {
        action,
        path,
        source,
    }
}

fn errno(action: &'static str, path: &Path) -> impl FnOnce(Errno) -> TaskFilesError {
    let path = path.to_owned();
    move |e| TaskFilesError::Io {
        action,
        path,
        source: std::io::Error::from(e),
    }
}

/// A task's tmpfs, mounted on the host until [`TaskFiles::detach`] (or drop).
#[derive(Debug)]
pub struct TaskFiles {
    dir: PathBuf,
    mounted: bool,
}

fn private_dir(path: &Path) -> Result<(), TaskFilesError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io("restricting", path))
}

/// Unmounts (lazily) and removes `dir`; a directory that is not a mount point is removed.
fn unmount_and_remove(dir: &Path) -> Result<(), TaskFilesError> {
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(errno("unmounting", dir)(e)),
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", dir)(e)),
    }
}

impl TaskFiles {
    /// Mounts a fresh tmpfs at `<root>/<name>`, writes the plan's files into it, and returns
    /// it with the read-only binds the container needs.
    pub fn materialize(
        root: &Path,
        name: &str,
        plan: &FilesPlan,
    ) -> Result<(TaskFiles, Vec<Mount>), TaskFilesError> {
        private_dir(root)?;
        let dir = root.join(name);
        if dir.exists() {
            // Left by a daemon that died mid-way.
            unmount_and_remove(&dir)?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating", &dir))?;
        let size = (plan.bytes() + PAGE * (plan.files.len() * 2 + 8)).div_ceil(PAGE) * PAGE;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let with_noswap = format!("mode=0700,size={size},noswap");
        let mounted = match mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            flags,
            Some(with_noswap.as_str()),
        ) {
            // Kernels before 6.4 do not know noswap.
            Err(Errno::EINVAL) => mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                flags,
                Some(format!("mode=0700,size={size}").as_str()),
            ),
            other => other,
        };
        if let Err(e) = mounted {
            let _ = fs::remove_dir(&dir);
            return Err(errno("mounting a tmpfs at", &dir)(e));
        }
        let files = TaskFiles { dir, mounted: true };
        // Private: nothing mounted here propagates anywhere, and the later lazy unmount
        // cannot reach the container's bind.
        mount(
            None::<&str>,
            &files.dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(errno("making private", &files.dir))?;
        for f in &plan.files {
            let path = files.dir.join(&f.rel);
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io("creating", parent))?;
            }
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("creating", &path))?;
            file.write_all(&f.data).map_err(io("writing", &path))?;
            std::os::unix::fs::fchown(&file, Some(f.uid), Some(f.gid))
                .map_err(io("changing the owner of", &path))?;
            // After chown, which clears set-id bits.
            file.set_permissions(fs::Permissions::from_mode(f.mode))
                .map_err(io("setting the mode of", &path))?;
        }
        let mounts = plan
            .binds
            .iter()
            .map(|b| Mount {
                r#type: MountType::Bind as i32,
                source: files.dir.join(&b.rel).display().to_string(),
                target: b.target.clone(),
                read_only: true,
                ..Default::default()
            })
            .collect();
        Ok((files, mounts))
    }

    /// The tmpfs mount point on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Detaches the tmpfs from the host and removes its mount point. Containers created
    /// from it keep their binds (and with them the data) until they are removed.
    pub fn detach(mut self) -> Result<(), TaskFilesError> {
        self.mounted = false;
        unmount_and_remove(&self.dir)
    }
}

impl Drop for TaskFiles {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = unmount_and_remove(&self.dir)
        {
            tracing::warn!(dir = ?self.dir, error = %e, "could not remove a task's tmpfs");
        }
    }
}

/// Removes what a daemon that died mid-way left under `root` (mounted tmpfs included).
pub fn sweep(root: &Path) -> Result<(), TaskFilesError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading", root)(e)),
    };
    for entry in entries.flatten() {
        unmount_and_remove(&entry.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::super::{PlannedBind, PlannedFile};
    use super::*;

    fn is_mount_point(path: &Path) -> bool {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let want = path.display().to_string();
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
    }

    /// Needs root (mounts a tmpfs); tests run as root here.
    #[test]
    fn files_land_in_a_tmpfs_with_owner_and_mode_and_vanish_on_detach() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("task-files");
        let plan = FilesPlan {
            files: vec![
                PlannedFile {
                    rel: "secrets/pw".into(),
                    data: b"hunter2".to_vec(),
                    uid: 1000,
                    gid: 1001,
                    mode: 0o400,
                },
                PlannedFile {
                    rel: "files/0".into(),
                    data: b"conf".to_vec(),
                    uid: 0,
                    gid: 0,
                    mode: 0o644,
                },
            ],
            binds: vec![
                PlannedBind {
                    rel: "secrets".into(),
                    target: "/run/secrets".into(),
                },
                PlannedBind {
                    rel: "files/0".into(),
                    target: "/etc/app.conf".into(),
                },
            ],
        };
        let (files, mounts) = TaskFiles::materialize(&root, "t1", &plan).unwrap();
        let dir = files.dir().to_owned();
        assert!(is_mount_point(&dir), "{dir:?} is not a mount point");
        let fstype = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
            .map(|l| l.split(" - ").nth(1).unwrap_or("").to_owned())
            .unwrap();
        assert!(fstype.starts_with("tmpfs "), "{fstype}");
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let pw = fs::metadata(dir.join("secrets/pw")).unwrap();
        assert_eq!(
            (pw.uid(), pw.gid(), pw.mode() & 0o7777),
            (1000, 1001, 0o400)
        );
        assert_eq!(fs::read(dir.join("secrets/pw")).unwrap(), b"hunter2");
        assert_eq!(fs::read(dir.join("files/0")).unwrap(), b"conf");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].source, dir.join("secrets").display().to_string());
        assert_eq!(mounts[0].target, "/run/secrets");
        assert!(mounts.iter().all(|m| m.read_only));
        files.detach().unwrap();
        assert!(!is_mount_point(&dir));
        assert!(!dir.exists());

        // Dropped without detach (an error path): cleaned up too.
        let (files, _) = TaskFiles::materialize(&root, "t2", &plan).unwrap();
        let dir = files.dir().to_owned();
        drop(files);
        assert!(!is_mount_point(&dir) && !dir.exists());

        // A leftover is swept.
        let (files, _) = TaskFiles::materialize(&root, "t3", &plan).unwrap();
        let dir = files.dir().to_owned();
        std::mem::forget(files);
        assert!(is_mount_point(&dir));
        sweep(&root).unwrap();
        assert!(!is_mount_point(&dir) && !dir.exists());
    }
}
