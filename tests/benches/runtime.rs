//! Container runtime benchmarks (issue 3), not timed tests: start-up latency of
//! `berth-runtime` beside crun and runc on one OCI bundle, `berth run --rm` end to end, and
//! the host-side memory of an idle container.
//!
//! ```text
//! cargo build --release --workspace --bins && cargo bench -p berth-tests --bench runtime
//! ```
//! (as root; `apt-get install crun runc golang-github-containers-common`; `BENCH_N=50` sets
//! the number of measured runs, default 40, after 3 warm-up runs).
//!
//! 1. Run-to-exit of `/bin/true` with a Docker-like config — Docker's 14 capabilities,
//!    masked and read-only paths, a writable root, no no_new_privs, and Docker's default
//!    seccomp profile (`/usr/share/containers/seccomp.json`, converted for x86_64 as moby
//!    does) — through `berth-runtime`, crun and runc: `RT --root DIR run --bundle B ID`,
//!    timed from spawn to exit. The runtimes run interleaved (one run of each per round) so
//!    load drift on a shared machine hits them equally. Also the raw-kernel lower bound
//!    (`unshare` of the same namespaces + mount /proc + chroot + exec).
//!    crun refuses hybrid cgroups whose v2 mount has controllers (this machine: `hugetlb`),
//!    so, like `../shared/bench/runtime-baseline.sh`, the bench first enters a private mount
//!    namespace with `/sys/fs/cgroup/unified` unmounted; every runtime runs in it.
//!    berth-runtime applies its own compiled copy of Docker's default profile whenever the
//!    bundle sets `linux.seccomp`; crun and runc compile the bundle's rules on each run.
//! 2. `berth run --rm IMAGE true` through a private release `berthd` (own data directory,
//!    socket and cgroup parent): CLI → daemon → runtime → exit code back to the CLI.
//! 3. Host-side memory of an idle running container (`berth run -d IMAGE sleep`): RSS, PSS
//!    and private memory of its supervisor, the only host process a container adds, from
//!    `/proc/<pid>/smaps_rollup`; with one container and again with two.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use berth_tests::bins;
use berth_tests::image::TestImage;
use serde_json::{Value, json};

const WARMUP: usize = 3;
const DEFAULT_N: usize = 40;
const IMAGE: &str = "berth-bench/busybox:latest";
const SECCOMP_PROFILE: &str = "/usr/share/containers/seccomp.json";
const DOCKER_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
const DOCKER_MASKED: [&str; 12] = [
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
const DOCKER_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Timing summary of one series.
struct Stats {
    n: usize,
    median: f64,
    p90: f64,
    min: f64,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    let p90 = ms[((0.9 * n as f64).ceil() as usize)
        .saturating_sub(1)
        .min(n - 1)];
    Stats {
        n,
        median,
        p90,
        min: ms[0],
    }
}

/// Enters a private mount namespace and hides the cgroup v2 mount when crun would refuse
/// this host (v1 hybrid with controllers on the unified hierarchy). Must run before any
/// thread exists. Returns whether it hid the mount.
fn hide_unified_cgroup() -> anyhow::Result<bool> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let unified = Path::new("/sys/fs/cgroup/unified");
    let controllers = fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    let root_is_v1 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if !root_is_v1 || controllers.trim().is_empty() {
        return Ok(false);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making / private")?;
    umount2(unified, MntFlags::MNT_DETACH).context("unmounting /sys/fs/cgroup/unified")?;
    Ok(true)
}

/// Docker's default seccomp profile (moby format) as OCI `linux.seccomp` for x86_64 and
/// Docker's capabilities — the conversion `runtime-baseline.sh` does with jq.
fn docker_seccomp(profile: &Value) -> anyhow::Result<Value> {
    let caps: Vec<&str> = DOCKER_CAPS.to_vec();
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut syscalls = Vec::new();
    for s in profile["syscalls"]
        .as_array()
        .context("profile has no syscalls")?
    {
        let inc_caps = list(s.pointer("/includes/caps"));
        let inc_arches = list(s.pointer("/includes/arches"));
        let exc_caps = list(s.pointer("/excludes/caps"));
        let exc_arches = list(s.pointer("/excludes/arches"));
        if !inc_caps.iter().all(|c| caps.contains(&c.as_str()))
            || !(inc_arches.is_empty() || inc_arches.iter().any(|a| a == "amd64"))
            || exc_caps.iter().any(|c| caps.contains(&c.as_str()))
            || exc_arches.iter().any(|a| a == "amd64")
        {
            continue;
        }
        let names = match s.get("names") {
            Some(n) => n.clone(),
            None => json!([s["name"]]),
        };
        let mut rule = json!({"names": names, "action": s["action"]});
        if let Some(a) = s.get("args").filter(|a| !a.is_null()) {
            rule["args"] = a.clone();
        }
        if let Some(e) = s.get("errnoRet") {
            rule["errnoRet"] = e.clone();
        }
        syscalls.push(rule);
    }
    Ok(json!({
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile.get("defaultErrnoRet").cloned().unwrap_or(json!(1)),
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": syscalls,
    }))
}

/// A busybox rootfs and a Docker-like bundle running `args`.
fn make_bundle(work: &Path, args: &[&str]) -> anyhow::Result<(PathBuf, usize)> {
    let rootfs = work.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp", "root"] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying /bin/busybox")?;
    for applet in ["true", "sh", "sleep", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;

    let spec_dir = work.join("spec");
    fs::create_dir_all(&spec_dir)?;
    let status = Command::new("crun")
        .arg("spec")
        .current_dir(&spec_dir)
        .status()
        .context("running `crun spec` (apt-get install crun)")?;
    ensure!(status.success(), "crun spec failed");
    let mut spec: Value = serde_json::from_slice(&fs::read(spec_dir.join("config.json"))?)?;
    let profile: Value =
        serde_json::from_slice(&fs::read(SECCOMP_PROFILE).with_context(|| {
            format!("reading {SECCOMP_PROFILE} (golang-github-containers-common)")
        })?)?;
    let seccomp = docker_seccomp(&profile)?;
    let rules = seccomp["syscalls"].as_array().map_or(0, Vec::len);
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["process"]["noNewPrivileges"] = json!(false);
    spec["process"]["capabilities"] =
        json!({"bounding": DOCKER_CAPS, "effective": DOCKER_CAPS, "permitted": DOCKER_CAPS});
    spec["root"] = json!({"path": rootfs, "readonly": false});
    spec["hostname"] = json!("bench");
    spec["linux"]["maskedPaths"] = json!(DOCKER_MASKED);
    spec["linux"]["readonlyPaths"] = json!(DOCKER_READONLY);
    spec["linux"]["seccomp"] = seccomp;
    let bundle = work.join("bundle");
    fs::create_dir_all(&bundle)?;
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    Ok((bundle, rules))
}

/// Runs a command with null stdio and returns its wall time; fails on a non-zero exit.
fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// One way of running the bundle to exit.
struct Runner {
    name: String,
    binary: PathBuf,
    state: PathBuf,
}

impl Runner {
    fn command(&self, bundle: &Path, id: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id);
        c
    }
}

fn first_line(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// Removes cgroup directories named `<prefix>*` that a runtime left (depth ≤ 3).
fn sweep_cgroups(prefix: &str) {
    fn walk(dir: &Path, prefix: &str, depth: usize) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                walk(&p, "", 4);
                let _ = fs::remove_dir(&p);
            } else if depth < 3 {
                walk(&p, prefix, depth + 1);
            }
        }
    }
    walk(Path::new("/sys/fs/cgroup"), prefix, 0);
}

/// A private release berthd; stopped (and its containers removed) when dropped.
struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
    parent: String,
}

impl Daemon {
    fn start(dir: &Path, parent: &str) -> anyhow::Result<Daemon> {
        let socket = dir.join("run/berthd.sock");
        let child = Command::new(bins::berthd()?)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&socket)
            .args(["--cgroup-parent", parent])
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(dir.join("berthd.log"))?))
            .spawn()?;
        let d = Daemon {
            child,
            socket,
            parent: parent.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while d
            .berth(&["info"])
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            ensure!(Instant::now() < deadline, "berthd did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut c = Command::new(bins::berth()?);
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        Ok(c)
    }

    fn berth(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(self.command(args)?.stdin(Stdio::null()).output()?)
    }

    fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self.berth(args)?;
        ensure!(
            o.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(ids) = self.ok(&["ps", "-aq"]) {
            for id in ids.lines() {
                let _ = self.berth(&["rm", "-f", id]);
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        sweep_cgroups(&self.parent);
    }
}

/// `Rss`, `Pss`, private (clean + dirty) and anonymous KiB of a process, from smaps_rollup.
fn memory_kib(pid: i32) -> anyhow::Result<(u64, u64, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((
        field("Rss:"),
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
        field("Anonymous:"),
    ))
}

/// The supervisor of a running container: the parent of its PID 1.
fn supervisor_of(daemon: &Daemon, name: &str) -> anyhow::Result<(i32, String)> {
    let pid: i32 = daemon
        .ok(&["inspect", "-f", "{{.State.Pid}}", name])?
        .trim()
        .parse()
        .context("container pid")?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ppid: i32 = after
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("ppid of the container's PID 1")?;
    let comm = fs::read_to_string(format!("/proc/{ppid}/comm"))?
        .trim()
        .to_string();
    Ok((ppid, comm))
}

fn kib(k: u64) -> String {
    format!("{k} KiB ({:.2} MiB)", k as f64 / 1024.0)
}

fn main() -> anyhow::Result<()> {
    // cargo bench passes `--bench`; nothing else is accepted.
    if std::env::args().skip(1).any(|a| a != "--bench") {
        bail!("usage: cargo bench -p berth-tests --bench runtime (BENCH_N=<runs>)");
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the runtime bench runs containers: run it as root"
    );
    // Before any thread: the mount namespace is per thread until a process has only one.
    let hidden = hide_unified_cgroup()?;
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_N);
    ensure!(n >= 30, "BENCH_N must be at least 30");
    let prefix = format!("berth-bench-{}", std::process::id());
    let work = tempfile::Builder::new().prefix("berth-bench-").tempdir()?;
    let (bundle, rules) = make_bundle(work.path(), &["/bin/true"])?;

    let which = |name: &str| -> anyhow::Result<PathBuf> {
        for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        bail!("{name} not found (apt-get install {name})")
    };
    let runners = vec![
        Runner {
            name: "berth-runtime".into(),
            binary: bins::binary("berth-runtime")?,
            state: work.path().join("state-berth"),
        },
        Runner {
            name: "crun".into(),
            binary: which("crun")?,
            state: work.path().join("state-crun"),
        },
        Runner {
            name: "runc".into(),
            binary: which("runc")?,
            state: work.path().join("state-runc"),
        },
    ];
    let rootfs = work.path().join("rootfs");
    let lower_bound = || {
        let mut c = Command::new("unshare");
        c.args(["--fork", "--pid", "--mount", "--uts", "--ipc", "--net"])
            .arg(format!("--mount-proc={}", rootfs.join("proc").display()))
            .arg("chroot")
            .arg(&rootfs)
            .arg("/bin/true");
        c
    };

    println!(
        "# runtime bench: kernel {}, {} cpus, loadavg {}",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "# cgroup v2 mount hidden in a private mount namespace: {hidden}; docker-like bundle \
         with {rules} seccomp rules from {SECCOMP_PROFILE}"
    );
    for r in &runners {
        println!("# {}: {}", r.name, first_line(&r.binary));
    }

    // 1. interleaved run-to-exit
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); runners.len() + 1];
    for round in 0..WARMUP + n {
        for (i, r) in runners.iter().enumerate() {
            let id = format!("{prefix}-{}-{round}", r.name);
            let t =
                timed(&mut r.command(&bundle, &id)).with_context(|| format!("{} run", r.name))?;
            if round >= WARMUP {
                samples[i].push(t);
            }
        }
        let t = timed(&mut lower_bound())?;
        if round >= WARMUP {
            samples[runners.len()].push(t);
        }
    }
    sweep_cgroups(&prefix);

    // 2. berth run --rm through a private berthd
    let parent = format!("{prefix}-berthd");
    let daemon = Daemon::start(work.path(), &parent)?;
    let archive = work.path().join("image.tar");
    TestImage::busybox(IMAGE).write_docker_archive(&archive)?;
    daemon.ok(&[
        "image",
        "load",
        "-i",
        archive.to_str().context("utf-8 path")?,
    ])?;
    let mut e2e = Vec::new();
    for i in 0..WARMUP + n {
        let t = timed(&mut daemon.command(&["run", "--rm", IMAGE, "true"])?)?;
        if i >= WARMUP {
            e2e.push(t);
        }
    }

    // 3. idle containers' supervisors
    daemon.ok(&["run", "-d", "--name", "idle1", IMAGE, "sleep", "3600"])?;
    std::thread::sleep(Duration::from_millis(500));
    let (sup1, comm) = supervisor_of(&daemon, "idle1")?;
    let one = memory_kib(sup1)?;
    daemon.ok(&["run", "-d", "--name", "idle2", IMAGE, "sleep", "3600"])?;
    std::thread::sleep(Duration::from_millis(500));
    let two = memory_kib(sup1)?;
    let (sup2, _) = supervisor_of(&daemon, "idle2")?;
    let two_b = memory_kib(sup2)?;
    daemon.ok(&["rm", "-f", "idle1", "idle2"])?;
    drop(daemon);

    // report
    let base = stats(&samples[1]).median;
    println!();
    println!("| benchmark | n | median ms | p90 ms | min ms | / crun |");
    println!("|---|---|---|---|---|---|");
    let mut names: Vec<String> = runners
        .iter()
        .map(|r| format!("run `/bin/true`, docker-like: {}", r.name))
        .collect();
    names.push("lower bound: unshare pid,mnt,uts,ipc,net + mount /proc + chroot".into());
    for (name, s) in names.iter().zip(&samples) {
        let s = stats(s);
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.n,
            s.median,
            s.p90,
            s.min,
            s.median / base
        );
    }
    let s = stats(&e2e);
    println!(
        "| `berth run --rm {IMAGE} true` (CLI → berthd → exit) | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        s.n,
        s.median,
        s.p90,
        s.min,
        s.median / base
    );
    println!();
    println!(
        "| idle container, host side (supervisor `{comm}`) | RSS | PSS | private | anonymous |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| one container | {} | {} | {} | {} |",
        kib(one.0),
        kib(one.1),
        kib(one.2),
        kib(one.3)
    );
    println!(
        "| two containers, each | {} / {} | {} / {} | {} / {} | {} / {} |",
        kib(two.0),
        kib(two_b.0),
        kib(two.1),
        kib(two_b.1),
        kib(two.2),
        kib(two_b.2),
        kib(two.3),
        kib(two_b.3)
    );
    println!(
        "\nThe supervisor runs from one sealed memfd copy of the helper binary shared by every \
         supervisor (shmem pages: private while one container runs, split by PSS between \
         several); `anonymous` (heap, stack, relocated data) is what each further container \
         adds."
    );
    println!(
        "\ngoals: berth-runtime median ≤ 0.5 × crun's; idle container < 1 MiB host-side \
         (Docker's containerd-shim-runc-v2 ≈ 13 MiB RSS)"
    );
    Ok(())
}
