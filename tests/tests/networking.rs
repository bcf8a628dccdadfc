//! Service networking on real daemons (issue 7): overlay networks and their allocation,
//! VIPs and published ports, the data path between nodes, service discovery and the routing
//! mesh — three netns test hosts, real containers, the real CLI. All traffic stays inside the
//! test's own namespaces.

use std::time::Duration;

use berth_tests::cluster::TestCluster;
use berth_tests::wait;
use serde_json::Value;

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

fn inspect(cluster: &TestCluster, what: &[&str]) -> anyhow::Result<Value> {
    let out = cluster.node(0).berth_ok(what)?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v[0].clone())
}

#[test]
fn networks_are_allocated_listed_and_removed_only_when_unused() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(0)?;
    let n0 = cluster.node(0);

    // The ingress network exists from init, allocated from the default pool.
    let ingress = inspect(&cluster, &["network", "inspect", "ingress"])?;
    assert_eq!(ingress["Ingress"], true, "{ingress}");
    assert_eq!(
        ingress["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24",
        "{ingress}"
    );

    let id = n0.berth_ok(&["network", "create", "-d", "overlay", "front"])?;
    assert_eq!(id.trim().len(), 25, "{id}");
    n0.berth_ok(&[
        "network",
        "create",
        "--subnet",
        "10.99.7.0/24",
        "--gateway",
        "10.99.7.254",
        "back",
    ])?;
    let front = inspect(&cluster, &["network", "inspect", "front"])?;
    assert_eq!(
        front["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24",
        "{front}"
    );
    assert_eq!(front["IPAM"]["Config"][0]["Gateway"], "10.0.1.1", "{front}");
    let back = inspect(&cluster, &["network", "inspect", "back"])?;
    assert_eq!(
        back["IPAM"]["Config"][0]["Gateway"], "10.99.7.254",
        "{back}"
    );
    let vni = |v: &Value| v["Options"]["com.docker.network.driver.overlay.vxlanid_list"].clone();
    assert_ne!(vni(&front), vni(&back));
    let ls = n0.berth_ok(&["network", "ls"])?;
    let names: Vec<&str> = ls
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(names, vec!["back", "front", "ingress"], "{ls}");
    assert!(ls.starts_with("NETWORK ID"), "{ls}");

    // Refusals: an overlapping subnet, a second ingress network, a name taken.
    let err = n0.berth_err(&["network", "create", "--subnet", "10.99.0.0/16", "wide"])?;
    assert!(err.contains("overlaps with network back"), "{err}");
    let err = n0.berth_err(&["network", "create", "--ingress", "mesh2"])?;
    assert!(err.contains("an ingress network already exists"), "{err}");
    let err = n0.berth_err(&["network", "create", "front"])?;
    assert!(err.contains("front"), "{err}");

    // A service on front with a published port: a VIP on front, a dynamic ingress port.
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "--replicas",
        "2",
        "-p",
        "80",
        berth_tests::image::DEFAULT_REF,
        "sleep",
        "1000",
    ])?;
    let mut vip = String::new();
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "web has its VIP and port",
        || {
            let svc = inspect(&cluster, &["service", "inspect", "web"])?;
            let vips = &svc["Endpoint"]["VirtualIPs"];
            vip = vips[0]["Addr"].as_str().unwrap_or_default().to_string();
            Ok(vips.as_array().is_some_and(|a| a.len() == 1)
                && svc["Endpoint"]["Ports"][0]["PublishedPort"] == 30000)
        },
        || cluster.logs(),
    )?;
    assert!(vip.starts_with("10.0.1.") && vip.ends_with("/24"), "{vip}");
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "both tasks run",
        || Ok(n0.berth_ok(&["service", "ls"])?.contains("2/2")),
        || cluster.logs(),
    )?;
    let ls = n0.berth_ok(&["service", "ls"])?;
    assert!(ls.contains("*:30000->80/tcp"), "{ls}");

    // An ingress port another service holds is refused; a network in use cannot go.
    let err = n0.berth_err(&[
        "service",
        "create",
        "-d",
        "--name",
        "web2",
        "-p",
        "30000:80",
        berth_tests::image::DEFAULT_REF,
        "sleep",
        "1000",
    ])?;
    assert!(err.contains("already in use by service 'web'"), "{err}");
    let err = n0.berth_err(&["network", "rm", "front"])?;
    assert!(
        err.contains("network front is in use by service web"),
        "{err}"
    );
    let err = n0.berth_err(&[
        "service",
        "create",
        "-d",
        "--network",
        "nowhere",
        berth_tests::image::DEFAULT_REF,
        "sleep",
        "1000",
    ])?;
    assert!(err.contains("network nowhere not found"), "{err}");
    n0.berth_ok(&["network", "rm", "back"])?;

    // Once the service and its tasks are gone, front can be removed.
    n0.berth_ok(&["service", "rm", "web"])?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "front can be removed",
        || Ok(n0.berth(&["network", "rm", "front"])?.status.success()),
        || cluster.logs(),
    )?;
    let ls = n0.berth_ok(&["network", "ls", "-q"])?;
    assert_eq!(ls.lines().count(), 1, "only ingress is left: {ls}");
    Ok(())
}
