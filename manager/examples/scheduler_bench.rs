//! Measures the scheduler (not a timed test; prints figures).
//!
//! ```text
//! cargo run --release -p berth-manager --example scheduler_bench [nodes] [tasks]
//! ```
//!
//! Defaults: 1 000 simulated nodes (4 CPUs, 8 GiB, labels zone=a|b) and 50 000 tasks in 100
//! services of 500 replicas, each reserving 0.01 CPU and 16 MiB; a fifth of the services
//! carry a constraint, another fifth a `spread=node.labels.zone` preference.
//!
//! Phases:
//! 1. one pure round (`schedule`) over a snapshot with every task pending: decision speed;
//! 2. the `Scheduler` loop on a local store (`LocalWriter`, no Raft, no disk), every task
//!    pending before it starts: placements committed per second (goal ≥ 10 000/s);
//! 3. the same while a producer creates the tasks in batches of 1 000 as fast as it can;
//! 4. end to end: the replicated orchestrator creates the tasks from 100 services and the
//!    scheduler places them (local store);
//! 5. the `Scheduler` loop writing through single-node Raft on sled (every batch fsynced).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_manager::orchestrator::{
    LocalWriter, OrchestratorConfig, ReplicatedOrchestrator, SystemClock, Writer,
};
use berth_manager::raft::{MemRouter, RaftConfig, RaftNode};
use berth_manager::scheduler::{Scheduler, SchedulerConfig, schedule};
use berth_manager::store::{By, Store, StoreActions, Tables, timestamp};
use berth_proto::v1::placement_preference::Preference;
use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    Annotations, ContainerSpec, Node, NodeDescription, NodeSpec, NodeState, NodeStatus, Placement,
    PlacementPreference, Platform, ReplicatedService, ResourceRequirements, Resources, Service,
    ServiceSpec, SpreadOver, Task, TaskSpec, TaskState, TaskStatus,
};
use tokio_util::sync::CancellationToken;

const SERVICES: usize = 100;

fn node(i: usize) -> Node {
    Node {
        id: format!("node{i:021}"),
        spec: Some(NodeSpec {
            annotations: Some(Annotations {
                name: String::new(),
                labels: [(
                    "zone".to_string(),
                    if i.is_multiple_of(2) { "a" } else { "b" }.to_string(),
                )]
                .into(),
            }),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: format!("sim-{i}"),
            platform: Some(Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
            }),
            resources: Some(Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: 8 << 30,
                pids: 0,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task_spec(service: usize) -> TaskSpec {
    let mut placement = Placement::default();
    match service % 5 {
        0 => {
            placement.constraints = vec![
                "node.labels.zone!=c".into(),
                "node.platform.os==linux".into(),
            ]
        }
        1 => {
            placement.preferences = vec![PlacementPreference {
                preference: Some(Preference::Spread(SpreadOver {
                    spread_descriptor: "node.labels.zone".into(),
                })),
            }]
        }
        _ => {}
    }
    TaskSpec {
        container: Some(ContainerSpec {
            image: "busybox:1.36".into(),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            limits: None,
            reservations: Some(Resources {
                nano_cpus: 10_000_000,
                memory_bytes: 16 << 20,
                pids: 0,
            }),
        }),
        placement: Some(placement),
        ..Default::default()
    }
}

fn service(s: usize, replicas: u64) -> Service {
    Service {
        id: format!("svc{s:022}"),
        spec_version: 1,
        spec: Some(ServiceSpec {
            annotations: Some(Annotations {
                name: format!("svc{s}"),
                ..Default::default()
            }),
            task: Some(task_spec(s)),
            mode: Some(Mode::Replicated(ReplicatedService { replicas })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pending_task(i: usize, tasks: usize) -> Task {
    let per_service = tasks.div_ceil(SERVICES);
    let s = i / per_service;
    Task {
        id: format!("task{i:021}"),
        spec: Some(task_spec(s)),
        spec_version: 1,
        service_id: format!("svc{s:022}"),
        slot: (i % per_service + 1) as u64,
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            message: "pending task scheduling".into(),
            ..Default::default()
        }),
        desired_state: TaskState::Running as i32,
        ..Default::default()
    }
}

fn nodes_batch(nodes: usize) -> StoreActions {
    let mut b = StoreActions::new();
    for i in 0..nodes {
        b.create(node(i));
    }
    b
}

fn tasks_batch(range: std::ops::Range<usize>, tasks: usize) -> StoreActions {
    let mut b = StoreActions::new();
    for i in range {
        b.create(pending_task(i, tasks));
    }
    b
}

fn assigned(store: &Store) -> usize {
    store.view(|t| {
        t.table::<Task>()
            .count(&By::State(TaskState::Assigned as i32))
    })
}

async fn wait_all_assigned(
    store: &Store,
    tasks: usize,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if assigned(store) >= tasks {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {tasks} tasks assigned after {limit:?}",
                assigned(store)
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn spread(tables: &Tables) -> (usize, usize) {
    let counts: Vec<usize> = tables
        .table::<Node>()
        .iter()
        .map(|n| tables.table::<Task>().count(&By::NodeId(n.id.clone())))
        .collect();
    (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    )
}

fn report(phase: &str, tasks: usize, elapsed: Duration, store: &Store) {
    let (min, max) = spread(&store.snapshot());
    println!(
        "{phase:<58} {tasks:>6} tasks in {:>8.1} ms: {:>9.0} placements/s (tasks per node {min}..{max})",
        elapsed.as_secs_f64() * 1000.0,
        tasks as f64 / elapsed.as_secs_f64()
    );
}

fn start_scheduler(
    store: &Store,
    writer: Arc<dyn Writer>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let sched = Scheduler::new(store.clone(), writer, SchedulerConfig::default());
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if let Err(e) = sched.run(cancel).await {
            eprintln!("scheduler stopped: {e}");
        }
    })
}

async fn single_node_raft(dir: &std::path::Path) -> anyhow::Result<RaftNode> {
    let router = MemRouter::new();
    let node = RaftNode::open(dir, 1, router.network(1), RaftConfig::default()).await?;
    router.register(1, node.raft().clone());
    node.initialize("127.0.0.1:4377").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_leader() {
        if Instant::now() > deadline {
            bail!("no leader after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(node)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let tasks: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50_000);
    let limit = Duration::from_secs(300);
    println!("scheduler_bench: {nodes} nodes, {tasks} tasks in {SERVICES} services");

    // 1. One pure round.
    {
        let mut tables = Tables::default();
        tables
            .apply(1, timestamp(0, 0), nodes_batch(nodes))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tables
            .apply(2, timestamp(0, 0), tasks_batch(0..tasks, tasks))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let started = Instant::now();
        let round = schedule(&tables, std::time::SystemTime::now());
        let elapsed = started.elapsed();
        if round.assigned.len() != tasks {
            bail!("round placed {} of {tasks}", round.assigned.len());
        }
        println!(
            "{:<58} {tasks:>6} tasks in {:>8.1} ms: {:>9.0} decisions/s",
            "1. schedule() over one snapshot (decisions only)",
            elapsed.as_secs_f64() * 1000.0,
            tasks as f64 / elapsed.as_secs_f64()
        );
    }

    // 2. Scheduler loop, local store, all tasks pending before it starts.
    {
        let store = Store::new();
        let writer = Arc::new(LocalWriter::new(store.clone(), Arc::new(SystemClock)));
        writer
            .apply(nodes_batch(nodes))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for start in (0..tasks).step_by(5_000) {
            writer
                .apply(tasks_batch(start..(start + 5_000).min(tasks), tasks))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let handle = start_scheduler(&store, writer.clone(), &cancel);
        let done = wait_all_assigned(&store, tasks, limit).await?;
        report(
            "2. Scheduler loop, local store, all pending at start",
            tasks,
            done - started,
            &store,
        );
        cancel.cancel();
        handle.await?;
    }

    // 3. Scheduler loop, local store, tasks streaming in.
    {
        let store = Store::new();
        let writer = Arc::new(LocalWriter::new(store.clone(), Arc::new(SystemClock)));
        writer
            .apply(nodes_batch(nodes))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let cancel = CancellationToken::new();
        let handle = start_scheduler(&store, writer.clone(), &cancel);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        for start in (0..tasks).step_by(1_000) {
            writer
                .apply(tasks_batch(start..(start + 1_000).min(tasks), tasks))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            tokio::task::yield_now().await;
        }
        let done = wait_all_assigned(&store, tasks, limit).await?;
        report(
            "3. Scheduler loop, local store, tasks created meanwhile",
            tasks,
            done - started,
            &store,
        );
        cancel.cancel();
        handle.await?;
    }

    // 4. Orchestrator creates the tasks, scheduler places them.
    {
        let store = Store::new();
        let writer = Arc::new(LocalWriter::new(store.clone(), Arc::new(SystemClock)));
        writer
            .apply(nodes_batch(nodes))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let cancel = CancellationToken::new();
        let sched = start_scheduler(&store, writer.clone(), &cancel);
        let orch = ReplicatedOrchestrator::new(
            store.clone(),
            writer.clone(),
            OrchestratorConfig::default(),
        );
        let orch = {
            let cancel = cancel.clone();
            tokio::spawn(async move { orch.run(cancel).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let per_service = tasks.div_ceil(SERVICES) as u64;
        let mut b = StoreActions::new();
        for s in 0..SERVICES {
            b.create(service(s, per_service));
        }
        writer.apply(b).map_err(|e| anyhow::anyhow!("{e}"))?;
        let total = per_service as usize * SERVICES;
        let done = wait_all_assigned(&store, total, limit).await?;
        report(
            "4. orchestrator creates + scheduler places, local store",
            total,
            done - started,
            &store,
        );
        cancel.cancel();
        sched.await?;
        orch.await?.context("orchestrator")?;
    }

    // 5. Scheduler loop through single-node Raft on sled.
    {
        let dir = tempfile::tempdir()?;
        let raft = Arc::new(single_node_raft(dir.path()).await?);
        raft.write(&nodes_batch(nodes))
            .await?
            .result
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for start in (0..tasks).step_by(5_000) {
            raft.write(&tasks_batch(start..(start + 5_000).min(tasks), tasks))
                .await?
                .result
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let store = raft.store().clone();
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let handle = start_scheduler(&store, raft.clone(), &cancel);
        let done = wait_all_assigned(&store, tasks, limit).await?;
        report(
            "5. Scheduler loop, single-node raft+sled",
            tasks,
            done - started,
            &store,
        );
        cancel.cancel();
        handle.await?;
        drop(store);
        match Arc::try_unwrap(raft) {
            Ok(raft) => raft.shutdown().await?,
            Err(_) => bail!("raft node still shared"),
        }
    }
    Ok(())
}
