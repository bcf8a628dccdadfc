//! The default seccomp profile: a Rust transcription of Docker's `profiles/seccomp/default.json`
//! for x86_64, compiled to classic BPF with `seccompiler` once per capability set and cached.
//!
//! What the filter does (matches Docker on x86_64 unless noted):
//! - default action `ERRNO(EPERM)`; about 300 ordinary syscalls allowed unconditionally;
//! - `socket` allowed only for the address families Docker allows (AF_VSOCK and the others
//!   Docker leaves out get EPERM); `personality` only for 0, 8, 0x20000, 0x20008, 0xffffffff;
//! - `clone` only without namespace flags (mask `0x7E020000`) and `clone3` → `ENOSYS` (so libc
//!   falls back to `clone`) unless `CAP_SYS_ADMIN` is granted;
//! - `mount`, `umount2`, `unshare`, `setns`, `bpf`, `perf_event_open`, the new mount API,
//!   `keyctl`/`add_key`/`request_key` (never in Docker's list) and the like are denied unless
//!   the capability Docker ties them to is granted (`--cap-add`).
//!
//! Differences from Docker, on purpose or by tool limits:
//! - only the native `AUDIT_ARCH_X86_64` is accepted; a syscall from another architecture
//!   (i386 `int 0x80`) kills the process, where Docker allows the x86 and x32 ABIs. x32
//!   syscall numbers (bit 30 set) match no rule and get EPERM;
//! - the `clone3` ENOSYS rule is a second, stacked filter (seccompiler has one match action
//!   per filter); the kernel returns the most recently installed filter's ERRNO first;
//! - no `SCMP_ACT_LOG`/notify actions and no per-kernel-version (`minKernel`) gates: the
//!   `ptrace` family is allowed as on any kernel ≥ 4.8.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::caps::{self, CapSet};

/// Errors of building the profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in the table).
    #[error("building the seccomp filter: {0}")]
    Build(String),
}

/// Syscalls Docker allows unconditionally on x86_64, with their x86_64 numbers.
const ALLOW: &[(&str, i64)] = &[
    ("read", 0),
    ("write", 1),
    ("open", 2),
    ("close", 3),
    ("stat", 4),
    ("fstat", 5),
    ("lstat", 6),
    ("poll", 7),
    ("lseek", 8),
    ("mmap", 9),
    ("mprotect", 10),
    ("munmap", 11),
    ("brk", 12),
    ("rt_sigaction", 13),
    ("rt_sigprocmask", 14),
    ("rt_sigreturn", 15),
    ("ioctl", 16),
    ("pread64", 17),
    ("pwrite64", 18),
    ("readv", 19),
    ("writev", 20),
    ("access", 21),
    ("pipe", 22),
    ("select", 23),
    ("sched_yield", 24),
    ("mremap", 25),
    ("msync", 26),
    ("mincore", 27),
    ("madvise", 28),
    ("shmget", 29),
    ("shmat", 30),
    ("shmctl", 31),
    ("dup", 32),
    ("dup2", 33),
    ("pause", 34),
    ("nanosleep", 35),
    ("getitimer", 36),
    ("alarm", 37),
    ("setitimer", 38),
    ("getpid", 39),
    ("sendfile", 40),
    ("connect", 42),
    ("accept", 43),
    ("sendto", 44),
    ("recvfrom", 45),
    ("sendmsg", 46),
    ("recvmsg", 47),
    ("shutdown", 48),
    ("bind", 49),
    ("listen", 50),
    ("getsockname", 51),
    ("getpeername", 52),
    ("socketpair", 53),
    ("setsockopt", 54),
    ("getsockopt", 55),
    ("fork", 57),
    ("vfork", 58),
    ("execve", 59),
    ("exit", 60),
    ("wait4", 61),
    ("kill", 62),
    ("uname", 63),
    ("semget", 64),
    ("semop", 65),
    ("semctl", 66),
    ("shmdt", 67),
    ("msgget", 68),
    ("msgsnd", 69),
    ("msgrcv", 70),
    ("msgctl", 71),
    ("fcntl", 72),
    ("flock", 73),
    ("fsync", 74),
    ("fdatasync", 75),
    ("truncate", 76),
    ("ftruncate", 77),
    ("getdents", 78),
    ("getcwd", 79),
    ("chdir", 80),
    ("fchdir", 81),
    ("rename", 82),
    ("mkdir", 83),
    ("rmdir", 84),
    ("creat", 85),
    ("link", 86),
    ("unlink", 87),
    ("symlink", 88),
    ("readlink", 89),
    ("chmod", 90),
    ("fchmod", 91),
    ("chown", 92),
    ("fchown", 93),
    ("lchown", 94),
    ("umask", 95),
    ("gettimeofday", 96),
    ("getrlimit", 97),
    ("getrusage", 98),
    ("sysinfo", 99),
    ("times", 100),
    ("ptrace", 101),
    ("getuid", 102),
    ("getgid", 104),
    ("setuid", 105),
    ("setgid", 106),
    ("geteuid", 107),
    ("getegid", 108),
    ("setpgid", 109),
    ("getppid", 110),
    ("getpgrp", 111),
    ("setsid", 112),
    ("setreuid", 113),
    ("setregid", 114),
    ("getgroups", 115),
    ("setgroups", 116),
    ("setresuid", 117),
    ("getresuid", 118),
    ("setresgid", 119),
    ("getresgid", 120),
    ("getpgid", 121),
    ("setfsuid", 122),
    ("setfsgid", 123),
    ("getsid", 124),
    ("capget", 125),
    ("capset", 126),
    ("rt_sigpending", 127),
    ("rt_sigtimedwait", 128),
    ("rt_sigqueueinfo", 129),
    ("rt_sigsuspend", 130),
    ("sigaltstack", 131),
    ("utime", 132),
    ("mknod", 133),
    ("statfs", 137),
    ("fstatfs", 138),
    ("getpriority", 140),
    ("setpriority", 141),
    ("sched_setparam", 142),
    ("sched_getparam", 143),
    ("sched_setscheduler", 144),
    ("sched_getscheduler", 145),
    ("sched_get_priority_max", 146),
    ("sched_get_priority_min", 147),
    ("sched_rr_get_interval", 148),
    ("mlock", 149),
    ("munlock", 150),
    ("mlockall", 151),
    ("munlockall", 152),
    ("modify_ldt", 154),
    ("prctl", 157),
    ("arch_prctl", 158),
    ("adjtimex", 159),
    ("setrlimit", 160),
    ("sync", 162),
    ("gettid", 186),
    ("readahead", 187),
    ("setxattr", 188),
    ("lsetxattr", 189),
    ("fsetxattr", 190),
    ("getxattr", 191),
    ("lgetxattr", 192),
    ("fgetxattr", 193),
    ("listxattr", 194),
    ("llistxattr", 195),
    ("flistxattr", 196),
    ("removexattr", 197),
    ("lremovexattr", 198),
    ("fremovexattr", 199),
    ("tkill", 200),
    ("time", 201),
    ("futex", 202),
    ("sched_setaffinity", 203),
    ("sched_getaffinity", 204),
    ("set_thread_area", 205),
    ("io_setup", 206),
    ("io_destroy", 207),
    ("io_getevents", 208),
    ("io_submit", 209),
    ("io_cancel", 210),
    ("get_thread_area", 211),
    ("epoll_create", 213),
    ("epoll_ctl_old", 214),
    ("epoll_wait_old", 215),
    ("remap_file_pages", 216),
    ("getdents64", 217),
    ("set_tid_address", 218),
    ("restart_syscall", 219),
    ("semtimedop", 220),
    ("fadvise64", 221),
    ("timer_create", 222),
    ("timer_settime", 223),
    ("timer_gettime", 224),
    ("timer_getoverrun", 225),
    ("timer_delete", 226),
    ("clock_gettime", 228),
    ("clock_getres", 229),
    ("clock_nanosleep", 230),
    ("exit_group", 231),
    ("epoll_wait", 232),
    ("epoll_ctl", 233),
    ("tgkill", 234),
    ("utimes", 235),
    ("mq_open", 240),
    ("mq_unlink", 241),
    ("mq_timedsend", 242),
    ("mq_timedreceive", 243),
    ("mq_notify", 244),
    ("mq_getsetattr", 245),
    ("waitid", 247),
    ("ioprio_set", 251),
    ("ioprio_get", 252),
    ("inotify_init", 253),
    ("inotify_add_watch", 254),
    ("inotify_rm_watch", 255),
    ("openat", 257),
    ("mkdirat", 258),
    ("mknodat", 259),
    ("fchownat", 260),
    ("futimesat", 261),
    ("newfstatat", 262),
    ("unlinkat", 263),
    ("renameat", 264),
    ("linkat", 265),
    ("symlinkat", 266),
    ("readlinkat", 267),
    ("fchmodat", 268),
    ("faccessat", 269),
    ("pselect6", 270),
    ("ppoll", 271),
    ("set_robust_list", 273),
    ("get_robust_list", 274),
    ("splice", 275),
    ("tee", 276),
    ("sync_file_range", 277),
    ("vmsplice", 278),
    ("utimensat", 280),
    ("epoll_pwait", 281),
    ("signalfd", 282),
    ("timerfd_create", 283),
    ("eventfd", 284),
    ("fallocate", 285),
    ("timerfd_settime", 286),
    ("timerfd_gettime", 287),
    ("accept4", 288),
    ("signalfd4", 289),
    ("eventfd2", 290),
    ("epoll_create1", 291),
    ("dup3", 292),
    ("pipe2", 293),
    ("inotify_init1", 294),
    ("preadv", 295),
    ("pwritev", 296),
    ("rt_tgsigqueueinfo", 297),
    ("recvmmsg", 299),
    ("fanotify_mark", 301),
    ("prlimit64", 302),
    ("name_to_handle_at", 303),
    ("clock_adjtime", 305),
    ("syncfs", 306),
    ("sendmmsg", 307),
    ("getcpu", 309),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("sched_setattr", 314),
    ("sched_getattr", 315),
    ("renameat2", 316),
    ("seccomp", 317),
    ("getrandom", 318),
    ("memfd_create", 319),
    ("execveat", 322),
    ("membarrier", 324),
    ("mlock2", 325),
    ("copy_file_range", 326),
    ("preadv2", 327),
    ("pwritev2", 328),
    ("pkey_mprotect", 329),
    ("pkey_alloc", 330),
    ("pkey_free", 331),
    ("statx", 332),
    ("io_pgetevents", 333),
    ("rseq", 334),
    ("uretprobe", 335),
    ("pidfd_send_signal", 424),
    ("pidfd_open", 434),
    ("close_range", 436),
    ("openat2", 437),
    ("faccessat2", 439),
    ("epoll_pwait2", 441),
    ("landlock_create_ruleset", 444),
    ("landlock_add_rule", 445),
    ("landlock_restrict_self", 446),
    ("memfd_secret", 447),
    ("process_mrelease", 448),
    ("futex_waitv", 449),
    ("cachestat", 451),
    ("fchmodat2", 452),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("statmount", 457),
    ("listmount", 458),
    ("mseal", 462),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
];

/// Syscalls Docker allows only with a capability: (capability name, syscalls).
const CAP_GATED: &[(&str, &[(&str, i64)])] = &[
    (
        "SYS_ADMIN",
        &[
            ("bpf", 321),
            ("clone3", 435),
            ("fanotify_init", 300),
            ("fsconfig", 431),
            ("fsmount", 432),
            ("fsopen", 430),
            ("fspick", 433),
            ("lookup_dcookie", 212),
            ("lsm_get_self_attr", 459),
            ("lsm_list_modules", 461),
            ("lsm_set_self_attr", 460),
            ("mount", 165),
            ("mount_setattr", 442),
            ("move_mount", 429),
            ("open_tree", 428),
            ("perf_event_open", 298),
            ("quotactl", 179),
            ("quotactl_fd", 443),
            ("setdomainname", 171),
            ("sethostname", 170),
            ("setns", 308),
            ("syslog", 103),
            ("umount2", 166),
            ("unshare", 272),
        ],
    ),
    ("SYS_BOOT", &[("reboot", 169)]),
    ("SYS_CHROOT", &[("chroot", 161)]),
    (
        "SYS_MODULE",
        &[
            ("delete_module", 176),
            ("init_module", 175),
            ("finit_module", 313),
        ],
    ),
    ("SYS_PACCT", &[("acct", 163)]),
    (
        "SYS_PTRACE",
        &[
            ("kcmp", 312),
            ("pidfd_getfd", 438),
            ("process_madvise", 440),
        ],
    ),
    ("SYS_RAWIO", &[("iopl", 172), ("ioperm", 173)]),
    ("SYS_TIME", &[("settimeofday", 164), ("clock_settime", 227)]),
    ("SYS_TTY_CONFIG", &[("vhangup", 153)]),
    (
        "SYS_NICE",
        &[
            ("get_mempolicy", 239),
            ("mbind", 237),
            ("set_mempolicy", 238),
            ("set_mempolicy_home_node", 450),
        ],
    ),
    ("SYSLOG", &[("syslog", 103)]),
    ("BPF", &[("bpf", 321)]),
    ("PERFMON", &[("perf_event_open", 298)]),
    ("DAC_READ_SEARCH", &[("open_by_handle_at", 304)]),
];

const SYS_SOCKET: i64 = 41;
const SYS_PERSONALITY: i64 = 135;
const SYS_CLONE: i64 = 56;
const SYS_CLONE3: i64 = 435;
/// Namespace flags `clone` may not carry without CAP_SYS_ADMIN (Docker's mask).
const CLONE_NS_MASK: u64 = 0x7E02_0000;
/// Address families `socket` accepts besides `< 12` (Docker's list; AF_VSOCK=40 is absent).
const SOCKET_FAMILIES: &[u64] = &[
    13, 14, 15, 16, 17, 18, 21, 22, 24, 26, 27, 28, 29, 30, 31, 32, 33, 35, 36, 39, 41, 42, 43, 44,
    45,
];
const PERSONALITIES: &[u64] = &[0, 8, 0x20000, 0x20008, 0xffff_ffff];

/// Compiled filters, loaded in order (each is raw `sock_filter` bytes).
pub type Filters = Arc<Vec<Vec<u8>>>;

fn cond(
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(index, len, op, value).map_err(|e| SeccompError::Build(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conds).map_err(|e| SeccompError::Build(e.to_string()))
}

fn to_bytes(prog: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for f in prog {
        out.extend_from_slice(&f.code.to_le_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_le_bytes());
    }
    out
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<Vec<u8>, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    let prog: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;
    Ok(to_bytes(&prog))
}

/// Syscall numbers the profile allows unconditionally for `caps` (for tests and docs).
pub fn allowed_syscalls(caps: CapSet) -> Vec<i64> {
    let mut nrs: Vec<i64> = ALLOW.iter().map(|(_, n)| *n).collect();
    for (cap, calls) in CAP_GATED {
        if caps::parse(cap).is_ok_and(|c| caps.contains(c)) {
            nrs.extend(calls.iter().map(|(_, n)| *n));
        }
    }
    if caps.contains(caps::SYS_ADMIN) {
        nrs.push(SYS_CLONE);
    }
    nrs.sort_unstable();
    nrs.dedup();
    nrs
}

/// Builds Docker's default profile for a container holding `caps`.
pub fn docker_default(caps: CapSet) -> Result<Vec<Vec<u8>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in allowed_syscalls(caps) {
        rules.insert(nr, Vec::new());
    }
    let dword = || SeccompCmpArgLen::Dword;
    let mut socket = vec![rule(vec![cond(0, dword(), SeccompCmpOp::Lt, 12)?])?];
    for fam in SOCKET_FAMILIES {
        socket.push(rule(vec![cond(0, dword(), SeccompCmpOp::Eq, *fam)?])?);
    }
    rules.insert(SYS_SOCKET, socket);
    let mut personality = Vec::new();
    for p in PERSONALITIES {
        personality.push(rule(vec![cond(0, dword(), SeccompCmpOp::Eq, *p)?])?);
    }
    rules.insert(SYS_PERSONALITY, personality);
    let mut filters = Vec::new();
    if !caps.contains(caps::SYS_ADMIN) {
        rules.insert(
            SYS_CLONE,
            vec![rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(CLONE_NS_MASK),
                0,
            )?])?],
        );
    }
    filters.push(compile(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
    )?);
    if !caps.contains(caps::SYS_ADMIN) {
        let mut enosys = BTreeMap::new();
        enosys.insert(SYS_CLONE3, Vec::new());
        filters.push(compile(
            enosys,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?);
    }
    Ok(filters)
}

/// Compiles each distinct profile once and hands out the cached bytes.
#[derive(Default)]
pub struct SeccompCache {
    compiled: Mutex<HashMap<u64, Filters>>,
}

impl SeccompCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The default profile for `caps`, compiled on first use.
    pub fn docker_default(&self, caps: CapSet) -> Result<Filters, SeccompError> {
        let mut map = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = map.get(&caps.0) {
            return Ok(Arc::clone(f));
        }
        let f = Arc::new(docker_default(caps)?);
        map.insert(caps.0, Arc::clone(&f));
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_libc() {
        let by_name: BTreeMap<&str, i64> = ALLOW.iter().copied().collect();
        assert_eq!(by_name["read"], libc::SYS_read);
        assert_eq!(by_name["execve"], libc::SYS_execve);
        assert_eq!(by_name["newfstatat"], libc::SYS_newfstatat);
        assert_eq!(by_name["fchmodat2"], libc::SYS_fchmodat2);
        assert_eq!(SYS_SOCKET, libc::SYS_socket);
        assert_eq!(SYS_PERSONALITY, libc::SYS_personality);
        assert_eq!(SYS_CLONE, libc::SYS_clone);
        assert_eq!(SYS_CLONE3, libc::SYS_clone3);
    }

    #[test]
    fn default_caps_deny_namespace_and_mount_calls() {
        let allowed = allowed_syscalls(CapSet::docker_default());
        for denied in [
            libc::SYS_unshare,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_setns,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_bpf,
            libc::SYS_reboot,
            libc::SYS_init_module,
            libc::SYS_clone,
        ] {
            assert!(
                !allowed.contains(&denied),
                "{denied} must not be unconditional"
            );
        }
        // chroot comes with CAP_SYS_CHROOT, which Docker grants by default
        assert!(allowed.contains(&libc::SYS_chroot));
        let admin = CapSet(CapSet::docker_default().0 | 1 << caps::SYS_ADMIN);
        let allowed = allowed_syscalls(admin);
        assert!(allowed.contains(&libc::SYS_mount) && allowed.contains(&libc::SYS_unshare));
    }

    #[test]
    fn compiles_and_caches() {
        let cache = SeccompCache::new();
        let a = cache.docker_default(CapSet::docker_default()).unwrap();
        let b = cache.docker_default(CapSet::docker_default()).unwrap();
        assert!(
            Arc::ptr_eq(&a, &b),
            "second call must reuse the compiled bytes"
        );
        assert_eq!(a.len(), 2, "main filter + clone3 ENOSYS filter");
        assert!(a[0].len().is_multiple_of(8) && a[0].len() / 8 > 300);
        let admin = CapSet(CapSet::docker_default().0 | 1 << caps::SYS_ADMIN);
        assert_eq!(cache.docker_default(admin).unwrap().len(), 1);
    }
}
