//! Root CA rotation on real daemons (issue 4, `berth swarm ca --rotate`): two managers and a
//! worker running a service rotate their root; afterwards every node holds a certificate of
//! the new root and trusts only it, both managers take writes, the worker keeps reporting,
//! and join tokens of the old root are refused while the new ones admit a node.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use berth_tests::cluster::TestCluster;
use berth_tests::image::DEFAULT_REF;
use berth_tests::wait;
use x509_parser::pem::Pem;

/// A task command that exits promptly on SIGTERM.
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// Every certificate (DER) in a PEM file.
fn pem_ders(text: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut ders = Vec::new();
    for pem in Pem::iter_from_buffer(text) {
        ders.push(pem.context("reading PEM")?.contents);
    }
    Ok(ders)
}

/// True when `issuer` signed `cert` (both DER): issuer name matches and the signature verifies
/// with the issuer's key.
fn signed_by(cert: &[u8], issuer: &[u8]) -> anyhow::Result<bool> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).context("parsing certificate")?;
    let (_, issuer) = x509_parser::parse_x509_certificate(issuer).context("parsing issuer")?;
    Ok(cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok())
}

/// Running tasks of `service` per node hostname, from `service ps`.
fn running_per_node(
    cluster: &TestCluster,
    via: usize,
    service: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let ps =
        cluster
            .node(via)
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

fn ready_nodes(cluster: &TestCluster, via: usize) -> anyhow::Result<usize> {
    let ls = cluster.node(via).berth_ok(&["node", "ls"])?;
    Ok(ls.lines().skip(1).filter(|l| l.contains(" Ready ")).count())
}

#[test]
fn root_ca_rotation_keeps_the_cluster_working_and_retires_the_old_root() -> anyhow::Result<()> {
    wait::init_test_logging();
    // Hosts 0 and 1: managers; 2: worker; 3: joins after the rotation.
    let cluster = TestCluster::new(4)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
    cluster.join(1, 0, "manager")?;
    cluster.join(2, 0, "worker")?;
    cluster.load_test_image()?;
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "three nodes Ready",
        || Ok(ready_nodes(&cluster, 0)? == 3),
        || cluster.logs(),
    )?;
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "spin",
        "--replicas",
        "2",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "spin runs 2/2",
        || {
            Ok(running_per_node(&cluster, 0, "spin")?
                .values()
                .sum::<usize>()
                == 2)
        },
        || cluster.logs(),
    )?;
    let old_pem = cluster.node(0).berth_ok(&["swarm", "ca"])?;
    let old_root = pem_ders(old_pem.as_bytes())?;
    anyhow::ensure!(old_root.len() == 1, "one root before: {old_pem}");
    let old_worker_token = cluster.join_token(0, "worker")?;

    tracing::info!("rotating the root CA through the second manager");
    let started = std::time::Instant::now();
    let out = cluster
        .node(1)
        .berth_within(&["swarm", "ca", "--rotate"], Duration::from_secs(120))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("swarm ca --rotate failed: {stderr}\n{}", cluster.logs());
    }
    tracing::info!(took = ?started.elapsed(), progress = %stderr.trim(), "rotation complete");
    assert!(stderr.contains("rotated "), "progress shown: {stderr}");
    assert!(stderr.contains("root CA rotation complete"), "{stderr}");
    let new_pem = String::from_utf8(out.stdout)?;
    let new_root = pem_ders(new_pem.as_bytes())?;
    anyhow::ensure!(new_root.len() == 1, "one root after: {new_pem}");
    assert_ne!(new_root[0], old_root[0], "the root changed");
    assert_eq!(cluster.node(0).berth_ok(&["swarm", "ca"])?, new_pem);

    // Every node's certificate chains to the new root, comes without the intermediate, and
    // the node trusts the new root alone.
    for i in 0..3 {
        let certs = cluster.node(i).state_dir().join("certificates");
        wait::wait_until(
            Duration::from_secs(10),
            &format!("node {i} holds a new-root certificate and trusts only the new root"),
            || {
                let chain = pem_ders(&std::fs::read(certs.join("node.crt"))?)?;
                let bundle = pem_ders(&std::fs::read(certs.join("ca.crt"))?)?;
                Ok(chain.len() == 1
                    && signed_by(&chain[0], &new_root[0])?
                    && !signed_by(&chain[0], &old_root[0])?
                    && bundle == new_root)
            },
        )?;
    }

    // Both managers take writes; the worker keeps running and reporting tasks.
    cluster.node(1).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "after",
        "--replicas",
        "1",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    cluster
        .node(0)
        .berth_ok(&["service", "scale", "-d", "spin=3"])?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "spin runs 3/3, one per node, and after runs",
        || {
            let spin = running_per_node(&cluster, 1, "spin")?;
            let after = running_per_node(&cluster, 0, "after")?;
            Ok(spin.len() == 3
                && spin.values().all(|n| *n == 1)
                && spin.contains_key("node-2")
                && after.values().sum::<usize>() == 1)
        },
        || {
            format!(
                "{}\n{}",
                cluster
                    .node(0)
                    .berth_ok(&["service", "ps", "spin"])
                    .unwrap_or_default(),
                cluster.logs()
            )
        },
    )?;
    assert_eq!(ready_nodes(&cluster, 1)?, 3);
    let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
    assert!(
        ls.lines()
            .any(|l| l.contains("node-2") && l.contains(" Ready ")),
        "{ls}"
    );

    // The old worker token names the retired root: refused, nothing created. The new one
    // admits the fourth host.
    let new_worker_token = cluster.join_token(0, "worker")?;
    assert_ne!(new_worker_token, old_worker_token);
    let addr = cluster.node(3).cluster_addr();
    let remote = cluster.node(0).cluster_addr();
    let join = |token: &str| {
        vec![
            "swarm".to_owned(),
            "join".into(),
            "--token".into(),
            token.to_owned(),
            "--advertise-addr".into(),
            addr.clone(),
            "--listen-addr".into(),
            addr.clone(),
            remote.clone(),
        ]
    };
    let args = join(&old_worker_token);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = cluster.node(3).berth_err(&args)?;
    assert!(err.contains("join token"), "refused for the token: {err}");
    assert_eq!(
        cluster
            .node(0)
            .berth_ok(&["node", "ls", "-q"])?
            .lines()
            .count(),
        3,
        "the refused join created no node"
    );
    let args = join(&new_worker_token);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.node(3).berth_ok(&args)?;
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "four nodes Ready",
        || Ok(ready_nodes(&cluster, 0)? == 4),
        || cluster.logs(),
    )?;
    let joined = pem_ders(&std::fs::read(
        cluster
            .node(3)
            .state_dir()
            .join("certificates")
            .join("node.crt"),
    )?)?;
    assert!(signed_by(&joined[0], &new_root[0])?);
    Ok(())
}
