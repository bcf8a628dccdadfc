//! Turns a container request (`ContainerConfig`) into a plain-data `ContainerPlan`.
//!
//! `ContainerPlan::build` is a pure function: no I/O, no clock, no kernel. Everything the
//! init helper does is written down here first (paths, mounts, devices, masks, credentials,
//! limits), so the policy is unit-tested and the helper only executes the plan.
//!
//! Defaults follow Docker (`moby/oci/defaults.go`, `daemon/oci_linux.go`): the 14 default
//! capabilities, the masked and read-only path lists, `/dev` as a 64 MiB tmpfs with the six
//! standard nodes, `/dev/shm` 64 MiB, `/sys` read-only, a fresh network namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::caps::{CapSet, CapsError};

/// Default `PATH` when neither the image nor the request sets one (Docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Default size of `/dev/shm` (Docker `--shm-size` default).
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;
/// Default cgroup parent under every hierarchy.
pub const DEFAULT_CGROUP_PARENT: &str = "berth";
/// CFS period used for `--cpus`.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Default log file size before rotation.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default number of log files kept (the live one included).
pub const DEFAULT_LOG_MAX_FILES: u32 = 3;

/// Docker's masked paths: files get `/dev/null` bound over them, directories an empty
/// read-only tmpfs.
pub const DOCKER_MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths (bound onto themselves read-only).
pub const DOCKER_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Errors of plan building: the request is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Container id is empty or has characters that are unsafe in paths and cgroup names.
    #[error("invalid container id {0:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    /// Neither entrypoint nor cmd gives a program to run.
    #[error("no command specified")]
    NoCommand,
    /// The image has no layers.
    #[error("rootfs has no lower layers")]
    NoLayers,
    /// A capability name is unknown.
    #[error(transparent)]
    Caps(#[from] CapsError),
    /// `user` could not be resolved.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// The group part of `user` could not be resolved.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// An environment entry without `=` or with an empty key.
    #[error("invalid environment variable {0:?}")]
    InvalidEnv(String),
    /// A path that must be absolute is not.
    #[error("{what} must be an absolute path: {path:?}")]
    NotAbsolute {
        /// Which field.
        what: &'static str,
        /// The offending value.
        path: String,
    },
    /// A mount destination is under `/proc` (only a fresh procfs may live there).
    #[error("mount destination {0:?} is not allowed: nothing may be mounted over /proc")]
    ProcMount(String),
    /// A resource value is out of range.
    #[error("invalid resource limit: {0}")]
    Resource(String),
    /// Unknown signal name.
    #[error("invalid signal {0:?}")]
    Signal(String),
}

/// How the container's network namespace is obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NetworkMode {
    /// A fresh, empty network namespace (only `lo`, down until the helper raises it).
    #[default]
    New,
    /// Join an existing namespace through its bind-mounted nsfs file (prepared by networking).
    Join(PathBuf),
    /// Share the host's network namespace.
    Host,
}

/// One bind mount or tmpfs requested by the user (volumes, secrets, configs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserMount {
    /// Bind `source` (host path) to `destination` (container path).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Absolute path inside the container.
        destination: String,
        /// Mount read-only.
        readonly: bool,
    },
    /// A tmpfs at `destination`.
    Tmpfs {
        /// Absolute path inside the container.
        destination: String,
        /// Size limit in bytes (0: kernel default).
        size: u64,
        /// Mode of the root directory.
        mode: u32,
    },
}

/// Resource limits as the user states them (Docker flags).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// `--memory` in bytes.
    pub memory: Option<u64>,
    /// `--memory-swap`: memory + swap in bytes, `-1` unlimited; defaults to 2 × memory.
    pub memory_swap: Option<i64>,
    /// `--cpus` (e.g. 1.5).
    pub cpus: Option<f64>,
    /// `--cpu-shares` (2..=262144, relative weight).
    pub cpu_shares: Option<u64>,
    /// `--cpuset-cpus`.
    pub cpuset_cpus: Option<String>,
    /// `--pids-limit` (> 0).
    pub pids_limit: Option<i64>,
    /// `--blkio-weight` (10..=1000).
    pub blkio_weight: Option<u16>,
}

/// A resource limit (`setrlimit`) by name, e.g. `nofile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Resource number (`libc::RLIMIT_*`).
    pub resource: u32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// What the image says about how to run it (OCI image config `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `Env` (`KEY=VALUE`).
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
}

/// A request to run one container: the image's defaults plus run-time overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Image layer directories, base layer first (the order images list them).
    pub layers: Vec<PathBuf>,
    /// Image configuration.
    pub image: ImageDefaults,
    /// `--entrypoint` (replaces the image's and resets its cmd).
    pub entrypoint: Option<Vec<String>>,
    /// Command arguments (replace the image's cmd when given).
    pub cmd: Option<Vec<String>>,
    /// `-e KEY=VALUE` (override image env by key).
    pub env: Vec<String>,
    /// `-w`.
    pub working_dir: Option<String>,
    /// `-u` (`uid`, `uid:gid`, `name`, `name:group`).
    pub user: Option<String>,
    /// `--hostname` (default: first 12 characters of the id).
    pub hostname: Option<String>,
    /// Network namespace.
    pub network: NetworkMode,
    /// Volumes and tmpfs mounts.
    pub mounts: Vec<UserMount>,
    /// `--cap-add`.
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--security-opt no-new-privileges`.
    pub no_new_privileges: bool,
    /// `--read-only`.
    pub read_only: bool,
    /// `--security-opt seccomp=unconfined` sets this to true.
    pub seccomp_unconfined: bool,
    /// `--init`: run a tiny init as PID 1 that forwards signals and reaps zombies.
    pub init: bool,
    /// `--ulimit`.
    pub rlimits: Vec<Rlimit>,
    /// Resource limits.
    pub resources: Resources,
    /// `--shm-size` in bytes (default 64 MiB).
    pub shm_size: Option<u64>,
    /// `--stop-signal` (overrides the image's).
    pub stop_signal: Option<String>,
    /// Log rotation: maximum size of one file (default 10 MiB).
    pub log_max_size: Option<u64>,
    /// Log rotation: number of files kept (default 3).
    pub log_max_files: Option<u32>,
}

/// Facts from outside the request that the plan needs; the caller reads them.
#[derive(Debug, Clone, Default)]
pub struct PlanContext {
    /// The container's state directory (upper/work/rootfs/log live here).
    pub state_dir: PathBuf,
    /// Cgroup parent (relative to each hierarchy root), default `berth`.
    pub cgroup_parent: String,
    /// Contents of the image's `/etc/passwd`, if it has one.
    pub etc_passwd: Option<String>,
    /// Contents of the image's `/etc/group`, if it has one.
    pub etc_group: Option<String>,
}

/// How the root filesystem is assembled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsMode {
    /// overlayfs: read-only `lowers`, writes go to `upper` (images).
    #[default]
    Overlay,
    /// `lowers[0]` is bind-mounted as the root and written in place (OCI bundles).
    Bind,
}

/// Where the container's stdout/stderr go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdioMode {
    /// Through pipes into the JSON log file (daemon use).
    #[default]
    Log,
    /// The helper's own stdout/stderr, passed straight through (OCI CLI `run`).
    Inherit,
}

/// The root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsPlan {
    /// Overlay or bind.
    #[serde(default)]
    pub mode: RootfsMode,
    /// Lower directories, **top-most first** (overlayfs order).
    pub lowers: Vec<PathBuf>,
    /// Writable upper directory.
    pub upper: PathBuf,
    /// Overlay work directory (same filesystem as `upper`).
    pub work: PathBuf,
    /// Mount point (mounted only inside the container's mount namespace).
    pub target: PathBuf,
    /// Remount the root read-only after setup.
    pub read_only: bool,
}

/// Kind of a mount made inside the container before `pivot_root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A fresh procfs.
    Proc,
    /// sysfs.
    Sysfs,
    /// tmpfs.
    Tmpfs,
    /// devpts (new instance).
    Devpts,
    /// POSIX message queue filesystem.
    Mqueue,
    /// Bind mount of a host path.
    Bind {
        /// Host path.
        source: PathBuf,
    },
}

/// One mount in the container, applied in list order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// What to mount.
    pub kind: MountKind,
    /// Absolute destination inside the container.
    pub destination: String,
    /// `MS_*` flags (`MS_RDONLY` for binds is applied by a remount).
    pub flags: u64,
    /// Filesystem data string (`mode=755,size=65536k`).
    pub data: String,
}

/// A device node created in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    /// Path inside the container.
    pub path: String,
    /// Character-device major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
}

/// Process credentials inside the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPlan {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Capability sets of the container process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsPlan {
    /// Bounding set.
    pub bounding: CapSet,
    /// Effective set.
    pub effective: CapSet,
    /// Permitted set.
    pub permitted: CapSet,
    /// Inheritable set (always empty, CVE-2022-24769).
    pub inheritable: CapSet,
    /// Ambient set (empty, as Docker).
    pub ambient: CapSet,
}

/// The process the container runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// argv (argv[0] resolved through `PATH` inside the container at start).
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// Credentials.
    pub user: UserPlan,
    /// Capabilities.
    pub caps: CapsPlan,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// Load the default seccomp profile.
    pub seccomp: bool,
    /// Run the built-in init as PID 1.
    pub init: bool,
    /// `setrlimit`s.
    pub rlimits: Vec<Rlimit>,
}

/// Which namespaces the container gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacesPlan {
    /// New PID namespace (always, container PID 1).
    pub pid: bool,
    /// New mount namespace.
    pub mount: bool,
    /// New UTS namespace.
    pub uts: bool,
    /// New IPC namespace.
    pub ipc: bool,
    /// Network namespace.
    pub net: NetworkMode,
}

/// Cgroup limits, already translated from Docker flags to cgroup v1 units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// `memory.limit_in_bytes` / `memory.max`.
    pub memory: Option<u64>,
    /// mem+swap (`memory.memsw.limit_in_bytes`), `None` with `memory_swap_unlimited` false
    /// means "leave the kernel default".
    pub memory_swap: Option<u64>,
    /// Explicit unlimited swap (`--memory-swap -1`).
    pub memory_swap_unlimited: bool,
    /// `cpu.cfs_quota_us` (with `cpu_period`).
    pub cpu_quota: Option<u64>,
    /// `cpu.cfs_period_us`.
    pub cpu_period: Option<u64>,
    /// `cpu.shares`.
    pub cpu_shares: Option<u64>,
    /// `cpuset.cpus`.
    pub cpuset_cpus: Option<String>,
    /// `pids.max`.
    pub pids_max: Option<i64>,
    /// `blkio.weight` (v1 scale 10..=1000).
    pub blkio_weight: Option<u16>,
}

/// The container's cgroup: where and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    /// Path relative to each hierarchy root, e.g. `berth/<id>`.
    pub path: String,
    /// Limits.
    pub limits: CgroupLimits,
}

/// Log file and rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPlan {
    /// JSON-lines log file.
    pub path: PathBuf,
    /// Rotate when the file would exceed this many bytes.
    pub max_size: u64,
    /// Files kept including the live one (`path`, `path.1`, …).
    pub max_files: u32,
}

/// Everything the init helper needs to create the container; plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// Container id.
    pub id: String,
    /// Root filesystem.
    pub rootfs: RootfsPlan,
    /// Process.
    pub process: ProcessPlan,
    /// Hostname (set in the new UTS namespace).
    pub hostname: String,
    /// Namespaces.
    pub namespaces: NamespacesPlan,
    /// Mounts in order, before `pivot_root`.
    pub mounts: Vec<MountPlan>,
    /// Device nodes in `/dev`.
    pub devices: Vec<DevicePlan>,
    /// `(link path, target)` symlinks in `/dev`.
    pub symlinks: Vec<(String, String)>,
    /// Paths hidden from the container.
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    pub readonly_paths: Vec<String>,
    /// Cgroup.
    pub cgroup: CgroupPlan,
    /// Logs.
    pub log: LogPlan,
    /// Where stdout/stderr go.
    #[serde(default)]
    pub stdio: StdioMode,
    /// Free-form labels kept with the container (e.g. the OCI bundle path).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Signal number `stop` sends first.
    pub stop_signal: i32,
}

const MS_RDONLY: u64 = libc::MS_RDONLY;
const MS_NOSUID: u64 = libc::MS_NOSUID;
const MS_NODEV: u64 = libc::MS_NODEV;
const MS_NOEXEC: u64 = libc::MS_NOEXEC;
const MS_STRICTATIME: u64 = libc::MS_STRICTATIME;

/// Checks a container id: 1–128 of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn validate_id(id: &str) -> Result<(), PlanError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(PlanError::InvalidId(id.to_string()))
    }
}

/// Parses a signal given as a name (`SIGTERM`, `TERM`) or a number.
pub fn parse_signal(s: &str) -> Result<i32, PlanError> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(PlanError::Signal(s.to_string()));
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let n = match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return Err(PlanError::Signal(s.to_string())),
    };
    Ok(n)
}

/// Merges `overrides` into `base` by key (later wins, order of first appearance kept).
fn merge_env(base: &[String], overrides: &[String]) -> Result<Vec<String>, PlanError> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for entry in base.iter().chain(overrides) {
        let (k, _) = entry
            .split_once('=')
            .ok_or_else(|| PlanError::InvalidEnv(entry.clone()))?;
        if k.is_empty() {
            return Err(PlanError::InvalidEnv(entry.clone()));
        }
        if !map.contains_key(k) {
            order.push(k.to_string());
        }
        map.insert(k.to_string(), entry.clone());
    }
    Ok(order.into_iter().filter_map(|k| map.remove(&k)).collect())
}

fn has_env(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
}

/// A parsed passwd line.
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `(name, gid, members)` of each group line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves a Docker `user` string against the image's passwd/group files.
/// Returns the credentials and the home directory (when the passwd file names one).
pub fn resolve_user(
    spec: Option<&str>,
    etc_passwd: Option<&str>,
    etc_group: Option<&str>,
) -> Result<(UserPlan, Option<String>), PlanError> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = etc_passwd.unwrap_or("");
    let group = etc_group.unwrap_or("");
    let by_name = passwd_entries(passwd).find(|e| e.name == user_part);
    let (uid, mut gid, name, home) = match (user_part.parse::<u32>(), by_name) {
        (Ok(uid), _) => {
            let e = passwd_entries(passwd).find(|e| e.uid == uid);
            (
                uid,
                e.as_ref().map(|e| e.gid).unwrap_or(0),
                e.as_ref().map(|e| e.name.to_string()),
                e.map(|e| e.home.to_string()),
            )
        }
        (Err(_), Some(e)) => (
            e.uid,
            e.gid,
            Some(e.name.to_string()),
            Some(e.home.to_string()),
        ),
        (Err(_), None) => return Err(PlanError::UnknownUser(user_part.to_string())),
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| PlanError::UnknownGroup(g.to_string()))?,
        };
    }
    let mut groups: Vec<u32> = Vec::new();
    if let Some(name) = &name {
        for (_, id, members) in group_entries(group) {
            if members.contains(&name.as_str()) && id != gid && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok((UserPlan { uid, gid, groups }, home))
}

fn check_absolute(what: &'static str, path: &str) -> Result<(), PlanError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(PlanError::NotAbsolute {
            what,
            path: path.to_string(),
        })
    }
}

fn under_proc(dest: &str) -> bool {
    let trimmed = dest.trim_end_matches('/');
    trimmed == "/proc" || trimmed.starts_with("/proc/")
}

/// Translates Docker resource flags into cgroup limits.
pub fn cgroup_limits(r: &Resources) -> Result<CgroupLimits, PlanError> {
    let mut l = CgroupLimits {
        memory: r.memory,
        cpu_shares: r.cpu_shares,
        cpuset_cpus: r.cpuset_cpus.clone(),
        pids_max: r.pids_limit,
        blkio_weight: r.blkio_weight,
        ..CgroupLimits::default()
    };
    if let Some(m) = r.memory
        && m < 6 * 1024 * 1024
    {
        return Err(PlanError::Resource(
            "minimum memory limit allowed is 6MB".into(),
        ));
    }
    match (r.memory, r.memory_swap) {
        (_, Some(-1)) => l.memory_swap_unlimited = true,
        (Some(m), Some(s)) if s >= 0 => {
            let s = s as u64;
            if s < m {
                return Err(PlanError::Resource(
                    "minimum memoryswap limit should be larger than memory limit".into(),
                ));
            }
            l.memory_swap = Some(s);
        }
        (None, Some(s)) if s >= 0 => {
            return Err(PlanError::Resource(
                "you should always set the memory limit when using memoryswap limit".into(),
            ));
        }
        (_, Some(_)) => return Err(PlanError::Resource("invalid memory-swap".into())),
        (Some(m), None) => l.memory_swap = Some(m.saturating_mul(2)),
        (None, None) => {}
    }
    if let Some(cpus) = r.cpus {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(PlanError::Resource(format!("invalid --cpus {cpus}")));
        }
        let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
        l.cpu_period = Some(CPU_PERIOD_US);
        l.cpu_quota = Some(quota.max(1000));
    }
    if let Some(s) = r.cpu_shares
        && !(2..=262_144).contains(&s)
    {
        return Err(PlanError::Resource(format!(
            "cpu-shares {s} out of 2..262144"
        )));
    }
    if let Some(p) = r.pids_limit
        && p <= 0
    {
        return Err(PlanError::Resource(format!("pids-limit {p} must be > 0")));
    }
    if let Some(w) = r.blkio_weight
        && !(10..=1000).contains(&w)
    {
        return Err(PlanError::Resource(format!(
            "blkio-weight {w} out of 10..1000"
        )));
    }
    Ok(l)
}

/// Docker's default mounts, in order, plus the user's.
fn default_mounts(shm_size: u64) -> Vec<MountPlan> {
    vec![
        MountPlan {
            kind: MountKind::Proc,
            destination: "/proc".into(),
            flags: MS_NOSUID | MS_NOEXEC | MS_NODEV,
            data: String::new(),
        },
        MountPlan {
            kind: MountKind::Tmpfs,
            destination: "/dev".into(),
            flags: MS_NOSUID | MS_STRICTATIME,
            data: "mode=755,size=65536k".into(),
        },
        MountPlan {
            kind: MountKind::Devpts,
            destination: "/dev/pts".into(),
            flags: MS_NOSUID | MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620,gid=5".into(),
        },
        MountPlan {
            kind: MountKind::Sysfs,
            destination: "/sys".into(),
            flags: MS_NOSUID | MS_NOEXEC | MS_NODEV | MS_RDONLY,
            data: String::new(),
        },
        MountPlan {
            kind: MountKind::Mqueue,
            destination: "/dev/mqueue".into(),
            flags: MS_NOSUID | MS_NOEXEC | MS_NODEV,
            data: String::new(),
        },
        MountPlan {
            kind: MountKind::Tmpfs,
            destination: "/dev/shm".into(),
            flags: MS_NOSUID | MS_NOEXEC | MS_NODEV,
            data: format!("mode=1777,size={shm_size}"),
        },
    ]
}

/// The six standard device nodes (mode 0666).
fn default_devices() -> Vec<DevicePlan> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| DevicePlan {
        path: p.to_string(),
        major,
        minor,
        mode: 0o666,
    })
    .collect()
}

fn default_symlinks() -> Vec<(String, String)> {
    [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

impl ContainerPlan {
    /// Builds the plan for container `id` from `cfg`. Pure: reads nothing but its arguments.
    pub fn build(
        id: &str,
        cfg: &ContainerConfig,
        ctx: &PlanContext,
    ) -> Result<ContainerPlan, PlanError> {
        validate_id(id)?;
        if cfg.layers.is_empty() {
            return Err(PlanError::NoLayers);
        }

        // argv: Docker semantics — an explicit entrypoint resets the image's cmd.
        let (entrypoint, cmd) = match &cfg.entrypoint {
            Some(ep) => (ep.clone(), cfg.cmd.clone().unwrap_or_default()),
            None => (
                cfg.image.entrypoint.clone(),
                cfg.cmd.clone().unwrap_or_else(|| cfg.image.cmd.clone()),
            ),
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if args.is_empty() || args[0].is_empty() {
            return Err(PlanError::NoCommand);
        }

        let hostname = cfg
            .hostname
            .clone()
            .unwrap_or_else(|| id.chars().take(12).collect());

        let user_spec = cfg.user.as_deref().or(cfg.image.user.as_deref());
        let (user, home) = resolve_user(
            user_spec,
            ctx.etc_passwd.as_deref(),
            ctx.etc_group.as_deref(),
        )?;

        let mut env = merge_env(&cfg.image.env, &cfg.env)?;
        if !has_env(&env, "PATH") {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        if !has_env(&env, "HOSTNAME") {
            env.insert(1.min(env.len()), format!("HOSTNAME={hostname}"));
        }
        if !has_env(&env, "HOME") {
            let home = home
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| if user.uid == 0 { "/root" } else { "/" }.to_string());
            env.push(format!("HOME={home}"));
        }

        let cwd = cfg
            .working_dir
            .clone()
            .or_else(|| cfg.image.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string());
        check_absolute("working directory", &cwd)?;

        let set = CapSet::docker_default().with_changes(&cfg.cap_add, &cfg.cap_drop)?;
        // Docker: a non-root user keeps only the bounding set; effective/permitted start empty.
        let (effective, permitted) = if user.uid == 0 {
            (set, set)
        } else {
            (CapSet::EMPTY, CapSet::EMPTY)
        };
        let caps = CapsPlan {
            bounding: set,
            effective,
            permitted,
            inheritable: CapSet::EMPTY,
            ambient: CapSet::EMPTY,
        };

        let mut mounts = default_mounts(cfg.shm_size.unwrap_or(DEFAULT_SHM_SIZE));
        for m in &cfg.mounts {
            let dest = match m {
                UserMount::Bind { destination, .. } | UserMount::Tmpfs { destination, .. } => {
                    destination
                }
            };
            check_absolute("mount destination", dest)?;
            if under_proc(dest) {
                return Err(PlanError::ProcMount(dest.clone()));
            }
            mounts.push(match m {
                UserMount::Bind {
                    source,
                    destination,
                    readonly,
                } => {
                    if !source.is_absolute() {
                        return Err(PlanError::NotAbsolute {
                            what: "bind source",
                            path: source.display().to_string(),
                        });
                    }
                    MountPlan {
                        kind: MountKind::Bind {
                            source: source.clone(),
                        },
                        destination: destination.clone(),
                        flags: libc::MS_BIND | libc::MS_REC | if *readonly { MS_RDONLY } else { 0 },
                        data: String::new(),
                    }
                }
                UserMount::Tmpfs {
                    destination,
                    size,
                    mode,
                } => {
                    let mut data = format!("mode={mode:o}");
                    if *size > 0 {
                        data.push_str(&format!(",size={size}"));
                    }
                    MountPlan {
                        kind: MountKind::Tmpfs,
                        destination: destination.clone(),
                        flags: MS_NOSUID | MS_NODEV | MS_NOEXEC,
                        data,
                    }
                }
            });
        }

        let stop_signal = match cfg
            .stop_signal
            .as_deref()
            .or(cfg.image.stop_signal.as_deref())
        {
            Some(s) => parse_signal(s)?,
            None => libc::SIGTERM,
        };

        let cgroup_parent = if ctx.cgroup_parent.is_empty() {
            DEFAULT_CGROUP_PARENT
        } else {
            ctx.cgroup_parent.trim_matches('/')
        };

        Ok(ContainerPlan {
            id: id.to_string(),
            rootfs: RootfsPlan {
                mode: RootfsMode::Overlay,
                lowers: cfg.layers.iter().rev().cloned().collect(),
                upper: ctx.state_dir.join("upper"),
                work: ctx.state_dir.join("work"),
                target: ctx.state_dir.join("rootfs"),
                read_only: cfg.read_only,
            },
            process: ProcessPlan {
                args,
                env,
                cwd,
                user,
                caps,
                no_new_privs: cfg.no_new_privileges,
                seccomp: !cfg.seccomp_unconfined,
                init: cfg.init,
                rlimits: cfg.rlimits.clone(),
            },
            hostname,
            namespaces: NamespacesPlan {
                pid: true,
                mount: true,
                uts: true,
                ipc: true,
                net: cfg.network.clone(),
            },
            mounts,
            devices: default_devices(),
            symlinks: default_symlinks(),
            masked_paths: DOCKER_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: DOCKER_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            cgroup: CgroupPlan {
                path: format!("{cgroup_parent}/{id}"),
                limits: cgroup_limits(&cfg.resources)?,
            },
            log: LogPlan {
                path: log_path(&ctx.state_dir, id),
                max_size: cfg.log_max_size.unwrap_or(DEFAULT_LOG_MAX_SIZE),
                max_files: cfg.log_max_files.unwrap_or(DEFAULT_LOG_MAX_FILES).max(1),
            },
            stdio: StdioMode::Log,
            annotations: BTreeMap::new(),
            stop_signal,
        })
    }
}

/// Where a container's JSON log lives inside its state directory.
pub fn log_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(format!("{id}-json.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn base() -> ContainerConfig {
        ContainerConfig {
            layers: vec!["/l/0".into(), "/l/1".into()],
            image: ImageDefaults {
                env: s(&["PATH=/bin", "FOO=image"]),
                entrypoint: vec![],
                cmd: s(&["sh"]),
                ..ImageDefaults::default()
            },
            ..ContainerConfig::default()
        }
    }

    fn ctx() -> PlanContext {
        PlanContext {
            state_dir: "/state/c1".into(),
            cgroup_parent: String::new(),
            etc_passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n".into(),
            ),
            etc_group: Some("root:x:0:\nwww:x:33:\nadm:x:4:www,bob\n".into()),
        }
    }

    #[test]
    fn defaults_are_dockers() {
        let p = ContainerPlan::build("c1", &base(), &ctx()).unwrap();
        assert_eq!(p.process.args, s(&["sh"]));
        assert_eq!(p.process.caps.effective.0, 0xa80425fb);
        assert_eq!(p.process.caps.bounding.0, 0xa80425fb);
        assert_eq!(p.process.caps.inheritable, CapSet::EMPTY);
        assert!(p.process.seccomp);
        assert!(!p.process.no_new_privs);
        assert_eq!(p.masked_paths.len(), 12);
        assert_eq!(p.readonly_paths.len(), 5);
        assert_eq!(p.hostname, "c1");
        assert_eq!(p.namespaces.net, NetworkMode::New);
        assert_eq!(p.cgroup.path, "berth/c1");
        assert_eq!(p.process.cwd, "/");
        // overlay wants the top-most layer first
        assert_eq!(p.rootfs.lowers, vec![PathBuf::from("/l/1"), "/l/0".into()]);
        assert_eq!(p.rootfs.upper, PathBuf::from("/state/c1/upper"));
        assert_eq!(p.log.path, PathBuf::from("/state/c1/c1-json.log"));
        let dests: Vec<&str> = p.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            vec![
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/dev/mqueue",
                "/dev/shm"
            ]
        );
        assert!(p.mounts[3].flags & libc::MS_RDONLY != 0, "sysfs read-only");
        assert_eq!(p.devices.len(), 6);
        assert_eq!(p.stop_signal, libc::SIGTERM);
    }

    #[test]
    fn env_merges_by_key_and_adds_defaults() {
        let mut cfg = base();
        cfg.env = s(&["FOO=user", "BAR=1"]);
        let p = ContainerPlan::build("c1", &cfg, &ctx()).unwrap();
        assert_eq!(
            p.process.env,
            s(&[
                "PATH=/bin",
                "HOSTNAME=c1",
                "FOO=user",
                "BAR=1",
                "HOME=/root"
            ])
        );
        cfg.image.env.clear();
        cfg.env = s(&["BAD"]);
        assert_eq!(
            ContainerPlan::build("c1", &cfg, &ctx()),
            Err(PlanError::InvalidEnv("BAD".into()))
        );
        cfg.env.clear();
        let p = ContainerPlan::build("c1", &cfg, &ctx()).unwrap();
        assert_eq!(p.process.env[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let mut cfg = base();
        cfg.image.entrypoint = s(&["/entry"]);
        cfg.image.cmd = s(&["a", "b"]);
        assert_eq!(
            ContainerPlan::build("c", &cfg, &ctx())
                .unwrap()
                .process
                .args,
            s(&["/entry", "a", "b"])
        );
        cfg.cmd = Some(s(&["x"]));
        assert_eq!(
            ContainerPlan::build("c", &cfg, &ctx())
                .unwrap()
                .process
                .args,
            s(&["/entry", "x"])
        );
        cfg.entrypoint = Some(s(&["/other"]));
        cfg.cmd = None;
        assert_eq!(
            ContainerPlan::build("c", &cfg, &ctx())
                .unwrap()
                .process
                .args,
            s(&["/other"])
        );
        cfg.entrypoint = Some(vec![]);
        assert_eq!(
            ContainerPlan::build("c", &cfg, &ctx()),
            Err(PlanError::NoCommand)
        );
    }

    #[test]
    fn users_resolve_like_docker() {
        let c = ctx();
        let (p, t) = (c.etc_passwd.as_deref(), c.etc_group.as_deref());
        let (u, home) = resolve_user(Some("www"), p, t).unwrap();
        assert_eq!((u.uid, u.gid, u.groups.clone()), (33, 33, vec![4]));
        assert_eq!(home.as_deref(), Some("/var/www"));
        let (u, _) = resolve_user(Some("1000:1000"), p, t).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let (u, _) = resolve_user(Some("www:adm"), p, t).unwrap();
        assert_eq!((u.uid, u.gid), (33, 4));
        assert_eq!(resolve_user(None, p, t).unwrap().0.uid, 0);
        assert!(matches!(
            resolve_user(Some("nobody"), p, t),
            Err(PlanError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve_user(Some("www:nogroup"), p, t),
            Err(PlanError::UnknownGroup(_))
        ));
        // non-root users keep only the bounding set, like Docker
        let mut cfg = base();
        cfg.user = Some("www".into());
        let plan = ContainerPlan::build("c", &cfg, &c).unwrap();
        assert_eq!(plan.process.caps.effective, CapSet::EMPTY);
        assert_eq!(plan.process.caps.bounding.0, 0xa80425fb);
        assert!(plan.process.env.contains(&"HOME=/var/www".to_string()));
    }

    #[test]
    fn caps_and_security_options() {
        let mut cfg = base();
        cfg.cap_add = s(&["NET_ADMIN"]);
        cfg.cap_drop = s(&["MKNOD"]);
        cfg.no_new_privileges = true;
        cfg.read_only = true;
        cfg.seccomp_unconfined = true;
        let p = ContainerPlan::build("c", &cfg, &ctx()).unwrap();
        assert!(p.process.caps.effective.contains(12));
        assert!(!p.process.caps.effective.contains(27));
        assert!(p.process.no_new_privs);
        assert!(p.rootfs.read_only);
        assert!(!p.process.seccomp);
        cfg.cap_add = s(&["WHAT"]);
        assert!(matches!(
            ContainerPlan::build("c", &cfg, &ctx()),
            Err(PlanError::Caps(_))
        ));
    }

    #[test]
    fn resources_translate_to_cgroup_units() {
        let l = cgroup_limits(&Resources {
            memory: Some(64 << 20),
            cpus: Some(1.5),
            cpu_shares: Some(512),
            pids_limit: Some(100),
            blkio_weight: Some(300),
            ..Resources::default()
        })
        .unwrap();
        assert_eq!(l.memory, Some(64 << 20));
        assert_eq!(l.memory_swap, Some(128 << 20), "swap defaults to 2x memory");
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(150_000), Some(100_000)));
        assert_eq!(l.cpu_shares, Some(512));
        assert_eq!(l.pids_max, Some(100));
        assert_eq!(l.blkio_weight, Some(300));
        let unl = cgroup_limits(&Resources {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            ..Resources::default()
        })
        .unwrap();
        assert!(unl.memory_swap_unlimited);
        for bad in [
            Resources {
                memory: Some(1024),
                ..Resources::default()
            },
            Resources {
                memory: Some(64 << 20),
                memory_swap: Some(1 << 20),
                ..Resources::default()
            },
            Resources {
                memory_swap: Some(1 << 30),
                ..Resources::default()
            },
            Resources {
                cpus: Some(0.0),
                ..Resources::default()
            },
            Resources {
                pids_limit: Some(0),
                ..Resources::default()
            },
            Resources {
                blkio_weight: Some(5),
                ..Resources::default()
            },
        ] {
            assert!(cgroup_limits(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mounts_are_validated() {
        let mut cfg = base();
        cfg.mounts = vec![UserMount::Bind {
            source: "/data".into(),
            destination: "/proc/sys/x".into(),
            readonly: false,
        }];
        assert!(matches!(
            ContainerPlan::build("c", &cfg, &ctx()),
            Err(PlanError::ProcMount(_))
        ));
        cfg.mounts = vec![UserMount::Bind {
            source: "rel".into(),
            destination: "/data".into(),
            readonly: true,
        }];
        assert!(ContainerPlan::build("c", &cfg, &ctx()).is_err());
        cfg.mounts = vec![
            UserMount::Bind {
                source: "/data".into(),
                destination: "/data".into(),
                readonly: true,
            },
            UserMount::Tmpfs {
                destination: "/run".into(),
                size: 1 << 20,
                mode: 0o755,
            },
        ];
        let p = ContainerPlan::build("c", &cfg, &ctx()).unwrap();
        let bind = &p.mounts[6];
        assert!(bind.flags & libc::MS_BIND != 0 && bind.flags & libc::MS_RDONLY != 0);
        assert_eq!(p.mounts[7].data, "mode=755,size=1048576");
    }

    #[test]
    fn ids_and_signals() {
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        validate_id("web.1_abc-DEF").unwrap();
        assert_eq!(parse_signal("SIGKILL"), Ok(9));
        assert_eq!(parse_signal("term"), Ok(15));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("SIGNOPE").is_err());
        let mut cfg = base();
        cfg.image.stop_signal = Some("SIGQUIT".into());
        assert_eq!(
            ContainerPlan::build("c", &cfg, &ctx()).unwrap().stop_signal,
            libc::SIGQUIT
        );
        cfg.layers.clear();
        assert_eq!(
            ContainerPlan::build("c", &cfg, &ctx()),
            Err(PlanError::NoLayers)
        );
    }
}
