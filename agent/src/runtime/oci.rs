//! OCI runtime-spec bundles (`config.json`) → `ContainerPlan`, for the `berth-runtime` CLI.
//!
//! Supported: `root` (bind-mounted and written in place, like runc; `readonly`),
//! `process` (args, env, cwd, user uid/gid/additionalGids, capabilities, noNewPrivileges,
//! rlimits), `hostname`, `mounts` (proc, sysfs, tmpfs, devpts, mqueue, bind/rbind with the
//! usual options), `linux.namespaces` (pid/ipc/uts/mount/network, network by path),
//! `linux.maskedPaths`, `linux.readonlyPaths`, `linux.resources` (memory, cpu, pids,
//! blockIO weight), `linux.cgroupsPath`.
//!
//! Differences from runc, by design: a present `linux.seccomp` selects Berth's default
//! profile (the bundle's rule list is not compiled); the device cgroup always gets Docker's
//! allow-list and `/dev` the six standard nodes (`linux.devices` is ignored); `cgroup` mounts
//! and the `cgroup` namespace are skipped; `terminal: true`, user namespaces and hooks are
//! refused.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::caps::{self, CapSet};
use super::plan::{
    self, CapsPlan, CgroupLimits, CgroupPlan, ContainerPlan, DevicePlan, LogPlan, MountKind,
    MountPlan, NamespacesPlan, NetworkMode, PlanError, ProcessPlan, Rlimit, RootfsMode, RootfsPlan,
    StdioMode, UserPlan,
};

/// Errors of reading a bundle.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// config.json could not be read.
    #[error("reading {path:?}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// config.json is not JSON.
    #[error("parsing config.json: {0}")]
    Json(#[from] serde_json::Error),
    /// A field has the wrong shape or value.
    #[error("config.json: {0}")]
    Invalid(String),
    /// A feature this runtime does not implement.
    #[error("config.json: {0} is not supported")]
    Unsupported(String),
    /// Plan validation failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// Annotation holding the bundle directory.
pub const BUNDLE_ANNOTATION: &str = "org.berth.oci.bundle";

fn invalid(msg: impl Into<String>) -> OciError {
    OciError::Invalid(msg.into())
}

fn strings(v: Option<&Value>, what: &str) -> Result<Vec<String>, OciError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("{what} must hold strings")))
            })
            .collect(),
        Some(_) => Err(invalid(format!("{what} must be an array"))),
    }
}

fn cap_set(v: Option<&Value>, what: &str) -> Result<CapSet, OciError> {
    let mut set = CapSet::EMPTY;
    for name in strings(v, what)? {
        let n = caps::parse(&name).map_err(PlanError::from)?;
        set.insert(n);
    }
    Ok(set)
}

fn rlimit_number(name: &str) -> Option<u32> {
    let n = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    };
    Some(n)
}

/// Mount options → (`MS_*` flags, data string, is a bind).
fn mount_options(opts: &[String]) -> (u64, String, bool) {
    let mut flags = 0u64;
    let mut data: Vec<&str> = Vec::new();
    let mut bind = false;
    for o in opts {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared"
            | "unbindable" | "runbindable" | "defaults" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "bind" => {
                flags |= libc::MS_BIND;
                bind = true;
            }
            "rbind" => {
                flags |= libc::MS_BIND | libc::MS_REC;
                bind = true;
            }
            other => data.push(other),
        }
    }
    (flags, data.join(","), bind)
}

/// Reads `<bundle>/config.json` and builds the plan for container `id`.
pub fn plan_from_bundle(
    bundle: &Path,
    id: &str,
    state_dir: &Path,
    cgroup_parent: &str,
) -> Result<ContainerPlan, OciError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| OciError::Read { path, source })?;
    let spec: Value = serde_json::from_str(&text)?;
    plan_from_spec(&spec, bundle, id, state_dir, cgroup_parent)
}

/// Builds the plan from a parsed `config.json` (pure).
pub fn plan_from_spec(
    spec: &Value,
    bundle: &Path,
    id: &str,
    state_dir: &Path,
    cgroup_parent: &str,
) -> Result<ContainerPlan, OciError> {
    plan::validate_id(id)?;
    let process = spec
        .get("process")
        .ok_or_else(|| invalid("process is required"))?;
    if process.get("terminal").and_then(Value::as_bool) == Some(true) {
        return Err(OciError::Unsupported("process.terminal".into()));
    }
    if spec
        .get("hooks")
        .is_some_and(|h| h.as_object().is_some_and(|o| !o.is_empty()))
    {
        return Err(OciError::Unsupported("hooks".into()));
    }
    let args = strings(process.get("args"), "process.args")?;
    if args.is_empty() {
        return Err(PlanError::NoCommand.into());
    }
    let env = strings(process.get("env"), "process.env")?;
    let cwd = process
        .get("cwd")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    let user = process.get("user");
    let num = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0) as u32;
    let user = UserPlan {
        uid: num(user.and_then(|u| u.get("uid"))),
        gid: num(user.and_then(|u| u.get("gid"))),
        groups: user
            .and_then(|u| u.get("additionalGids"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|g| g as u32)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let c = process.get("capabilities");
    let caps = CapsPlan {
        bounding: cap_set(c.and_then(|c| c.get("bounding")), "capabilities.bounding")?,
        effective: cap_set(c.and_then(|c| c.get("effective")), "capabilities.effective")?,
        permitted: cap_set(c.and_then(|c| c.get("permitted")), "capabilities.permitted")?,
        inheritable: cap_set(
            c.and_then(|c| c.get("inheritable")),
            "capabilities.inheritable",
        )?,
        ambient: cap_set(c.and_then(|c| c.get("ambient")), "capabilities.ambient")?,
    };
    let mut rlimits = Vec::new();
    for r in process
        .get("rlimits")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let ty = r.get("type").and_then(Value::as_str).unwrap_or("");
        let resource =
            rlimit_number(ty).ok_or_else(|| invalid(format!("unknown rlimit {ty:?}")))?;
        rlimits.push(Rlimit {
            resource,
            soft: r.get("soft").and_then(Value::as_u64).unwrap_or(0),
            hard: r.get("hard").and_then(Value::as_u64).unwrap_or(0),
        });
    }

    let linux = spec.get("linux");
    let mut ns = NamespacesPlan {
        pid: false,
        mount: false,
        uts: false,
        ipc: false,
        net: NetworkMode::Host,
    };
    for n in linux
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let ty = n.get("type").and_then(Value::as_str).unwrap_or("");
        let path = n
            .get("path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty());
        if path.is_some() && ty != "network" {
            return Err(OciError::Unsupported(format!(
                "joining a {ty} namespace by path"
            )));
        }
        match ty {
            "pid" => ns.pid = true,
            "mount" => ns.mount = true,
            "uts" => ns.uts = true,
            "ipc" => ns.ipc = true,
            "network" => {
                ns.net = match path {
                    Some(p) => NetworkMode::Join(PathBuf::from(p)),
                    None => NetworkMode::New,
                }
            }
            "cgroup" => {}
            "user" => return Err(OciError::Unsupported("the user namespace".into())),
            other => return Err(invalid(format!("unknown namespace {other:?}"))),
        }
    }
    if !ns.mount {
        return Err(OciError::Unsupported(
            "a container without a mount namespace".into(),
        ));
    }

    let mut mounts = Vec::new();
    for m in spec
        .get("mounts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let dest = m
            .get("destination")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("mount without destination"))?
            .to_string();
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let opts = strings(m.get("options"), "mount options")?;
        let (flags, data, bind) = mount_options(&opts);
        let kind = if bind || ty == "bind" {
            let src = m
                .get("source")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("bind mount {dest} without source")))?;
            let src = Path::new(src);
            MountKind::Bind {
                source: if src.is_absolute() {
                    src.to_path_buf()
                } else {
                    bundle.join(src)
                },
            }
        } else {
            match ty {
                "proc" => MountKind::Proc,
                "sysfs" => MountKind::Sysfs,
                "tmpfs" => MountKind::Tmpfs,
                "devpts" => MountKind::Devpts,
                "mqueue" => MountKind::Mqueue,
                "cgroup" | "cgroup2" => continue,
                other => return Err(OciError::Unsupported(format!("mount type {other:?}"))),
            }
        };
        let trimmed = dest.trim_end_matches('/');
        if trimmed.starts_with("/proc/") && kind != MountKind::Proc {
            return Err(PlanError::ProcMount(dest).into());
        }
        mounts.push(MountPlan {
            kind,
            destination: dest,
            flags: flags
                | if bind || ty == "bind" {
                    libc::MS_BIND
                } else {
                    0
                },
            data,
        });
    }

    let root = spec
        .get("root")
        .ok_or_else(|| invalid("root is required"))?;
    let root_path = root
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("root.path is required"))?;
    let root_path = if Path::new(root_path).is_absolute() {
        PathBuf::from(root_path)
    } else {
        bundle.join(root_path)
    };

    let res = linux.and_then(|l| l.get("resources"));
    let get = |a: &str, b: &str| res.and_then(|r| r.get(a)).and_then(|x| x.get(b));
    let limits = CgroupLimits {
        memory: get("memory", "limit")
            .and_then(Value::as_i64)
            .filter(|m| *m > 0)
            .map(|m| m as u64),
        memory_swap: get("memory", "swap")
            .and_then(Value::as_i64)
            .filter(|m| *m > 0)
            .map(|m| m as u64),
        memory_swap_unlimited: get("memory", "swap").and_then(Value::as_i64) == Some(-1),
        cpu_quota: get("cpu", "quota")
            .and_then(Value::as_i64)
            .filter(|q| *q > 0)
            .map(|q| q as u64),
        cpu_period: get("cpu", "period")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0),
        cpu_shares: get("cpu", "shares")
            .and_then(Value::as_u64)
            .filter(|s| *s > 0),
        cpuset_cpus: get("cpu", "cpus")
            .and_then(Value::as_str)
            .map(str::to_string),
        pids_max: get("pids", "limit")
            .and_then(Value::as_i64)
            .filter(|p| *p > 0),
        blkio_weight: get("blockIO", "weight")
            .and_then(Value::as_u64)
            .map(|w| w as u16),
    };
    let cgroup_path = linux
        .and_then(|l| l.get("cgroupsPath"))
        .and_then(Value::as_str)
        .map(|p| p.trim_matches('/').to_string())
        .filter(|p| !p.is_empty() && !p.contains(':') && !p.split('/').any(|c| c == ".."))
        .unwrap_or_else(|| format!("{}/{id}", cgroup_parent.trim_matches('/')));

    let list = |key: &str| -> Result<Vec<String>, OciError> {
        strings(linux.and_then(|l| l.get(key)), key)
    };
    let seccomp = linux
        .and_then(|l| l.get("seccomp"))
        .is_some_and(|s| !s.is_null());

    Ok(ContainerPlan {
        id: id.to_string(),
        rootfs: RootfsPlan {
            mode: RootfsMode::Bind,
            // bound onto itself inside the container's mount namespace, like runc
            target: root_path.clone(),
            lowers: vec![root_path],
            upper: state_dir.join("upper"),
            work: state_dir.join("work"),
            read_only: root
                .get("readonly")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        process: ProcessPlan {
            args,
            env,
            cwd,
            user,
            caps,
            no_new_privs: process
                .get("noNewPrivileges")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            seccomp,
            init: false,
            rlimits,
        },
        hostname: spec
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        namespaces: ns,
        mounts,
        devices: [
            ("/dev/null", 1, 3),
            ("/dev/zero", 1, 5),
            ("/dev/full", 1, 7),
            ("/dev/random", 1, 8),
            ("/dev/urandom", 1, 9),
            ("/dev/tty", 5, 0),
        ]
        .into_iter()
        .map(|(p, major, minor)| DevicePlan {
            path: p.into(),
            major,
            minor,
            mode: 0o666,
        })
        .collect(),
        symlinks: [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
            ("/dev/ptmx", "pts/ptmx"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect(),
        masked_paths: list("maskedPaths")?,
        readonly_paths: list("readonlyPaths")?,
        cgroup: CgroupPlan {
            path: cgroup_path,
            limits,
        },
        log: LogPlan {
            path: plan::log_path(state_dir, id),
            max_size: plan::DEFAULT_LOG_MAX_SIZE,
            max_files: plan::DEFAULT_LOG_MAX_FILES,
        },
        stdio: StdioMode::Inherit,
        annotations: [(BUNDLE_ANNOTATION.to_string(), bundle.display().to_string())]
            .into_iter()
            .collect(),
        stop_signal: libc::SIGTERM,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
                "args": ["/bin/true"],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": ["CAP_KILL", "CAP_AUDIT_WRITE"],
                    "effective": ["CAP_KILL"],
                    "permitted": ["CAP_KILL"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "h",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "ro"]},
                {"destination": "/data", "type": "none", "source": "/srv", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "resources": {"memory": {"limit": 67108864}, "pids": {"limit": 10},
                              "cpu": {"quota": 50000, "period": 100000}},
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        })
    }

    #[test]
    fn converts_a_runc_style_spec() {
        let p =
            plan_from_spec(&spec(), Path::new("/b"), "c1", Path::new("/s/c1"), "berth").unwrap();
        assert_eq!(p.rootfs.mode, RootfsMode::Bind);
        assert_eq!(p.rootfs.lowers, vec![PathBuf::from("/b/rootfs")]);
        assert!(p.rootfs.read_only);
        assert_eq!(p.process.args, vec!["/bin/true"]);
        assert_eq!(p.process.user.groups, vec![10]);
        assert_eq!(p.process.caps.bounding.names(), vec!["KILL", "AUDIT_WRITE"]);
        assert_eq!(p.process.caps.effective.names(), vec!["KILL"]);
        assert!(p.process.no_new_privs && !p.process.seccomp);
        assert_eq!(p.process.rlimits[0].resource, libc::RLIMIT_NOFILE);
        assert_eq!(p.namespaces.net, NetworkMode::New);
        assert!(p.namespaces.pid && p.namespaces.mount);
        let dests: Vec<&str> = p.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            vec!["/proc", "/dev", "/data"],
            "cgroup mount skipped"
        );
        assert_eq!(p.mounts[1].data, "mode=755,size=65536k");
        assert!(p.mounts[2].flags & libc::MS_RDONLY != 0);
        assert_eq!(p.cgroup.path, "berth/c1");
        assert_eq!(p.cgroup.limits.memory, Some(64 << 20));
        assert_eq!(p.cgroup.limits.pids_max, Some(10));
        assert_eq!(p.cgroup.limits.cpu_quota, Some(50_000));
        assert_eq!(p.stdio, StdioMode::Inherit);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let mut s = spec();
        s["process"]["terminal"] = Value::Bool(true);
        assert!(matches!(
            plan_from_spec(&s, Path::new("/b"), "c", Path::new("/s"), "berth"),
            Err(OciError::Unsupported(_))
        ));
        let mut s = spec();
        s["linux"]["namespaces"] = serde_json::json!([{"type": "user"}, {"type": "mount"}]);
        assert!(plan_from_spec(&s, Path::new("/b"), "c", Path::new("/s"), "berth").is_err());
        let mut s = spec();
        s["mounts"] =
            serde_json::json!([{"destination": "/proc/sys", "type": "bind", "source": "/x"}]);
        assert!(plan_from_spec(&s, Path::new("/b"), "c", Path::new("/s"), "berth").is_err());
        let mut s = spec();
        s["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}]);
        let p = plan_from_spec(&s, Path::new("/b"), "c", Path::new("/s"), "berth").unwrap();
        assert_eq!(p.namespaces.net, NetworkMode::Host);
        assert!(!p.namespaces.uts);
    }
}
