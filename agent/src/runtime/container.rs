//! Inside the container: what the container's PID 1 does between `clone` and `execve`.
//!
//! Runs in the cloned child of the (single-threaded) supervisor, already in its new pid,
//! mount, uts, ipc and net namespaces and already in its cgroup. Order matters and follows
//! runc/crun (see `../shared/notes/runtime.md`): propagation → overlay root → mounts resolved
//! inside the root (`openat2(RESOLVE_IN_ROOT)`, mounted through `/proc/self/fd`) → devices →
//! `pivot_root` → masks → read-only root → rlimits → bounding set → seccomp (when NNP is off,
//! while still privileged) → user → capabilities → chdir + verify → resolve argv\[0\] →
//! NNP + seccomp (when NNP is on) → report ready → wait for start → exec.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

use super::plan::{ContainerPlan, MountKind, ProcessPlan, UserPlan};
use super::sys;

/// A failed setup step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct SetupError {
    /// What was being done.
    pub step: String,
    /// The system error.
    #[source]
    pub source: io::Error,
}

fn step<T, E: Into<io::Error>>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, SetupError> {
    r.map_err(|e| SetupError {
        step: what(),
        source: e.into(),
    })
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(nix_io)
}

fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Relative components of an absolute container path, rejecting `..`.
fn components(path: &str) -> io::Result<Vec<&str>> {
    let mut out = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(
                s.to_str()
                    .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?,
            ),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "'..' in container path",
                ));
            }
        }
    }
    Ok(out)
}

/// What to create at the end of a path if it is missing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leaf {
    Dir,
    File,
}

/// Opens `path` inside `root` (O_PATH), creating missing directories (and the leaf) on the
/// way; every lookup is confined to `root`, so image symlinks cannot lead outside it.
pub(crate) fn ensure_in_root(root: BorrowedFd<'_>, path: &str, leaf: Leaf) -> io::Result<OwnedFd> {
    let parts = components(path)?;
    let mut prefix = PathBuf::from("/");
    let mut parent = sys::open_in_root(root, &prefix, libc::O_PATH | libc::O_DIRECTORY)?;
    for (i, part) in parts.iter().enumerate() {
        prefix.push(part);
        let last = i + 1 == parts.len();
        let flags = if last && leaf == Leaf::File {
            libc::O_PATH
        } else {
            libc::O_PATH | libc::O_DIRECTORY
        };
        match sys::open_in_root(root, &prefix, flags) {
            Ok(fd) => parent = fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let name = CString::new(*part)
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                if last && leaf == Leaf::File {
                    nix::sys::stat::mknodat(
                        parent.as_fd(),
                        name.as_c_str(),
                        SFlag::S_IFREG,
                        Mode::from_bits_truncate(0o644),
                        0,
                    )
                    .map_err(nix_io)?;
                } else {
                    match nix::sys::stat::mkdirat(
                        parent.as_fd(),
                        name.as_c_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(nix::Error::EEXIST) => {}
                        Err(e) => return Err(nix_io(e)),
                    }
                }
                parent = sys::open_in_root(root, &prefix, flags)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(parent)
}

/// Mounts the overlay root: the new mount API when available (any number of layers), the
/// legacy option string otherwise.
fn mount_rootfs(plan: &ContainerPlan) -> io::Result<()> {
    let r = &plan.rootfs;
    if r.mode == super::plan::RootfsMode::Bind {
        let src = r
            .lowers
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no root directory"))?;
        return mount(
            Some(src),
            &r.target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        );
    }
    let lowers: Vec<&Path> = r.lowers.iter().map(PathBuf::as_path).collect();
    match sys::mount_overlay_fsopen(&lowers, &r.upper, &r.work, &r.target) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            let esc = |p: &Path| {
                p.display()
                    .to_string()
                    .replace('\\', "\\\\")
                    .replace(':', "\\:")
                    .replace(',', "\\,")
            };
            let lower = lowers.iter().map(|p| esc(p)).collect::<Vec<_>>().join(":");
            let data = format!(
                "lowerdir={lower},upperdir={},workdir={}",
                esc(&r.upper),
                esc(&r.work)
            );
            mount(
                Some(Path::new("overlay")),
                &r.target,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
            )
        }
        Err(e) => Err(e),
    }
}

fn ms(bits: u64) -> MsFlags {
    MsFlags::from_bits_truncate(bits as libc::c_ulong)
}

/// Applies the plan's mounts, devices and symlinks under the overlay root.
fn mount_all(plan: &ContainerPlan, root: BorrowedFd<'_>) -> Result<(), SetupError> {
    for m in &plan.mounts {
        let dest = &m.destination;
        let (fstype, source, leaf): (Option<&str>, Option<&Path>, Leaf) = match &m.kind {
            MountKind::Proc => (Some("proc"), Some(Path::new("proc")), Leaf::Dir),
            MountKind::Sysfs => (Some("sysfs"), Some(Path::new("sysfs")), Leaf::Dir),
            MountKind::Tmpfs => (Some("tmpfs"), Some(Path::new("tmpfs")), Leaf::Dir),
            MountKind::Devpts => (Some("devpts"), Some(Path::new("devpts")), Leaf::Dir),
            MountKind::Mqueue => (Some("mqueue"), Some(Path::new("mqueue")), Leaf::Dir),
            MountKind::Bind { source } => {
                let leaf = if step(fs::metadata(source), || {
                    format!("stat bind source {source:?}")
                })?
                .is_dir()
                {
                    Leaf::Dir
                } else {
                    Leaf::File
                };
                (None, Some(source.as_path()), leaf)
            }
        };
        let target = step(ensure_in_root(root, dest, leaf), || {
            format!("create mount point {dest}")
        })?;
        let tpath = fd_path(target.as_fd());
        let flags = ms(m.flags);
        let is_bind = matches!(m.kind, MountKind::Bind { .. });
        let first_flags = if is_bind {
            flags & !MsFlags::MS_RDONLY
        } else {
            flags
        };
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        step(mount(source, &tpath, fstype, first_flags, data), || {
            format!("mount {dest}")
        })?;
        if is_bind && flags.contains(MsFlags::MS_RDONLY) {
            // a bind ignores MS_RDONLY; apply it with a remount of the new mount
            let again = step(ensure_in_root(root, dest, leaf), || {
                format!("reopen {dest}")
            })?;
            step(
                mount(
                    None,
                    &fd_path(again.as_fd()),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None,
                ),
                || format!("remount {dest} read-only"),
            )?;
        }
    }
    for d in &plan.devices {
        let (dir, name) = split_parent(&d.path);
        let parent = step(ensure_in_root(root, dir, Leaf::Dir), || {
            format!("open {dir}")
        })?;
        let cname = step(
            CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput)),
            || "device name".into(),
        )?;
        let dev = nix::sys::stat::makedev(u64::from(d.major), u64::from(d.minor));
        match nix::sys::stat::mknodat(
            parent.as_fd(),
            cname.as_c_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(d.mode),
            dev,
        ) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => {
                return Err(SetupError {
                    step: format!("mknod {}", d.path),
                    source: nix_io(e),
                });
            }
        }
    }
    for (link, target) in &plan.symlinks {
        let (dir, name) = split_parent(link);
        let parent = step(ensure_in_root(root, dir, Leaf::Dir), || {
            format!("open {dir}")
        })?;
        match nix::unistd::symlinkat(target.as_str(), parent.as_fd(), name) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => {
                return Err(SetupError {
                    step: format!("symlink {link}"),
                    source: nix_io(e),
                });
            }
        }
    }
    Ok(())
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => ("/", path),
    }
}

/// `pivot_root(".", ".")` and lazily detach the old root (no put_old directory needed).
fn pivot_into(new_root: &Path) -> io::Result<()> {
    let old = fs::File::open("/")?;
    let new = fs::File::open(new_root)?;
    nix::unistd::fchdir(&new).map_err(nix_io)?;
    nix::unistd::pivot_root(".", ".").map_err(nix_io)?;
    nix::unistd::fchdir(&old).map_err(nix_io)?;
    mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(nix_io)?;
    nix::unistd::chdir("/").map_err(nix_io)
}

/// Per-mount flags to keep when remounting `path` (statvfs flags → MS_*).
fn kept_flags(path: &Path) -> MsFlags {
    let mut out = MsFlags::empty();
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let f = st.flags();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if f.contains(a) {
                out |= b;
            }
        }
    }
    out
}

fn mask_path(path: &str) -> io::Result<()> {
    let p = Path::new(path);
    let meta = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0,mode=0555"),
        )
    } else {
        mount(
            Some(Path::new("/dev/null")),
            p,
            None,
            MsFlags::MS_BIND,
            None,
        )
    }
}

fn readonly_path(path: &str) -> io::Result<()> {
    let p = Path::new(path);
    match mount(Some(p), p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept_flags(p);
    mount(None, p, None, flags, None)
}

/// Everything up to (excluding) the credential switch; runs as root in the new namespaces.
pub fn setup_filesystem(plan: &ContainerPlan, netns_joined: bool) -> Result<(), SetupError> {
    step(
        mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        ),
        || "make / rslave".into(),
    )?;
    step(mount_rootfs(plan), || {
        format!("mount overlay rootfs ({} layers)", plan.rootfs.lowers.len())
    })?;
    let root = step(
        fs::File::open(&plan.rootfs.target).map(OwnedFd::from),
        || "open rootfs".into(),
    )?;
    mount_all(plan, root.as_fd())?;
    // Docker creates the working directory; ignore failures here, chdir reports them.
    let _ = ensure_in_root(root.as_fd(), &plan.process.cwd, Leaf::Dir);
    if matches!(plan.namespaces.net, super::plan::NetworkMode::New) && !netns_joined {
        step(sys::loopback_up(), || "bring up lo".into())?;
    }
    if plan.namespaces.uts {
        step(
            nix::unistd::sethostname(&plan.hostname).map_err(nix_io),
            || "sethostname".into(),
        )?;
    }
    drop(root);
    step(pivot_into(&plan.rootfs.target), || "pivot_root".into())?;
    for p in &plan.masked_paths {
        step(mask_path(p), || format!("mask {p}"))?;
    }
    for p in &plan.readonly_paths {
        step(readonly_path(p), || format!("make {p} read-only"))?;
    }
    if plan.rootfs.read_only {
        step(
            mount(
                None,
                Path::new("/"),
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | kept_flags(Path::new("/")),
                None,
            ),
            || "remount / read-only".into(),
        )?;
    }
    Ok(())
}

fn load_seccomp(filters: &[Vec<u8>]) -> Result<(), SetupError> {
    for f in filters {
        step(sys::seccomp_load(f), || "load seccomp filter".into())?;
    }
    Ok(())
}

fn switch_user(user: &UserPlan) -> Result<(), SetupError> {
    step(sys::set_keep_caps(true), || "PR_SET_KEEPCAPS".into())?;
    let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    step(nix::unistd::setgroups(&groups).map_err(nix_io), || {
        "setgroups".into()
    })?;
    let gid = Gid::from_raw(user.gid);
    step(
        nix::unistd::setresgid(gid, gid, gid).map_err(nix_io),
        || format!("setresgid {}", user.gid),
    )?;
    let uid = Uid::from_raw(user.uid);
    step(
        nix::unistd::setresuid(uid, uid, uid).map_err(nix_io),
        || format!("setresuid {}", user.uid),
    )?;
    step(sys::set_keep_caps(false), || "PR_SET_KEEPCAPS".into())
}

/// `chdir(cwd)` and check the result is a real path inside the root (CVE-2024-21626).
fn enter_cwd(cwd: &str) -> Result<(), SetupError> {
    step(nix::unistd::chdir(cwd).map_err(nix_io), || {
        format!("chdir to cwd ({cwd:?}) set in config")
    })?;
    let actual = step(nix::unistd::getcwd().map_err(nix_io), || {
        "getcwd (cwd outside the container root?)".into()
    })?;
    if !actual.is_absolute() || actual.as_os_str().as_bytes().starts_with(b"(unreachable)") {
        return Err(SetupError {
            step: format!("verify cwd {actual:?}"),
            source: io::Error::from_raw_os_error(libc::EPERM),
        });
    }
    Ok(())
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

/// Resolves argv\[0\] through the container's `PATH` (as `exec.LookPath` does for runc).
pub fn look_path(arg0: &str, env: &[String]) -> Result<PathBuf, SetupError> {
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        if executable(&p) {
            return Ok(p);
        }
        return Err(SetupError {
            step: format!("exec: {arg0:?}: stat {arg0}: no such file or directory"),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    let path = env_value(env, "PATH").unwrap_or(super::plan::DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        if executable(&cand) {
            return Ok(cand);
        }
    }
    Err(SetupError {
        step: format!("exec: {arg0:?}: executable file not found in $PATH"),
        source: io::Error::from_raw_os_error(libc::ENOENT),
    })
}

/// The process half: rlimits, capabilities, seccomp, user, cwd, argv\[0\]. Returns the
/// resolved executable. Used both for the container's PID 1 and for `exec`.
pub fn setup_process(process: &ProcessPlan, seccomp: &[Vec<u8>]) -> Result<PathBuf, SetupError> {
    for r in &process.rlimits {
        step(sys::set_rlimit(r.resource, r.soft, r.hard), || {
            format!("setrlimit {}", r.resource)
        })?;
    }
    step(
        sys::limit_bounding_set(process.caps.bounding, sys::cap_last_cap()),
        || "drop bounding capabilities".into(),
    )?;
    let use_seccomp = process.seccomp && !seccomp.is_empty();
    if use_seccomp && !process.no_new_privs {
        // needs CAP_SYS_ADMIN, which we still hold; the profile allows the calls made below
        load_seccomp(seccomp)?;
    }
    switch_user(&process.user)?;
    step(
        sys::capset(
            process.caps.effective,
            process.caps.permitted,
            process.caps.inheritable,
        ),
        || "capset".into(),
    )?;
    step(sys::clear_ambient(), || "clear ambient capabilities".into())?;
    enter_cwd(&process.cwd)?;
    let exe = look_path(&process.args[0], &process.env)?;
    step(sys::cloexec_fds_from(3), || "mark fds close-on-exec".into())?;
    if process.no_new_privs {
        step(sys::set_no_new_privs(), || "PR_SET_NO_NEW_PRIVS".into())?;
        if use_seccomp {
            load_seccomp(seccomp)?;
        }
    }
    Ok(exe)
}

/// argv and envp as C strings.
pub fn c_strings(v: &[String]) -> Result<Vec<CString>, SetupError> {
    v.iter()
        .map(|s| CString::new(s.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SetupError {
            step: "argument or environment contains NUL".into(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })
}

/// Gives the program a clean signal state, as runc does: every disposition back to its
/// default and an empty mask. Ignored signals survive `execve`, and the supervisor and the
/// daemon ignore some (SIGPIPE, SIGHUP, SIGINT from a shell), which would make `trap ... INT`
/// or `kill -INT` do nothing inside the container.
fn reset_signals() {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler, so no Rust code can run on a signal; this runs
        // in the single-threaded container init just before execve. Invalid numbers (the
        // glibc-reserved real-time signals) only make the call fail, which is ignored.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Replaces the process image; returns only on failure.
pub fn exec(exe: &Path, process: &ProcessPlan) -> SetupError {
    let path = match CString::new(exe.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => {
            return SetupError {
                step: "executable path contains NUL".into(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            };
        }
    };
    let (args, env) = match (c_strings(&process.args), c_strings(&process.env)) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    reset_signals();
    let err = match nix::unistd::execve(&path, &args, &env) {
        Err(e) => nix_io(e),
        Ok(never) => match never {},
    };
    SetupError {
        step: format!("exec {}", exe.display()),
        source: err,
    }
}

/// Mode bits of a path's metadata (for tests of device nodes).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    fs::metadata(path).map(|m| m.mode())
}

/// Sends one message on a SOCK_SEQPACKET sync socket (best effort: the peer may be gone).
pub(crate) fn sync_send(sock: BorrowedFd<'_>, msg: &[u8]) {
    let _ = nix::sys::socket::send(sock.as_raw_fd(), msg, nix::sys::socket::MsgFlags::empty());
}

/// Receives one message (empty = peer closed).
pub(crate) fn sync_recv(sock: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match nix::sys::socket::recv(
            sock.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(nix_io(e)),
        }
    }
}

fn error_message(e: &SetupError) -> Vec<u8> {
    let mut m = b"E".to_vec();
    m.extend_from_slice(e.to_string().as_bytes());
    m
}

/// Main of the container's PID 1 (the cloned child of the supervisor). Never returns.
///
/// Protocol on `sync`: join the cgroup (before any other step, so everything the container
/// ever runs is accounted and limited) → set up → send `R` or `E<msg>` → wait for `S` → exec. `sync` is close-on-exec, so the supervisor reads EOF on success
/// and `E<msg>` when exec fails.
pub(crate) fn init_main(
    plan: &ContainerPlan,
    cgroup: &super::cgroups::Cgroup,
    seccomp: &[Vec<u8>],
    sync: OwnedFd,
    netns: Option<OwnedFd>,
) -> ! {
    let prepared = (|| -> Result<PathBuf, SetupError> {
        // join the cgroup before anything else: every later process inherits it
        step(
            cgroup
                .attach_self()
                .map_err(|e| io::Error::other(e.to_string())),
            || "join cgroup".into(),
        )?;
        if let Some(ns) = &netns {
            step(
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(nix_io),
                || "join network namespace".into(),
            )?;
        }
        drop(netns);
        step(nix::unistd::setsid().map_err(nix_io), || "setsid".into())?;
        nix::sys::stat::umask(Mode::empty());
        setup_filesystem(plan, plan_joins_netns(plan))?;
        nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        setup_process(&plan.process, seccomp)
    })();
    let exe = match prepared {
        Ok(exe) => exe,
        Err(e) => {
            sync_send(sync.as_fd(), &error_message(&e));
            std::process::exit(1);
        }
    };
    sync_send(sync.as_fd(), b"R");
    match sync_recv(sync.as_fd()) {
        Ok(m) if m == b"S" => {}
        _ => std::process::exit(1),
    }
    if plan.process.init {
        mini_init(&exe, &plan.process, sync)
    }
    let e = exec(&exe, &plan.process);
    sync_send(sync.as_fd(), &error_message(&e));
    std::process::exit(127)
}

fn plan_joins_netns(plan: &ContainerPlan) -> bool {
    matches!(plan.namespaces.net, super::plan::NetworkMode::Join(_))
}

/// `--init`: PID 1 forks the application, forwards every signal to it, reaps every child,
/// and exits with the application's status (128 + signal when it was killed).
fn mini_init(exe: &Path, process: &ProcessPlan, sync: OwnedFd) -> ! {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None);
    // SAFETY: the container init is single-threaded (a clone of the single-threaded
    // supervisor), so the child may run arbitrary code before exec.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            let err = SetupError {
                step: "fork for --init".into(),
                source: nix_io(e),
            };
            sync_send(sync.as_fd(), &error_message(&err));
            std::process::exit(127);
        }
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let e = exec(exe, process);
            sync_send(sync.as_fd(), &error_message(&e));
            std::process::exit(127);
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(sync);
            loop {
                let sig = match all.wait() {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                if sig != Signal::SIGCHLD {
                    let _ = kill(child, sig);
                    continue;
                }
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                            std::process::exit(code)
                        }
                        Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                            std::process::exit(128 + s as i32)
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_reject_dotdot() {
        assert_eq!(components("/a/./b/").unwrap(), vec!["a", "b"]);
        assert!(components("/a/../b").is_err());
        assert_eq!(split_parent("/dev/null"), ("/dev", "null"));
        assert_eq!(split_parent("/x"), ("/", "x"));
    }

    #[test]
    fn ensure_in_root_stays_inside_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        // an absolute symlink that would escape if followed on the host
        std::os::unix::fs::symlink(outside.path(), root.join("evil")).unwrap();
        fs::create_dir(root.join("data")).unwrap();
        std::os::unix::fs::symlink("/data", root.join("link")).unwrap();
        let rootfd = OwnedFd::from(fs::File::open(&root).unwrap());
        // through the escaping link: either refused or created inside, never outside
        let _ = ensure_in_root(rootfd.as_fd(), "/evil/sub/dir", Leaf::Dir);
        assert!(
            !outside.path().join("sub").exists(),
            "created outside the root"
        );
        // an absolute in-image link is resolved against the container root
        drop(ensure_in_root(rootfd.as_fd(), "/link/x/y", Leaf::Dir).unwrap());
        assert!(root.join("data/x/y").is_dir());
        let f = ensure_in_root(rootfd.as_fd(), "/etc/hosts", Leaf::File).unwrap();
        drop(f);
        assert!(root.join("etc/hosts").is_file());
    }

    #[test]
    fn look_path_uses_container_path() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert_eq!(look_path("sh", &env).unwrap(), PathBuf::from("/bin/sh"));
        assert!(look_path("definitely-not-here", &env).is_err());
        assert!(look_path("/bin/sh", &env).is_ok());
        assert!(look_path("/etc/passwd", &env).is_err(), "not executable");
    }
}
