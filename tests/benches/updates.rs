//! Rolling-update benchmark (issue 6), not a timed test: 50 replicas on one node (a real
//! `berthd` in a netns test host, real containers), updated with `--update-parallelism 1
//! --update-delay 0s` and with `--update-parallelism 0`, Docker's default 5 s monitor. Prints
//! the time until all 50 tasks of the new spec run and until the update status is COMPLETED,
//! each beside Docker Swarm's figure on this VM (perf-anchors.md: 94.9 s / 17.3 s to all new
//! running, 99.9 s / 22.3 s to completed; ~1.9 s per task sequentially) as a ratio.
//!
//! ```text
//! cargo build --release --workspace --bins && cargo bench -p berth-tests --bench updates
//! ```
//!
//! `BENCH_RUNS` (default 3) sets the runs per figure; the median is printed with min/max.
//! The tasks run `sh -c` loops that exit on SIGTERM (as in Swarm's baseline) with no network
//! (Swarm's containers each get a veth on the default bridge).

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_proto::identity::{CertDir, client_tls_config, install_crypto_provider};
use berth_proto::v1::control_client::ControlClient;
use berth_proto::v1::list_tasks_request::Filters;
use berth_proto::v1::{
    GetServiceRequest, ListServicesRequest, ListTasksRequest, TaskState, UpdateServiceRequest,
    UpdateState,
};
use berth_tests::cluster::TestCluster;
use berth_tests::image::DEFAULT_REF;
use berth_tests::wait;
use tonic::transport::{Channel, Endpoint};

const REPLICAS: usize = 50;
/// Swarm's baseline workload: exits at once on SIGTERM (`wait` is interruptible).
const LOOP: &str = "trap 'exit 0' TERM; sleep 1000000 & wait";
/// Swarm on this VM (perf-anchors.md §2): all new running / completed, parallelism 1 and 0.
const SWARM_RUNNING: [f64; 2] = [94.94, 17.29];
const SWARM_COMPLETED: [f64; 2] = [99.89, 22.30];

/// Tasks of the current spec that want to run and run.
async fn new_running(control: &mut ControlClient<Channel>, id: &str) -> anyhow::Result<usize> {
    let tasks = control
        .list_tasks(ListTasksRequest {
            filters: Some(Filters {
                service_ids: vec![id.to_string()],
                up_to_date: true,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .tasks;
    Ok(tasks
        .iter()
        .filter(|t| {
            t.desired_state == TaskState::Running as i32
                && t.status
                    .as_ref()
                    .is_some_and(|s| s.state == TaskState::Running as i32)
        })
        .count())
}

/// One update of `id` (env `RUN=<run>`, the given parallelism): times until all new tasks
/// run and until COMPLETED, polled every 10 ms.
async fn one_update(
    control: &mut ControlClient<Channel>,
    id: &str,
    run: usize,
    parallelism: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let service = control
        .get_service(GetServiceRequest {
            service_id: id.to_string(),
        })
        .await?
        .into_inner()
        .service
        .context("no service")?;
    let mut spec = service.spec.clone().context("no spec")?;
    let task = spec.task.as_mut().context("no task spec")?;
    let container = task.container.as_mut().context("no container spec")?;
    container.env = vec![format!("RUN={run}")];
    let update = spec.update.get_or_insert_with(Default::default);
    update.parallelism = Some(parallelism);
    update.delay = Some(prost_types::Duration::default());
    update.monitor = Some(prost_types::Duration {
        seconds: 5,
        nanos: 0,
    });
    let started = Instant::now();
    control
        .update_service(UpdateServiceRequest {
            service_id: id.to_string(),
            service_version: service.meta.as_ref().map_or(0, |m| m.version),
            spec: Some(spec),
            rollback: false,
        })
        .await?;
    let mut all_running = None;
    loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "update took over 10 min"
        );
        if all_running.is_none() && new_running(control, id).await? == REPLICAS {
            all_running = Some(started.elapsed());
        }
        let status = control
            .get_service(GetServiceRequest {
                service_id: id.to_string(),
            })
            .await?
            .into_inner()
            .service
            .and_then(|s| s.update_status)
            .unwrap_or_default();
        match UpdateState::try_from(status.state).unwrap_or(UpdateState::None) {
            UpdateState::Completed => {
                let done = started.elapsed();
                // All new tasks run by then (COMPLETED waits for them and the monitor).
                return Ok((all_running.unwrap_or(done), done));
            }
            UpdateState::Paused | UpdateState::RollbackStarted | UpdateState::RollbackPaused => {
                anyhow::bail!("update failed: {}", status.message)
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn median(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let s = |d: Duration| d.as_secs_f64();
    (s(v[v.len() / 2]), s(v[0]), s(v[v.len() - 1]))
}

fn main() -> anyhow::Result<()> {
    install_crypto_provider();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!("# rolling update of {REPLICAS} replicas on one node (real berthd and containers)");
    println!("host load before: {}", load());
    let cluster = TestCluster::new(1)?;
    cluster.init(0)?;
    cluster.load_test_image()?;
    let node = cluster.node(0);
    node.berth_ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "bench",
        "--replicas",
        &REPLICAS.to_string(),
        DEFAULT_REF,
        "sh",
        "-c",
        LOOP,
    ])?;
    let creds = CertDir::new(node.state_dir().join("certificates")).load()?;
    let target = node.cluster_addr();
    let results = node.host().run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let channel = Endpoint::from_shared(format!("https://{target}"))?
                .tls_config(client_tls_config(&creds)?)?
                .connect()
                .await?;
            let mut control = ControlClient::new(channel);
            let id = control
                .list_services(ListServicesRequest::default())
                .await?
                .into_inner()
                .services
                .first()
                .context("no service")?
                .id
                .clone();
            let up = Instant::now();
            while new_running(&mut control, &id).await? < REPLICAS {
                anyhow::ensure!(up.elapsed() < Duration::from_secs(300), "service never ran");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut results = Vec::new();
            let mut run = 0;
            for parallelism in [1u64, 0] {
                let (mut running, mut completed) = (Vec::new(), Vec::new());
                for _ in 0..runs {
                    run += 1;
                    let (r, c) = one_update(&mut control, &id, run, parallelism).await?;
                    eprintln!(
                        "parallelism {parallelism} run {run}: all new running {:.2} s, completed {:.2} s",
                        r.as_secs_f64(),
                        c.as_secs_f64()
                    );
                    running.push(r);
                    completed.push(c);
                }
                results.push((parallelism, median(running), median(completed)));
            }
            Ok::<_, anyhow::Error>(results)
        })
    });
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            wait::init_test_logging();
            eprintln!("{}", cluster.logs());
            return Err(e);
        }
    };
    for (i, (parallelism, running, completed)) in results.iter().enumerate() {
        let per_task = if *parallelism == 1 {
            format!(", {:.0} ms per task", running.0 * 1000.0 / REPLICAS as f64)
        } else {
            String::new()
        };
        println!(
            "parallelism {parallelism}, delay 0: all {REPLICAS} new running {:.2} s (min {:.2}, max {:.2}{per_task}) — Swarm {:.1} s = {:.1}x ours",
            running.0,
            running.1,
            running.2,
            SWARM_RUNNING[i],
            SWARM_RUNNING[i] / running.0
        );
        println!(
            "parallelism {parallelism}, delay 0: COMPLETED (5 s monitor) {:.2} s (min {:.2}, max {:.2}) — Swarm {:.1} s = {:.1}x ours",
            completed.0,
            completed.1,
            completed.2,
            SWARM_COMPLETED[i],
            SWARM_COMPLETED[i] / completed.0
        );
    }
    println!("runs per figure: {runs}; host load after: {}", load());
    Ok(())
}
