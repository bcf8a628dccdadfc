//! More of issue 5's proofs on real daemons, real containers and the real CLI, beside
//! `services.rs`: restart policies (condition none / on-failure with max attempts / any, and
//! the restart delay honoured), reservations and `--replicas-max-per-node` leaving tasks
//! PENDING with the reason, a global service reaching a node that joins later, `node ps`, and
//! a leader killed in the middle of a scale-up (3 managers) that still converges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_tests::cluster::TestCluster;
use berth_tests::image::DEFAULT_REF;
use berth_tests::wait;

/// A task command that exits promptly on SIGTERM.
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// One row of `service ps` / `node ps`.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    name: String,
    node: String,
    desired: String,
    current: String,
    error: String,
}

/// Rows of a task table (Docker's columns: ID NAME IMAGE NODE DESIRED CURRENT ERROR PORTS).
/// Cells are separated by 3+ spaces; an empty NODE cell (pending task) shifts nothing because
/// the column is located by the header.
fn rows(table: &str) -> Vec<Row> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let col = |name: &str| header.find(name).unwrap_or(header.len());
    let starts = [
        col("ID"),
        col("NAME"),
        col("IMAGE"),
        col("NODE"),
        col("DESIRED STATE"),
        col("CURRENT STATE"),
        col("ERROR"),
        col("PORTS"),
    ];
    let cell = |line: &str, i: usize| -> String {
        let from = starts[i].min(line.len());
        let to = starts
            .get(i + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line.get(from..to).unwrap_or("").trim().to_string()
    };
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| Row {
            id: cell(l, 0),
            name: cell(l, 1).trim_start_matches("\\_").trim().to_string(),
            node: cell(l, 3),
            desired: cell(l, 4),
            current: cell(l, 5),
            error: cell(l, 6).trim_matches('"').to_string(),
        })
        .collect()
}

fn ps(cluster: &TestCluster, node: usize, service: &str) -> anyhow::Result<Vec<Row>> {
    Ok(rows(&cluster.node(node).berth_ok(&[
        "service",
        "ps",
        "--no-trunc",
        service,
    ])?))
}

/// Running tasks per node hostname.
fn running(rows: &[Row]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        if r.desired == "Running" && r.current.starts_with("Running") {
            *m.entry(r.node.clone()).or_default() += 1;
        }
    }
    m
}

fn create(cluster: &TestCluster, node: usize, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["service", "create", "-d"];
    all.extend_from_slice(args);
    cluster.node(node).berth_ok(&all)
}

/// Node 0 manages (heartbeat 500 ms); nodes 1..=workers join as workers.
fn cluster(total: usize, workers: usize) -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(total)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
    for i in 1..=workers {
        cluster.join(i, 0, "worker")?;
    }
    cluster.load_test_image()?;
    wait_ready(&cluster, 0, 1 + workers)?;
    Ok(cluster)
}

fn wait_ready(cluster: &TestCluster, via: usize, n: usize) -> anyhow::Result<()> {
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        &format!("{n} nodes are Ready"),
        || {
            let ls = cluster.node(via).berth_ok(&["node", "ls"])?;
            Ok(ls.lines().skip(1).filter(|l| l.contains(" Ready ")).count() == n)
        },
        || cluster.logs(),
    )?;
    Ok(())
}

#[test]
fn restart_policies_and_the_restart_delay() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1, 0)?;

    // condition none: a failed task stays failed, its slot is not refilled.
    create(
        &cluster,
        0,
        &[
            "--name",
            "never",
            "--restart-condition",
            "none",
            DEFAULT_REF,
            "sh",
            "-c",
            "exit 3",
        ],
    )?;
    // on-failure, 2 attempts: the first task and two restarts, all failed, then nothing.
    create(
        &cluster,
        0,
        &[
            "--name",
            "twice",
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "2",
            "--restart-delay",
            "0s",
            DEFAULT_REF,
            "sh",
            "-c",
            "exit 1",
        ],
    )?;
    // on-failure: a task that succeeds is not restarted.
    create(
        &cluster,
        0,
        &[
            "--name",
            "done",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "0s",
            DEFAULT_REF,
            "true",
        ],
    )?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "never: 1 failed task; twice: 3 failed tasks; done: 1 complete task",
        || {
            let never = ps(&cluster, 0, "never")?;
            let twice = ps(&cluster, 0, "twice")?;
            let done = ps(&cluster, 0, "done")?;
            Ok(never.len() == 1
                && never[0].current.starts_with("Failed")
                && twice.len() == 3
                && twice.iter().all(|r| r.current.starts_with("Failed"))
                && done.len() == 1
                && done[0].current.starts_with("Complete"))
        },
        || cluster.logs(),
    )?;
    let never = ps(&cluster, 0, "never")?;
    assert!(never[0].error.contains("exit"), "{never:?}");
    // ... and it stays that way.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ps(&cluster, 0, "never")?.len(), 1);
    assert_eq!(ps(&cluster, 0, "twice")?.len(), 3);
    assert_eq!(ps(&cluster, 0, "done")?.len(), 1);
    let ls = cluster.node(0).berth_ok(&["service", "ls"])?;
    assert!(
        ls.lines().any(|l| l.contains("never") && l.contains("0/1")),
        "{ls}"
    );

    // condition any with a 3 s delay: even a clean exit is restarted, 3 s after it ended.
    create(
        &cluster,
        0,
        &[
            "--name",
            "again",
            "--restart-condition",
            "any",
            "--restart-delay",
            "3s",
            DEFAULT_REF,
            "sh",
            "-c",
            "sleep 1",
        ],
    )?;
    let mut ended_at = None;
    let mut restarted_after = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while restarted_after.is_none() && Instant::now() < deadline {
        let tasks = ps(&cluster, 0, "again")?;
        let now = Instant::now();
        if ended_at.is_none() && tasks.iter().any(|r| r.current.starts_with("Complete")) {
            ended_at = Some(now);
        }
        if let Some(t0) = ended_at {
            let second_runs = tasks.len() >= 2
                && tasks
                    .iter()
                    .any(|r| r.desired == "Running" && r.current.starts_with("Running"));
            if second_runs {
                restarted_after = Some(now - t0);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let gap = restarted_after.ok_or_else(|| {
        anyhow::anyhow!("the completed task was never restarted\n{}", cluster.logs())
    })?;
    tracing::info!(?gap, "restart delay observed");
    assert!(
        gap >= Duration::from_millis(2700),
        "restarted after {gap:?}, before the 3 s delay"
    );
    assert!(gap < Duration::from_secs(8), "restarted only after {gap:?}");
    Ok(())
}

/// A node's total memory as its agent reports it (every test host shares this machine's).
fn mem_total() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no MemTotal in /proc/meminfo"))?;
    Ok(kib * 1024)
}

#[test]
fn reservations_max_per_node_late_global_nodes_and_node_ps() -> anyhow::Result<()> {
    wait::init_test_logging();
    // node-0 manages, node-1 works, node-2 joins later.
    let cluster = cluster(3, 1)?;

    // More memory than any node has: pending, with the reason.
    create(
        &cluster,
        0,
        &[
            "--name",
            "huge",
            "--reserve-memory",
            "100000g",
            DEFAULT_REF,
            "sh",
            "-c",
            LOOP,
        ],
    )?;
    // 40 % of a node each: two fit per node, the fifth fits nowhere.
    let share = (mem_total()? * 2 / 5).to_string();
    create(
        &cluster,
        0,
        &[
            "--name",
            "big",
            "--replicas",
            "5",
            "--reserve-memory",
            &share,
            DEFAULT_REF,
            "sh",
            "-c",
            LOOP,
        ],
    )?;
    // At most one per node: two run, the third waits.
    create(
        &cluster,
        0,
        &[
            "--name",
            "one-each",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            DEFAULT_REF,
            "sh",
            "-c",
            LOOP,
        ],
    )?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "reservations and max-per-node respected",
        || {
            let huge = ps(&cluster, 0, "huge")?;
            let big = ps(&cluster, 0, "big")?;
            let one = ps(&cluster, 0, "one-each")?;
            let pending_with = |rows: &[Row], why: &str| {
                rows.iter()
                    .filter(|r| r.current.starts_with("Pending") && r.error.contains(why))
                    .count()
            };
            Ok(pending_with(&huge, "insufficient memory on 2 nodes") == 1
                && running(&big).values().copied().collect::<Vec<_>>() == vec![2, 2]
                && pending_with(&big, "insufficient memory on 2 nodes") == 1
                && running(&one).values().copied().collect::<Vec<_>>() == vec![1, 1]
                && pending_with(&one, "max replicas per node limit exceeded on 2 nodes") == 1)
        },
        || {
            format!(
                "{}\n{}\n{}",
                cluster
                    .node(0)
                    .berth_ok(&["service", "ps", "--no-trunc", "big"])
                    .unwrap_or_default(),
                cluster
                    .node(0)
                    .berth_ok(&["service", "ps", "--no-trunc", "one-each"])
                    .unwrap_or_default(),
                cluster.logs()
            )
        },
    )?;
    let huge = ps(&cluster, 0, "huge")?;
    assert_eq!(
        huge[0].error, "no suitable node (insufficient memory on 2 nodes)",
        "{huge:?}"
    );

    // A global service, then a node joins: it gets its task, and the pending tasks of the
    // other services that now fit run there too.
    create(
        &cluster,
        0,
        &[
            "--name",
            "everywhere",
            "--mode",
            "global",
            DEFAULT_REF,
            "sh",
            "-c",
            LOOP,
        ],
    )?;
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "the global service runs on both nodes",
        || Ok(running(&ps(&cluster, 0, "everywhere")?).len() == 2),
        || cluster.logs(),
    )?;
    cluster.join(2, 0, "worker")?;
    wait_ready(&cluster, 0, 3)?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "node-2 runs the global task and the tasks that were pending",
        || {
            let everywhere = running(&ps(&cluster, 0, "everywhere")?);
            let one = running(&ps(&cluster, 0, "one-each")?);
            let big = running(&ps(&cluster, 0, "big")?);
            Ok(everywhere.get("node-2") == Some(&1)
                && everywhere.len() == 3
                && one.get("node-2") == Some(&1)
                && big.values().sum::<usize>() == 5)
        },
        || cluster.logs(),
    )?;

    // A global service with a constraint wants a task only on the nodes it admits, and
    // `service ls` counts those (2/2 here, not 2/3).
    create(
        &cluster,
        0,
        &[
            "--name",
            "not-two",
            "--mode",
            "global",
            "--constraint",
            "node.hostname!=node-2",
            DEFAULT_REF,
            "sh",
            "-c",
            LOOP,
        ],
    )?;
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "service ls shows the constrained global service as 2/2",
        || {
            let ls = cluster.node(0).berth_ok(&["service", "ls"])?;
            let row = ls.lines().find(|l| l.contains(" not-two "));
            Ok(row.is_some_and(|r| r.split_whitespace().any(|c| c == "2/2")))
        },
        || cluster.logs(),
    )?;
    cluster.node(0).berth_ok(&["service", "rm", "not-two"])?;

    // node ps: the tasks of one node, by name; without a name, this node's.
    let all_rows = [
        ps(&cluster, 0, "big")?,
        ps(&cluster, 0, "one-each")?,
        ps(&cluster, 0, "everywhere")?,
    ]
    .concat();
    let on_node_2: BTreeSet<String> = all_rows
        .iter()
        .filter(|r| r.node == "node-2" && r.desired == "Running")
        .map(|r| r.id.clone())
        .collect();
    let node_ps = rows(
        &cluster
            .node(0)
            .berth_ok(&["node", "ps", "--no-trunc", "node-2"])?,
    );
    assert!(node_ps.iter().all(|r| r.node == "node-2"), "{node_ps:?}");
    let listed: BTreeSet<String> = node_ps
        .iter()
        .filter(|r| r.desired == "Running")
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(listed, on_node_2);
    let own = rows(&cluster.node(0).berth_ok(&["node", "ps"])?);
    assert!(
        !own.is_empty() && own.iter().all(|r| r.node == "node-0"),
        "{own:?}"
    );
    assert!(
        own.iter().any(|r| r.name.starts_with("everywhere.")),
        "{own:?}"
    );
    Ok(())
}

#[test]
fn a_leader_killed_mid_scale_still_converges() -> anyhow::Result<()> {
    wait::init_test_logging();
    let mut cluster = TestCluster::new(3)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
    cluster.join(1, 0, "manager")?;
    cluster.join(2, 0, "manager")?;
    cluster.load_test_image()?;
    wait_ready(&cluster, 0, 3)?;
    create(
        &cluster,
        0,
        &[
            "--name",
            "web",
            "--replicas",
            "3",
            DEFAULT_REF,
            "sh",
            "-c",
            LOOP,
        ],
    )?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "3 running",
        || Ok(running(&ps(&cluster, 0, "web")?).values().sum::<usize>() == 3),
        || cluster.logs(),
    )?;

    // Scale up, and kill the leader while the new tasks are being placed and started.
    cluster
        .node(0)
        .berth_ok(&["service", "scale", "-d", "web=15"])?;
    std::thread::sleep(Duration::from_millis(200));
    cluster.node_mut(0).kill9()?;
    let killed = Instant::now();

    let mut last = Vec::new();
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        "15 running on the surviving nodes, each slot once",
        || {
            let Ok(rows) = ps(&cluster, 1, "web") else {
                return Ok(false); // no leader yet
            };
            let live: Vec<&Row> = rows
                .iter()
                .filter(|r| r.desired == "Running" && r.current.starts_with("Running"))
                .collect();
            let slots: BTreeSet<&str> = live.iter().map(|r| r.name.as_str()).collect();
            let ok =
                live.len() == 15 && slots.len() == 15 && live.iter().all(|r| r.node != "node-0");
            last = rows;
            Ok(ok)
        },
        || cluster.logs(),
    )?;
    tracing::info!(elapsed = ?killed.elapsed(), "converged after the leader was killed");
    let ls = cluster.node(2).berth_ok(&["service", "ls"])?;
    assert!(ls.contains("15/15"), "{ls}");
    // The surviving nodes really run them.
    let mut containers = 0;
    for i in 1..3 {
        containers += cluster.node(i).berth_ok(&["ps", "-q"])?.lines().count();
    }
    assert_eq!(containers, 15, "{last:?}");
    Ok(())
}
