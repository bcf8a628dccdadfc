//! Cluster core on real processes: `berthd` daemons in their own network namespaces, joined
//! over mutual TLS and driven by the real `berth` CLI (issue 4).

use std::time::Duration;

use berth_tests::cluster::TestCluster;
use berth_tests::wait;

/// Parses `berth node ls` into rows of (id, self, hostname, status, availability, manager
/// status).
fn node_rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn managers_and_workers_form_a_cluster_seen_alike_from_every_manager() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = TestCluster::new(5)?;
    let init = cluster.init(0)?;
    assert!(init.contains("Swarm initialized: current node ("), "{init}");
    assert!(init.contains("berth swarm join --token BRTKN-1-"), "{init}");

    for i in [1, 2] {
        let out = cluster.join(i, 0, "manager")?;
        assert!(
            out.contains("This node joined a swarm as a manager."),
            "{out}"
        );
    }
    for i in [3, 4] {
        let out = cluster.join(i, 1, "worker")?;
        assert!(
            out.contains("This node joined a swarm as a worker."),
            "{out}"
        );
    }

    for m in 0..3 {
        wait::wait_until_or_dump(
            Duration::from_secs(15),
            &format!("node ls on manager {m} shows 3 managers and 2 workers"),
            || {
                let rows = node_rows(&cluster.node(m).berth_ok(&["node", "ls"])?);
                let leaders = rows
                    .iter()
                    .filter(|r| r.iter().any(|c| c == "Leader"))
                    .count();
                let reachable = rows
                    .iter()
                    .filter(|r| r.iter().any(|c| c == "Reachable"))
                    .count();
                Ok(rows.len() == 5 && leaders == 1 && reachable == 2)
            },
            || cluster.logs(),
        )?;
        let ls = cluster.node(m).berth_ok(&["node", "ls"])?;
        let own = cluster.node(m).berth_ok(&["info", "--format", "json"])?;
        let own: serde_json::Value = serde_json::from_str(&own)?;
        let own_id = own["NodeID"].as_str().unwrap_or_default().to_string();
        assert!(
            ls.contains(&format!("{own_id} *")),
            "manager {m} marks itself:\n{ls}"
        );
    }

    let err = cluster.node(3).berth_err(&["node", "ls"])?;
    assert!(err.contains("This node is not a swarm manager"), "{err}");
    Ok(())
}

#[test]
fn wrong_tokens_are_refused_and_create_nothing() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = TestCluster::new(3)?;
    cluster.init(0)?;
    let remote = cluster.node(0).cluster_addr();
    let addr = cluster.node(1).cluster_addr();
    let good = cluster.join_token(0, "worker")?;

    // Right CA digest, wrong secret.
    let (prefix, _) = good.rsplit_once('-').expect("token has a secret part");
    let wrong_secret = format!("{prefix}-0000000000000000000000000");
    let err = cluster.node(1).berth_err(&[
        "swarm",
        "join",
        "--token",
        &wrong_secret,
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
        &remote,
    ])?;
    assert!(err.starts_with("Error: "), "{err}");
    assert!(err.to_lowercase().contains("token"), "{err}");

    // A token of another cluster: its CA digest does not match this cluster's root CA.
    cluster.init(2)?;
    let foreign = cluster.join_token(2, "worker")?;
    let err = cluster.node(1).berth_err(&[
        "swarm",
        "join",
        "--token",
        &foreign,
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
        &remote,
    ])?;
    assert!(err.starts_with("Error: "), "{err}");

    // A rotated token stops working at once.
    cluster
        .node(0)
        .berth_ok(&["swarm", "join-token", "--rotate", "worker"])?;
    let err = cluster.node(1).berth_err(&[
        "swarm",
        "join",
        "--token",
        &good,
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
        &remote,
    ])?;
    assert!(err.starts_with("Error: "), "{err}");

    // Malformed.
    let err = cluster
        .node(1)
        .berth_err(&["swarm", "join", "--token", "SWMTKN-nope", &remote])?;
    assert!(err.starts_with("Error: "), "{err}");

    let rows = node_rows(&cluster.node(0).berth_ok(&["node", "ls"])?);
    assert_eq!(rows.len(), 1, "refused joins created nodes: {rows:?}");
    let info = cluster.node(1).berth_ok(&["info"])?;
    assert!(info.contains("Swarm: inactive"), "{info}");
    Ok(())
}

/// A cluster of three managers (nodes 0, 1, 2), formed through node 0.
fn three_managers() -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(3)?;
    cluster.init(0)?;
    cluster.join(1, 0, "manager")?;
    cluster.join(2, 0, "manager")?;
    Ok(cluster)
}

/// The index of the node `node ls` on `via` marks as Leader.
fn leader_index(cluster: &TestCluster, via: usize) -> anyhow::Result<Option<usize>> {
    let out = cluster.node(via).berth(&["node", "ls"])?;
    if !out.status.success() {
        return Ok(None);
    }
    let table = String::from_utf8(out.stdout)?;
    let Some(row) = node_rows(&table)
        .into_iter()
        .find(|r| r.iter().any(|c| c == "Leader"))
    else {
        return Ok(None);
    };
    let leader_id = row[0].trim_end_matches(" *").to_string();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let info = node.berth(&["info", "--format", "json"])?;
        if info.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&info.stdout)?;
            if json["NodeID"] == leader_id.as_str() {
                return Ok(Some(i));
            }
        }
    }
    Ok(None)
}

/// Writes a label on node `target`'s own node object through node `via` (a store write).
fn write_label(
    cluster: &TestCluster,
    via: usize,
    key: &str,
) -> anyhow::Result<std::process::Output> {
    cluster
        .node(via)
        .berth(&["node", "update", "--label-add", &format!("{key}=1"), "self"])
}

/// The labels `node inspect self` shows on node `i`, read through node `via`.
fn labels_on(cluster: &TestCluster, via: usize, of: usize) -> anyhow::Result<serde_json::Value> {
    let info: serde_json::Value =
        serde_json::from_str(&cluster.node(of).berth_ok(&["info", "--format", "json"])?)?;
    let id = info["NodeID"].as_str().unwrap_or_default().to_string();
    let out = cluster.node(via).berth_ok(&["node", "inspect", &id])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    Ok(json[0]["Spec"]["Labels"].clone())
}

#[test]
fn a_killed_leader_is_replaced_and_catches_up_when_it_returns() -> anyhow::Result<()> {
    wait::init_test_logging();
    let mut cluster = three_managers()?;
    let leader = leader_index(&cluster, 0)?.expect("a leader");
    let other = (leader + 1) % 3;

    cluster.node_mut(leader).kill9()?;
    let killed = std::time::Instant::now();
    let mut attempts = 0;
    wait::wait_until_or_dump(
        Duration::from_secs(10),
        "a write is accepted after the leader was killed",
        || {
            attempts += 1;
            Ok(write_label(&cluster, other, "after-failover")?
                .status
                .success())
        },
        || cluster.logs(),
    )?;
    let failover = killed.elapsed();
    tracing::info!(
        ?failover,
        attempts,
        "leader failover: kill -9 to the next accepted write"
    );
    assert!(
        failover < Duration::from_secs(2),
        "failover took {failover:?}"
    );

    cluster.node_mut(leader).start()?;
    wait::wait_until_or_dump(
        Duration::from_secs(10),
        "the old leader catches up",
        || Ok(labels_on(&cluster, leader, other)?["after-failover"] == "1"),
        || cluster.logs(),
    )?;
    Ok(())
}

#[test]
fn a_partitioned_manager_refuses_writes_and_catches_up_after_healing() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = three_managers()?;
    // Cut off a follower (the leader's own write path is covered by the failover test).
    let leader = leader_index(&cluster, 0)?.expect("a leader");
    let isolated = (leader + 1) % 3;
    let majority = (leader + 2) % 3;
    cluster.net().cut(cluster.node(isolated).host())?;

    let out = write_label(&cluster, majority, "during-partition")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = write_label(&cluster, isolated, "isolated")?;
    assert!(
        !out.status.success(),
        "the isolated manager accepted a write"
    );
    let err = String::from_utf8(out.stderr)?;
    assert!(err.starts_with("Error: "), "{err}");
    tracing::info!(%err, "write on the isolated manager");

    cluster.net().heal(cluster.node(isolated).host())?;
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "the healed manager sees the majority's write",
        || Ok(labels_on(&cluster, isolated, majority)?["during-partition"] == "1"),
        || cluster.logs(),
    )?;
    Ok(())
}

#[test]
fn restarting_every_manager_loses_nothing_and_lost_quorum_is_recovered() -> anyhow::Result<()> {
    wait::init_test_logging();
    let mut cluster = three_managers()?;
    let out = write_label(&cluster, 0, "before-restart")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for i in 0..3 {
        cluster.node_mut(i).stop(Duration::from_secs(5))?;
    }
    for i in 0..3 {
        cluster.node_mut(i).start()?;
    }
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "the restarted cluster has a leader and the label",
        || Ok(labels_on(&cluster, 1, 0)?["before-restart"] == "1"),
        || cluster.logs(),
    )?;

    // Lose two of three managers for good.
    cluster.node_mut(1).kill9()?;
    cluster.node_mut(2).kill9()?;
    let out = write_label(&cluster, 0, "without-quorum")?;
    assert!(!out.status.success(), "a write succeeded without quorum");
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("quorum") && err.contains("--force-new-cluster"),
        "{err}"
    );

    let addr = cluster.node(0).cluster_addr();
    cluster
        .node(0)
        .berth_ok(&[
            "swarm",
            "init",
            "--force-new-cluster",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
        ])
        .map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.node(0).log()))?;
    let out = write_label(&cluster, 0, "after-recovery")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels = labels_on(&cluster, 0, 0)?;
    assert_eq!(labels["before-restart"], "1", "{labels}");
    assert_eq!(labels["after-recovery"], "1", "{labels}");
    let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
    assert_eq!(node_rows(&ls).len(), 3, "all nodes are still known:\n{ls}");
    Ok(())
}

#[test]
fn certificates_renew_before_they_expire_and_the_cluster_keeps_working() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = TestCluster::new(2)?;
    let addr = cluster.node(0).cluster_addr();
    cluster.node(0).berth_ok(&[
        "swarm",
        "init",
        "--cert-expiry",
        "20s",
        "--advertise-addr",
        &addr,
        "--listen-addr",
        &addr,
    ])?;
    cluster.join(1, 0, "manager")?;
    let cert = |i: usize| std::fs::read(cluster.node(i).state_dir().join("certificates/node.crt"));
    let (first0, first1) = (cert(0)?, cert(1)?);

    // Renewal happens at 50-80 % of the 20 s validity (plus a 2 s backdate).
    wait::wait_until_or_dump(
        Duration::from_secs(25),
        "both managers renew their certificates",
        || Ok(cert(0)? != first0 && cert(1)? != first1),
        || cluster.logs(),
    )?;
    // Past the first certificates' expiry, the managers still talk to each other (Raft and
    // forwarded writes run over mTLS with the renewed certificates).
    std::thread::sleep(Duration::from_secs(12));
    for via in [0, 1] {
        let out = write_label(&cluster, via, &format!("after-expiry-{via}"))?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn promote_demote_and_remove_nodes() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = TestCluster::new(3)?;
    cluster.init(0)?;
    cluster.join(1, 0, "worker")?;
    cluster.join(2, 0, "worker")?;
    wait::wait_until_or_dump(
        Duration::from_secs(15),
        "both workers are Ready",
        || {
            Ok(cluster
                .node(0)
                .berth_ok(&["node", "ls"])?
                .matches(" Ready ")
                .count()
                == 3)
        },
        || cluster.logs(),
    )?;

    // Promote: the worker renews its certificate as a manager and joins Raft.
    let out = cluster.node(0).berth_ok(&["node", "promote", "node-1"])?;
    assert!(
        out.contains("Node node-1 promoted to a manager in the swarm."),
        "{out}"
    );
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "node-1 answers as a reachable manager",
        || {
            let Ok(ls) = cluster.node(1).berth_ok(&["node", "ls"]) else {
                return Ok(false);
            };
            Ok(ls
                .lines()
                .any(|l| l.contains("node-1") && l.contains("Reachable")))
        },
        || cluster.logs(),
    )?;

    // Demote it again: it stops being a manager.
    let out = cluster.node(0).berth_ok(&["node", "demote", "node-1"])?;
    assert!(
        out.contains("Manager node-1 demoted in the swarm."),
        "{out}"
    );
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "node-1 is a worker again",
        || {
            let err = cluster.node(1).berth(&["node", "ls"])?;
            let stderr = String::from_utf8_lossy(&err.stderr).to_string();
            Ok(!err.status.success() && stderr.contains("not a swarm manager"))
        },
        || cluster.logs(),
    )?;

    // The last manager cannot be demoted: that would lose the cluster.
    let err = cluster.node(0).berth_err(&["node", "demote", "node-0"])?;
    assert!(err.starts_with("Error: "), "{err}");

    // Remove a worker: refused while it is up unless forced; afterwards its certificate is
    // refused by the managers, so it can no longer report.
    let err = cluster.node(0).berth_err(&["node", "rm", "node-2"])?;
    assert!(err.starts_with("Error: "), "{err}");
    cluster
        .node(0)
        .berth_ok(&["node", "rm", "--force", "node-2"])?;
    let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
    assert!(!ls.contains("node-2"), "{ls}");
    std::thread::sleep(Duration::from_secs(2));
    let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
    assert!(!ls.contains("node-2"), "the removed node came back:\n{ls}");
    Ok(())
}

#[test]
fn swarm_update_ca_and_leave() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = TestCluster::new(2)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
    cluster.join(1, 0, "worker")?;

    let pem = cluster.node(0).berth_ok(&["swarm", "ca"])?;
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let out = cluster
        .node(0)
        .berth_ok(&["swarm", "update", "--task-history-limit", "2"])?;
    assert!(out.contains("Swarm updated."), "{out}");
    let err = cluster
        .node(0)
        .berth_err(&["swarm", "update", "--cert-expiry", "1s"])?;
    assert!(err.contains("certificate expiry"), "{err}");
    let err = cluster.node(1).berth_err(&["swarm", "ca"])?;
    assert!(err.contains("not a swarm manager"), "{err}");

    // A worker leaves; a manager needs --force.
    let out = cluster.node(1).berth_ok(&["swarm", "leave"])?;
    assert!(out.contains("Node left the swarm."), "{out}");
    assert!(
        cluster
            .node(1)
            .berth_ok(&["info"])?
            .contains("Swarm: inactive")
    );
    let err = cluster.node(0).berth_err(&["swarm", "leave"])?;
    assert!(err.contains("--force"), "{err}");
    wait::wait_until(
        Duration::from_secs(20),
        "the manager sees the worker Down",
        || {
            let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
            Ok(ls
                .lines()
                .any(|l| l.contains("node-1") && l.contains("Down")))
        },
    )?;
    Ok(())
}
