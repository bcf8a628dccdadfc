//! Service networking on real daemons (issue 7): overlay networks and their allocation,
//! VIPs and published ports, the data path between nodes, service discovery and the routing
//! mesh — three netns test hosts, real containers, the real CLI. All traffic stays inside the
//! test's own namespaces.

use std::time::Duration;

use berth_agent::network::plan::{IFACE_PREFIX, NFT_TABLE};
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

/// `sh -c` script of a web task: serve its own hostname with busybox httpd on port 80.
const SERVE_HOSTNAME: &str = "hostname > /srv/www/index.html; exec httpd -f -p 80 -h /srv/www";

/// A task command that stays up and exits promptly on SIGTERM.
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// The id of the running container of `service` on node `i` (by its task name).
fn container_of(cluster: &TestCluster, i: usize, service: &str) -> anyhow::Result<String> {
    let out = cluster.node(i).berth_ok(&["ps", "--format", "json"])?;
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)?;
        if v["Names"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("{service}.")))
        {
            return Ok(v["ID"].as_str().unwrap_or_default().to_string());
        }
    }
    anyhow::bail!("no running container of {service} on node {i}: {out}")
}

/// `berth exec` on node `i`: (success, stdout).
fn exec(cluster: &TestCluster, i: usize, id: &str, cmd: &[&str]) -> anyhow::Result<(bool, String)> {
    let mut args = vec!["exec", id];
    args.extend_from_slice(cmd);
    let out = cluster.node(i).berth(&args)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// One HTTP GET from inside host `from` to `addr:port`: the body, or an error.
fn http_get(
    cluster: &TestCluster,
    from: usize,
    addr: std::net::Ipv4Addr,
    port: u16,
) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    cluster.net().hosts()[from].run(move || {
        let to = std::net::SocketAddr::from((addr, port));
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let body = reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim().to_string())
            .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {reply:?}"))?;
        Ok(body)
    })
}

/// Distinct bodies of `n` requests through `wget` in a container; every request must answer.
fn wget_all(
    cluster: &TestCluster,
    i: usize,
    id: &str,
    url: &str,
    n: usize,
) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..n {
        let (ok, body) = exec(cluster, i, id, &["timeout", "3", "wget", "-q", "-O-", url])?;
        anyhow::ensure!(
            ok && !body.is_empty(),
            "request {k} to {url} failed: {body:?}"
        );
        seen.insert(body);
    }
    Ok(seen)
}

/// Nodes (hostnames) running a task of `service`.
fn nodes_of(cluster: &TestCluster, service: &str) -> anyhow::Result<Vec<String>> {
    let ps =
        cluster
            .node(0)
            .berth_ok(&["service", "ps", "-f", "desired-state=running", service])?;
    Ok(ps
        .lines()
        .skip(1)
        .filter(|l| l.contains(" Running "))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect())
}

fn converge(cluster: &TestCluster, service: &str, want: &str) -> anyhow::Result<()> {
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        &format!("{service} runs {want}"),
        || {
            let ls = cluster.node(0).berth_ok(&["service", "ls"])?;
            Ok(ls
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(service) && l.contains(want)))
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
    Ok(())
}

#[test]
fn services_reach_each_other_through_vips_dns_and_the_routing_mesh() -> anyhow::Result<()> {
    wait::init_test_logging();
    let mut cluster = cluster(2)?;
    let n0 = cluster.node(0);
    let image = berth_tests::image::DEFAULT_REF;
    n0.berth_ok(&["network", "create", "front"])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "client",
        "--network",
        "front",
        "--constraint",
        "node.hostname==node-0",
        image,
        "sh",
        "-c",
        IDLE,
    ])?;
    converge(&cluster, "web", "3/3")?;
    converge(&cluster, "client", "1/1")?;
    let spread = nodes_of(&cluster, "web")?;
    tracing::info!(?spread, "web replicas");
    let client = container_of(&cluster, 0, "client")?;

    // The VIP answers and reaches every replica (two of them on other nodes).
    let mut seen = Default::default();
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "every replica answers through the VIP",
        || {
            seen = wget_all(&cluster, 0, &client, "http://web/", 12)?;
            Ok(seen.len() == 3)
        },
        || cluster.logs(),
    )?;
    tracing::info!(?seen, "replicas reached through the VIP");
    // tasks.web lists the three task addresses.
    let (ok, out) = exec(&cluster, 0, &client, &["nslookup", "tasks.web"])?;
    assert!(ok, "{out}");
    let addrs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .filter(|a| !a.contains(":53") && !a.starts_with("127."))
        .collect();
    assert_eq!(addrs.len(), 3, "{out}");
    assert!(addrs.iter().all(|a| a.starts_with("10.0.1.")), "{out}");
    let (ok, out) = exec(&cluster, 0, &client, &["nslookup", "nosuchservice"])?;
    assert!(!ok, "an unknown name resolves: {out}");

    // The published port answers on every node's address, from another host.
    let addrs: Vec<std::net::Ipv4Addr> = cluster.net().hosts().iter().map(|h| h.addr()).collect();
    for (i, addr) in addrs.iter().enumerate() {
        let from = (i + 1) % addrs.len();
        let mut body = String::new();
        wait::wait_until_or_dump(
            Duration::from_secs(10),
            &format!("port 8080 answers on {addr}"),
            || {
                body = http_get(&cluster, from, *addr, 8080)?;
                Ok(!body.is_empty())
            },
            || cluster.logs(),
        )?;
        assert!(seen.contains(&body), "{body:?} is not one of {seen:?}");
    }

    tracing::info!("published port answers on every node");
    // Scale down: within a second of the task being gone, no request goes to it.
    n0.berth_ok(&["service", "scale", "-d", "web=2"])?;
    converge(&cluster, "web", "2/2")?;
    wait::wait_until(
        Duration::from_secs(20),
        "one web task left the node",
        || Ok(nodes_of(&cluster, "web")?.len() == 2),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let after = wget_all(&cluster, 0, &client, "http://web/", 12)?;
    assert!(
        after.len() <= 2 && after.is_subset(&seen),
        "{after:?} after scaling to 2 of {seen:?}"
    );
    // A node without a replica still answers on the published port (routing mesh).
    let running = nodes_of(&cluster, "web")?;
    let empty = (0..3)
        .find(|i| !running.contains(&format!("node-{i}")))
        .expect("a node without web");
    let body = http_get(&cluster, (empty + 1) % 3, addrs[empty], 8080)?;
    assert!(after.contains(&body) || seen.contains(&body), "{body:?}");
    for _ in 0..6 {
        let body = http_get(&cluster, (empty + 1) % 3, addrs[empty], 8080)?;
        assert!(
            after.contains(&body),
            "mesh sent a request to a removed task: {body:?}"
        );
    }

    tracing::info!(
        ?after,
        "after scaling down, only the remaining replicas answer"
    );
    // DNS round robin: the name gives the tasks' addresses, no VIP.
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "rr",
        "--network",
        "front",
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        image,
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ])?;
    converge(&cluster, "rr", "2/2")?;
    let mut out = String::new();
    wait::wait_until(
        Duration::from_secs(10),
        "rr resolves to its 2 tasks",
        || {
            out = exec(&cluster, 0, &client, &["nslookup", "rr"])?.1;
            Ok(out
                .lines()
                .filter(|l| l.starts_with("Address: 10.0.1."))
                .count()
                == 2)
        },
    )?;
    let svc = inspect(&cluster, &["service", "inspect", "rr"])?;
    assert!(
        svc["Endpoint"]["VirtualIPs"]
            .as_array()
            .is_none_or(|v| v.is_empty()),
        "{svc}"
    );

    // A restarted daemon adopts its containers and their data path: the embedded DNS of
    // the client answers again, and its VIP still balances.
    tracing::info!(%out, "rr resolves to its tasks");
    cluster.node_mut(0).kill9()?;
    cluster.node_mut(0).start()?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "the client resolves web after berthd restarted",
        || Ok(exec(&cluster, 0, &client, &["nslookup", "web"])?.0),
        || cluster.logs(),
    )?;
    let again = wget_all(&cluster, 0, &client, "http://web/", 6)?;
    tracing::info!(?again, "after berthd restarted, DNS and the VIP work again");
    assert!(again.is_subset(&after), "{again:?} vs {after:?}");
    Ok(())
}

#[test]
fn host_ports_stay_on_their_node_networks_are_isolated_and_a_lost_node_leaves_the_vip()
-> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(2)?;
    let n0 = cluster.node(0);
    let image = berth_tests::image::DEFAULT_REF;
    n0.berth_ok(&["network", "create", "front"])?;
    n0.berth_ok(&["network", "create", "back"])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "front",
        "--replicas",
        "3",
        image,
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "client",
        "--network",
        "front",
        "--constraint",
        "node.hostname==node-0",
        image,
        "sh",
        "-c",
        IDLE,
    ])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "vault",
        "--network",
        "back",
        "--constraint",
        "node.hostname==node-0",
        image,
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "hostweb",
        "--publish",
        "published=9090,target=80,mode=host",
        "--constraint",
        "node.hostname==node-1",
        image,
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ])?;
    for (s, want) in [
        ("web", "3/3"),
        ("client", "1/1"),
        ("vault", "1/1"),
        ("hostweb", "1/1"),
    ] {
        converge(&cluster, s, want)?;
    }
    let client = container_of(&cluster, 0, "client")?;
    // vault shares node 0 with client: the node routes between its bridges, unless
    // isolation forbids it.
    let vault = container_of(&cluster, 0, "vault")?;

    // Host mode: the port answers on node 1 only.
    let addrs: Vec<std::net::Ipv4Addr> = cluster.net().hosts().iter().map(|h| h.addr()).collect();
    wait::wait_until_or_dump(
        Duration::from_secs(10),
        "port 9090 answers on node 1",
        || Ok(!http_get(&cluster, 2, addrs[1], 9090)?.is_empty()),
        || cluster.logs(),
    )?;
    for i in [0, 2] {
        let r = http_get(&cluster, 1, addrs[i], 9090);
        assert!(r.is_err(), "host-mode port answered on node {i}: {r:?}");
    }

    // Isolation: front and back neither resolve nor reach each other.
    let (ok, out) = exec(&cluster, 0, &client, &["nslookup", "vault"])?;
    assert!(!ok, "vault resolves from front: {out}");
    let (ok, out) = exec(&cluster, 0, &vault, &["nslookup", "tasks.vault"])?;
    assert!(ok, "{out}");
    let vault_ip = out
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .find(|a| !a.contains(":53") && !a.starts_with("127."))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no address for tasks.vault: {out}"))?;
    let (ok, out) = exec(
        &cluster,
        0,
        &vault,
        &["timeout", "3", "wget", "-q", "-O-", "http://vault/"],
    )?;
    assert!(
        ok && !out.is_empty(),
        "vault does not answer on back: {out}"
    );
    let svc = inspect(&cluster, &["service", "inspect", "vault"])?;
    let vault_vip = svc["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string();
    for target in [&vault_ip, &vault_vip] {
        let url = format!("http://{target}/");
        let (ok, out) = exec(
            &cluster,
            0,
            &client,
            &["timeout", "3", "wget", "-q", "-O-", &url],
        )?;
        assert!(!ok, "front reached back at {target}: {out}");
    }
    let (ok, out) = exec(&cluster, 0, &vault, &["nslookup", "web"])?;
    assert!(!ok, "web resolves from back: {out}");
    let (ok, out) = exec(&cluster, 0, &client, &["nslookup", "web"])?;
    assert!(ok, "web does not resolve from front: {out}");
    let web_vip = out
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .find(|a| !a.contains(":53") && !a.starts_with("127."))
        .map(str::to_string)
        .unwrap_or_default();
    let url = format!("http://{web_vip}/");
    let (ok, out) = exec(
        &cluster,
        1,
        &vault,
        &["timeout", "3", "wget", "-q", "-O-", &url],
    )?;
    assert!(!ok, "back reached front's VIP {web_vip}: {out}");

    // Every replica answers; then node 2 is cut off. Once it is Down, a second later, no
    // request goes to its task.
    let mut seen = Default::default();
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "every replica answers through the VIP",
        || {
            seen = wget_all(&cluster, 0, &client, "http://web/", 12)?;
            Ok(seen.len() == 3)
        },
        || cluster.logs(),
    )?;
    let on_2 = container_of(&cluster, 2, "web")?;
    let (_, lost) = exec(&cluster, 2, &on_2, &["hostname"])?;
    assert!(seen.contains(&lost), "{lost} not among {seen:?}");
    cluster.net().cut(&cluster.net().hosts()[2])?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "node-2 is Down",
        || {
            let ls = n0.berth_ok(&["node", "ls"])?;
            Ok(ls
                .lines()
                .any(|l| l.contains("node-2") && l.contains(" Down ")))
        },
        || cluster.logs(),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let after = wget_all(&cluster, 0, &client, "http://web/", 12)?;
    assert!(
        !after.contains(&lost),
        "a request reached the lost node's task: {after:?}"
    );
    Ok(())
}

/// The names of Berth's links (overlay bridges and tunnels) in test host `i`.
fn berth_links(cluster: &TestCluster, i: usize) -> anyhow::Result<Vec<String>> {
    let out = cluster
        .node(i)
        .host()
        .command("ip")?
        .args(["-o", "link", "show"])
        .output()?;
    anyhow::ensure!(out.status.success(), "ip link show failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with(IFACE_PREFIX))
        .collect())
}

/// Whether Berth's nftables table exists in test host `i`.
fn has_berth_table(cluster: &TestCluster, i: usize) -> anyhow::Result<bool> {
    let out = cluster
        .node(i)
        .host()
        .command("nft")?
        .args(["list", "table", "ip", NFT_TABLE])
        .output()?;
    Ok(out.status.success())
}

#[test]
fn a_node_that_leaves_removes_its_task_containers_and_overlay_networks() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1)?;
    let n0 = cluster.node(0);
    let n1 = cluster.node(1);
    let image = berth_tests::image::DEFAULT_REF;
    n0.berth_ok(&["network", "create", "back"])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--network",
        "back",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "-p",
        "8080:80",
        image,
        "sh",
        "-c",
        IDLE,
    ])?;
    converge(&cluster, "app", "2/2")?;
    // Positive controls: the worker runs a task on the overlay, with its bridge, tunnel and
    // rules.
    assert!(!n1.berth_ok(&["ps", "-q"])?.trim().is_empty());
    let links = berth_links(&cluster, 1)?;
    assert!(links.len() >= 2, "bridge and tunnel expected: {links:?}");
    assert!(has_berth_table(&cluster, 1)?);

    let out = n1.berth_ok(&["swarm", "leave"])?;
    assert!(out.contains("Node left the swarm."), "{out}");
    // Like Docker: the node's task containers are gone (not merely stopped), and so are its
    // overlay networks, its rules and its task records.
    assert_eq!(n1.berth_ok(&["ps", "-a", "-q"])?.trim(), "");
    assert_eq!(berth_links(&cluster, 1)?, Vec::<String>::new());
    assert!(!has_berth_table(&cluster, 1)?, "nftables table left behind");
    for dir in ["agent", "worker/tasks"] {
        assert!(
            !n1.state_dir().join(dir).exists(),
            "{dir} left in the state directory"
        );
    }

    // Joining again starts clean and takes a task again.
    cluster.join(1, 0, "worker")?;
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        "the re-joined node runs an app task",
        || Ok(!n1.berth_ok(&["ps", "-q"])?.trim().is_empty()),
        || cluster.logs(),
    )?;
    Ok(())
}

#[test]
fn service_update_adds_and_removes_networks_and_published_ports() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1)?;
    let n0 = cluster.node(0);
    let image = berth_tests::image::DEFAULT_REF;
    n0.berth_ok(&["network", "create", "mid"])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "api",
        "--replicas",
        "2",
        image,
        "sh",
        "-c",
        SERVE_HOSTNAME,
    ])?;
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "client",
        "--network",
        "mid",
        "--constraint",
        "node.hostname==node-0",
        image,
        "sh",
        "-c",
        IDLE,
    ])?;
    converge(&cluster, "api", "2/2")?;
    converge(&cluster, "client", "1/1")?;
    let client = container_of(&cluster, 0, "client")?;
    let addrs: Vec<std::net::Ipv4Addr> = cluster.net().hosts().iter().map(|h| h.addr()).collect();
    // Before: api is on no network of the client's and publishes nothing.
    assert!(!exec(&cluster, 0, &client, &["nslookup", "api"])?.0);
    assert!(http_get(&cluster, 1, addrs[0], 8082).is_err());

    let err = n0.berth_err(&["service", "update", "-d", "--network-add", "nosuch", "api"])?;
    assert!(err.contains("no such network: nosuch"), "{err}");
    n0.berth_ok(&[
        "service",
        "update",
        "-d",
        "--update-parallelism",
        "0",
        "--network-add",
        "mid",
        "--publish-add",
        "8082:80",
        "api",
    ])?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "api answers through its VIP on mid and on the published port of every node",
        || {
            let via_vip = exec(
                &cluster,
                0,
                &client,
                &["timeout", "3", "wget", "-q", "-O-", "http://api/"],
            )?;
            Ok(via_vip.0
                && !via_vip.1.is_empty()
                && addrs.iter().enumerate().all(|(i, a)| {
                    http_get(&cluster, (i + 1) % 2, *a, 8082).is_ok_and(|b| !b.is_empty())
                }))
        },
        || cluster.logs(),
    )?;
    let err = n0.berth_err(&["service", "update", "-d", "--network-add", "mid", "api"])?;
    assert!(err.contains("already attached to network"), "{err}");

    n0.berth_ok(&[
        "service",
        "update",
        "-d",
        "--update-parallelism",
        "0",
        "--network-rm",
        "mid",
        "--publish-rm",
        "80",
        "api",
    ])?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "api left mid and publishes nothing",
        || {
            Ok(!exec(&cluster, 0, &client, &["nslookup", "api"])?.0
                && addrs
                    .iter()
                    .enumerate()
                    .all(|(i, a)| http_get(&cluster, (i + 1) % 2, *a, 8082).is_err()))
        },
        || cluster.logs(),
    )?;
    let svc = inspect(&cluster, &["service", "inspect", "api"])?;
    assert!(
        svc["Spec"]["TaskTemplate"]["Networks"]
            .as_array()
            .is_none_or(|v| v.is_empty()),
        "{svc}"
    );
    converge(&cluster, "api", "2/2")?;
    Ok(())
}
