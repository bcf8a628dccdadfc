//! The kernel seam of the image store: `*at` system calls relative to directory file
//! descriptors, never following a symlink.
//!
//! Every operation that creates or changes an entry takes a [`Dir`] (an fd opened with
//! `O_DIRECTORY|O_NOFOLLOW`) and a single path component, so the only way to reach a path is
//! to open each of its directories in turn; a symlink on the way makes `openat` fail with
//! `ELOOP`/`ENOTDIR` instead of being followed. All `unsafe` of the image store is here.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What kind of file a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    Symlink,
    Regular,
    Other,
}

/// The parts of `stat` the store uses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stat {
    pub kind: Kind,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFREG => Kind::Regular,
            _ => Kind::Other,
        };
        Stat { kind }
    }
}

/// A name usable as one path component: no `/`, no NUL, not `.` or `..`, not empty.
pub(crate) fn component(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a single path component",
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn cstring_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

const DIR_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn timespec(secs: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    }
}

/// An open directory that operations are made relative to.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Opens a directory by path; the last component must not be a symlink.
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let p = cstring_path(path)?;
        // SAFETY: `p` is a valid NUL-terminated string that outlives the call; open returns a
        // new fd or -1 and touches no memory of ours besides the path.
        let fd = unsafe { libc::open(p.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir { fd })
    }

    /// Opens the child directory `name` without following a symlink.
    pub(crate) fn open_dir(&self, name: &CStr) -> io::Result<Dir> {
        // SAFETY: self.fd is an open directory fd; `name` is NUL-terminated and outlives
        // the call.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), name.as_ptr(), DIR_FLAGS) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Dir { fd })
    }

    /// A path that names this directory through `/proc/self/fd` (valid while `self` lives).
    pub(crate) fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// `lstat` of a child; `None` if it does not exist.
    pub(crate) fn stat(&self, name: &CStr) -> io::Result<Option<Stat>> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` points to writable memory of the right size for fstatat to fill;
        // `name` is NUL-terminated; AT_SYMLINK_NOFOLLOW so nothing is followed.
        let ret = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if ret == -1 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        // SAFETY: fstatat returned 0, so it initialised `st`.
        let st = unsafe { st.assume_init() };
        Ok(Some(Stat::from_raw(&st)))
    }

    /// Creates the child directory `name`.
    pub(crate) fn mkdir(&self, name: &CStr, mode: u32) -> io::Result<()> {
        // SAFETY: plain syscall on an owned dir fd and a NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
    }

    /// Creates a new regular file `name` (it must not exist; a symlink is not followed).
    pub(crate) fn create_file(&self, name: &CStr) -> io::Result<File> {
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: plain syscall on an owned dir fd and a NUL-terminated name; mode is passed
        // as the variadic third argument open expects with O_CREAT.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                flags,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Creates the symlink `name` → `target` (target is stored verbatim, never resolved).
    pub(crate) fn symlink(&self, target: &CStr, name: &CStr) -> io::Result<()> {
        // SAFETY: both strings are NUL-terminated and outlive the call.
        check(unsafe { libc::symlinkat(target.as_ptr(), self.fd.as_raw_fd(), name.as_ptr()) })
    }

    /// Creates the hard link `name` to `src_dir/src_name` (a symlink source is linked itself).
    pub(crate) fn hardlink(&self, src_dir: &Dir, src_name: &CStr, name: &CStr) -> io::Result<()> {
        // SAFETY: both dir fds are open and both names NUL-terminated; flags 0 means the
        // source is not dereferenced.
        check(unsafe {
            libc::linkat(
                src_dir.fd.as_raw_fd(),
                src_name.as_ptr(),
                self.fd.as_raw_fd(),
                name.as_ptr(),
                0,
            )
        })
    }

    /// Creates a device node or FIFO; `mode` includes the file type bits.
    pub(crate) fn mknod(&self, name: &CStr, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let dev = libc::makedev(major, minor);
        // SAFETY: plain syscall on an owned dir fd and a NUL-terminated name.
        check(unsafe {
            libc::mknodat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                mode as libc::mode_t,
                dev,
            )
        })
    }

    /// Removes the child `name`, recursively if it is a directory; symlinks are removed,
    /// never followed.
    pub(crate) fn remove_all(&self, name: &CStr, kind: Kind) -> io::Result<()> {
        if kind == Kind::Dir {
            // remove_dir_all lstat()s its argument and walks with O_NOFOLLOW; the argument
            // reaches our directory through its fd, so no path outside is ever resolved.
            let path = self.proc_path().join(OsStr::from_bytes(name.to_bytes()));
            return std::fs::remove_dir_all(path);
        }
        // SAFETY: plain syscall on an owned dir fd and a NUL-terminated name.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) })
    }

    /// Sets owner of `name` without following a symlink.
    pub(crate) fn chown(&self, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
        // SAFETY: plain syscall on an owned dir fd and a NUL-terminated name.
        check(unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// Sets the permission bits of `name`, which the caller knows is not a symlink.
    pub(crate) fn chmod(&self, name: &CStr, mode: u32) -> io::Result<()> {
        // SAFETY: plain syscall on an owned dir fd and a NUL-terminated name.
        check(unsafe {
            libc::fchmodat(self.fd.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0)
        })
    }

    /// Sets atime and mtime of `name` without following a symlink.
    pub(crate) fn set_mtime(&self, name: &CStr, secs: i64) -> io::Result<()> {
        let times = [timespec(secs), timespec(secs)];
        // SAFETY: `times` is an array of two timespecs as utimensat requires.
        check(unsafe {
            libc::utimensat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// Sets an extended attribute on `name` without following it if it is a symlink.
    pub(crate) fn set_xattr(&self, name: &CStr, key: &CStr, value: &[u8]) -> io::Result<()> {
        let path = cstring_path(&self.proc_path().join(OsStr::from_bytes(name.to_bytes())))?;
        // SAFETY: path/key NUL-terminated; value pointer and length describe a live slice.
        // lsetxattr does not follow the final component; the prefix is our own dir fd.
        check(unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    }

    /// Sets an extended attribute on this directory itself.
    pub(crate) fn set_own_xattr(&self, key: &CStr, value: &[u8]) -> io::Result<()> {
        fset_xattr(self.fd.as_fd(), key, value)
    }

    /// Sets owner, mode and mtime of this directory itself.
    pub(crate) fn set_own_attrs(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        set_fd_owner_mode(self.fd.as_fd(), uid, gid, mode)
    }

    /// Sets atime and mtime of this directory itself.
    pub(crate) fn set_own_mtime(&self, secs: i64) -> io::Result<()> {
        set_fd_mtime(self.fd.as_fd(), secs)
    }

    /// Flushes the file system this directory is on.
    pub(crate) fn syncfs(&self) -> io::Result<()> {
        // SAFETY: plain syscall on an owned fd.
        check(unsafe { libc::syncfs(self.fd.as_raw_fd()) })
    }
}

/// `fchown` then `fchmod` (in that order: chown clears set-id bits).
pub(crate) fn set_fd_owner_mode(
    fd: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: u32,
) -> io::Result<()> {
    // SAFETY: plain syscalls on a borrowed, open fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

/// Sets atime and mtime through an fd.
pub(crate) fn set_fd_mtime(fd: BorrowedFd<'_>, secs: i64) -> io::Result<()> {
    let times = [timespec(secs), timespec(secs)];
    // SAFETY: `times` is an array of two timespecs as futimens requires.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

/// Sets an extended attribute through an fd.
pub(crate) fn fset_xattr(fd: BorrowedFd<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: key NUL-terminated; value pointer and length describe a live slice.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// `fsync` of a directory by path (to persist a rename in it).
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_refuses_paths_and_dots() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(component(bad).is_err(), "{bad:?}");
        }
        assert_eq!(component(b"ok").unwrap().as_bytes(), b"ok");
    }

    #[test]
    fn open_dir_does_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", t.path().join("link")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        assert!(d.open_dir(&component(b"real").unwrap()).is_ok());
        let e = d.open_dir(&component(b"link").unwrap()).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
            "{e}"
        );
        assert_eq!(
            d.stat(&component(b"link").unwrap()).unwrap().unwrap().kind,
            Kind::Symlink
        );
        assert!(d.stat(&component(b"none").unwrap()).unwrap().is_none());
    }
}
