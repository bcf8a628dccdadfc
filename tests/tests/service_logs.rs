//! `berth service logs` on real daemons (issue 5): lines gathered from every node through the
//! managers, Docker's prefixes, `--tail`, `-t`, `--no-task-ids`, a task as the target, `-f`
//! through a follower manager (proxied to the leader's broker), and partial results with a
//! warning when a node is cut off.
//!
//! Cluster: node-0 (leader) and node-1 (manager), node-2 (worker), heartbeat 500 ms.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_tests::bins;
use berth_tests::cluster::{TestCluster, TestNode};
use berth_tests::image::DEFAULT_REF;
use berth_tests::wait;

/// Says hello once, then ticks every 300 ms; exits on SIGTERM.
const TASK: &str = "echo \"hello from $(hostname)\"; echo oops >&2; trap 'exit 0' TERM; \
                    i=0; while true; do sleep 0.3; i=$((i+1)); echo \"tick $i\"; done";

fn cluster() -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(3)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
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

/// The node names (`node-N`) of prefixed lines containing `needle`.
fn nodes_with(out: &str, needle: &str) -> BTreeSet<String> {
    out.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let at = l.split('|').next()?.trim();
            Some(at.rsplit_once('@')?.1.to_string())
        })
        .collect()
}

/// Whether `line` is `web.<slot>.<12-char task id>@node-<n>    | <text>`.
fn docker_prefixed(line: &str) -> bool {
    let Some((prefix, _text)) = line.split_once("    | ") else {
        return false;
    };
    let Some((task, node)) = prefix.trim_end().rsplit_once('@') else {
        return false;
    };
    let parts: Vec<&str> = task.split('.').collect();
    parts.len() == 3
        && parts[0] == "web"
        && parts[1].parse::<u32>().is_ok()
        && parts[2].len() == 12
        && node.starts_with("node-")
}

fn socket_of(node: &TestNode) -> String {
    let dir = node.state_dir().parent().expect("state dir has a parent");
    format!("unix://{}", dir.join("berthd.sock").display())
}

/// `berth service logs -f ...` on `node`, its stdout lines fed to a channel.
fn follow(node: &TestNode, args: &[&str]) -> anyhow::Result<(Child, mpsc::Receiver<String>)> {
    let mut cmd = node.host().command(bins::berth()?)?;
    cmd.args(["-H", &socket_of(node), "service", "logs", "-f"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((child, rx))
}

#[test]
fn logs_from_every_node_with_dockers_prefixes() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster()?;
    let leader = cluster.node(0);
    let out = leader.berth_ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        DEFAULT_REF,
        "sh",
        "-c",
        TASK,
    ])?;
    assert!(out.contains("verify: Service converged"), "{out}");

    // Every node's task said hello, under Docker's prefix.
    let all = std::cell::RefCell::new(String::new());
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "service logs shows hello from all three nodes",
        || {
            let out = leader.berth_ok(&["service", "logs", "web"])?;
            let done = nodes_with(&out, "| hello from ").len() == 3;
            *all.borrow_mut() = out;
            Ok(done)
        },
        || format!("{}\n{}", all.borrow(), cluster.logs()),
    )?;
    let all = all.into_inner();
    tracing::info!(
        "service logs:\n{}",
        all.lines().take(6).collect::<Vec<_>>().join("\n")
    );
    for line in all.lines() {
        assert!(docker_prefixed(line), "not Docker's prefix: {line:?}");
    }
    assert!(
        !all.contains("oops"),
        "stderr lines are not on stdout: {all}"
    );
    let both = leader.berth(&["service", "logs", "web"])?;
    assert!(String::from_utf8(both.stderr)?.contains("| oops"));

    // --tail 1: the last line of each task, one per node.
    let tail = leader.berth_ok(&["service", "logs", "--tail", "1", "web"])?;
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 3, "{tail}");
    assert_eq!(nodes_with(&tail, "| tick ").len(), 3, "{tail}");

    // --no-task-ids and -t.
    let short = leader.berth_ok(&[
        "service",
        "logs",
        "--no-task-ids",
        "-t",
        "--tail",
        "1",
        "web",
    ])?;
    for line in short.lines() {
        let (ts, rest) = line.split_once(' ').expect("timestamp first");
        assert_eq!(ts.len(), 30, "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        let task = rest.split('@').next().unwrap_or_default();
        assert!(
            task.starts_with("web.") && task.matches('.').count() == 1,
            "{line}"
        );
    }

    // A task as the target: only its lines.
    let ids = leader.berth_ok(&["service", "ps", "-q", "--no-trunc", "web"])?;
    let task = ids.lines().next().expect("a task id").trim().to_string();
    let one = leader.berth_ok(&["service", "logs", &task])?;
    let prefixes: BTreeSet<&str> = one
        .lines()
        .filter_map(|l| l.split("    | ").next())
        .collect();
    assert_eq!(prefixes.len(), 1, "{one}");
    assert!(prefixes.iter().all(|p| p.contains(&task[..12])), "{one}");
    let missing = leader.berth_err(&["service", "logs", "nosuchthing"])?;
    assert!(
        missing.contains("no such task or service: nosuchthing"),
        "{missing}"
    );

    // -f on the follower manager: new lines from all three nodes keep coming.
    let follower = cluster.node(1);
    let (mut child, lines) = follow(follower, &["--tail", "0", "web"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = BTreeSet::new();
    let mut first_ticks = Vec::new();
    while seen.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            assert!(docker_prefixed(&line), "{line:?}");
            assert!(
                !line.contains("hello from"),
                "--tail 0 shows no old line: {line}"
            );
            if let Some(node) = nodes_with(&line, "| tick ").into_iter().next() {
                seen.insert(node);
                first_ticks.push(line);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen.len(),
        3,
        "followed lines: {first_ticks:?}\n{}",
        cluster.logs()
    );
    Ok(())
}

#[test]
fn a_cut_off_node_gives_a_warning_and_the_rest_still_arrives() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster()?;
    let leader = cluster.node(0);
    leader.berth_ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        DEFAULT_REF,
        "sh",
        "-c",
        TASK,
    ])?;
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "hello from all three nodes",
        || {
            let all = leader.berth_ok(&["service", "logs", "web"])?;
            Ok(nodes_with(&all, "| hello from ").len() == 3)
        },
        || cluster.logs(),
    )?;

    cluster.net().cut(cluster.node(2).host())?;
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "node-2 is Down",
        || {
            let ls = leader.berth_ok(&["node", "ls"])?;
            Ok(ls
                .lines()
                .any(|l| l.contains("node-2") && l.contains(" Down ")))
        },
        || cluster.logs(),
    )?;
    let started = Instant::now();
    let out = leader.berth(&["service", "logs", "web"])?;
    let stdout = String::from_utf8(out.stdout)?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(out.status.success(), "partial results exit 0: {stderr}");
    assert!(
        stderr.contains("warning: incomplete log stream: node node-2 is down"),
        "{stderr}"
    );
    let nodes = nodes_with(&stdout, "| hello from ");
    assert!(
        nodes.contains("node-0") && nodes.contains("node-1") && !nodes.contains("node-2"),
        "{stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no waiting for the lost node: {:?}",
        started.elapsed()
    );
    cluster.net().heal(cluster.node(2).host())?;
    Ok(())
}
