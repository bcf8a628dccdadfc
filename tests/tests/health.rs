//! Health checks end to end (issue 6, "Health") on real daemons, real containers and the
//! real CLI, with short intervals.
//!
//! Proves: a task with a passing check is STARTING (health: starting) until its first
//! successful probe and RUNNING (healthy) right after it, with the health shown by
//! `service ps`, `berth ps` and `berth inspect`; a check that fails after start makes the task
//! unhealthy → FAILED ("unhealthy container") and the restart policy starts a new task in the
//! same slot; a probe that hangs is killed at its timeout and counts as a failure;
//! `--no-healthcheck` disables an image's HEALTHCHECK, which otherwise applies; a daemon
//! killed while a task waits for its health adopts it and still waits (same task, no restart).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth_tests::cluster::{TestCluster, TestNode};
use berth_tests::image::{DEFAULT_REF, Healthcheck, TestImage};
use berth_tests::wait;
use serde_json::Value;

/// A task command that exits promptly on SIGTERM.
const LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// An image whose HEALTHCHECK always fails (every 200 ms, unhealthy at the first failure).
const UNHEALTHY_REF: &str = "berth-test/unhealthy:latest";

/// One manager (node 0) and `workers` workers, the test image loaded everywhere.
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

/// `service ps --no-trunc --format json SERVICE`, one object per task, newest of a slot first.
fn tasks(cluster: &TestCluster, service: &str) -> anyhow::Result<Vec<Value>> {
    let out =
        cluster
            .node(0)
            .berth_ok(&["service", "ps", "--no-trunc", "--format", "json", service])?;
    out.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {l:?}")))
        .collect()
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// `berth ps -a --format json` on `node`: the container running a task of `service`, newest
/// first.
fn containers(node: &TestNode, service: &str) -> anyhow::Result<Vec<Value>> {
    let out = node.berth_ok(&["ps", "-a", "--no-trunc", "--format", "json"])?;
    let prefix = format!("{service}.");
    let mut found = Vec::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        if field(&v, "Names").starts_with(&prefix) {
            found.push(v);
        }
    }
    Ok(found)
}

/// The name of the newest container of `service` on `node`, waiting for it to show up.
fn container_of(node: &TestNode, service: &str) -> anyhow::Result<String> {
    let mut name = String::new();
    wait::wait_until_or_dump(
        Duration::from_secs(10),
        &format!("a container of {service}"),
        || {
            let c = containers(node, service)?;
            name = c.first().map_or("", |c| field(c, "Names")).to_string();
            Ok(!name.is_empty())
        },
        || node.berth_ok(&["ps", "-a"]).unwrap_or_default(),
    )?;
    Ok(name)
}

/// `berth inspect CONTAINER` on `node`.
fn inspect(node: &TestNode, container: &str) -> anyhow::Result<Value> {
    let out = node.berth_ok(&["inspect", container])?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v.get(0).cloned().unwrap_or(v))
}

fn dump(cluster: &TestCluster, service: &str) -> String {
    format!(
        "{}\n{}",
        cluster
            .node(0)
            .berth_ok(&["service", "ps", "--no-trunc", service])
            .unwrap_or_default(),
        cluster.logs()
    )
}

/// Waits until the newest task of `service`'s slot 1 satisfies `check`; returns it.
fn wait_task(
    cluster: &TestCluster,
    service: &str,
    what: &str,
    deadline: Duration,
    check: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let mut last = Vec::new();
    wait::wait_until_or_dump(
        deadline,
        what,
        || {
            last = tasks(cluster, service)?;
            Ok(check(&last))
        },
        || dump(cluster, service),
    )?;
    Ok(last)
}

#[test]
fn a_task_is_running_only_after_its_first_passing_probe() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1)?;
    let worker = cluster.node(1);
    tracing::info!("phase: create a service whose check passes once /tmp/ok exists");
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "hc",
        "--constraint",
        "node.role==worker",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "200ms",
        "--health-start-period",
        "60s",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    let mut name = String::new();
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "the task's container runs, health starting",
        || {
            let c = containers(worker, "hc")?;
            let Some(c) = c.first() else { return Ok(false) };
            name = field(c, "Names").to_string();
            Ok(field(c, "Status").ends_with("(health: starting)"))
        },
        || dump(&cluster, "hc"),
    )?;
    wait_task(
        &cluster,
        "hc",
        "the managers see the task starting",
        Duration::from_secs(10),
        |t| field(&t[0], "CurrentState").starts_with("Starting"),
    )?;
    tracing::info!(%name, "phase: failing probes keep the task STARTING");
    let sampled_until = Instant::now() + Duration::from_millis(1500);
    let mut samples = 0;
    while Instant::now() < sampled_until {
        let t = tasks(&cluster, "hc")?;
        let current = field(&t[0], "CurrentState");
        assert!(
            current.starts_with("Starting") && current.ends_with("(health: starting)"),
            "before any probe passed the task must be starting: {current}"
        );
        samples += 1;
    }
    assert!(samples >= 3, "sampled {samples} times");
    let c = inspect(worker, &name)?;
    assert_eq!(c["State"]["Health"]["Status"], "starting", "{c}");
    let failures = c["State"]["Health"]["Log"]
        .as_array()
        .map_or(0, |l| l.iter().filter(|p| p["ExitCode"] != 0).count());
    assert!(failures >= 3, "probes ran and failed: {c}");
    assert_eq!(
        c["State"]["Health"]["FailingStreak"], 0,
        "start-period failures do not count"
    );

    tracing::info!("phase: make the check pass");
    let passed_at = Instant::now();
    worker.berth_ok(&["exec", &name, "touch", "/tmp/ok"])?;
    let t = wait_task(
        &cluster,
        "hc",
        "the task runs, healthy",
        Duration::from_secs(10),
        |t| field(&t[0], "CurrentState").starts_with("Running"),
    )?;
    let took = passed_at.elapsed();
    let current = field(&t[0], "CurrentState");
    assert!(current.ends_with("(healthy)"), "{current}");
    assert_eq!(t.len(), 1, "still the first task: {t:?}");
    assert!(
        took < Duration::from_secs(3),
        "RUNNING follows the first passing probe (interval 200 ms), took {took:?}"
    );
    tracing::info!(?took, "running after the first passing probe");

    let c = containers(worker, "hc")?;
    let status = field(&c[0], "Status");
    assert!(
        status.starts_with("Up ") && status.ends_with("(healthy)"),
        "{status}"
    );
    let c = inspect(worker, &name)?;
    assert_eq!(c["State"]["Health"]["Status"], "healthy", "{c}");
    let log = c["State"]["Health"]["Log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(log.last().map(|p| p["ExitCode"].clone()), Some(0.into()));
    let probe_ms: Vec<u64> = log
        .iter()
        .map(|p| ((epoch_seconds(&p["End"]) - epoch_seconds(&p["Start"])) * 1e3) as u64)
        .collect();
    tracing::info!(?probe_ms, "probe durations (exec into the container)");
    assert_eq!(
        c["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "test -f /tmp/ok"])
    );
    let spec = cluster.node(0).berth_ok(&["service", "inspect", "hc"])?;
    let spec: Value = serde_json::from_str(&spec)?;
    let hc = &spec[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"];
    assert_eq!(
        hc["Test"],
        serde_json::json!(["CMD-SHELL", "test -f /tmp/ok"])
    );
    assert_eq!(hc["Interval"], 200_000_000);
    let ls = cluster.node(0).berth_ok(&["service", "ls"])?;
    assert!(ls.contains("1/1"), "{ls}");
    Ok(())
}

#[test]
fn an_unhealthy_task_fails_and_the_restart_policy_replaces_it() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1)?;
    let worker = cluster.node(1);
    tracing::info!("phase: a service that is healthy as long as /tmp/ok exists");
    let cmd = format!("touch /tmp/ok; {LOOP}");
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "sick",
        "--constraint",
        "node.role==worker",
        "--restart-delay",
        "0s",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        DEFAULT_REF,
        "sh",
        "-c",
        &cmd,
    ])?;
    let t = wait_task(
        &cluster,
        "sick",
        "the first task runs, healthy",
        Duration::from_secs(30),
        |t| field(&t[0], "CurrentState").starts_with("Running"),
    )?;
    let first = field(&t[0], "ID").to_string();
    let name = container_of(worker, "sick")?;
    assert!(name.contains(&first), "{name} runs task {first}");

    tracing::info!("phase: break the check");
    worker.berth_ok(&["exec", &name, "rm", "/tmp/ok"])?;
    let t = wait_task(
        &cluster,
        "sick",
        "the first task failed unhealthy and a new one runs in its slot",
        Duration::from_secs(30),
        |t| {
            t.len() >= 2
                && field(&t[0], "ID") != first
                && field(&t[0], "CurrentState").starts_with("Running")
                && t.iter().any(|x| field(x, "ID") == first)
        },
    )?;
    let old = t
        .iter()
        .find(|x| field(x, "ID") == first)
        .context("the first task is listed")?;
    assert!(
        field(old, "CurrentState").starts_with("Failed")
            && field(old, "CurrentState").ends_with("(unhealthy)"),
        "{old}"
    );
    assert!(
        field(old, "Error").contains("unhealthy container"),
        "Docker's reason: {old}"
    );
    assert_eq!(field(old, "DesiredState"), "Shutdown", "{old}");
    assert!(field(old, "Name").contains("sick.1"), "{old}");
    assert_eq!(
        field(&t[0], "Name"),
        "sick.1",
        "the replacement is in slot 1"
    );
    assert!(field(&t[0], "CurrentState").ends_with("(healthy)"), "{t:?}");
    // The unhealthy container was stopped.
    let c = inspect(worker, &name)?;
    assert_eq!(c["State"]["Running"], false, "{c}");
    assert_eq!(c["State"]["Health"]["Status"], "unhealthy", "{c}");
    Ok(())
}

/// Seconds since the epoch of an RFC 3339 time as `inspect` prints it.
fn epoch_seconds(v: &Value) -> f64 {
    berth_agent::engine::parse_rfc3339(v.as_str().unwrap_or_default())
        .map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

#[test]
fn a_probe_that_hangs_times_out_and_counts_as_a_failure() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(0)?;
    let node = cluster.node(0);
    // `sleep 100` is exec'd by the shell itself; `sleep 100 || exit 1` makes the shell fork
    // it, so the hung process is a grandchild that keeps the probe's output pipes open.
    for (service, check) in [("hang", "sleep 100"), ("hangfork", "sleep 100 || exit 1")] {
        tracing::info!(
            service,
            check,
            "phase: a check that hangs, with a 300 ms timeout"
        );
        let created = Instant::now();
        node.berth_ok(&[
            "service",
            "create",
            "-d",
            "--name",
            service,
            "--restart-condition",
            "none",
            "--health-cmd",
            check,
            "--health-timeout",
            "300ms",
            "--health-interval",
            "200ms",
            "--health-retries",
            "2",
            DEFAULT_REF,
            "sh",
            "-c",
            LOOP,
        ])?;
        let t = wait_task(
            &cluster,
            service,
            "the task failed unhealthy",
            Duration::from_secs(30),
            |t| field(&t[0], "CurrentState").starts_with("Failed"),
        )?;
        let took = created.elapsed();
        assert!(
            field(&t[0], "Error").contains("unhealthy container"),
            "{t:?}"
        );
        assert!(
            took < Duration::from_secs(15),
            "two timed-out probes fail the task long before the probe's 100 s: {took:?}"
        );
        assert!(
            !t.iter()
                .any(|x| field(x, "CurrentState").starts_with("Running")),
            "it never ran healthy: {t:?}"
        );
        check_timed_out_probes(node, service)?;
        tracing::info!(service, ?took, "failed after timed-out probes");
    }
    Ok(())
}

/// The probes of `service`'s container all failed, at least two by timing out, and each was
/// killed within 700 ms of its start (timeout 300 ms).
fn check_timed_out_probes(node: &TestNode, service: &str) -> anyhow::Result<()> {
    let c = inspect(node, &container_of(node, service)?)?;
    let log = c["State"]["Health"]["Log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Every probe failed; the ones before the container was stopped timed out (a probe
    // racing with the stop may fail to enter the dying container instead).
    assert!(log.iter().all(|p| p["ExitCode"] == -1), "{c}");
    let timed_out: Vec<&Value> = log
        .iter()
        .filter(|p| p["Output"] == "Health check exceeded timeout (300ms)")
        .collect();
    assert!(timed_out.len() >= 2, "{c}");
    for probe in timed_out {
        let took = epoch_seconds(&probe["End"]) - epoch_seconds(&probe["Start"]);
        assert!(
            (0.0..0.7).contains(&took),
            "a probe is killed at its 300 ms timeout; this one took {took:.3} s: {probe}"
        );
    }
    assert!(
        c["State"]["Health"]["FailingStreak"].as_i64() >= Some(2),
        "{c}"
    );
    Ok(())
}

#[test]
fn no_healthcheck_disables_the_images_healthcheck() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(0)?;
    let node = cluster.node(0);
    let archive = cluster.net().dir().join("unhealthy.tar");
    TestImage::busybox(UNHEALTHY_REF)
        .healthcheck(
            Healthcheck::cmd(["false"])
                .interval(Duration::from_millis(200))
                .retries(1),
        )
        .write_docker_archive(&archive)?;
    node.berth_ok(&["image", "load", "-i", &archive.display().to_string()])?;

    tracing::info!("phase: the image's check applies by default");
    node.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "imgcheck",
        "--restart-condition",
        "none",
        UNHEALTHY_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    let t = wait_task(
        &cluster,
        "imgcheck",
        "the image's failing check fails the task",
        Duration::from_secs(30),
        |t| field(&t[0], "CurrentState").starts_with("Failed"),
    )?;
    assert!(
        field(&t[0], "Error").contains("unhealthy container"),
        "{t:?}"
    );

    tracing::info!("phase: --no-healthcheck turns it off");
    node.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "nocheck",
        "--restart-condition",
        "none",
        "--no-healthcheck",
        UNHEALTHY_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    wait_task(
        &cluster,
        "nocheck",
        "the task runs",
        Duration::from_secs(30),
        |t| field(&t[0], "CurrentState").starts_with("Running"),
    )?;
    // Ten probe intervals of the image's check: still running, no health shown.
    std::thread::sleep(Duration::from_secs(2));
    let t = tasks(&cluster, "nocheck")?;
    assert_eq!(t.len(), 1, "{t:?}");
    let current = field(&t[0], "CurrentState");
    assert!(
        current.starts_with("Running") && !current.contains('('),
        "{current}"
    );
    let c = containers(node, "nocheck")?;
    assert!(!field(&c[0], "Status").contains('('), "{:?}", c[0]);
    let c = inspect(node, field(&c[0], "Names"))?;
    assert!(c["State"].get("Health").is_none(), "{c}");
    assert_eq!(
        c["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["NONE"])
    );
    Ok(())
}

#[test]
fn a_restarted_daemon_keeps_a_starting_task_waiting_for_its_health() -> anyhow::Result<()> {
    wait::init_test_logging();
    let mut cluster = cluster(0)?;
    cluster.node(0).berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "adopt",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "200ms",
        "--health-start-period",
        "60s",
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    let t = wait_task(
        &cluster,
        "adopt",
        "the task is starting",
        Duration::from_secs(30),
        |t| field(&t[0], "CurrentState").starts_with("Starting"),
    )?;
    let task = field(&t[0], "ID").to_string();
    let name = container_of(cluster.node(0), "adopt")?;

    tracing::info!("phase: kill -9 and restart berthd while the task waits for its health");
    cluster.node_mut(0).kill9()?;
    cluster.node_mut(0).start()?;
    let node = cluster.node(0);
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "the adopted container is probed again",
        || {
            let c = containers(node, "adopt")?;
            let starting = c.first().is_some_and(|c| {
                field(c, "Names") == name && field(c, "Status").ends_with("(health: starting)")
            });
            let c = inspect(node, &name)?;
            let probed = c["State"]["Health"]["Log"]
                .as_array()
                .is_some_and(|l| !l.is_empty());
            Ok(starting && probed)
        },
        || dump(&cluster, "adopt"),
    )?;
    let t = wait_task(
        &cluster,
        "adopt",
        "the managers answer again",
        Duration::from_secs(30),
        |t| !t.is_empty(),
    )?;
    assert_eq!(field(&t[0], "ID"), task, "{t:?}");
    // The worker's session reports its tasks again after the restart: still STARTING.
    let sampled_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < sampled_until {
        let t = tasks(&cluster, "adopt")?;
        assert!(
            field(&t[0], "CurrentState").starts_with("Starting"),
            "not RUNNING before a probe passed: {t:?}"
        );
    }

    tracing::info!("phase: make the check pass");
    node.berth_ok(&["exec", &name, "touch", "/tmp/ok"])?;
    let t = wait_task(
        &cluster,
        "adopt",
        "the same task runs, healthy",
        Duration::from_secs(15),
        |t| field(&t[0], "CurrentState").starts_with("Running"),
    )?;
    assert_eq!(t.len(), 1, "no replacement: {t:?}");
    assert_eq!(field(&t[0], "ID"), task);
    assert!(field(&t[0], "CurrentState").ends_with("(healthy)"), "{t:?}");
    Ok(())
}
