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
