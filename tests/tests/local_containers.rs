//! Local containers and images end to end, on real processes, as root: a private `berthd`
//! per test (own `--data-dir`, `--socket` and `--cgroup-parent berth-test-<pid>-<n>`) driven
//! by the real `berth` CLI — `image load/ls/inspect/rm`, `run` (foreground and `-d`, `--rm`,
//! exit codes, `-e/-w/-u/--hostname/--entrypoint`), `ps`, `logs`, `exec`, `stop`, `kill`,
//! `rm`, `inspect`, with Docker's columns and messages.
//!
//! Every test ends with `Node::finish`, which removes the containers and proves nothing is
//! left: no mount under the data directory, no cgroup under the test's parent, no process in
//! it or holding a file of the data directory. A panicking test still removes everything
//! (`Drop`).

// Test code: a panic with its location is the failure report.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_tests::image::{DEFAULT_REF, TestImage};
use berth_tests::{bins, wait};

static N: AtomicU32 = AtomicU32::new(0);

/// cgroup v1 hierarchies the runtime uses on this machine (and v2's root, if unified).
const CGROUP_ROOTS: [&str; 10] = [
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/cpuacct",
    "/sys/fs/cgroup/pids",
    "/sys/fs/cgroup/cpuset",
    "/sys/fs/cgroup/blkio",
    "/sys/fs/cgroup/freezer",
    "/sys/fs/cgroup/devices",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

/// One private daemon and its directories.
struct Node {
    tmp: tempfile::TempDir,
    daemon: Option<Child>,
    parent: String,
}

/// What a `berth` invocation did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Node {
    fn start() -> Node {
        wait::init_test_logging();
        let tmp = tempfile::Builder::new()
            .prefix("berth-local-")
            .tempdir()
            .unwrap();
        let parent = format!(
            "berth-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut node = Node {
            tmp,
            daemon: None,
            parent,
        };
        node.spawn_daemon();
        node
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.tmp.path().join("run/berthd.sock")
    }

    fn spawn_daemon(&mut self) {
        let log = fs::File::create(self.tmp.path().join("berthd.log")).unwrap();
        let child = Command::new(bins::berthd().unwrap())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(["--cgroup-parent", &self.parent])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        wait::wait_until(Duration::from_secs(20), "berthd answers", || {
            Ok(self.berth(&["info"]).code == 0)
        })
        .unwrap();
    }

    fn berth(&self, args: &[&str]) -> Run {
        Command::new(bins::berth().unwrap())
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into()
    }

    /// Runs `berth args`, asserts success and returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.berth(args);
        assert_eq!(
            r.code,
            0,
            "berth {args:?} failed: {}{}\ndaemon log:\n{}",
            r.stdout,
            r.stderr,
            self.daemon_log()
        );
        r.stdout
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.tmp.path().join("berthd.log")).unwrap_or_default()
    }

    /// Writes the busybox test image as a `docker save` archive and loads it as `reference`.
    fn load_busybox(&self, reference: &str) -> String {
        let tar = self
            .tmp
            .path()
            .join(format!("{}.tar", reference.replace(['/', ':'], "_")));
        TestImage::busybox(reference)
            .write_docker_archive(&tar)
            .unwrap();
        let out = self.ok(&["image", "load", "-i", tar.to_str().unwrap()]);
        assert_eq!(out, format!("Loaded image: {reference}\n"));
        reference.to_string()
    }

    fn inspect(&self, container: &str, template: &str) -> String {
        self.ok(&["inspect", "-f", template, container])
            .trim()
            .to_string()
    }

    /// The cgroup directories of the test's parent that exist.
    fn parent_dirs(&self) -> Vec<PathBuf> {
        CGROUP_ROOTS
            .iter()
            .map(|r| Path::new(r).join(&self.parent))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// Processes in the test's cgroups or holding a file under the test's directory.
    fn leftover_processes(&self) -> Vec<String> {
        let root = self.tmp.path().to_string_lossy().into_owned();
        let daemon = self.daemon.as_ref().map(|c| c.id() as i32);
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if Some(pid) == daemon || pid == std::process::id() as i32 {
                continue;
            }
            let cgroup = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            let mut holds = cgroup.contains(&self.parent);
            for link in ["cwd", "root"] {
                if let Ok(target) = fs::read_link(entry.path().join(link)) {
                    holds |= target.to_string_lossy().starts_with(&root);
                }
            }
            if let Ok(fds) = fs::read_dir(entry.path().join("fd")) {
                for fd in fds.flatten() {
                    if let Ok(target) = fs::read_link(fd.path()) {
                        holds |= target.to_string_lossy().starts_with(&root);
                    }
                }
            }
            if holds {
                let cmd = fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
                found.push(format!("{pid} {}", cmd.replace('\0', " ")));
            }
        }
        found
    }

    /// Removes every container, then proves nothing is left behind; stops the daemon.
    fn finish(mut self) {
        let ids = self.ok(&["ps", "-aq"]);
        let ids: Vec<&str> = ids.lines().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            self.ok(&args);
        }
        assert_eq!(self.ok(&["ps", "-aq"]), "");
        let root = self.tmp.path().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&root),
            "mount left under {root}:\n{mounts}"
        );
        for dir in self.parent_dirs() {
            let children: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect();
            assert!(children.is_empty(), "cgroups left: {children:?}");
        }
        wait::wait_until(Duration::from_secs(10), "no process is left", || {
            Ok(self.leftover_processes().is_empty())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", self.leftover_processes()));
        let runtime_dirs: Vec<_> = fs::read_dir(self.data_dir().join("containers"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            runtime_dirs.is_empty(),
            "container state left: {runtime_dirs:?}"
        );
        self.stop_daemon();
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let ids = self.berth(&["ps", "-aq"]).stdout;
            for id in ids.lines() {
                let _ = self.berth(&["rm", "-f", id]);
            }
            self.stop_daemon();
        }
        for dir in self.parent_dirs() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[test]
fn images_load_from_both_formats_list_inspect_and_remove() {
    let node = Node::start();
    tracing::info!("load a docker archive and an OCI layout tar");
    node.load_busybox("berth-test/busybox:docker");
    let oci = node.tmp.path().join("oci.tar");
    let built = TestImage::busybox("berth-test/busybox:oci")
        .write_oci_tar(&oci)
        .unwrap();
    let out = node.ok(&["image", "load", "-i", oci.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: berth-test/busybox:oci\n");

    tracing::info!("ls shows one row per tag, same image id");
    let config_digest = built.config_digest().unwrap();
    let id12 = &config_digest["sha256:".len()..][..12];
    let ls = node.ok(&["image", "ls"]);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    let header: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        "{ls}"
    );
    for (line, tag) in lines[1..].iter().zip(["docker", "oci"]) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cols[..3], ["berth-test/busybox", tag, id12], "{ls}");
        assert!(line.trim_end().ends_with("MB"), "{ls}");
    }
    assert_eq!(node.ok(&["image", "ls", "-q"]), format!("{id12}\n"));

    tracing::info!("inspect shows the image config");
    let id = node.ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        "berth-test/busybox:oci",
    ]);
    assert_eq!(id.trim(), config_digest);
    let json: serde_json::Value =
        serde_json::from_str(&node.ok(&["image", "inspect", "berth-test/busybox:docker"])).unwrap();
    assert_eq!(json[0]["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(json[0]["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    let garbage = node.tmp.path().join("garbage.tar");
    fs::write(&garbage, b"not an image").unwrap();
    let r = node.berth(&["image", "load", "-i", garbage.to_str().unwrap()]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (
            1,
            "Error: the archive is neither a docker save archive nor an OCI image layout tar\n"
        )
    );
    let missing = node.berth(&["image", "inspect", "nope:1"]);
    assert_eq!(missing.code, 1);
    assert_eq!(missing.stderr, "Error: No such image: nope:1\n");

    tracing::info!("rm of one tag untags, of the last deletes");
    assert_eq!(
        node.ok(&["image", "rm", "berth-test/busybox:docker"]),
        "Untagged: berth-test/busybox:docker\n"
    );
    assert_eq!(
        node.ok(&["image", "rm", "berth-test/busybox:oci"]),
        format!("Untagged: berth-test/busybox:oci\nDeleted: {config_digest}\n")
    );
    assert_eq!(node.ok(&["image", "ls", "-q"]), "");
    node.finish();
}

#[test]
fn foreground_run_streams_output_and_exits_with_the_containers_code() {
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);

    tracing::info!("run --rm echo");
    let r = node.berth(&["run", "--rm", &img, "echo", "hi"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "hi\n", "")
    );
    assert_eq!(node.ok(&["ps", "-aq"]), "", "--rm removed it");

    tracing::info!("exit codes and stderr");
    let r = node.berth(&["run", &img, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    let ps = node.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (3) "), "{ps}");
    assert!(ps.contains("\"sh -c echo out; ech…\""), "{ps}");

    tracing::info!("-e, -w, -u, --hostname, --env-file");
    let env_file = node.tmp.path().join("env");
    fs::write(&env_file, "# comment\nFROM_FILE=yes\n").unwrap();
    let r = node.berth(&[
        "run",
        "--rm",
        "-e",
        "FOO=bar",
        "--env-file",
        env_file.to_str().unwrap(),
        "-w",
        "/work/dir",
        "-u",
        "1000",
        "--hostname",
        "box1",
        &img,
        "sh",
        "-c",
        "echo $FOO $FROM_FILE $BERTH_TEST; pwd; id -u; hostname; echo $HOME",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "bar yes 1\n/work/dir\n1000\nbox1\n/home/berth\n");

    tracing::info!("--entrypoint replaces the image's and resets its cmd");
    let r = node.berth(&["run", "--rm", "--entrypoint", "echo", &img]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "\n"));
    let r = node.berth(&["run", "--rm", "--entrypoint", "echo", &img, "a", "b"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "a b\n"));

    tracing::info!("a missing command exits 127, a missing image 125");
    let r = node.berth(&["run", "--rm", &img, "no-such-command"]);
    assert_eq!(r.code, 127, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.starts_with("Error: "), "{}", r.stderr);
    let r = node.berth(&["run", "--rm", "nope:1", "true"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (125, "Error: No such image: nope:1\n")
    );
    wait::wait_until(Duration::from_secs(10), "auto-removal", || {
        Ok(node.ok(&["ps", "-aq"]).lines().count() == 1)
    })
    .unwrap();

    tracing::info!("names are unique");
    node.ok(&["run", "--name", "once", &img, "true"]);
    let r = node.berth(&["run", "--name", "once", &img, "true"]);
    assert_eq!(r.code, 125);
    assert!(
        r.stderr
            .starts_with("Error: Conflict. The container name \"/once\" is already in use"),
        "{}",
        r.stderr
    );
    node.finish();
}

#[test]
fn detached_containers_ps_logs_exec_kill_and_inspect() {
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);

    tracing::info!("run -d prints the id; ps shows it Up");
    let script = "trap 'echo got usr1' USR1; echo one; echo two; echo three >&2; \
                  while true; do sleep 0.05; done";
    let id = node.ok(&["run", "-d", "--name", "web", &img, "sh", "-c", script]);
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let ps = node.ok(&["ps"]);
    let lines: Vec<&str> = ps.lines().collect();
    assert_eq!(lines.len(), 2, "{ps}");
    for col in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ] {
        assert!(lines[0].contains(col), "{ps}");
    }
    assert!(lines[1].starts_with(&id[..12]), "{ps}");
    assert!(lines[1].contains(" Up "), "{ps}");
    assert!(lines[1].ends_with("web"), "{ps}");
    assert_eq!(node.ok(&["ps", "-q"]), format!("{}\n", &id[..12]));

    tracing::info!("logs, --tail, -t");
    wait::wait_until(Duration::from_secs(10), "output", || {
        Ok(node.ok(&["logs", "web"]).contains("two"))
    })
    .unwrap();
    let r = node.berth(&["logs", "web"]);
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str()),
        ("one\ntwo\n", "three\n")
    );
    let r = node.berth(&["logs", "--tail", "1", &id[..6]]);
    assert_eq!(format!("{}{}", r.stdout, r.stderr), "three\n");
    assert_eq!(node.ok(&["logs", "--since", "1h", "web"]), "one\ntwo\n");
    assert_eq!(
        node.ok(&["logs", "--since", "2999-01-01T00:00:00Z", "web"]),
        ""
    );
    let stamped = node.ok(&["logs", "-t", "web"]);
    for line in stamped.lines() {
        let (ts, text) = line.split_once(' ').unwrap();
        assert!(["one", "two"].contains(&text), "{stamped}");
        assert_eq!(ts.len(), 30, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }

    tracing::info!("exec runs inside the container");
    let r = node.berth(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/tmp",
        "web",
        "sh",
        "-c",
        "echo $X $(pwd) $(hostname); exit 4",
    ]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(r.stdout, format!("1 /tmp {}\n", &id[..12]));
    let r = node.berth(&["exec", "-u", "1000", "web", "id", "-u"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "1000\n"));
    let pid1 = node.ok(&["exec", "web", "cat", "/proc/1/cmdline"]);
    assert!(pid1.starts_with("sh\0-c\0trap"), "{pid1:?}");

    tracing::info!("kill -s USR1 reaches the process");
    assert_eq!(node.ok(&["kill", "-s", "USR1", "web"]), "web\n");
    wait::wait_until(Duration::from_secs(10), "trap output", || {
        Ok(node.ok(&["logs", "web"]).contains("got usr1"))
    })
    .unwrap();
    assert_eq!(node.inspect("web", "{{.State.Status}}"), "running");

    tracing::info!("inspect");
    let json: serde_json::Value = serde_json::from_str(&node.ok(&["inspect", "web"])).unwrap();
    let c = &json[0];
    assert_eq!(c["Id"], id.as_str());
    assert_eq!(c["Name"], "/web");
    assert_eq!(c["Path"], "sh");
    assert_eq!(c["State"]["Running"], true);
    assert!(c["State"]["Pid"].as_i64().unwrap() > 1);
    assert_eq!(c["Config"]["Hostname"], &id[..12]);
    assert_eq!(c["Config"]["Cmd"][0], "sh");
    assert!(
        c["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("BERTH_TEST=1"))
    );

    tracing::info!("kill (SIGKILL) ends it with 137; a second kill is refused");
    assert_eq!(node.ok(&["kill", "web"]), "web\n");
    wait::wait_until(Duration::from_secs(10), "exit", || {
        Ok(node.inspect("web", "{{.State.Status}}") == "exited")
    })
    .unwrap();
    assert_eq!(node.inspect("web", "{{.State.ExitCode}}"), "137");
    let r = node.berth(&["kill", "web"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        format!("Error: cannot kill container: web: container {id} is not running\n")
    );
    let r = node.berth(&["exec", "web", "true"]);
    assert_eq!(r.stderr, format!("Error: container {id} is not running\n"));
    assert!(
        node.ok(&["ps"]).lines().count() == 1,
        "ps hides exited containers"
    );
    let r = node.berth(&["logs", "nosuch"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (1, "Error: No such container: nosuch\n")
    );
    node.finish();
}

#[test]
fn stop_honours_the_grace_period_and_rm_needs_force_for_running_containers() {
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);

    tracing::info!("stop -t 1 of a process ignoring SIGTERM: about a second, then 137");
    node.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        &img,
        "sh",
        "-c",
        "trap '' TERM; echo ready; while true; do sleep 0.05; done",
    ]);
    wait::wait_until(Duration::from_secs(10), "ready", || {
        Ok(node.ok(&["logs", "stubborn"]).contains("ready"))
    })
    .unwrap();
    let started = Instant::now();
    assert_eq!(node.ok(&["stop", "-t", "1", "stubborn"]), "stubborn\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "stop took {took:?}"
    );
    assert_eq!(node.inspect("stubborn", "{{.State.ExitCode}}"), "137");
    assert!(node.ok(&["ps", "-a"]).contains("Exited (137)"));

    tracing::info!("a process that handles SIGTERM stops at once with its own code");
    node.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        &img,
        "sh",
        "-c",
        "trap 'exit 0' TERM; echo ready; while true; do sleep 0.05; done",
    ]);
    wait::wait_until(Duration::from_secs(10), "ready", || {
        Ok(node.ok(&["logs", "polite"]).contains("ready"))
    })
    .unwrap();
    let started = Instant::now();
    node.ok(&["stop", "polite"]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(node.inspect("polite", "{{.State.ExitCode}}"), "0");

    tracing::info!("image rm is refused while a container uses the image");
    let r = node.berth(&["image", "rm", &img]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with(&format!(
            "Error: conflict: unable to remove repository reference \"{img}\" (must force) - container "
        )),
        "{}",
        r.stderr
    );

    tracing::info!("rm of a running container needs -f");
    node.ok(&["run", "-d", "--name", "busy", &img, "sleep", "1000"]);
    let r = node.berth(&["rm", "busy"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "Error: cannot remove container \"/busy\": container is running: stop the container \
         before removing or force remove\n"
    );
    let pid = node.inspect("busy", "{{.State.Pid}}");
    assert_eq!(node.ok(&["rm", "-f", "busy"]), "busy\n");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.contains("(sleep)")
        }
    );
    assert_eq!(node.ok(&["rm", "stubborn", "polite"]), "stubborn\npolite\n");

    tracing::info!("with no container left the image can go");
    let out = node.ok(&["image", "rm", &img]);
    assert!(
        out.starts_with(&format!("Untagged: {img}\nDeleted: sha256:")),
        "{out}"
    );
    node.finish();
}

#[test]
fn resource_and_security_flags_take_effect() {
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);

    tracing::info!("--memory, --cpus, --pids-limit land in the container's cgroup");
    let id = node.ok(&[
        "run",
        "-d",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "20",
        &img,
        "sleep",
        "1000",
    ]);
    let id = id.trim();
    let cg = |controller: &str, file: &str| {
        fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(&node.parent)
                .join(id)
                .join(file),
        )
        .unwrap()
        .trim()
        .to_string()
    };
    assert_eq!(
        cg("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(cg("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(cg("pids", "pids.max"), "20");
    let json: serde_json::Value = serde_json::from_str(&node.ok(&["inspect", id])).unwrap();
    assert_eq!(json[0]["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(json[0]["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(json[0]["HostConfig"]["PidsLimit"], 20);
    node.ok(&["rm", "-f", id]);

    tracing::info!("--read-only");
    let r = node.berth(&["run", "--rm", "--read-only", &img, "touch", "/x"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    let r = node.berth(&["run", "--rm", &img, "touch", "/x"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    tracing::info!("--cap-drop / --cap-add");
    let caps = |extra: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&img, "grep", "CapEff", "/proc/self/status"]);
        node.ok(&args)
    };
    assert_eq!(caps(&[]), "CapEff:\t00000000a80425fb\n");
    assert_eq!(
        caps(&["--cap-drop", "ALL", "--cap-add", "CHOWN"]),
        "CapEff:\t0000000000000001\n"
    );
    assert_eq!(
        caps(&["--cap-drop", "NET_RAW"]),
        "CapEff:\t00000000a80405fb\n"
    );

    tracing::info!("--init puts an init in front of the command");
    assert_eq!(
        node.ok(&["run", "--rm", &img, "sh", "-c", "echo $$"]),
        "1\n"
    );
    let pid = node.ok(&["run", "--rm", "--init", &img, "sh", "-c", "echo $$"]);
    assert_ne!(pid, "1\n");
    node.finish();
}

#[test]
fn foreground_run_forwards_sigterm_to_the_container() {
    use std::io::{BufRead, BufReader};
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);
    let mut client = Command::new(bins::berth().unwrap())
        .arg("-H")
        .arg(format!("unix://{}", node.socket().display()))
        .args(["run", "--rm", &img, "sh", "-c"])
        .arg("trap 'echo got term; exit 5' TERM; echo ready; while true; do sleep 0.05; done")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(client.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got term");
    let status = client.wait().unwrap();
    assert_eq!(status.code(), Some(5));
    assert_eq!(node.ok(&["ps", "-aq"]), "", "--rm removed it");
    node.finish();
}

#[test]
fn logs_follow_streams_until_the_container_exits() {
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        &img,
        "sh",
        "-c",
        "echo first; sleep 0.5; echo second; sleep 0.5; echo third",
    ]);
    let started = Instant::now();
    let out = node.ok(&["logs", "-f", "slow"]);
    assert_eq!(out, "first\nsecond\nthird\n");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "-f returned before the container ended: {:?}",
        started.elapsed()
    );
    assert_eq!(node.inspect("slow", "{{.State.Status}}"), "exited");
    assert_eq!(node.ok(&["logs", "-f", "--tail", "1", "slow"]), "third\n");
    node.finish();
}

#[test]
fn run_detached_with_rm_removes_the_container_when_it_exits() {
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);
    let id = node.ok(&["run", "-d", "--rm", &img, "sh", "-c", "sleep 0.3"]);
    assert!(node.ok(&["ps", "-aq"]).contains(&id[..12]));
    wait::wait_until(Duration::from_secs(10), "auto-removal", || {
        Ok(node.ok(&["ps", "-aq"]).is_empty())
    })
    .unwrap();
    let r = node.berth(&["inspect", id.trim()]);
    assert_eq!(r.stderr, format!("Error: No such object: {}\n", id.trim()));
    node.finish();
}

#[test]
fn containers_survive_a_daemon_restart() {
    let mut node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "keeps",
        &img,
        "sh",
        "-c",
        "echo before; sleep 1000",
    ]);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "ends",
        &img,
        "sh",
        "-c",
        "sleep 0.5; exit 7",
    ]);
    let pid = node.inspect("keeps", "{{.State.Pid}}");

    tracing::info!("restart the daemon while one container runs and one is about to end");
    node.stop_daemon();
    std::thread::sleep(Duration::from_millis(800));
    node.spawn_daemon();
    assert_eq!(
        node.inspect("keeps", "{{.State.Status}} {{.State.Pid}}"),
        format!("running {pid}")
    );
    assert_eq!(
        node.inspect("ends", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 7"
    );
    assert_eq!(node.ok(&["logs", "keeps"]), "before\n");
    let r = node.berth(&["exec", "keeps", "echo", "still here"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "still here\n"));
    node.finish();
}

#[test]
fn signals_ignored_by_the_daemon_reach_the_container_with_default_dispositions() {
    // The supervisor ignores SIGINT/SIGHUP/SIGPIPE; a container must not inherit that.
    let node = Node::start();
    let img = node.load_busybox(DEFAULT_REF);
    node.ok(&[
        "run",
        "-d",
        "--name",
        "sig",
        &img,
        "sh",
        "-c",
        "trap 'echo got int; exit 5' INT; while true; do sleep 0.1; done",
    ]);
    wait::wait_until(Duration::from_secs(10), "the trap is installed", || {
        Ok(node.inspect("sig", "{{.State.Status}}") == "running")
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    node.ok(&["kill", "-s", "INT", "sig"]);
    wait::wait_until(
        Duration::from_secs(10),
        "SIGINT ends the container with 5",
        || Ok(node.inspect("sig", "{{.State.ExitCode}}") == "5"),
    )
    .unwrap();
    assert!(node.ok(&["logs", "sig"]).contains("got int"));
    node.ok(&["rm", "-f", "sig"]);
    node.finish();
}
