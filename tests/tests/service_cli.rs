//! `berth service` and `berth node ps` on a real `berthd` in its own network namespace, driven
//! by the real CLI: what the CLI prints, and what the manager then holds (issue 5's CLI).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_tests::bins;
use berth_tests::cluster::{TestCluster, TestNode};
use berth_tests::wait;
use serde_json::Value;

/// The local API socket of a test node (next to its state directory, see `TestCluster::new`).
fn socket_of(node: &TestNode) -> anyhow::Result<String> {
    let dir = node
        .state_dir()
        .parent()
        .ok_or_else(|| anyhow::anyhow!("state dir has no parent"))?;
    Ok(format!("unix://{}", dir.join("berthd.sock").display()))
}

/// Cells of a table's data rows (columns are separated by at least three spaces).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn inspect(node: &TestNode, name: &str) -> anyhow::Result<Value> {
    let out = node.berth_ok(&["service", "inspect", name])?;
    let all: Value = serde_json::from_str(&out)?;
    Ok(all[0].clone())
}

#[test]
fn services_are_created_listed_inspected_scaled_and_removed() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = TestCluster::new(1)?;
    cluster.init(0)?;
    let node = cluster.node(0);

    tracing::info!("create");
    let id = node
        .berth_ok(&[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "3",
            "--limit-memory",
            "64M",
            "--limit-cpu",
            "0.5",
            "-p",
            "8080:80",
            "-e",
            "A=1",
            "--constraint",
            "node.role==manager",
            "--restart-condition",
            "on-failure",
            "busybox",
            "sleep",
            "600",
        ])?
        .trim()
        .to_string();
    assert_eq!(id.len(), 25, "create prints the full service id: {id:?}");

    tracing::info!("ls");
    let ls = node.berth_ok(&["service", "ls"])?;
    assert!(
        ls.starts_with("ID             NAME   MODE         REPLICAS   IMAGE     PORTS\n"),
        "{ls}"
    );
    let table = rows(&ls);
    assert_eq!(table.len(), 1, "{ls}");
    assert_eq!(table[0][0], id[..12]);
    assert_eq!(table[0][1..3], ["web", "replicated"]);
    assert!(table[0][3].ends_with("/3"), "{ls}");
    assert_eq!(table[0][4], "busybox");
    assert_eq!(table[0][5], "*:8080->80/tcp");
    assert_eq!(
        node.berth_ok(&["service", "ls", "-q"])?,
        format!("{}\n", &id[..12])
    );
    let json: Value = serde_json::from_str(
        node.berth_ok(&["service", "ls", "--format", "json"])?
            .trim(),
    )?;
    assert_eq!(json["Name"], "web");
    assert_eq!(json["Mode"], "replicated");

    tracing::info!("inspect");
    let web = inspect(node, "web")?;
    assert_eq!(web["ID"], id.as_str());
    let spec = &web["Spec"];
    assert_eq!(spec["Name"], "web");
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 3);
    let template = &spec["TaskTemplate"];
    assert_eq!(template["ContainerSpec"]["Image"], "busybox");
    assert_eq!(
        template["ContainerSpec"]["Args"],
        serde_json::json!(["sleep", "600"])
    );
    assert_eq!(template["ContainerSpec"]["Env"], serde_json::json!(["A=1"]));
    assert_eq!(template["Resources"]["Limits"]["MemoryBytes"], 64 << 20);
    assert_eq!(template["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
    assert_eq!(template["RestartPolicy"]["Condition"], "on-failure");
    assert_eq!(template["RestartPolicy"]["Delay"], 5_000_000_000i64);
    assert_eq!(
        template["Placement"]["Constraints"],
        serde_json::json!(["node.role==manager"])
    );
    assert_eq!(spec["UpdateConfig"]["Monitor"], 5_000_000_000i64);
    assert_eq!(spec["EndpointSpec"]["Ports"][0]["PublishedPort"], 8080);
    let version = web["Version"]["Index"].as_u64().unwrap_or_default();
    assert!(version > 0, "{web}");
    // By id prefix, and in Docker's --pretty form.
    assert_eq!(inspect(node, &id[..6])?["ID"], id.as_str());
    let pretty = node.berth_ok(&["service", "inspect", "--pretty", "web"])?;
    assert!(
        pretty.contains("Service Mode:\tReplicated\n Replicas:\t3\n"),
        "{pretty}"
    );
    assert!(pretty.contains("  Memory:\t64MiB\n"), "{pretty}");

    tracing::info!("scale");
    let out = node.berth_ok(&["service", "scale", "-d", "web=5"])?;
    assert_eq!(out, "web scaled to 5\n");
    let web = inspect(node, "web")?;
    assert_eq!(web["Spec"]["Mode"]["Replicated"]["Replicas"], 5);
    assert!(web["Version"]["Index"].as_u64().unwrap_or_default() > version);
    assert_eq!(web["PreviousSpec"]["Mode"]["Replicated"]["Replicas"], 3);
    let table = rows(&node.berth_ok(&["service", "ls"])?);
    assert!(table[0][3].ends_with("/5"), "{table:?}");

    tracing::info!("global services refuse scale; names are unique");
    node.berth_ok(&[
        "service", "create", "-d", "--name", "agent", "--mode", "global", "busybox", "sleep", "600",
    ])?;
    let err = node.berth_err(&["service", "scale", "-d", "agent=2"])?;
    assert!(
        err.contains("scale can only be used with replicated mode"),
        "{err}"
    );
    let err = node.berth_err(&["service", "create", "-d", "--name", "web", "busybox"])?;
    assert!(
        err.starts_with("Error: ") && err.contains("\"web\" already exists"),
        "{err}"
    );
    let table = rows(&node.berth_ok(&["service", "ls"])?);
    let names: Vec<&str> = table.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(names, ["agent", "web"]);
    assert_eq!(table[0][2], "global");

    tracing::info!("ps tables");
    let ps = node.berth_ok(&["service", "ps", "web", "agent"])?;
    let header: Vec<&str> = ps
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header.join(" "),
        "ID NAME IMAGE NODE DESIRED STATE CURRENT STATE ERROR PORTS",
        "{ps}"
    );
    // Older tasks of a slot (the image is not loaded here, so tasks are rejected and
    // replaced) are listed under their slot as `\_ NAME`.
    for row in rows(&ps) {
        let name = row[1].trim_start_matches("\\_ ");
        assert!(
            name.starts_with("web.") || name.starts_with("agent."),
            "{ps}"
        );
    }
    let node_ps = node.berth_ok(&["node", "ps"])?;
    assert!(node_ps.starts_with("ID "), "{node_ps}");
    let err = node.berth_err(&["node", "ps", "no-such-node"])?;
    assert!(err.contains("node no-such-node not found"), "{err}");
    let err = node.berth_err(&["service", "ps", "-f", "color=red", "web"])?;
    assert!(err.contains("invalid filter 'color'"), "{err}");

    tracing::info!("errors name what is wrong");
    let err = node.berth_err(&["service", "inspect", "nope"])?;
    assert!(err.contains("Error: no such service: nope"), "{err}");
    let err = node.berth_err(&[
        "service",
        "create",
        "-d",
        "--limit-memory",
        "64X",
        "busybox",
    ])?;
    assert!(
        err.contains("--limit-memory") && err.contains("64X"),
        "{err}"
    );
    let err = node.berth_err(&["service", "scale", "web"])?;
    assert!(err.contains("invalid scale specifier 'web'"), "{err}");
    let err = node.berth_err(&["service", "logs", "no-such-service"])?;
    assert!(err.contains("no-such-service"), "{err}");

    tracing::info!("rm");
    // A name that matches nothing fails for that argument only; the others are removed.
    let out = node.berth(&["service", "rm", "web", "nope", "agent"])?;
    assert!(!out.status.success());
    assert_eq!(String::from_utf8(out.stdout)?, "web\nagent\n");
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(err, "Error: no such service: nope\n");
    assert_eq!(node.berth_ok(&["service", "ls", "-q"])?, "");
    let err = node.berth_err(&["service", "rm", "web"])?;
    assert!(err.contains("no such service: web"), "{err}");
    Ok(())
}

/// Kills the child on drop (a failed assertion must not leave the client running).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn create_shows_progress_until_interrupted_and_the_service_stays() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = TestCluster::new(1)?;
    cluster.init(0)?;
    let node = cluster.node(0);
    let mut cmd = node.host().command(bins::berth()?)?;
    // A constraint no node meets: the service cannot converge, so the client keeps waiting.
    cmd.args(["-H", &socket_of(node)?])
        .args([
            "service",
            "create",
            "--name",
            "waits",
            "--constraint",
            "node.labels.never==true",
            "busybox",
            "sleep",
            "600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn()?);
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen
        .iter()
        .any(|l: &String| l.starts_with("overall progress: "))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => anyhow::bail!("no progress line within 20 s; got {seen:?}"),
        }
    }
    assert_eq!(seen[0].len(), 25, "the id comes first: {seen:?}");
    assert_eq!(seen[1], "overall progress: 0 out of 1 tasks", "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\x1b')),
        "no cursor movement when stdout is a pipe: {seen:?}"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the client did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
    }
    assert!(status.success(), "{status}: {seen:?}");
    assert!(
        seen.contains(&"Operation continuing in background.".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"Use `berth service ps waits` to check progress.".to_string()),
        "{seen:?}"
    );
    let ls = rows(&node.berth_ok(&["service", "ls"])?);
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0][1], "waits");
    assert_eq!(ls[0][3], "0/1");
    Ok(())
}
