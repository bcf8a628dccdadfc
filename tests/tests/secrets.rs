//! Secrets and configs on real daemons, real containers and the real CLI (issue 8): two
//! managers (the second joined, so it must receive the data key) and one worker.
//!
//! - the container reads `/run/secrets/TARGET` (tmpfs, read-only) with the right content,
//!   owner and mode, and the config at its path;
//! - no clear copy of the secret exists on any disk: not under the worker's or the managers'
//!   state directories (Raft log, snapshot), not anywhere under /tmp — while the config's
//!   content, stored in clear, IS found in the Raft data (the scan can see what it looks for);
//! - `secret rm`/`config rm` are refused while a service uses them, naming it; sizes and names
//!   are validated with clear errors;
//! - `secret rotate` rolls the service, whose new container reads the new content.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use berth_tests::bins;
use berth_tests::cluster::{TestCluster, TestNode};
use berth_tests::image::DEFAULT_REF;
use berth_tests::wait;
use serde_json::Value;

/// A task command that exits promptly on SIGTERM.
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// A value no file on this machine holds: pid, time and a counter, hex-encoded. It is never
/// printed (a log captured under /tmp would hold it).
fn marker(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{what}-{:x}-{nanos:x}-{:x}",
        std::process::id(),
        nanos.rotate_left(17) ^ 0x5eed
    )
}

fn socket_of(node: &TestNode) -> anyhow::Result<String> {
    let dir = node
        .state_dir()
        .parent()
        .context("state dir has no parent")?;
    Ok(format!("unix://{}", dir.join("berthd.sock").display()))
}

/// `berth ARGS` on `node` with `input` on stdin (so the secret never sits in a file).
fn berth_stdin(
    node: &TestNode,
    args: &[&str],
    input: &[u8],
) -> anyhow::Result<std::process::Output> {
    let mut cmd: Command = node.host().command(bins::berth()?)?;
    cmd.args(["-H", &socket_of(node)?])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning berth")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input)
        .context("writing stdin")?;
    Ok(child.wait_with_output()?)
}

fn berth_stdin_ok(node: &TestNode, args: &[&str], input: &[u8]) -> anyhow::Result<String> {
    let out = berth_stdin(node, args, input)?;
    if !out.status.success() {
        bail!(
            "berth {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn berth_stdin_err(node: &TestNode, args: &[&str], input: &[u8]) -> anyhow::Result<String> {
    let out = berth_stdin(node, args, input)?;
    ensure!(
        !out.status.success(),
        "berth {} succeeded but should have failed",
        args.join(" ")
    );
    Ok(String::from_utf8(out.stderr)?)
}

/// `value` as it may appear on disk: itself, and its base64 encodings at each of the three
/// alignments inside a longer base64 stream (the Raft log stores batches base64-encoded).
fn encodings(value: &str) -> Vec<String> {
    let mut all = vec![value.to_owned()];
    for k in 0..3usize {
        let mut bytes = vec![0u8; k];
        bytes.extend_from_slice(value.as_bytes());
        let text = base64_encode(&bytes);
        let from = if k > 0 { 4 } else { 0 };
        let to = 4 * (bytes.len() / 3);
        all.push(text[from..to].to_owned());
    }
    all
}

/// Files under `paths` holding `value` in any of its [`encodings`] (grep: recursive, binary
/// as text, no devices/FIFOs, unreadable or vanishing files skipped). The value is passed on
/// the command line only.
fn files_holding(value: &str, paths: &[&Path]) -> anyhow::Result<Vec<String>> {
    let mut args: Vec<String> = ["-r", "-l", "-F", "-a", "-s", "-D", "skip"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for e in encodings(value) {
        args.push("-e".into());
        args.push(e);
    }
    args.push("--".into());
    let out = Command::new("grep")
        .args(&args)
        .args(paths)
        .output()
        .context("running grep")?;
    // 0: found, 1: not found, 2: some file could not be read (others were searched).
    ensure!(
        out.status.code().is_some_and(|c| c <= 2),
        "grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Mount points at or under `dir` in this (the host's) mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// One manager (node 0), a second manager (node 1) and a worker
/// (node 2), image loaded, every node Ready.
fn cluster() -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(3)?;
    cluster.init_with(
        0,
        &[
            "--dispatcher-heartbeat",
            "500ms",
            "--snapshot-interval",
            "5",
        ],
    )?;
    cluster.join(1, 0, "manager")?;
    cluster.join(2, 0, "worker")?;
    cluster.load_test_image()?;
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "every node is Ready",
        || {
            let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
            Ok(ls.lines().skip(1).filter(|l| l.contains(" Ready ")).count() == 3)
        },
        || cluster.logs(),
    )?;
    Ok(cluster)
}

/// The running container of `service` on `node` (its `ps` lists task containers by name).
fn running_container(node: &TestNode, service: &str) -> anyhow::Result<Option<String>> {
    let ps = node.berth_ok(&["ps", "--format", "json"])?;
    for line in ps.lines() {
        let c: Value = serde_json::from_str(line)?;
        if c["Names"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("{service}.")))
        {
            return Ok(c["ID"].as_str().map(str::to_owned));
        }
    }
    Ok(None)
}

fn exec(node: &TestNode, container: &str, cmd: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["exec", container];
    args.extend_from_slice(cmd);
    node.berth_ok(&args)
}

fn data_key(node: &TestNode) -> Option<Vec<u8>> {
    std::fs::read(node.state_dir().join("data.key")).ok()
}

fn inspect(node: &TestNode, args: &[&str]) -> anyhow::Result<Value> {
    let out = node.berth_ok(args)?;
    let all: Value = serde_json::from_str(&out)?;
    Ok(all[0].clone())
}

#[test]
fn secrets_and_configs_reach_containers_on_tmpfs_and_no_disk_in_clear() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster()?;
    let (m0, m1, worker) = (cluster.node(0), cluster.node(1), cluster.node(2));

    tracing::info!("the joined manager receives the data key");
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "manager 1 holds the data key",
        || Ok(data_key(m1).is_some()),
        || cluster.logs(),
    )?;
    let key = data_key(m0).context("manager 0 has no data key")?;
    ensure!(key.len() == 32, "the data key is {} bytes", key.len());
    ensure!(
        data_key(m1) == Some(key),
        "the managers hold different keys"
    );
    ensure!(data_key(worker).is_none(), "a worker holds the data key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m0.state_dir().join("data.key"))?
        .permissions()
        .mode();
    ensure!(
        mode & 0o777 == 0o600,
        "data.key has mode {:o}",
        mode & 0o777
    );

    tracing::info!("create a secret (through the follower manager) and a config");
    let secret = marker("berth-secret");
    let config = marker("berth-config");
    let secret_id = berth_stdin_ok(
        m1,
        &["secret", "create", "-l", "env=test", "db_pw", "-"],
        secret.as_bytes(),
    )?
    .trim()
    .to_owned();
    ensure!(secret_id.len() >= 12, "secret create printed {secret_id:?}");
    let config_file = cluster.net().dir().join("app.conf");
    std::fs::write(&config_file, config.as_bytes())?;
    let config_id = m0
        .berth_ok(&[
            "config",
            "create",
            "app_conf",
            &config_file.display().to_string(),
        ])?
        .trim()
        .to_owned();

    let ls = m0.berth_ok(&["secret", "ls"])?;
    let header: Vec<&str> = ls.lines().next().unwrap_or("").split_whitespace().collect();
    ensure!(
        header == ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"],
        "secret ls header: {ls}"
    );
    ensure!(
        ls.lines()
            .any(|l| l.starts_with(&secret_id) && l.contains("db_pw")),
        "secret ls: {ls}"
    );
    let header = m0.berth_ok(&["config", "ls"])?;
    ensure!(
        header
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["ID", "NAME", "CREATED", "UPDATED"],
        "config ls: {header}"
    );
    let s = inspect(m0, &["secret", "inspect", "db_pw"])?;
    ensure!(s["ID"] == secret_id.as_str(), "secret inspect: {s}");
    ensure!(s["Spec"]["Labels"]["env"] == "test", "secret inspect: {s}");
    ensure!(s["Spec"].get("Data").is_none(), "secret inspect shows data");
    let raw = m0.berth_ok(&["secret", "inspect", &secret_id])?;
    ensure!(!raw.contains(&secret), "secret inspect prints the secret");
    let c = inspect(m0, &["config", "inspect", "app_conf"])?;
    ensure!(c["ID"] == config_id.as_str(), "config inspect: {c}");
    let b64 = c["Spec"]["Data"].as_str().unwrap_or("");
    ensure!(
        base64_decode(b64)? == config.as_bytes(),
        "config inspect Spec.Data is not the content in base64"
    );

    tracing::info!("a service uses both");
    m0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--constraint",
        "node.role==worker",
        "--secret",
        "source=db_pw,target=db_password,uid=1000,gid=1000,mode=0400",
        "--config",
        "source=app_conf,target=/etc/app.conf,mode=0440",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    let mut container = None;
    wait::wait_until_or_dump(
        Duration::from_secs(40),
        "app runs on the worker",
        || {
            container = running_container(worker, "app")?;
            Ok(container.is_some())
        },
        || {
            format!(
                "{}\n{}",
                m0.berth_ok(&["service", "ps", "--no-trunc", "app"])
                    .unwrap_or_default(),
                cluster.logs()
            )
        },
    )?;
    let container = container.context("no container")?;

    tracing::info!("the container reads them with owner and mode");
    let read = exec(worker, &container, &["cat", "/run/secrets/db_password"])?;
    ensure!(
        read == secret,
        "/run/secrets/db_password does not hold the secret"
    );
    let st = exec(
        worker,
        &container,
        &["stat", "-c", "%u %g %a", "/run/secrets/db_password"],
    )?;
    ensure!(st.trim() == "1000 1000 400", "secret file stat: {st}");
    let read = exec(worker, &container, &["cat", "/etc/app.conf"])?;
    ensure!(read == config, "/etc/app.conf does not hold the config");
    let st = exec(
        worker,
        &container,
        &["stat", "-c", "%u %g %a", "/etc/app.conf"],
    )?;
    ensure!(st.trim() == "0 0 440", "config file stat: {st}");
    let mounts = exec(worker, &container, &["cat", "/proc/mounts"])?;
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some("/run/secrets"))
        .with_context(|| format!("/run/secrets is not a mount: {mounts}"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    ensure!(fields[2] == "tmpfs", "/run/secrets is {line}");
    ensure!(
        fields[3].split(',').any(|o| o == "ro"),
        "/run/secrets is not read-only: {line}"
    );
    let denied = worker.berth(&[
        "exec",
        "-u",
        "65534",
        &container,
        "cat",
        "/run/secrets/db_password",
    ])?;
    ensure!(
        !denied.status.success(),
        "nobody could read a mode 0400 secret of uid 1000"
    );
    let write = worker.berth(&[
        "exec",
        &container,
        "sh",
        "-c",
        "echo x > /run/secrets/db_password",
    ])?;
    ensure!(!write.status.success(), "the secret file is writable");

    tracing::info!("nothing is left mounted on the worker's host");
    let task_files = worker.state_dir().join("agent/task-files");
    ensure!(
        mounts_under(&task_files).is_empty(),
        "tmpfs left mounted on the host: {:?}",
        mounts_under(&task_files)
    );
    let left: Vec<PathBuf> = std::fs::read_dir(&task_files)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    ensure!(left.is_empty(), "task files left on the host: {left:?}");

    tracing::info!("remove is refused while the service uses them");
    let err = m0.berth_err(&["secret", "rm", "db_pw"])?;
    ensure!(
        err.contains("in use") && err.contains("app"),
        "secret rm while used: {err}"
    );
    let err = m0.berth_err(&["config", "rm", "app_conf"])?;
    ensure!(
        err.contains("in use") && err.contains("app"),
        "config rm while used: {err}"
    );

    tracing::info!("sizes and names are checked");
    let too_big = vec![b'x'; 500 * 1024];
    let err = berth_stdin_err(m0, &["secret", "create", "big", "-"], &too_big)?;
    ensure!(err.contains("less than 500 KiB"), "oversized secret: {err}");
    // The largest secret and config Docker accepts are taken, replicate to the second
    // manager (one Raft entry each) and leave the cluster writable.
    let largest = vec![b'x'; 500 * 1024 - 1];
    berth_stdin_ok(m0, &["secret", "create", "fits", "-"], &largest)?;
    let largest = vec![b'y'; 1000 * 1024 - 1];
    berth_stdin_ok(m0, &["config", "create", "fits", "-"], &largest)?;
    wait::wait_until(
        Duration::from_secs(10),
        "the largest ones reach manager 1",
        || {
            let secrets = cluster.node(1).berth_ok(&["secret", "ls"])?;
            let configs = cluster.node(1).berth_ok(&["config", "ls"])?;
            Ok(secrets.contains(" fits ") && configs.contains(" fits "))
        },
    )?;
    m0.berth_ok(&["secret", "rm", "fits"])?;
    cluster.node(1).berth_ok(&["config", "rm", "fits"])?;
    let err = berth_stdin_err(
        m0,
        &["config", "create", "big", "-"],
        &vec![b'x'; 1000 * 1024],
    )?;
    ensure!(
        err.contains("less than 1000 KiB"),
        "oversized config: {err}"
    );
    let err = berth_stdin_err(m0, &["secret", "create", "empty", "-"], b"")?;
    ensure!(err.contains("larger than 0"), "empty secret: {err}");
    let long = "x".repeat(65);
    for bad in ["-dash", "a/b", "sp ace", long.as_str()] {
        let err = berth_stdin_err(m0, &["secret", "create", bad, "-"], b"v")?;
        ensure!(err.contains("secret"), "bad secret name {bad:?}: {err}");
        let err = berth_stdin_err(m0, &["config", "create", bad, "-"], b"v")?;
        ensure!(err.contains("config"), "bad config name {bad:?}: {err}");
    }
    let err = berth_stdin_err(m0, &["secret", "create", "db_pw", "-"], b"v")?;
    ensure!(err.contains("already exists"), "duplicate name: {err}");

    tracing::info!("rotation rolls the service onto the new content");
    let rotated = marker("berth-secret-v2");
    let new_id = berth_stdin_ok(m0, &["secret", "rotate", "db_pw", "-"], rotated.as_bytes())?
        .trim()
        .to_owned();
    ensure!(
        new_id != secret_id && new_id.len() >= 12,
        "rotate printed {new_id:?}"
    );
    let s = inspect(m0, &["secret", "inspect", "db_pw"])?;
    ensure!(
        s["ID"] == new_id.as_str(),
        "db_pw is not the new version: {s}"
    );
    ensure!(s["Spec"]["Labels"]["berth.secret.version"] == "2", "{s}");
    ensure!(
        s["Spec"]["Labels"]["berth.secret.previous"] == secret_id.as_str(),
        "{s}"
    );
    ensure!(s["Spec"]["Labels"]["env"] == "test", "labels kept: {s}");
    let old = inspect(m0, &["secret", "inspect", &secret_id])?;
    ensure!(
        old["Spec"]["Name"] == "db_pw.v1",
        "the old version is kept for rollback as db_pw.v1: {old}"
    );
    let svc = inspect(m0, &["service", "inspect", "app"])?;
    let refs = &svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"];
    ensure!(
        refs[0]["SecretID"] == new_id.as_str(),
        "service not moved: {refs}"
    );
    let mut new_container = None;
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        "a container of app reads the rotated secret",
        || {
            let Some(c) = running_container(worker, "app")? else {
                return Ok(false);
            };
            let read = worker.berth(&["exec", &c, "cat", "/run/secrets/db_password"])?;
            if read.status.success() && read.stdout == rotated.as_bytes() {
                new_container = Some(c);
                return Ok(true);
            }
            Ok(false)
        },
        || {
            format!(
                "{}\n{}",
                m0.berth_ok(&["service", "ps", "--no-trunc", "app"])
                    .unwrap_or_default(),
                cluster.logs()
            )
        },
    )?;
    ensure!(
        new_container.as_deref() != Some(container.as_str()),
        "same container"
    );
    let st = exec(
        worker,
        new_container.as_deref().unwrap_or(""),
        &["stat", "-c", "%u %g %a", "/run/secrets/db_password"],
    )?;
    ensure!(st.trim() == "1000 1000 400", "rotated secret stat: {st}");

    tracing::info!("service update --secret-add / --secret-rm");
    let extra = marker("berth-extra");
    berth_stdin_ok(m0, &["secret", "create", "extra", "-"], extra.as_bytes())?;
    m0.berth_ok(&[
        "service",
        "update",
        "-d",
        "--secret-add",
        "source=extra,target=more/extra.txt",
        "app",
    ])?;
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        "a container of app reads the added secret next to the rotated one",
        || {
            let Some(c) = running_container(worker, "app")? else {
                return Ok(false);
            };
            let added = worker.berth(&["exec", &c, "cat", "/run/secrets/more/extra.txt"])?;
            let kept = worker.berth(&["exec", &c, "cat", "/run/secrets/db_password"])?;
            Ok(added.stdout == extra.as_bytes() && kept.stdout == rotated.as_bytes())
        },
        || cluster.logs(),
    )?;
    let err = m0.berth_err(&["secret", "rm", "extra"])?;
    ensure!(err.contains("app"), "secret rm of an added secret: {err}");
    m0.berth_ok(&["service", "update", "-d", "--secret-rm", "extra", "app"])?;
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        "app's container no longer has the removed secret",
        || {
            let Some(c) = running_container(worker, "app")? else {
                return Ok(false);
            };
            let gone = worker.berth(&["exec", &c, "test", "-e", "/run/secrets/more/extra.txt"])?;
            let kept = worker.berth(&["exec", &c, "cat", "/run/secrets/db_password"])?;
            Ok(!gone.status.success() && kept.stdout == rotated.as_bytes())
        },
        || cluster.logs(),
    )?;
    m0.berth_ok(&["secret", "rm", "extra"])?;

    tracing::info!("no clear secret on any disk; the scan does find clear data");
    let raft0 = m0.state_dir().join("raft");
    let raft1 = m1.state_dir().join("raft");
    // Positive control: the config is stored in clear, so the scan finds it in both managers'
    // Raft logs and, with `--snapshot-interval 5`, in their snapshots.
    for raft in [&raft0, &raft1] {
        let found = files_holding(&config, &[raft])?;
        ensure!(
            !found.is_empty(),
            "the scan does not see clear data in {raft:?}"
        );
        let snapshots = raft.join("snapshot");
        let found = files_holding(&config, &[snapshots.as_path()])?;
        ensure!(
            !found.is_empty(),
            "no snapshot in {snapshots:?} holds the config (snapshot interval 5)"
        );
    }
    let canary = marker("berth-canary");
    std::fs::write(worker.state_dir().join("canary"), canary.as_bytes())?;
    ensure!(
        !files_holding(&canary, &[Path::new("/tmp")])?.is_empty(),
        "the /tmp scan does not find a planted file"
    );
    let mut roots: Vec<PathBuf> = vec![
        PathBuf::from("/tmp"),
        cluster.net().dir().to_path_buf(),
        raft0.clone(),
        raft1.clone(),
    ];
    for n in cluster.nodes() {
        roots.push(n.state_dir().clone());
    }
    let root_refs: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
    for (what, value) in [
        ("the secret", &secret),
        ("the rotated secret", &rotated),
        ("the added secret", &extra),
    ] {
        let found = files_holding(value, &root_refs)?;
        ensure!(found.is_empty(), "{what} is on disk in clear: {found:?}");
    }

    tracing::info!("once the service is gone, both versions and the config can be removed");
    m0.berth_ok(&["service", "rm", "app"])?;
    m0.berth_ok(&["secret", "rm", "db_pw", "db_pw.v1"])?;
    m0.berth_ok(&["config", "rm", "app_conf"])?;
    let ls = m0.berth_ok(&["secret", "ls", "-q"])?;
    ensure!(ls.trim().is_empty(), "secrets left: {ls}");
    Ok(())
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (the `config inspect` encoding), decoded.
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = BASE64
            .iter()
            .position(|&a| a == c)
            .with_context(|| format!("{c:?} is not base64"))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[test]
fn the_disk_scan_recognises_base64_at_every_alignment() {
    let value = "berth-secret-xyz";
    for pad in 0..3 {
        let stream = base64_encode(format!("{}{value}tail", "p".repeat(pad)).as_bytes());
        assert!(
            encodings(value).iter().any(|e| stream.contains(e.as_str())),
            "alignment {pad} missed"
        );
    }
    assert_eq!(
        base64_decode(&base64_encode(b"port=80")).unwrap(),
        b"port=80"
    );
}
