//! Stacks from Compose files on real daemons, real containers and the real CLI (issue 8):
//! `berth stack deploy|ls|services|ps|rm` with a manager and a worker in netns test hosts.
//!
//! Proves: a three-service stack (web, api, worker) with health checks, networks, a secret and
//! a config deploys from a Compose file, with interpolation from `.env` and `env_file`; api
//! reads its secret and config and reaches web and worker by name; a changed secret is refused;
//! re-deploying an unchanged file changes nothing; a changed file updates only the changed
//! service (the others keep their version and task ids); `--prune` removes services no longer
//! in the file; `stack rm` removes everything; a malformed file is refused with the key and
//! line and deploys nothing; a deploy that fails at the managers part way undoes its writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use berth_tests::cluster::{TestCluster, TestNode};
use berth_tests::wait;
use serde_json::Value;

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

/// A directory of Compose files beside the cluster's private directory.
fn stack_dir(cluster: &TestCluster, name: &str) -> anyhow::Result<PathBuf> {
    let dir = cluster.net().dir().join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn write(dir: &Path, file: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(file);
    std::fs::write(&path, text).with_context(|| format!("writing {path:?}"))?;
    Ok(path.display().to_string())
}

/// The stack file; `api_level` is the one value the update changes, `with_worker` whether the
/// worker service is in it.
fn stack_file(api_level: u32, with_worker: bool) -> String {
    let mut text = format!(
        r#"# A three-service stack in the Compose format docker stack deploy takes.
version: "3.8"

x-loop: &loop
  image: berth-test/busybox:${{TAG}}
  command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
  stop_grace_period: 2s

services:
  web:
    <<: *loop
    command: ["sh", "-c", "hostname > /srv/www/index.html; exec httpd -f -p 80 -h /srv/www"]
    init: true
    environment:
      ROLE: web
      REPLICAS_SEEN: "${{WEB_REPLICAS:-2}}"
    healthcheck:
      test: ["CMD-SHELL", "test -d /proc/1"]
      interval: 200ms
      retries: 3
    deploy:
      replicas: ${{WEB_REPLICAS:-2}}
      update_config: {{monitor: 0s}}
    ports:
      - "8080:80"
    depends_on: [api]

  api:
    <<: *loop
    env_file: api.env
    environment:
      - ROLE=api
      - LEVEL={api_level}
    healthcheck:
      test: test -f /etc/berth-release
      interval: 200ms
    networks: [back, default]
    secrets:
      - db_password
    configs:
      - source: api_config
        target: /etc/api.conf
        mode: 0440
    deploy:
      update_config: {{monitor: 0s, order: stop-first}}
      labels:
        tier: middle
"#
    );
    if with_worker {
        text.push_str(
            r#"
  worker:
    <<: *loop
    environment: [ROLE=worker]
    networks:
      back:
        aliases: [jobs]
    deploy:
      mode: global
      placement:
        constraints: ["node.platform.os==linux"]
"#,
        );
    }
    text.push_str(
        r#"
networks:
  back:
    labels: [purpose=backend]

secrets:
  db_password:
    file: ./db_password.txt

configs:
  api_config:
    content: "listen=${API_PORT:-9000}"
"#,
    );
    text
}

/// `service inspect NAME` as JSON.
fn service_inspect(node: &TestNode, name: &str) -> anyhow::Result<Value> {
    let out = node.berth_ok(&["service", "inspect", name])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("parsing {out:?}"))?;
    Ok(v.get(0).cloned().unwrap_or(v))
}

fn version(node: &TestNode, name: &str) -> anyhow::Result<u64> {
    service_inspect(node, name)?["Version"]["Index"]
        .as_u64()
        .context("a version")
}

/// `stack ps --format json` rows.
fn stack_tasks(node: &TestNode, stack: &str) -> anyhow::Result<Vec<Value>> {
    let out = node.berth_ok(&["stack", "ps", "--no-trunc", "--format", "json", stack])?;
    out.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing {l:?}")))
        .collect()
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// Task ids of `service` desired running, by task display name (`app_web.1`).
fn running_tasks(
    node: &TestNode,
    stack: &str,
    service: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let prefix = format!("{service}.");
    Ok(stack_tasks(node, stack)?
        .iter()
        .filter(|t| field(t, "Name").starts_with(&prefix))
        .filter(|t| field(t, "DesiredState") == "Running")
        .map(|t| (field(t, "Name").to_string(), field(t, "ID").to_string()))
        .collect())
}

/// Whether every replica of every service in `stack services` runs (`N/N`, N > 0).
fn converged(node: &TestNode, stack: &str, services: usize) -> anyhow::Result<bool> {
    let out = node.berth_ok(&["stack", "services", "--format", "json", stack])?;
    let rows: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    Ok(rows.len() == services
        && rows.iter().all(|r| {
            let replicas = field(r, "Replicas");
            let (running, wanted) = replicas.split_once('/').unwrap_or(("", "x"));
            let wanted = wanted.split(' ').next().unwrap_or_default();
            running == wanted && running != "0"
        }))
}

fn dump(cluster: &TestCluster, stack: &str) -> String {
    let n0 = cluster.node(0);
    format!(
        "{}\n{}\n{}",
        n0.berth(&["stack", "services", stack])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default(),
        n0.berth(&["stack", "ps", stack])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default(),
        cluster.logs()
    )
}

/// The container of a running task named `task` (`app_api.1`), on whichever node runs it.
fn task_container<'a>(
    cluster: &'a TestCluster,
    task: &str,
) -> anyhow::Result<(&'a TestNode, String)> {
    let prefix = format!("{task}.");
    for node in cluster.nodes() {
        let out = node.berth_ok(&["ps", "--no-trunc", "--format", "json"])?;
        for line in out.lines() {
            let v: Value = serde_json::from_str(line)?;
            if field(&v, "Names").starts_with(&prefix) {
                return Ok((node, field(&v, "Names").to_string()));
            }
        }
    }
    anyhow::bail!("no running container for task {task}")
}

/// The environment of a running task's container.
fn task_env(cluster: &TestCluster, task: &str) -> anyhow::Result<Vec<String>> {
    let (node, container) = task_container(cluster, task)?;
    let out = node.berth_ok(&["exec", &container, "env"])?;
    let mut env: Vec<String> = out.lines().map(str::to_string).collect();
    env.sort();
    Ok(env)
}

/// Names of the networks carrying the stack's namespace label.
fn stack_networks(node: &TestNode, stack: &str) -> anyhow::Result<Vec<String>> {
    let out = node.berth_ok(&[
        "network",
        "ls",
        "--filter",
        &format!("label=com.docker.stack.namespace={stack}"),
        "--format",
        "json",
    ])?;
    let mut names = Vec::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))?;
        names.push(field(&v, "Name").to_string());
    }
    names.sort();
    Ok(names)
}

fn all_containers(cluster: &TestCluster) -> anyhow::Result<usize> {
    let mut n = 0;
    for node in cluster.nodes() {
        n += node.berth_ok(&["ps", "-q"])?.lines().count();
    }
    Ok(n)
}

#[test]
fn a_stack_deploys_updates_only_what_changed_prunes_and_is_removed() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(1)?;
    let n0 = cluster.node(0);
    let dir = stack_dir(&cluster, "app")?;
    write(
        &dir,
        ".env",
        "# read by stack deploy\nTAG=latest\nWEB_REPLICAS=1\n",
    )?;
    write(
        &dir,
        "api.env",
        "GREETING=hello from env_file\nLEVEL=overridden\n",
    )?;
    write(&dir, "db_password.txt", "s3cret-stack-password")?;
    let text = stack_file(1, true);
    let depends_on_line = 1 + text
        .lines()
        .position(|l| l.contains("depends_on"))
        .context("depends_on in the file")?;
    let file = write(&dir, "stack.yml", &text)?;

    tracing::info!("phase: deploy (TAG and WEB_REPLICAS from .env)");
    // --detach=false waits for every service to converge, with service create's progress.
    let out = n0.berth(&["stack", "deploy", "--detach=false", "-c", &file, "app"])?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout.matches("verify: Service converged").count(),
        3,
        "{stdout}"
    );
    for wanted in [
        "Creating network app_default",
        "Creating network app_back",
        "Creating secret app_db_password",
        "Creating config app_api_config",
        "Creating service app_web",
        "Creating service app_api",
        "Creating service app_worker",
    ] {
        assert!(stdout.contains(wanted), "{wanted:?} in\n{stdout}");
    }
    let warning = format!("stack.yml line {depends_on_line}: services.web.depends_on: ignored");
    assert!(stderr.contains(&warning), "{warning:?} in {stderr}");
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        "the stack's services converge",
        || converged(n0, "app", 3),
        || dump(&cluster, "app"),
    )?;
    let ls = n0.berth_ok(&["stack", "ls"])?;
    assert_eq!(ls, "NAME   SERVICES\napp    3\n", "{ls}");
    assert_eq!(stack_networks(n0, "app")?, ["app_back", "app_default"]);

    // What the file says is what runs.
    let web = service_inspect(n0, "app_web")?;
    assert_eq!(web["Spec"]["Mode"]["Replicated"]["Replicas"], 1, "{web}");
    assert_eq!(
        web["Spec"]["Labels"]["com.docker.stack.namespace"], "app",
        "{web}"
    );
    let api = service_inspect(n0, "app_api")?;
    assert_eq!(api["Spec"]["Labels"]["tier"], "middle", "{api}");
    let worker = service_inspect(n0, "app_worker")?;
    assert!(worker["Spec"]["Mode"]["Global"].is_object(), "{worker}");
    let env = task_env(&cluster, "app_api.1")?;
    for wanted in ["GREETING=hello from env_file", "LEVEL=1", "ROLE=api"] {
        assert!(env.iter().any(|e| e == wanted), "{wanted} in {env:?}");
    }
    let env = task_env(&cluster, "app_web.1")?;
    assert!(env.iter().any(|e| e == "REPLICAS_SEEN=1"), "{env:?}");
    let ps = n0.berth_ok(&["stack", "ps", "app"])?;
    assert!(ps.contains("app_worker.") && ps.contains("node-1"), "{ps}");

    tracing::info!("phase: api reads its secret and config and reaches the others by name");
    let (node, api_container) = task_container(&cluster, "app_api.1")?;
    let read = node.berth_ok(&["exec", &api_container, "cat", "/run/secrets/db_password"])?;
    assert_eq!(read, "s3cret-stack-password");
    let read = node.berth_ok(&["exec", &api_container, "cat", "/etc/api.conf"])?;
    assert_eq!(read, "listen=9000");
    let mode = node.berth_ok(&[
        "exec",
        &api_container,
        "stat",
        "-L",
        "-c",
        "%a",
        "/etc/api.conf",
    ])?;
    assert_eq!(mode.trim(), "440");
    let last = std::cell::RefCell::new(String::new());
    wait::wait_until_or_dump(
        Duration::from_secs(20),
        "api reaches web by service name and worker by its alias on back",
        || {
            let web = node.berth(&[
                "exec",
                &api_container,
                "timeout",
                "3",
                "wget",
                "-q",
                "-O-",
                "http://web/",
            ])?;
            *last.borrow_mut() = String::from_utf8_lossy(&web.stdout).trim().to_string();
            let jobs = node.berth(&["exec", &api_container, "nslookup", "jobs"])?;
            let worker = node.berth(&["exec", &api_container, "nslookup", "worker"])?;
            Ok(web.status.success()
                && !last.borrow().is_empty()
                && jobs.status.success()
                && worker.status.success())
        },
        || {
            format!(
                "last answer of web: {:?}\n{}",
                last.borrow(),
                dump(&cluster, "app")
            )
        },
    )?;

    tracing::info!("phase: the same file again changes nothing");
    let before: Vec<(String, u64, BTreeMap<String, String>)> = ["web", "api", "worker"]
        .iter()
        .map(|s| {
            let name = format!("app_{s}");
            Ok((
                name.clone(),
                version(n0, &name)?,
                running_tasks(n0, "app", &name)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let out = n0.berth_ok(&["stack", "deploy", "-c", &file, "app"])?;
    assert!(
        !out.contains("Creating") && !out.contains("Updating"),
        "{out}"
    );
    for (name, v, _) in &before {
        assert_eq!(version(n0, name)?, *v, "{name} was not touched");
    }

    tracing::info!("phase: a change to api updates api alone");
    write(&dir, "stack.yml", &stack_file(2, true))?;
    let out = n0.berth_ok(&["stack", "deploy", "-c", &file, "app"])?;
    assert!(out.contains("Updating service app_api"), "{out}");
    assert!(
        !out.contains("app_web") && !out.contains("app_worker"),
        "{out}"
    );
    let old_api = before[1].2.clone();
    wait::wait_until_or_dump(
        Duration::from_secs(60),
        "api runs a new task with LEVEL=2",
        || {
            let now = running_tasks(n0, "app", "app_api")?;
            Ok(now.len() == 1
                && now.values().all(|id| !old_api.values().any(|o| o == id))
                && converged(n0, "app", 3)?
                && task_env(&cluster, "app_api.1")?
                    .iter()
                    .any(|e| e == "LEVEL=2"))
        },
        || dump(&cluster, "app"),
    )?;
    for (name, v, tasks) in [&before[0], &before[2]] {
        assert_eq!(version(n0, name)?, *v, "{name} kept its version");
        assert_eq!(
            &running_tasks(n0, "app", name)?,
            tasks,
            "{name} kept its tasks"
        );
    }
    let version_after_update = version(n0, "app_api")?;
    assert!(version_after_update > before[1].1);

    tracing::info!("phase: a changed secret file is refused and changes nothing");
    write(&dir, "db_password.txt", "another password")?;
    let err = n0.berth_err(&["stack", "deploy", "-c", &file, "app"])?;
    assert!(err.contains("only updates to Labels are allowed"), "{err}");
    assert!(err.contains("secret app_db_password"), "{err}");
    assert_eq!(
        version(n0, "app_api")?,
        version_after_update,
        "api untouched"
    );
    write(&dir, "db_password.txt", "s3cret-stack-password")?;

    tracing::info!("phase: without --prune a dropped service stays; with it, it goes");
    write(&dir, "stack.yml", &stack_file(2, false))?;
    let out = n0.berth_ok(&["stack", "deploy", "-c", &file, "app"])?;
    assert!(!out.contains("Removing"), "{out}");
    assert!(
        n0.berth_ok(&["stack", "services", "app"])?
            .contains("app_worker")
    );
    let out = n0.berth_ok(&["stack", "deploy", "--prune", "-c", &file, "app"])?;
    assert!(out.contains("Removing service app_worker"), "{out}");
    let services = n0.berth_ok(&["stack", "services", "-q", "app"])?;
    assert_eq!(services.lines().count(), 2, "{services}");

    tracing::info!("phase: stack rm removes everything");
    let out = n0.berth_ok(&["stack", "rm", "app"])?;
    for wanted in [
        "Removing service app_api",
        "Removing service app_web",
        "Removing secret app_db_password",
        "Removing config app_api_config",
        "Removing network app_back",
        "Removing network app_default",
    ] {
        assert!(out.contains(wanted), "{wanted:?} in\n{out}");
    }
    assert_eq!(n0.berth_ok(&["stack", "ls"])?, "NAME   SERVICES\n");
    assert!(stack_networks(n0, "app")?.is_empty());
    assert!(n0.berth_ok(&["secret", "ls", "-q"])?.is_empty());
    assert!(n0.berth_ok(&["config", "ls", "-q"])?.is_empty());
    wait::wait_until_or_dump(
        Duration::from_secs(30),
        "every container is gone",
        || Ok(all_containers(&cluster)? == 0),
        || dump(&cluster, "app"),
    )?;
    let out = n0.berth(&["stack", "rm", "app"])?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Nothing found in stack: app"));
    Ok(())
}

#[test]
fn bad_files_and_failed_deploys_leave_nothing_behind() -> anyhow::Result<()> {
    wait::init_test_logging();
    let cluster = cluster(0)?;
    let n0 = cluster.node(0);
    let dir = stack_dir(&cluster, "bad")?;
    let nothing_deployed = || -> anyhow::Result<()> {
        let services = n0.berth_ok(&["service", "ls", "-q"])?;
        assert!(services.is_empty(), "services: {services}");
        assert!(stack_networks(n0, "bad")?.is_empty());
        Ok(())
    };

    tracing::info!("phase: an unknown key is refused with its line");
    let file = write(
        &dir,
        "stack.yml",
        "services:\n  web:\n    image: berth-test/busybox:latest\n  api:\n    image: berth-test/busybox:latest\n    deploy:\n      replicas: 2\n      foo: 1\n",
    )?;
    let err = n0.berth_err(&["stack", "deploy", "-c", &file, "bad"])?;
    let expected = format!("Error: {file} line 8: services.api.deploy.foo: unknown key");
    assert!(err.contains(&expected), "{expected:?} in {err}");
    nothing_deployed()?;

    tracing::info!("phase: broken YAML and a missing variable");
    let file = write(
        &dir,
        "stack.yml",
        "services:\n  web:\n    image: [busybox\n",
    )?;
    let err = n0.berth_err(&["stack", "deploy", "-c", &file, "bad"])?;
    assert!(err.contains(&format!("{file} line 3")), "{err}");
    let file = write(
        &dir,
        "stack.yml",
        "services:\n  web:\n    image: ${IMAGE:?set IMAGE to deploy}\n",
    )?;
    let err = n0.berth_err(&["stack", "deploy", "-c", &file, "bad"])?;
    assert!(
        err.contains("line 3: services.web.image: required variable IMAGE is missing a value: set IMAGE to deploy"),
        "{err}"
    );
    nothing_deployed()?;

    tracing::info!("phase: a name held outside the stack is refused before any write");
    n0.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "bad_api",
        "berth-test/busybox:latest",
        "sleep",
        "1000",
    ])?;
    let file = write(
        &dir,
        "stack.yml",
        "services:\n  web:\n    image: berth-test/busybox:latest\n  api:\n    image: berth-test/busybox:latest\n",
    )?;
    let err = n0.berth_err(&["stack", "deploy", "-c", &file, "bad"])?;
    assert!(
        err.contains("line 4: service bad_api already exists and is not part of stack bad"),
        "{err}"
    );
    let services = n0.berth_ok(&["service", "ls", "--format", "{{.Name}}"])?;
    assert_eq!(services, "bad_api\n");
    assert!(stack_networks(n0, "bad")?.is_empty());
    // `service rm` can meet "update out of sequence" while the new task is being written
    // (a manager race outside stacks): retry it.
    wait::wait_until(Duration::from_secs(10), "service rm bad_api", || {
        Ok(n0.berth(&["service", "rm", "bad_api"])?.status.success())
    })?;

    tracing::info!("phase: a write the managers refuse part way is undone");
    // The managers refuse a memory limit under 4 MiB; web and the network come first.
    let file = write(
        &dir,
        "stack.yml",
        "services:\n  web:\n    image: berth-test/busybox:latest\n  api:\n    image: berth-test/busybox:latest\n    deploy:\n      resources:\n        limits: {memory: 1M}\n",
    )?;
    let out = n0.berth(&["stack", "deploy", "-c", &file, "bad"])?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Creating service bad_web") && stderr.contains("creating service bad_api"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("removed service bad_web")
            && stderr.contains("removed network bad_default"),
        "{stderr}"
    );
    nothing_deployed()?;
    Ok(())
}
