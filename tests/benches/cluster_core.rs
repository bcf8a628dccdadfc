//! Cluster-core benchmarks (issue 4), not timed tests: prints each figure beside its goal and
//! Docker Swarm's default.
//!
//! ```text
//! cargo build --release --workspace --bins && cargo bench -p berth-tests --bench cluster_core
//! ```
//!
//! 1. Raft commit latency: one client writing through the leader's Control API (a node label
//!    update: one Raft entry, fsynced on a majority) on 3 managers in test hosts, over mTLS.
//! 2. Batched store writes: 1 000 task creates per Raft entry on a single-node Raft on sled.
//! 3. Leader failover: kill -9 of the leader to the next accepted write, through a follower.

use std::time::{Duration, Instant};

use anyhow::Context;
use berth_manager::raft::{MemRouter, RaftConfig, RaftNode};
use berth_manager::store::StoreActions;
use berth_proto::identity::{CertDir, client_tls_config, install_crypto_provider};
use berth_proto::v1::control_client::ControlClient;
use berth_proto::v1::{
    ContainerSpec, GetNodeRequest, Task, TaskSpec, TaskStatus, UpdateNodeRequest,
};
use berth_tests::cluster::TestCluster;
use berth_tests::wait;
use tonic::transport::Endpoint;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn node_id(cluster: &TestCluster, i: usize) -> anyhow::Result<String> {
    let info: serde_json::Value =
        serde_json::from_str(&cluster.node(i).berth_ok(&["info", "--format", "json"])?)?;
    Ok(info["NodeID"].as_str().unwrap_or_default().to_string())
}

fn leader(cluster: &TestCluster) -> anyhow::Result<usize> {
    let ls = cluster.node(0).berth_ok(&["node", "ls"])?;
    let row = ls
        .lines()
        .find(|l| l.contains("Leader"))
        .context("no leader")?;
    let id = row.split_whitespace().next().unwrap_or_default();
    (0..3)
        .find(|&i| node_id(cluster, i).is_ok_and(|n| n == id))
        .context("leader not found among the nodes")
}

/// Label writes through the leader's Control API with node 0's certificate, from a thread
/// inside node 0's network namespace.
fn commit_latency(cluster: &TestCluster, writes: usize) -> anyhow::Result<Vec<Duration>> {
    let leader = leader(cluster)?;
    let target = cluster.node(leader).cluster_addr();
    let creds = CertDir::new(cluster.node(0).state_dir().join("certificates")).load()?;
    let node = node_id(cluster, 0)?;
    cluster.node(0).host().run(move || {
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
            let mut samples = Vec::with_capacity(writes);
            for i in 0..writes + 10 {
                let current = control
                    .get_node(GetNodeRequest {
                        node_id: node.clone(),
                    })
                    .await?
                    .into_inner()
                    .node
                    .context("no node")?;
                let mut spec = current.spec.clone().unwrap_or_default();
                spec.annotations
                    .get_or_insert_default()
                    .labels
                    .insert("bench".into(), i.to_string());
                let started = Instant::now();
                control
                    .update_node(UpdateNodeRequest {
                        node_id: node.clone(),
                        node_version: current.meta.as_ref().map_or(0, |m| m.version),
                        spec: Some(spec),
                    })
                    .await?;
                if i >= 10 {
                    samples.push(started.elapsed());
                }
            }
            Ok(samples)
        })
    })
}

fn task(i: usize) -> Task {
    Task {
        id: format!("{i:025}"),
        service_id: format!("svc{:022}", i % 50),
        slot: (i / 50 + 1) as u64,
        desired_state: 512,
        spec: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: 64,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Object writes per second, 1 000 per Raft entry, single-node Raft on sled (fsync per entry).
fn batched_writes(objects: usize, batch: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let router = MemRouter::new();
        let node = RaftNode::open(dir.path(), 1, router.network(1), RaftConfig::default()).await?;
        router.register(1, node.raft().clone());
        node.initialize("127.0.0.1:1").await?;
        wait_leader(&node).await?;
        let started = Instant::now();
        for start in (0..objects).step_by(batch) {
            let mut actions = StoreActions::new();
            for i in start..(start + batch).min(objects) {
                actions.create(task(i));
            }
            node.write(&actions)
                .await?
                .result
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        let rate = objects as f64 / started.elapsed().as_secs_f64();
        node.shutdown().await?;
        Ok(rate)
    })
}

async fn wait_leader(node: &RaftNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.is_leader() {
        anyhow::ensure!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// kill -9 of the leader → the next write accepted through another manager.
fn failover(trial: usize) -> anyhow::Result<Duration> {
    let mut cluster = TestCluster::new(3)?;
    cluster.init(0)?;
    cluster.join(1, 0, "manager")?;
    cluster.join(2, 0, "manager")?;
    let leader = leader(&cluster)?;
    let other = (leader + 1) % 3;
    cluster.node_mut(leader).kill9()?;
    let killed = Instant::now();
    wait::wait_until(
        Duration::from_secs(20),
        "a write after the leader died",
        || {
            let key = format!("failover-{trial}=1");
            Ok(cluster
                .node(other)
                .berth(&["node", "update", "--label-add", &key, "self"])?
                .status
                .success())
        },
    )?;
    Ok(killed.elapsed())
}

fn main() -> anyhow::Result<()> {
    install_crypto_provider();
    println!("# cluster core benchmarks (3 managers in netns test hosts unless noted)");

    let cluster = TestCluster::new(3)?;
    cluster.init(0)?;
    cluster.join(1, 0, "manager")?;
    cluster.join(2, 0, "manager")?;
    let mut samples = commit_latency(&cluster, 300)?;
    drop(cluster);
    samples.sort();
    println!(
        "raft commit latency, 1 client, 300 writes: p50 {:.2} ms  p99 {:.2} ms  (goal p50 <= 5 ms; Swarm: n/a, etcd on SSD ~1.6 ms)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99))
    );

    let rate = batched_writes(100_000, 1_000)?;
    println!(
        "batched store writes, single-node raft on sled, 1000 objects/entry: {rate:.0} objects/s  (goal >= 20000/s; Swarm batches 200 changes per proposal)"
    );

    let mut times = Vec::new();
    for trial in 0..3 {
        times.push(failover(trial)?);
    }
    times.sort();
    println!(
        "leader failover, kill -9 to next accepted write, 3 trials: median {:.0} ms  (min {:.0}, max {:.0})  (goal <= 1000 ms; Swarm: election timeout 10 s = {:.1}x ours)",
        ms(times[1]),
        ms(times[0]),
        ms(times[2]),
        10_000.0 / ms(times[1])
    );
    Ok(())
}
