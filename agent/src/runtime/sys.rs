//! The kernel seam of the runtime: every raw system call the runtime makes that `nix` does
//! not wrap (new mount API, `openat2`, `clone` with namespace flags, capabilities, seccomp,
//! pidfds, sealed memfds, `close_range`) lives here, each with its `// SAFETY:` argument.
//!
//! Invariant: functions here do one system call (or a short fixed sequence) and return
//! `io::Result`; policy lives in the callers.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::caps::CapSet;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_int(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a new descriptor returned by a system call.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(fd)? as RawFd;
    // SAFETY: `fd` was just returned by the kernel as a new descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies `src` into a sealed, close-on-exec memfd (CVE-2019-5736): the copy can never be
/// written again, so a container that reopens `/proc/<helper>/exe` cannot reach the host binary.
pub fn sealed_memfd_copy(src: &Path, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; flags are valid memfd flags.
    let fd = owned(unsafe {
        libc::syscall(
            libc::SYS_memfd_create,
            name.as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    })?;
    let mut file = File::from(fd);
    let mut source = File::open(src)?;
    io::copy(&mut source, &mut file)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: `file` owns a valid memfd; F_ADD_SEALS takes an int argument.
    check_int(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(OwnedFd::from(file))
}

/// Marks every descriptor ≥ `first` close-on-exec-free: closes them all (`close_range`).
pub fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; callers own no fds ≥ `first` that they
    // still use (documented precondition of the helper entry).
    check(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0) }).map(|_| ())
}

/// Marks every descriptor ≥ `first` close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`), so
/// nothing but stdio can leak into the exec'd program (CVE-2024-21626 defence in depth).
pub fn cloexec_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: only sets FD_CLOEXEC on descriptors; nothing is closed.
    check(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })
    .map(|_| ())
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no ptrace, no /proc/<pid> access from the container.
pub fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(|_| ())
}

/// `prctl(PR_SET_NAME, name)` (the `comm` shown by `ps`).
pub fn set_name(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string; the kernel copies at most 16 bytes.
    check_int(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) }).map(|_| ())
}

/// `prctl(PR_SET_PDEATHSIG, sig)`.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })
        .map(|_| ())
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map(|_| ())
}

/// `prctl(PR_SET_KEEPCAPS, on)`.
pub fn set_keep_caps(on: bool) -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(on), 0, 0, 0) })
        .map(|_| ())
}

/// Highest capability number the running kernel knows.
pub fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(super::caps::CAP_LAST_KNOWN)
}

/// Drops every capability not in `keep` from the bounding set.
pub fn limit_bounding_set(keep: CapSet, last: u32) -> io::Result<()> {
    for cap in 0..=last {
        if keep.contains(cap) {
            continue;
        }
        // SAFETY: plain prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: capability unknown to this kernel.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Clears the ambient set.
pub fn clear_ambient() -> io::Result<()> {
    // SAFETY: plain prctl with integer arguments.
    check_int(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
    .map(|_| ())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `capset` for the calling thread.
pub fn capset(effective: CapSet, permitted: CapSet, inheritable: CapSet) -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |s: CapSet| (s.0 as u32, (s.0 >> 32) as u32);
    let (e0, e1) = split(effective);
    let (p0, p1) = split(permitted);
    let (i0, i1) = split(inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: header and data are valid, properly laid out (repr(C)) v3 structures; the
    // kernel reads two CapData entries for version 3.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }).map(|_| ())
}

/// Loads a classic-BPF seccomp filter given as raw `sock_filter` bytes (8 bytes each).
pub fn seccomp_load(program: &[u8]) -> io::Result<()> {
    if program.is_empty()
        || !program.len().is_multiple_of(8)
        || program.len() / 8 > u16::MAX as usize
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "malformed seccomp program",
        ));
    }
    let filters: Vec<libc::sock_filter> = program
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog {
        len: filters.len() as u16,
        filter: filters.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filters`, which outlives the call; the kernel copies it.
    check(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    })
    .map(|_| ())
}

/// Result of [`clone_process`].
pub enum Cloned {
    /// In the child.
    Child,
    /// In the parent: the child's pid and a pidfd for it.
    Parent {
        /// Host pid of the child.
        pid: i32,
        /// pidfd of the child.
        pidfd: OwnedFd,
    },
}

/// `clone(flags | CLONE_PIDFD | SIGCHLD)` like `fork`, optionally into new namespaces.
///
/// # Safety
/// The caller must be single-threaded (the child gets a copy of only the calling thread,
/// exactly as with `fork`), and the child must not return into code that expects to be
/// the parent.
pub unsafe fn clone_process(flags: libc::c_int) -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let all = (flags | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a NULL stack makes clone behave like fork (the child runs on a copy of the
    // caller's stack); `pidfd` is a valid int the kernel writes the pidfd into
    // (CLONE_PIDFD uses the parent_tid argument). Single-threadedness is the caller's contract.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            all,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    let ret = check(ret)?;
    if ret == 0 {
        return Ok(Cloned::Child);
    }
    // SAFETY: the kernel stored a fresh pidfd in `pidfd` for the new child; we own it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Cloned::Parent {
        pid: ret as i32,
        pidfd,
    })
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// `pidfd_send_signal(fd, sig, NULL, 0)`.
pub fn pidfd_send_signal(fd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: valid pidfd, NULL siginfo is allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(|_| ())
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &CStr) -> io::Result<()> {
    let key = CString::new(key).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: fs is an fs-context fd; key and value are valid C strings for the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    })
    .map(|_| ())
}

/// Mounts an overlay at `target` with the new mount API, one `lowerdir+` per layer
/// (no 4 KiB option-string limit; Linux ≥ 6.8). `lowers` is top-most first.
pub fn mount_overlay_fsopen(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> io::Result<()> {
    let fstype =
        CString::new("overlay").map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string and flags; returns a new fs-context fd.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    for lower in lowers {
        fsconfig_string(&fs, "lowerdir+", &cstr(lower)?)?;
    }
    fsconfig_string(&fs, "upperdir", &cstr(upper)?)?;
    fsconfig_string(&fs, "workdir", &cstr(work)?)?;
    // SAFETY: fs is a valid fs-context fd; CMD_CREATE takes no key/value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    // SAFETY: fs is a created fs-context; returns a new detached mount fd.
    let mnt =
        owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    let target = cstr(target)?;
    let empty = c"";
    // SAFETY: mnt is a detached mount fd, "" with F_EMPTY_PATH names it; target is a C string.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(|_| ())
}

/// `openat2(dirfd, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: resolves `path`
/// as if `dirfd` were `/`, so symlinks in the image cannot point outside it.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain old data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `how` is a valid open_how of the size passed; `c` is a valid C string.
    owned(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })
}

/// Brings the loopback interface up in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: creates a new socket fd that we own immediately below.
    let sock = owned(unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as libc::c_long
    })?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket and ifreq pointer for SIOCGIFFLAGS.
    check_int(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: ifru_flags is the active union member after SIOCGIFFLAGS.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: valid socket and ifreq pointer for SIOCSIFFLAGS.
    check_int(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) }).map(|_| ())
}

/// `setrlimit(resource, soft, hard)`.
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: valid rlimit pointer; the resource number is checked by the kernel.
    check_int(unsafe { libc::setrlimit(resource as libc::__rlimit_resource_t, &lim) }).map(|_| ())
}

/// Process start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot); together
/// with the pid it identifies a process across pid reuse.
pub fn process_start_time(proc_root: &Path, pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    // comm may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat"))?;
    rest.split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat"))
}

/// `poll` on one descriptor for readability, `timeout_ms` < 0 waits forever.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(r > 0);
    }
}

/// Number of threads of the calling process (from `/proc/self/status`).
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Threads line"))
}

/// Returns free heap memory to the kernel (`malloc_trim`), so that a long-lived process
/// keeps only what it still uses after a setup phase.
pub fn release_free_heap() {
    // SAFETY: malloc_trim only releases free memory back to the kernel.
    unsafe { libc::malloc_trim(0) };
}
