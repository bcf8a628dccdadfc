//! Replicated and global services on real daemons, real containers and the real CLI
//! (issue 5): one manager and two workers in netns test hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_tests::cluster::TestCluster;
use berth_tests::image::DEFAULT_REF;
use berth_tests::wait;

/// A task command that exits promptly on SIGTERM (a PID-1 `sleep` would wait out the grace).
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// One manager (node 0, heartbeat 500 ms) and `workers` workers, image loaded everywhere.
fn cluster(workers: usize) -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(1 + workers)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
    for i in 1..=workers {
        cluster.join(i, 0, "worker")?;
    }
    cluster.load_test_image()?;
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "every node is Ready",
        || {
            let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
            Ok(ls.lines().skip(1).filter(|l| l.contains(" Ready ")).count() == 1 + workers)
        },
        || cluster.logs(),
    )?;
    Ok(cluster)
}

/// Running tasks of `service` per node hostname, from `service ps`.
fn running_per_node(
    cluster: &TestCluster,
    service: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let ps =
        cluster
            .node(0)
            .berth_ok(&["service", "ps", "-f", "desired-state=running", service])?;
    let mut per_node = BTreeMap::new();
    for line in ps.lines().skip(1) {
        let cells: Vec<&str> = line
            .split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        // ID NAME IMAGE NODE DESIRED CURRENT...
        if cells.len() >= 6 && cells[5].starts_with("Running") {
            *per_node.entry(cells[3].to_string()).or_default() += 1;
        }
    }
    Ok(per_node)
}

fn wait_running(
    cluster: &TestCluster,
    service: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut last = BTreeMap::new();
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        what,
        || {
            last = running_per_node(cluster, service)?;
            Ok(check(&last))
        },
        || {
            format!(
                "{}\n{}",
                cluster
                    .node(0)
                    .berth_ok(&["service", "ps", service])
                    .unwrap_or_default(),
                cluster.logs()
            )
        },
    )?;
    Ok(last)
}

#[test]
fn replicas_spread_scale_and_converge() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(2)?;
    let out = cluster.node(0).berth_ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "6",
        "--update-monitor",
        "0s",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    assert!(out.contains("verify: Service converged"), "{out}");
    let spread = running_per_node(&cluster, "web")?;
    assert_eq!(
        spread.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2],
        "{spread:?}"
    );
    let ls = cluster.node(0).berth_ok(&["service", "ls"])?;
    assert!(ls.contains("6/6"), "{ls}");

    cluster
        .node(0)
        .berth_ok(&["service", "scale", "-d", "web=9"])?;
    wait_running(&cluster, "web", "9 replicas, 3 per node", |m| {
        m.values().all(|&n| n == 3) && m.len() == 3
    })?;
    cluster
        .node(0)
        .berth_ok(&["service", "scale", "-d", "web=2"])?;
    wait_running(&cluster, "web", "2 replicas", |m| {
        m.values().sum::<usize>() == 2
    })?;
    // The scaled-down containers are really gone from the nodes.
    wait::wait_until(Duration::from_secs(15), "only 2 containers run", || {
        let mut running = 0;
        for node in cluster.nodes() {
            running += node.berth_ok(&["ps", "-q"])?.lines().count();
        }
        Ok(running == 2)
    })?;

    cluster.node(0).berth_ok(&["service", "rm", "web"])?;
    wait::wait_until(
        Duration::from_secs(15),
        "service rm stops every container",
        || {
            let mut running = 0;
            for node in cluster.nodes() {
                running += node.berth_ok(&["ps", "-q"])?.lines().count();
            }
            Ok(running == 0)
        },
    )?;
    Ok(())
}

#[test]
fn a_killed_container_is_replaced() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1)?;
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "svc",
        "--replicas",
        "2",
        "--restart-delay",
        "0s",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    wait_running(&cluster, "svc", "2 running", |m| {
        m.values().sum::<usize>() == 2
    })?;
    let victim = cluster.node(1).berth_ok(&["ps", "-q"])?;
    let victim = victim
        .lines()
        .next()
        .expect("a container on the worker")
        .to_string();
    cluster.node(1).berth_ok(&["kill", &victim])?;
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "the killed task is replaced in its slot",
        || {
            let ps = cluster.node(0).berth_ok(&["service", "ps", "svc"])?;
            let failed = ps
                .lines()
                .any(|l| l.contains("Failed") || l.contains("\\_"));
            Ok(failed && running_per_node(&cluster, "svc")?.values().sum::<usize>() == 2)
        },
        || cluster.logs(),
    )?;
    Ok(())
}

#[test]
fn a_lost_worker_has_its_tasks_replaced_and_no_slot_runs_twice() -> anyhow::Result<()> {
    wait::init_test_logging();
    let mut cluster = cluster(2)?;
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--replicas",
        "6",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    wait_running(&cluster, "web", "6 running on 3 nodes", |m| {
        m.len() == 3 && m.values().sum::<usize>() == 6
    })?;

    // Cut worker 2 off: its tasks must run elsewhere within 3 heartbeats (1.5 s) + 1 s + start.
    cluster.net().cut(cluster.node(2).host())?;
    let cut = std::time::Instant::now();
    let spread = wait_running(&cluster, "web", "6 running on the 2 reachable nodes", |m| {
        !m.contains_key("node-2") && m.values().sum::<usize>() == 6
    })?;
    tracing::info!(elapsed = ?cut.elapsed(), ?spread, "tasks of the cut-off worker rescheduled");
    assert!(
        cut.elapsed() < Duration::from_secs(6),
        "took {:?}",
        cut.elapsed()
    );

    // When it returns, the tasks it no longer owns stop there: every slot runs once.
    cluster.net().heal(cluster.node(2).host())?;
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "the returned worker stops its stale tasks",
        || Ok(cluster.node(2).berth_ok(&["ps", "-q"])?.trim().is_empty()),
        || cluster.logs(),
    )?;
    let spread = running_per_node(&cluster, "web")?;
    assert_eq!(spread.values().sum::<usize>(), 6, "{spread:?}");
    let _ = &mut cluster;
    Ok(())
}

#[test]
fn drain_pause_constraints_and_global_services() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(2)?;
    // An unsatisfiable constraint: tasks stay pending with the reason, then run once a node
    // gets the label.
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "pinned",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.zone==east",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    wait::wait_until(
        Duration::from_secs(10),
        "pending tasks show the reason",
        || {
            let ps = cluster
                .node(0)
                .berth_ok(&["service", "ps", "--no-trunc", "pinned"])?;
            Ok(ps.contains("Pending") && ps.contains("no suitable node"))
        },
    )?;
    cluster
        .node(0)
        .berth_ok(&["node", "update", "--label-add", "zone=east", "node-1"])?;
    let placed = wait_running(&cluster, "pinned", "pinned tasks run on node-1", |m| {
        m.get("node-1") == Some(&2)
    })?;
    assert_eq!(placed.len(), 1, "{placed:?}");

    // A global service reaches every node, and drain moves tasks off a node.
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "agent",
        "--mode",
        "global",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    wait_running(&cluster, "agent", "one global task per node", |m| {
        m.len() == 3 && m.values().all(|&n| n == 1)
    })?;
    cluster
        .node(0)
        .berth_ok(&["node", "update", "--availability", "drain", "node-2"])?;
    wait_running(
        &cluster,
        "agent",
        "no global task on the drained node",
        |m| !m.contains_key("node-2"),
    )?;

    // Pause: no new tasks, existing ones stay.
    cluster
        .node(0)
        .berth_ok(&["node", "update", "--availability", "pause", "node-1"])?;
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "late",
        "--replicas",
        "2",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    let late = wait_running(
        &cluster,
        "late",
        "new tasks avoid paused and drained nodes",
        |m| m.values().sum::<usize>() == 2,
    )?;
    assert_eq!(late.keys().collect::<Vec<_>>(), vec!["node-0"], "{late:?}");
    assert_eq!(
        running_per_node(&cluster, "pinned")?.get("node-1"),
        Some(&2)
    );
    Ok(())
}
