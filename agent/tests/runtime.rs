//! Root tests of the native runtime on real containers (busybox-static rootfs).
//!
//! Every test owns a temporary state root, a busybox lower directory and a cgroup parent
//! `berth-test-<pid>-<n>`; `Env` deletes everything on drop (also on panic) and
//! `Env::assert_clean` proves nothing is left: no mount, cgroup, process or namespace.

// test fixtures panic on setup failures, like the #[test] bodies they serve
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_agent::runtime::plan::{Resources, UserMount};
use berth_agent::runtime::{
    ContainerConfig, ContainerPlan, ExecConfig, ExitInfo, HelperBinary, Runtime, RuntimeConfig,
    RuntimeError, Status, logs,
};

static N: AtomicU32 = AtomicU32::new(0);

const BUSYBOX: &str = "/bin/busybox";

/// One test's runtime, rootfs and cgroup parent.
struct Env {
    rt: Runtime,
    tmp: tempfile::TempDir,
    lower: PathBuf,
    parent: String,
    /// (pid, start) of every supervisor and init seen, checked dead at the end.
    pids: std::cell::RefCell<Vec<i32>>,
    /// Network namespace inodes of containers, checked unused at the end.
    netns: std::cell::RefCell<Vec<u64>>,
}

fn make_busybox_lower(dir: &Path) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    fs::copy(BUSYBOX, bin.join("busybox")).expect("busybox-static is installed (/bin/busybox)");
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        make_busybox_lower(&lower);
        let parent = format!(
            "berth-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let rt = Runtime::new(RuntimeConfig {
            state_root: tmp.path().join("state"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: parent.clone(),
            helper: HelperBinary::Path(PathBuf::from(env!("CARGO_BIN_EXE_berth-runtime"))),
        })
        .unwrap();
        Env {
            rt,
            tmp,
            lower,
            parent,
            pids: Default::default(),
            netns: Default::default(),
        }
    }

    fn config(&self, cmd: &[&str]) -> ContainerConfig {
        ContainerConfig {
            layers: vec![self.lower.clone()],
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            ..ContainerConfig::default()
        }
    }

    fn plan(&self, id: &str, cfg: &ContainerConfig) -> ContainerPlan {
        let passwd = fs::read_to_string(self.lower.join("etc/passwd")).ok();
        let group = fs::read_to_string(self.lower.join("etc/group")).ok();
        ContainerPlan::build(id, cfg, &self.rt.plan_context(id, passwd, group)).unwrap()
    }

    fn create(&self, id: &str, cfg: &ContainerConfig) -> Result<(), RuntimeError> {
        let st = self.rt.create(&self.plan(id, cfg))?;
        let r = st.record.expect("created containers have a record");
        self.pids
            .borrow_mut()
            .extend([r.supervisor_pid, r.init_pid]);
        if let Ok(link) = fs::read_link(format!("/proc/{}/ns/net", r.init_pid)) {
            let s = link.to_string_lossy().to_string();
            if let Some(ino) = s.strip_prefix("net:[").and_then(|x| x.strip_suffix(']')) {
                self.netns.borrow_mut().push(ino.parse().unwrap());
            }
        }
        Ok(())
    }

    /// create + start + wait; returns the exit and the (stdout, stderr) text.
    fn run(&self, id: &str, cfg: &ContainerConfig) -> (ExitInfo, String, String) {
        self.create(id, cfg).unwrap();
        self.rt.start(id).unwrap();
        let exit = self
            .rt
            .wait(id, Some(Duration::from_secs(60)))
            .unwrap()
            .expect("exited");
        let (out, err) = self.output(id);
        (exit, out, err)
    }

    fn output(&self, id: &str) -> (String, String) {
        let recs = logs::read_all(&self.rt.log_path(id), 3).unwrap();
        let pick = |s: &str| {
            recs.iter()
                .filter(|r| r.stream == s)
                .map(|r| r.log.as_str())
                .collect::<String>()
        };
        (pick("stdout"), pick("stderr"))
    }

    fn cgroup_dir(&self, controller: &str, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.parent)
            .join(id)
    }

    /// Deletes every container, then proves nothing is left behind.
    fn assert_clean(&self) {
        for c in self.rt.list().unwrap() {
            self.rt.delete(&c.id, true).unwrap();
        }
        assert!(self.rt.list().unwrap().is_empty());
        let root = self.tmp.path().to_string_lossy().to_string();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&root),
            "mount left under {root}:\n{mounts}"
        );
        for ctrl in [
            "memory", "cpu", "pids", "cpuset", "blkio", "freezer", "devices", "cpuacct",
        ] {
            let dir = Path::new("/sys/fs/cgroup").join(ctrl).join(&self.parent);
            if let Ok(entries) = fs::read_dir(&dir) {
                let children: Vec<_> = entries.flatten().filter(|e| e.path().is_dir()).collect();
                assert!(children.is_empty(), "cgroups left in {dir:?}: {children:?}");
            }
        }
        for pid in self.pids.borrow().iter() {
            wait_gone(*pid);
        }
        // namespace inodes are recycled by parallel tests, so "in use" means: held by a
        // process of this test's cgroup parent, or by an fd of the test process itself
        for ino in self.netns.borrow().iter() {
            for holder in netns_holders(*ino) {
                let cg = fs::read_to_string(format!("/proc/{holder}/cgroup")).unwrap_or_default();
                assert!(
                    !cg.contains(&self.parent) && holder != std::process::id() as i32,
                    "network namespace {ino} still held by {holder}"
                );
            }
            for fd in fs::read_dir("/proc/self/fd").unwrap().flatten() {
                let l = fs::read_link(fd.path()).unwrap_or_default();
                assert_ne!(l.to_string_lossy(), format!("net:[{ino}]"), "fd leak");
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for c in list {
                let _ = self.rt.delete(&c.id, true);
            }
        }
        let _ = self.rt.cgroups().remove_dir(&self.parent);
    }
}

/// Waits (bounded) until `pid` is gone or a zombie of someone else.
fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"));
        let gone = match &stat {
            Err(_) => true,
            Ok(s) => s
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        };
        if gone {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} still alive: {stat:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pids whose network namespace is inode `ino`.
fn netns_holders(ino: u64) -> Vec<i32> {
    let want = format!("net:[{ino}]");
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let l = fs::read_link(e.path().join("ns/net")).ok()?;
            (l.to_string_lossy() == want).then_some(pid)
        })
        .collect()
}

/// A tiny static x86-64 ELF that makes one raw system call and exits with its errno
/// (0 on success). Lets tests probe syscalls busybox has no applet for (keyctl, clone3).
fn syscall_probe(nr: u64, args: [u64; 6]) -> Vec<u8> {
    let mut code = Vec::new();
    let mov = |code: &mut Vec<u8>, prefix: [u8; 2], v: u64| {
        code.extend_from_slice(&prefix);
        code.extend_from_slice(&v.to_le_bytes());
    };
    mov(&mut code, [0x48, 0xB8], nr); // mov rax
    mov(&mut code, [0x48, 0xBF], args[0]); // mov rdi
    mov(&mut code, [0x48, 0xBE], args[1]); // mov rsi
    mov(&mut code, [0x48, 0xBA], args[2]); // mov rdx
    mov(&mut code, [0x49, 0xBA], args[3]); // mov r10
    mov(&mut code, [0x49, 0xB8], args[4]); // mov r8
    mov(&mut code, [0x49, 0xB9], args[5]); // mov r9
    code.extend_from_slice(&[0x0F, 0x05]); // syscall
    code.extend_from_slice(&[0x48, 0x89, 0xC7]); // mov rdi, rax
    code.extend_from_slice(&[0x48, 0xF7, 0xDF]); // neg rdi
    code.extend_from_slice(&[0x48, 0x85, 0xC0]); // test rax, rax
    code.extend_from_slice(&[0x78, 0x02]); // js +2
    code.extend_from_slice(&[0x31, 0xFF]); // xor edi, edi
    code.extend_from_slice(&[0xB8, 0x3C, 0, 0, 0]); // mov eax, 60 (exit)
    code.extend_from_slice(&[0x0F, 0x05]); // syscall
    let base: u64 = 0x40_0000;
    let hdr = 64 + 56;
    let total = (hdr + code.len()) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7F, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3Eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(base + hdr as u64).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes());
    elf.extend_from_slice(&[0; 6]);
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&base.to_le_bytes());
    elf.extend_from_slice(&base.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&total.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    elf
}

fn write_probe(dir: &Path, name: &str, nr: i64, args: [u64; 6]) {
    let p = dir.join("bin").join(name);
    fs::write(&p, syscall_probe(nr as u64, args)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn pid1_hostname_network_and_mounts_are_isolated() {
    let env = Env::new();
    let mut cfg = env.config(&[
        "sh",
        "-c",
        "echo pid=$$; echo procs=$(ls -d /proc/[0-9]* | wc -l); echo host=$(hostname); \
         echo nets=$(ls /sys/class/net); echo lo=$(cat /sys/class/net/lo/operstate); \
         cat /proc/self/mountinfo",
    ]);
    cfg.hostname = Some("box1".into());
    let (exit, out, err) = env.run("iso", &cfg);
    assert_eq!(exit.exit_code, 0, "stderr: {err}");
    assert!(out.contains("pid=1\n"), "{out}");
    // sh, the $(...) subshell, ls and wc only: host processes are invisible
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(procs <= 4, "{out}");
    assert!(out.contains("host=box1\n"), "{out}");
    assert!(out.contains("nets=lo\n"), "only lo in a fresh netns: {out}");
    assert!(
        out.contains("lo=unknown\n") || out.contains("lo=up\n"),
        "{out}"
    );
    // host mounts are invisible: no /work, no host cgroup tree, no sandbox mounts
    assert!(!out.contains(" /work"), "{out}");
    assert!(!out.contains("/sys/fs/cgroup"), "{out}");
    assert!(!out.contains("/mnt/"), "{out}");
    for expect in [
        " / ",
        " /proc ",
        " /dev ",
        " /dev/pts ",
        " /sys ",
        " /dev/shm ",
        " /dev/mqueue ",
    ] {
        assert!(out.contains(expect), "missing mount {expect:?}: {out}");
    }
    env.assert_clean();
}

#[test]
fn capabilities_seccomp_and_status_match_docker() {
    let env = Env::new();
    let cfg = env.config(&[
        "sh",
        "-c",
        "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status",
    ]);
    let (exit, out, _) = env.run("caps", &cfg);
    assert_eq!(exit.exit_code, 0);
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t00000000a80425fb",
        "CapEff:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t0",
        "Seccomp:\t2",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // --cap-drop ALL --cap-add NET_ADMIN, no-new-privileges, non-root user
    let mut cfg = env.config(&[
        "sh",
        "-c",
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; id -u",
    ]);
    cfg.cap_drop = vec!["ALL".into()];
    cfg.cap_add = vec!["NET_ADMIN".into()];
    cfg.no_new_privileges = true;
    let (exit, out, err) = env.run("caps2", &cfg);
    assert_eq!(exit.exit_code, 0, "{err}");
    assert!(out.contains("CapEff:\t0000000000001000"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000001000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    cfg.user = Some("nobody".into());
    cfg.cap_drop.clear();
    cfg.cap_add.clear();
    let (_, out, _) = env.run("caps3", &cfg);
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("65534"), "{out}");
    env.assert_clean();
}

#[test]
fn seccomp_refuses_unshare_mount_and_keyctl() {
    let env = Env::new();
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0); clone3(NULL, 0)
    write_probe(
        &env.lower,
        "probe-keyctl",
        libc::SYS_keyctl,
        [0, (-3i64) as u64, 0, 0, 0, 0],
    );
    write_probe(&env.lower, "probe-clone3", libc::SYS_clone3, [0; 6]);
    let script = "unshare -n true; echo unshare=$?; mount -t tmpfs t /mnt; echo mount=$?; \
                  probe-keyctl; echo keyctl=$?; probe-clone3; echo clone3=$?";
    let (exit, out, err) = env.run("sc", &env.config(&["sh", "-c", script]));
    assert_eq!(exit.exit_code, 0);
    assert!(out.contains("unshare=1"), "{out} {err}");
    assert!(out.contains("mount=1"), "{out} {err}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(
        out.contains("keyctl=1\n"),
        "keyctl must fail with EPERM: {out}"
    );
    assert!(
        out.contains("clone3=38\n"),
        "clone3 must fail with ENOSYS: {out}"
    );
    // the same probes unconfined: keyctl is not EPERM any more (the test can fail)
    let mut cfg = env.config(&["sh", "-c", "probe-keyctl; echo keyctl=$?"]);
    cfg.seccomp_unconfined = true;
    let (_, out, _) = env.run("nosc", &cfg);
    assert!(!out.contains("keyctl=1\n"), "{out}");
    env.assert_clean();
}

#[test]
fn exit_codes_and_logs() {
    let env = Env::new();
    let (exit, out, err) = env.run(
        "logs",
        &env.config(&[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; printf 'no newline'; exit 3",
        ]),
    );
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    assert_eq!(out, "out1\nno newline");
    assert_eq!(err, "err1\n");
    let recs = logs::read_all(&env.rt.log_path("logs"), 3).unwrap();
    assert!(
        recs.iter()
            .all(|r| r.time.ends_with('Z') && r.time.starts_with("20"))
    );
    // PID 1 cannot SIGKILL itself from inside its namespace; the host can
    env.create("killed", &env.config(&["sleep", "100"]))
        .unwrap();
    env.rt.start("killed").unwrap();
    env.rt.kill("killed", libc::SIGKILL).unwrap();
    let exit = env
        .rt
        .wait("killed", Some(Duration::from_secs(20)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (exit.exit_code, exit.signal, exit.oom_killed),
        (137, Some(9), false)
    );
    // a missing command fails create and leaves nothing
    let err = env
        .create("nocmd", &env.config(&["does-not-exist"]))
        .unwrap_err();
    assert!(
        err.to_string().contains("executable file not found"),
        "{err}"
    );
    assert!(matches!(
        env.rt.state("nocmd"),
        Err(RuntimeError::NotFound(_))
    ));
    assert!(!env.cgroup_dir("memory", "nocmd").exists());
    env.assert_clean();
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let env = Env::new();
    let mut cfg = env.config(&["tail", "/dev/zero"]);
    cfg.resources = Resources {
        memory: Some(16 << 20),
        ..Resources::default()
    };
    let (exit, _, _) = env.run("oom", &cfg);
    assert_eq!(exit.exit_code, 137);
    assert!(exit.oom_killed, "{exit:?}");
    env.assert_clean();
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let env = Env::new();
    let mut cfg = env.config(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); echo $i; done",
    ]);
    cfg.resources = Resources {
        pids_limit: Some(20),
        ..Resources::default()
    };
    let (exit, out, err) = env.run("bomb", &cfg);
    // busybox sh gives up when fork fails; PID 1's exit takes the sleeps with it
    assert_ne!(exit.exit_code, 0);
    assert!(err.contains("can't fork"), "{err}");
    let started: u32 = out.lines().last().unwrap_or("0").parse().unwrap();
    assert!(
        started < 20,
        "{started} children next to PID 1 with pids.max 20"
    );
    assert!(
        started >= 15,
        "the limit, not something else, stopped it: {started}"
    );
    let dir = env.cgroup_dir("pids", "bomb");
    let events = fs::read_to_string(dir.join("pids.events")).unwrap();
    let max: u64 = events.trim().strip_prefix("max ").unwrap().parse().unwrap();
    assert!(max >= 1, "{events}");
    env.assert_clean();
}

#[test]
fn cpu_quota_holds() {
    let env = Env::new();
    let mut cfg = env.config(&["sh", "-c", "while :; do :; done"]);
    cfg.resources = Resources {
        cpus: Some(0.2),
        ..Resources::default()
    };
    env.create("cpu", &cfg).unwrap();
    env.rt.start("cpu").unwrap();
    let usage = env.cgroup_dir("cpuacct", "cpu").join("cpuacct.usage");
    let read = || {
        fs::read_to_string(&usage)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let (t0, u0) = (Instant::now(), read());
    std::thread::sleep(Duration::from_millis(1500));
    let (t1, u1) = (Instant::now(), read());
    let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
    assert!(share <= 0.3, "used {share:.3} CPUs with --cpus 0.2");
    assert!(
        share >= 0.05,
        "a busy loop should get its quota: {share:.3}"
    );
    env.rt.stop("cpu", Duration::from_millis(10)).unwrap();
    env.assert_clean();
}

#[test]
fn writes_stay_in_the_upper_dir_and_read_only_rootfs_refuses_them() {
    let env = Env::new();
    let (exit, _, err) = env.run(
        "rw",
        &env.config(&[
            "sh",
            "-c",
            "echo hi > /bin/newfile && rm /bin/ls && echo x > /etc/passwd",
        ]),
    );
    assert_eq!(exit.exit_code, 0, "{err}");
    assert!(!env.lower.join("bin/newfile").exists());
    assert!(fs::symlink_metadata(env.lower.join("bin/ls")).is_ok());
    assert!(
        fs::read_to_string(env.lower.join("etc/passwd"))
            .unwrap()
            .starts_with("root:")
    );
    let upper = env.rt.state_dir("rw").join("upper");
    assert_eq!(
        fs::read_to_string(upper.join("bin/newfile")).unwrap(),
        "hi\n"
    );

    let mut cfg = env.config(&[
        "sh",
        "-c",
        "touch /x; echo root=$?; touch /dev/shm/ok; echo shm=$?; touch /proc/sys/kernel/x; echo procsys=$?",
    ]);
    cfg.read_only = true;
    let (exit, out, err) = env.run("ro", &cfg);
    assert_eq!(exit.exit_code, 0);
    assert!(out.contains("root=1"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(out.contains("shm=0"), "{out}");
    assert!(out.contains("procsys=1"), "{out}");
    env.assert_clean();
}

#[test]
fn masked_paths_are_hidden() {
    let env = Env::new();
    let (exit, out, err) = env.run(
        "mask",
        &env.config(&[
            "sh",
            "-c",
            "wc -c < /proc/keys; ls /sys/firmware | wc -l; echo 1 > /proc/sysrq-trigger; echo w=$?",
        ]),
    );
    assert_eq!(exit.exit_code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "0",
        "/proc/keys masked by /dev/null: {out}"
    );
    assert_eq!(
        lines[1].trim(),
        "0",
        "/sys/firmware masked by an empty tmpfs: {out}"
    );
    assert_eq!(lines[2], "w=1", "{out}");
    env.assert_clean();
}

#[test]
fn stop_honours_the_grace_period() {
    let env = Env::new();
    let cfg = env.config(&[
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; while true; do sleep 0.05; done",
    ]);
    env.create("graceful", &cfg).unwrap();
    env.rt.start("graceful").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let exit = env.rt.stop("graceful", Duration::from_secs(10)).unwrap();
    assert_eq!(exit.exit_code, 7);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(env.output("graceful").0.contains("got-term"));

    // PID 1 without a handler ignores SIGTERM: killed after the grace period
    env.create("stubborn", &env.config(&["sleep", "1000"]))
        .unwrap();
    env.rt.start("stubborn").unwrap();
    let t = Instant::now();
    let exit = env.rt.stop("stubborn", Duration::from_millis(700)).unwrap();
    let took = t.elapsed();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    assert!(took >= Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    env.assert_clean();
}

#[test]
fn init_forwards_signals_and_reaps_zombies() {
    let env = Env::new();
    let mut cfg = env.config(&[
        "sh",
        "-c",
        "(sleep 0.1 &); sleep 0.5; ps -o pid,stat,comm; exec sleep 1000",
    ]);
    cfg.init = true;
    env.create("init", &cfg).unwrap();
    env.rt.start("init").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.output("init").0.contains("ps") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = env.output("init").0;
    assert!(
        !out.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("Z")),
        "zombie: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("berth-init")),
        "{out}"
    );
    // SIGTERM reaches the app through init: default action, 128 + 15
    let t = Instant::now();
    let exit = env.rt.stop("init", Duration::from_secs(10)).unwrap();
    assert_eq!(exit.exit_code, 143, "{exit:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    env.assert_clean();
}

#[test]
fn exec_joins_the_container() {
    let env = Env::new();
    env.create("ex", &env.config(&["sleep", "1000"])).unwrap();
    env.rt.start("ex").unwrap();
    let out = env
        .rt
        .exec_output(
            "ex",
            &ExecConfig {
                args: vec!["sh".into(), "-c".into(), "echo pid=$$; cat /proc/1/cmdline; echo; hostname; grep CapEff /proc/self/status; echo $FOO; pwd".into()],
                env: vec!["FOO=bar".into()],
                cwd: Some("/tmp".into()),
                user: None,
            },
            Duration::from_secs(20),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit_code,
        0,
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("pid=1\n") && text.contains("pid="), "{text}");
    assert!(
        text.contains("sleep\u{0}1000"),
        "sees the container's PID 1: {text}"
    );
    assert!(text.contains("\nex\n"), "container hostname: {text}");
    assert!(text.contains("CapEff:\t00000000a80425fb"), "{text}");
    assert!(text.contains("bar\n/tmp\n"), "{text}");
    let code = env
        .rt
        .exec_output(
            "ex",
            &ExecConfig {
                args: vec!["sh".into(), "-c".into(), "exit 5".into()],
                ..Default::default()
            },
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(code.exit_code, 5);
    let who = env
        .rt
        .exec_output(
            "ex",
            &ExecConfig {
                args: vec!["id".into(), "-u".into()],
                user: Some("nobody".into()),
                ..Default::default()
            },
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&who.stdout), "65534\n");
    let slow = env
        .rt
        .exec_output(
            "ex",
            &ExecConfig {
                args: vec!["sleep".into(), "100".into()],
                ..Default::default()
            },
            Duration::from_millis(300),
        )
        .unwrap();
    assert!(slow.timed_out);
    assert_eq!(slow.exit_code, 137);
    let missing = env.rt.exec(
        "ex",
        &ExecConfig {
            args: vec!["nope".into()],
            ..Default::default()
        },
    );
    assert!(matches!(missing, Err(RuntimeError::Setup(m)) if m.contains("not found")));
    // the exec'd processes are in the container's cgroup and gone afterwards
    let procs = fs::read_to_string(env.cgroup_dir("pids", "ex").join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().count(), 1, "{procs}");
    env.assert_clean();
}

#[test]
fn containers_outlive_the_runtime_and_keep_their_exit_code() {
    let env = Env::new();
    env.create("live", &env.config(&["sh", "-c", "sleep 0.5; exit 4"]))
        .unwrap();
    env.rt.start("live").unwrap();
    let cfg = env.rt.config().clone();
    let state_before = env.rt.state("live").unwrap();
    // the supervisor is not our child: it was re-parented when the helper exited
    let sup = state_before.record.as_ref().unwrap().supervisor_pid;
    let stat = fs::read_to_string(format!("/proc/{sup}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, std::process::id() as i32);
    // a "restarted daemon": a fresh Runtime over the same state root
    let rt2 = Runtime::new(cfg).unwrap();
    assert_eq!(rt2.state("live").unwrap().status, Status::Running);
    std::thread::sleep(Duration::from_millis(800));
    let rt3 = Runtime::new(env.rt.config().clone()).unwrap();
    let st = rt3.state("live").unwrap();
    assert_eq!(st.status, Status::Stopped);
    assert_eq!(st.exit.unwrap().exit_code, 4);
    env.assert_clean();
}

#[test]
fn delete_cleans_up_after_a_crashed_supervisor() {
    let env = Env::new();
    env.create("crash", &env.config(&["sleep", "1000"]))
        .unwrap();
    env.rt.start("crash").unwrap();
    let r = env.rt.state("crash").unwrap().record.unwrap();
    // kill the supervisor: PID 1 keeps running, orphaned
    // SAFETY: kill(2) on a pid this test created.
    unsafe { libc::kill(r.supervisor_pid, libc::SIGKILL) };
    wait_gone(r.supervisor_pid);
    let st = env.rt.state("crash").unwrap();
    assert_eq!(st.status, Status::Stopped);
    assert!(st.exit.unwrap().error.is_some());
    assert!(
        fs::metadata(format!("/proc/{}", r.init_pid)).is_ok(),
        "init still alive"
    );
    env.rt.delete("crash", false).unwrap();
    wait_gone(r.init_pid);
    assert!(matches!(
        env.rt.delete("crash", true),
        Err(RuntimeError::NotFound(_))
    ));
    // a created but never started container can be force-deleted
    env.create("never", &env.config(&["true"])).unwrap();
    assert_eq!(env.rt.state("never").unwrap().status, Status::Created);
    assert!(matches!(
        env.rt.delete("never", false),
        Err(RuntimeError::InvalidState { .. })
    ));
    env.rt.delete("never", true).unwrap();
    env.assert_clean();
}

#[test]
fn a_120_layer_image_runs() {
    let env = Env::new();
    let layers_dir = env.tmp.path().join("layers");
    let mut layers = vec![env.lower.clone()];
    for i in 0..120 {
        // long names: the legacy mount(2) option string would exceed a page
        let l = layers_dir.join(format!("{i:03}-{}", "a".repeat(60)));
        fs::create_dir_all(l.join("layers")).unwrap();
        fs::write(l.join("layers").join(format!("{i:03}")), format!("{i}")).unwrap();
        fs::write(l.join("top"), format!("{i}")).unwrap();
        layers.push(l);
    }
    let mut cfg = env.config(&["sh", "-c", "ls /layers | wc -l; cat /top"]);
    cfg.layers = layers;
    let (exit, out, err) = env.run("many", &cfg);
    assert_eq!(exit.exit_code, 0, "{err}");
    assert_eq!(out, "120\n119", "the last layer wins: {out}");
    env.assert_clean();
}

#[test]
fn bind_mounts_and_env_reach_the_container() {
    let env = Env::new();
    let data = env.tmp.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), "hello").unwrap();
    let mut cfg = env.config(&[
        "sh",
        "-c",
        "cat /data/f; echo; echo $GREETING; touch /data/g; echo w=$?; pwd",
    ]);
    cfg.mounts = vec![UserMount::Bind {
        source: data.clone(),
        destination: "/data".into(),
        readonly: true,
    }];
    cfg.env = vec!["GREETING=hey".into()];
    cfg.working_dir = Some("/work/dir".into());
    let (exit, out, _) = env.run("bind", &cfg);
    assert_eq!(exit.exit_code, 0);
    assert_eq!(out, "hello\nhey\nw=1\n/work/dir\n");
    assert!(!data.join("g").exists());
    env.assert_clean();
}

fn smaps_kb(pid: i32, key: &str) -> u64 {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    rollup
        .lines()
        .filter(|l| l.starts_with(key))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn an_idle_container_costs_the_host_little_memory() {
    let env = Env::new();
    for id in ["mem1", "mem2"] {
        env.create(id, &env.config(&["sleep", "1000"])).unwrap();
        env.rt.start(id).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let sup = env.rt.state("mem2").unwrap().record.unwrap().supervisor_pid;
    let rss = smaps_kb(sup, "Rss:");
    let pss = smaps_kb(sup, "Pss:");
    let private = smaps_kb(sup, "Private_");
    eprintln!(
        "supervisor of an idle container: RSS {rss} KiB, PSS {pss} KiB, private {private} KiB"
    );
    // the code pages are one sealed memfd shared by every supervisor of this runtime;
    // what each further container adds is its private memory
    assert!(private < 1024, "private {private} KiB");
    env.assert_clean();
}

/// Writes an OCI bundle (runc-style config.json) whose rootfs is the env's busybox lower.
fn write_bundle(env: &Env, name: &str, args: &[&str]) -> PathBuf {
    let bundle = env.tmp.path().join(name);
    fs::create_dir_all(&bundle).unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": env.lower, "readonly": true},
        "hostname": "oci",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": format!("/{}/{name}", env.parent),
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    bundle
}

#[test]
fn oci_cli_runs_bundles_like_runc() {
    let env = Env::new();
    let cli = env!("CARGO_BIN_EXE_berth-runtime");
    let root = env.tmp.path().join("oci-state");
    let rt = |args: &[&str]| {
        std::process::Command::new(cli)
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };
    // run: stdout passes straight through, the exit code is the container's
    let b = write_bundle(
        &env,
        "ocirun",
        &["sh", "-c", "echo hi from $(hostname); exit 3"],
    );
    let out = rt(&["run", "--bundle", b.to_str().unwrap(), "ocirun"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi from oci\n");
    assert!(!root.join("ocirun").exists(), "run deletes the container");

    // create / state / start / kill / delete
    let b = write_bundle(&env, "ocilc", &["sleep", "100"]);
    let pidfile = env.tmp.path().join("pid");
    let out = rt(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        "ocilc",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = |rt: &dyn Fn(&[&str]) -> std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&rt(&["state", "ocilc"]).stdout).unwrap()
    };
    let s = state(&rt);
    assert_eq!(s["status"], "created");
    assert_eq!(s["pid"].to_string(), fs::read_to_string(&pidfile).unwrap());
    assert_eq!(s["bundle"], b.to_str().unwrap());
    assert!(rt(&["start", "ocilc"]).status.success());
    assert_eq!(state(&rt)["status"], "running");
    let status = fs::read_to_string(format!("/proc/{}/status", s["pid"])).unwrap();
    assert!(status.contains("CapEff:\t0000000020000420"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(
        !rt(&["delete", "ocilc"]).status.success(),
        "running: needs --force"
    );
    assert!(rt(&["kill", "ocilc", "KILL"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while state(&rt)["status"] != "stopped" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rt(&["delete", "ocilc"]).status.success());
    assert!(!rt(&["state", "ocilc"]).status.success());
    assert!(!env.cgroup_dir("memory", "ocilc").exists());
    env.assert_clean();
}

#[test]
fn run_starts_in_one_step_and_exec_failures_are_reported() {
    let env = Env::new();
    let plan = env.plan("one", &env.config(&["sh", "-c", "echo one-step"]));
    let st = env.rt.run(&plan).unwrap();
    assert!(st.started.is_some());
    assert!(matches!(st.status, Status::Running | Status::Stopped));
    let exit = env
        .rt
        .wait("one", Some(Duration::from_secs(20)))
        .unwrap()
        .unwrap();
    assert_eq!(exit.exit_code, 0);
    assert_eq!(env.output("one").0, "one-step\n");
    assert!(!env.rt.state_dir("one").join("start.fifo").exists());

    // executable bit but not a program: found by the PATH lookup, refused by execve
    let bad = env.lower.join("bin/not-a-program");
    fs::write(&bad, [0u8; 64]).unwrap();
    fs::set_permissions(&bad, fs::Permissions::from_mode(0o755)).unwrap();
    let plan = env.plan("bad", &env.config(&["not-a-program"]));
    let err = env.rt.run(&plan).unwrap_err();
    assert!(err.to_string().contains("exec"), "{err}");
    assert!(matches!(
        env.rt.state("bad"),
        Err(RuntimeError::NotFound(_))
    ));
    // the two-step path reports the same failure from start and records exit 127
    env.create("bad2", &env.config(&["not-a-program"])).unwrap();
    let err = env.rt.start("bad2").unwrap_err();
    assert!(err.to_string().contains("exec"), "{err}");
    let exit = env
        .rt
        .wait("bad2", Some(Duration::from_secs(20)))
        .unwrap()
        .unwrap();
    assert_eq!(exit.exit_code, 127);
    assert!(exit.error.is_some());
    env.assert_clean();
}

/// A network namespace bound to a file (what the networking layer prepares), removed on drop.
struct BoundNetns(PathBuf);

impl BoundNetns {
    fn new(path: PathBuf) -> BoundNetns {
        fs::write(&path, "").unwrap();
        let ns = BoundNetns(path);
        let out = std::process::Command::new("unshare")
            .arg(format!("--net={}", ns.0.display()))
            .arg("true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ok = std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.0.display()))
            .args(["ip", "link", "add", "berthtest0", "type", "bridge"])
            .status()
            .unwrap();
        assert!(ok.success());
        ns
    }
}

impl Drop for BoundNetns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn joins_a_prepared_network_namespace_and_applies_rlimits() {
    let env = Env::new();
    let ns = BoundNetns::new(env.tmp.path().join("netns"));
    let mut cfg = env.config(&[
        "sh",
        "-c",
        "ls /sys/class/net | tr '\\n' ' '; echo; ulimit -n",
    ]);
    cfg.network = berth_agent::runtime::plan::NetworkMode::Join(ns.0.clone());
    cfg.rlimits = vec![berth_agent::runtime::plan::Rlimit {
        resource: libc::RLIMIT_NOFILE,
        soft: 321,
        hard: 4096,
    }];
    let (exit, out, err) = env.run("joined", &cfg);
    assert_eq!(exit.exit_code, 0, "{err}");
    assert_eq!(out, "berthtest0 lo \n321\n");
    // the namespace outlives the container: it belongs to whoever bound it
    let st = fs::metadata(&ns.0).unwrap();
    assert!(st.len() == 0);
    drop(ns);
    env.assert_clean();
}

#[test]
fn delete_cleans_up_a_create_that_crashed_half_way() {
    let env = Env::new();
    // what a daemon crash between "cgroup made" and "helper started" leaves behind
    let plan = env.plan("half", &env.config(&["true"]));
    let dir = env.rt.state_dir("half");
    fs::create_dir_all(dir.join("upper/x")).unwrap();
    fs::create_dir_all(dir.join("work")).unwrap();
    berth_agent::runtime::state::write_json(&dir.join("plan.json"), &plan).unwrap();
    env.rt
        .cgroups()
        .create(&plan.cgroup.path, &plan.cgroup.limits)
        .unwrap();
    assert!(env.cgroup_dir("memory", "half").is_dir());
    assert_eq!(env.rt.state("half").unwrap().status, Status::Creating);
    env.rt.delete("half", false).unwrap();
    assert!(!dir.exists());
    assert!(!env.cgroup_dir("memory", "half").exists());
    env.assert_clean();
}
