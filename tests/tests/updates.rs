//! Rolling updates and rollbacks on real daemons, real containers and the real CLI (issue 6,
//! "Updates"): batches keep the promised number of tasks running (sampled every ~100 ms
//! from `service ps`), start-first overlaps, failing updates pause or roll back with the
//! reason, an update survives a leader kill, and a stale update is refused.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_proto::identity::{CertDir, client_tls_config, install_crypto_provider};
use berth_proto::v1::control_client::ControlClient;
use berth_proto::v1::{GetServiceRequest, ListServicesRequest, UpdateServiceRequest};
use berth_tests::cluster::{TestCluster, TestNode};
use berth_tests::image::DEFAULT_REF;
use berth_tests::wait;
use tonic::transport::Endpoint;

/// A task command that exits promptly on SIGTERM.
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";
/// A task command that takes about a second to stop after SIGTERM.
const SLOW_STOP: &str = "trap 'sleep 1; exit 0' TERM; while true; do sleep 0.2; done";

/// Node 0 inits (heartbeat 500 ms); nodes 1.. join with `role`; the image is loaded everywhere.
fn cluster(n: usize, role: &str) -> anyhow::Result<TestCluster> {
    let cluster = TestCluster::new(n)?;
    cluster.init_with(0, &["--dispatcher-heartbeat", "500ms"])?;
    for i in 1..n {
        cluster.join(i, 0, role)?;
    }
    cluster.load_test_image()?;
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "every node is Ready",
        || {
            let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
            Ok(ls.lines().skip(1).filter(|l| l.contains(" Ready ")).count() == n)
        },
        || cluster.logs(),
    )?;
    Ok(cluster)
}

/// (serving, running): tasks wanted running and running, and every task whose container is
/// running (including old ones being stopped), from `service ps --format json` on `node`.
fn counts(node: &TestNode, service: &str) -> anyhow::Result<(usize, usize)> {
    let ps = node.berth_ok(&["service", "ps", "--format", "json", service])?;
    let (mut serving, mut running) = (0, 0);
    for line in ps.lines().filter(|l| !l.trim().is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line)?;
        let current = row["CurrentState"].as_str().unwrap_or_default();
        if current.starts_with("Running") {
            running += 1;
            if row["DesiredState"] == "Running" {
                serving += 1;
            }
        }
    }
    Ok((serving, running))
}

/// Samples [`counts`] every ~100 ms while `during` runs; returns its result and the samples.
fn sampled<T>(
    node: &TestNode,
    service: &str,
    during: impl FnOnce() -> T,
) -> anyhow::Result<(T, Vec<(usize, usize)>)> {
    let stop = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(c) = counts(node, service) {
                    samples
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(c);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = during();
        stop.store(true, Ordering::Relaxed);
        result
    });
    let samples = samples
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok((result, samples))
}

fn create(node: &TestNode, name: &str, replicas: &str, cmd: &str) -> anyhow::Result<()> {
    node.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        name,
        "--replicas",
        replicas,
        "--restart-delay",
        "1s",
        DEFAULT_REF,
        "sh",
        "-c",
        cmd,
    ])?;
    Ok(())
}

fn wait_serving(cluster: &TestCluster, via: usize, service: &str, n: usize) -> anyhow::Result<()> {
    wait::wait_until_or_dump(
        Duration::from_secs(40),
        &format!("{n} tasks of {service} running"),
        || Ok(counts(cluster.node(via), service)?.0 == n),
        || {
            format!(
                "{}\n{}",
                cluster
                    .node(via)
                    .berth_ok(&["service", "ps", "--no-trunc", service])
                    .unwrap_or_default(),
                cluster.logs()
            )
        },
    )?;
    Ok(())
}

/// `service inspect` of one service as JSON.
fn inspect(node: &TestNode, service: &str) -> anyhow::Result<serde_json::Value> {
    let out = node.berth_ok(&["service", "inspect", service])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.get(0).cloned().unwrap_or(v))
}

fn update_state(node: &TestNode, service: &str) -> anyhow::Result<(String, String)> {
    let v = inspect(node, service)?;
    Ok((
        v["UpdateStatus"]["State"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["UpdateStatus"]["Message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

/// The environments of every container running on the given nodes.
fn running_envs(cluster: &TestCluster, nodes: &[usize]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut envs = Vec::new();
    for &i in nodes {
        let node = cluster.node(i);
        for id in node.berth_ok(&["ps", "-q"])?.split_whitespace() {
            let out = node.berth_ok(&["inspect", id])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let v = v.get(0).cloned().unwrap_or(v);
            let env = v["Config"]["Env"]
                .as_array()
                .context("Config.Env")?
                .iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect();
            envs.push(env);
        }
    }
    Ok(envs)
}

fn with_env(envs: &[Vec<String>], entry: &str) -> usize {
    envs.iter().filter(|e| e.iter().any(|x| x == entry)).count()
}

#[test]
fn stop_first_update_keeps_all_but_parallelism_running_then_rolls_back() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(3, "worker")?;
    let node = cluster.node(0);
    create(node, "web", "6", LOOP)?;
    wait_serving(&cluster, 0, "web", 6)?;

    let started = Instant::now();
    let (out, samples) = sampled(node, "web", || {
        node.berth_ok(&[
            "service",
            "update",
            "--env-add",
            "VERSION=2",
            "--update-parallelism",
            "2",
            "--update-delay",
            "1s",
            "--update-monitor",
            "1s",
            "web",
        ])
    })?;
    let took = started.elapsed();
    let out = out?;
    tracing::info!(?took, samples = samples.len(), "update done");
    assert!(out.starts_with("web\n"), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    let least = samples.iter().map(|s| s.0).min().unwrap_or(0);
    assert!(samples.len() >= 10, "{samples:?}");
    assert!(least >= 4, "fewer than 4 running: {samples:?}");
    assert!(
        least <= 5,
        "the sampling never saw a batch in flight: {samples:?}"
    );
    // Three batches, two delays of 1 s between them.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let (state, message) = update_state(node, "web")?;
    assert_eq!(
        (state.as_str(), message.as_str()),
        ("completed", "update completed")
    );
    let envs = running_envs(&cluster, &[0, 1, 2])?;
    assert_eq!(
        (envs.len(), with_env(&envs, "VERSION=2")),
        (6, 6),
        "{envs:?}"
    );

    // Manual rollback: back to the previous spec, the same way.
    let out = node.berth_ok(&["service", "rollback", "web"])?;
    assert!(
        out.contains("rollback: manually requested rollback"),
        "{out}"
    );
    assert!(out.contains("verify: Service converged"), "{out}");
    let (state, _) = update_state(node, "web")?;
    assert_eq!(state, "rollback_completed");
    wait::wait_until(Duration::from_secs(15), "old containers stopped", || {
        let envs = running_envs(&cluster, &[0, 1, 2])?;
        Ok(envs.len() == 6 && with_env(&envs, "VERSION=2") == 0)
    })?;
    let spec = &inspect(node, "web")?["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert!(
        spec.get("Env")
            .is_none_or(|e| e.as_array().is_none_or(|a| a.is_empty())),
        "{spec}"
    );
    Ok(())
}

#[test]
fn start_first_update_runs_up_to_n_plus_parallelism_and_never_fewer_than_n() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(3, "worker")?;
    let node = cluster.node(0);
    create(node, "sf", "6", SLOW_STOP)?;
    wait_serving(&cluster, 0, "sf", 6)?;
    let (out, samples) = sampled(node, "sf", || {
        node.berth_ok(&[
            "service",
            "update",
            "--force",
            "--update-order",
            "start-first",
            "--update-parallelism",
            "2",
            "--update-delay",
            "2s",
            "--update-monitor",
            "1s",
            "sf",
        ])
    })?;
    let out = out?;
    assert!(out.contains("verify: Service converged"), "{out}");
    let least_serving = samples.iter().map(|s| s.0).min().unwrap_or(0);
    let most_running = samples.iter().map(|s| s.1).max().unwrap_or(0);
    tracing::info!(
        least_serving,
        most_running,
        n = samples.len(),
        "start-first samples"
    );
    assert!(least_serving >= 6, "fewer than 6 serving: {samples:?}");
    assert!(most_running <= 8, "more than 6 + 2 running: {samples:?}");
    assert!(most_running >= 7, "no overlap seen: {samples:?}");
    assert_eq!(update_state(node, "sf")?.0, "completed");
    // Every slot was replaced once: 6 old tasks shut down.
    let ps = node.berth_ok(&["service", "ps", "sf"])?;
    assert_eq!(
        ps.lines().filter(|l| l.contains("Shutdown")).count(),
        6,
        "{ps}"
    );
    Ok(())
}

#[test]
fn a_failing_update_pauses_or_rolls_back_with_the_reason() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(2, "worker")?;
    let node = cluster.node(0);

    // Failure action pause (Docker's default). Like Swarm, the next slot is taken once the
    // new task runs, and failures within the monitor period count: the 2 s delay lets the
    // failure be seen before the next batch, so the pause leaves slots 2 and 3 untouched.
    create(node, "paused", "3", LOOP)?;
    wait_serving(&cluster, 0, "paused", 3)?;
    let err = node.berth_err(&[
        "service",
        "update",
        "--args",
        "sh -c 'exit 1'",
        "--update-monitor",
        "1s",
        "--update-delay",
        "2s",
        "paused",
    ])?;
    assert!(
        err.contains("service update paused: update paused due to failure or early termination of task paused.1.")
            && err.contains("it failed (task: non-zero exit (1))"),
        "{err}"
    );
    let (state, message) = update_state(node, "paused")?;
    assert_eq!(state, "paused");
    assert!(message.contains("non-zero exit (1)"), "{message}");
    // The two slots not reached keep running the old command.
    std::thread::sleep(Duration::from_secs(2));
    let ps = node.berth_ok(&["service", "ps", "--format", "json", "paused"])?;
    let old_running = ps
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| {
            r["DesiredState"] == "Running"
                && r["CurrentState"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Running")
                && (r["Name"] == "paused.2" || r["Name"] == "paused.3")
        })
        .count();
    assert_eq!(old_running, 2, "{ps}");

    // failure action rollback
    create(node, "rb", "3", LOOP)?;
    wait_serving(&cluster, 0, "rb", 3)?;
    let err = node.berth_err(&[
        "service",
        "update",
        "--args",
        "sh -c 'exit 1'",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "1s",
        "rb",
    ])?;
    assert!(
        err.contains("service update rolled back: rollback completed (update rolled back due to failure or early termination of task rb.1.")
            && err.contains("non-zero exit (1)"),
        "{err}"
    );
    let v = inspect(node, "rb")?;
    assert_eq!(v["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(
        v["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"],
        serde_json::json!(["sh", "-c", LOOP])
    );
    wait_serving(&cluster, 0, "rb", 3)?;
    Ok(())
}

#[test]
fn a_health_check_failing_after_start_rolls_the_update_back() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1, "worker")?;
    let node = cluster.node(0);
    create(node, "hc", "2", LOOP)?;
    wait_serving(&cluster, 0, "hc", 2)?;
    // The new tasks start healthy (RUNNING, HEALTHY) and turn unhealthy a second later, within
    // the 3 s monitor period: the update rolls back.
    let err = node.berth_err(&[
        "service",
        "update",
        "--args",
        "sh -c \"trap 'exit 0' TERM; (sleep 1; touch /tmp/sick) & while true; do sleep 0.2; done\"",
        "--health-cmd",
        "test ! -e /tmp/sick",
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
        "--update-monitor",
        "3s",
        "--update-failure-action",
        "rollback",
        "hc",
    ])?;
    assert!(
        err.contains("service update rolled back: rollback completed (update rolled back due to failure or early termination of task hc.1."),
        "{err}"
    );
    let v = inspect(node, "hc")?;
    assert_eq!(v["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(
        v["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"],
        serde_json::json!(["sh", "-c", LOOP])
    );
    wait_serving(&cluster, 0, "hc", 2)?;
    Ok(())
}

/// The index of the node `node ls` (through `via`) marks as Leader.
fn leader_index(cluster: &TestCluster, via: usize) -> anyhow::Result<usize> {
    let ls = cluster.node(via).berth_ok(&["node", "ls"])?;
    let row = ls
        .lines()
        .find(|l| l.contains("Leader"))
        .context("no leader in node ls")?;
    let id = row
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches('*');
    for (i, node) in cluster.nodes().iter().enumerate() {
        let info: serde_json::Value =
            serde_json::from_str(&node.berth_ok(&["info", "--format", "json"])?)?;
        if info["NodeID"] == id {
            return Ok(i);
        }
    }
    anyhow::bail!("leader {id} is none of the nodes")
}

#[test]
fn an_update_survives_a_leader_kill() -> anyhow::Result<()> {
    wait::init_test_logging();
    let mut cluster = cluster(3, "manager")?;
    create(cluster.node(0), "web", "6", LOOP)?;
    wait_serving(&cluster, 0, "web", 6)?;
    cluster.node(0).berth_ok(&[
        "service",
        "update",
        "-d",
        "--env-add",
        "VERSION=2",
        "--update-parallelism",
        "1",
        "--update-delay",
        "1s",
        "--update-monitor",
        "1s",
        "web",
    ])?;
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "two tasks updated",
        || Ok(with_env(&running_envs(&cluster, &[0, 1, 2])?, "VERSION=2") >= 2),
        || cluster.logs(),
    )?;
    let leader = leader_index(&cluster, 0)?;
    let updated = with_env(&running_envs(&cluster, &[0, 1, 2])?, "VERSION=2");
    assert!(
        updated < 6,
        "the update finished before the kill ({updated})"
    );
    assert_eq!(update_state(cluster.node(0), "web")?.0, "updating");
    tracing::info!(leader, updated, "killing the leader mid-update");
    cluster.node_mut(leader).kill9()?;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let via = survivors[0];
    wait::wait_until_or_dump(
        Duration::from_secs(90),
        "the update completed under the new leader, 6 new tasks on the survivors",
        || {
            let (state, _) = update_state(cluster.node(via), "web")?;
            let envs = running_envs(&cluster, &survivors)?;
            Ok(state == "completed"
                && counts(cluster.node(via), "web")?.0 == 6
                && envs.len() == 6
                && with_env(&envs, "VERSION=2") == 6)
        },
        || {
            format!(
                "{}\n{}",
                cluster
                    .node(via)
                    .berth_ok(&["service", "ps", "--no-trunc", "web"])
                    .unwrap_or_default(),
                cluster.logs()
            )
        },
    )?;
    Ok(())
}

/// Runs `f` with a Control client of node `i` (its own certificate), inside its host.
fn with_control<T: Send>(
    node: &TestNode,
    f: impl AsyncFnOnce(&mut ControlClient<tonic::transport::Channel>) -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let creds = CertDir::new(node.state_dir().join("certificates")).load()?;
    let target = node.cluster_addr();
    node.host().run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            install_crypto_provider();
            let channel = Endpoint::from_shared(format!("https://{target}"))?
                .tls_config(client_tls_config(&creds)?)?
                .connect()
                .await?;
            let mut control = ControlClient::new(channel);
            f(&mut control).await
        })
    })
}

const OUT_OF_SEQUENCE: &str =
    "update out of sequence: the service was changed meanwhile; re-run the command";

#[test]
fn an_update_with_a_stale_version_is_refused() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1, "worker")?;
    let node = cluster.node(0);
    create(node, "cc", "1", LOOP)?;
    // Read the service, let the CLI change it, then write back what was read.
    let read = with_control(node, async |control| {
        let services = control
            .list_services(ListServicesRequest::default())
            .await?
            .into_inner()
            .services;
        let id = services.first().context("no service")?.id.clone();
        control
            .get_service(GetServiceRequest { service_id: id })
            .await?
            .into_inner()
            .service
            .context("no service")
    })?;
    node.berth_ok(&["service", "update", "-d", "--env-add", "A=1", "cc"])?;
    let refused = with_control(node, async |control| {
        let answer = control
            .update_service(UpdateServiceRequest {
                service_id: read.id.clone(),
                service_version: read.meta.as_ref().map_or(0, |m| m.version),
                spec: read.spec.clone(),
                rollback: false,
            })
            .await;
        Ok(answer.err().map(|s| (s.code(), s.message().to_string())))
    })?;
    assert_eq!(
        refused,
        Some((tonic::Code::FailedPrecondition, OUT_OF_SEQUENCE.to_string()))
    );
    // The change the stale write would have undone is still there.
    let env = &inspect(node, "cc")?["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"];
    assert_eq!(env, &serde_json::json!(["A=1"]));

    // Concurrent CLI updates: each one either lands or is refused with that message; none is
    // lost silently.
    for round in 0..3 {
        let outcomes: Vec<(String, std::process::Output)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let entry = format!("R{round}K{i}=1");
                    s.spawn(move || {
                        let out =
                            node.berth(&["service", "update", "-d", "--env-add", &entry, "cc"]);
                        (entry, out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let (entry, out) = h.join().expect("update thread");
                    out.map(|o| (entry, o))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        let env = inspect(node, "cc")?["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"].clone();
        let env: Vec<&str> = env
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
            .unwrap_or_default();
        for (entry, out) in &outcomes {
            if out.status.success() {
                assert!(env.contains(&entry.as_str()), "{entry} lost: {env:?}");
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains(OUT_OF_SEQUENCE), "{entry}: {err}");
                assert!(
                    !env.contains(&entry.as_str()),
                    "{entry} refused yet applied"
                );
            }
        }
        tracing::info!(
            round,
            refused = outcomes.iter().filter(|(_, o)| !o.status.success()).count(),
            "concurrent updates"
        );
    }
    Ok(())
}
