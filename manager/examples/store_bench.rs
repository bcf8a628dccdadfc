//! Measures batched store writes on one manager (not a timed test; prints figures).
//!
//! ```text
//! cargo run --release -p berth-manager --example store_bench [objects] [batch]
//! ```
//!
//! Phases, each on a fresh data directory in $TMPDIR:
//! 1. in-memory apply only (`Store::apply`, no Raft, no disk) — the store's ceiling;
//! 2. single-node Raft on sled, one writer, `batch` task creates per entry;
//! 3. the same tasks updated (read, bump the status, write back with their version);
//! 4. four concurrent writers (entries queue behind each flush: group commit);
//! 5. one object per entry, one writer (the latency-bound floor).
//!
//! The goal for phases 2-4 is at least 20 000 object writes/s.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_manager::raft::{MemRouter, RaftConfig, RaftNode};
use berth_manager::store::{Store, StoreActions, timestamp};
use berth_proto::v1::{ContainerSpec, Meta, Task, TaskSpec, TaskStatus};

fn task(i: usize) -> Task {
    Task {
        id: format!("{i:025}"),
        service_id: format!("svc{:022}", i % 50),
        slot: (i / 50 + 1) as u64,
        desired_state: 512,
        spec: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "busybox:1.36".into(),
                command: vec!["sleep".into(), "3600".into()],
                env: vec!["A=1".into(), "PATH=/usr/bin:/bin".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: 0,
            message: "created".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn creates(range: std::ops::Range<usize>) -> StoreActions {
    let mut b = StoreActions::new();
    for i in range {
        b.create(task(i));
    }
    b
}

fn report(phase: &str, objects: usize, entries: usize, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{phase:<44} {objects:>7} objects in {entries:>5} entries: {:>9.0} objects/s, {:>7.0} entries/s, {:>8.3} ms/entry",
        objects as f64 / secs,
        entries as f64 / secs,
        secs * 1000.0 / entries as f64
    );
}

async fn single_node(dir: &std::path::Path) -> anyhow::Result<RaftNode> {
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
    let objects: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    let entries = objects.div_ceil(batch);
    println!("store_bench: {objects} tasks, {batch} per entry");

    // 1. In-memory apply only.
    let store = Store::new();
    let started = Instant::now();
    for (n, start) in (0..objects).step_by(batch).enumerate() {
        let b = creates(start..(start + batch).min(objects));
        store
            .apply(n as u64 + 1, timestamp(0, 0), b)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report(
        "1. Store::apply only (no Raft, no disk)",
        objects,
        entries,
        started.elapsed(),
    );
    drop(store);

    // 2-3. One writer through single-node Raft on sled.
    let dir = tempfile::tempdir()?;
    let node = single_node(dir.path()).await?;
    let started = Instant::now();
    for start in (0..objects).step_by(batch) {
        let res = node
            .write(&creates(start..(start + batch).min(objects)))
            .await?;
        res.result.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report(
        "2. raft+sled, 1 writer, creates",
        objects,
        entries,
        started.elapsed(),
    );

    let started = Instant::now();
    let all = node.store().list::<Task>();
    for chunk in all.chunks(batch) {
        let mut b = StoreActions::new();
        for t in chunk {
            let mut t = (**t).clone();
            if let Some(s) = t.status.as_mut() {
                s.state = 64;
                s.message = "pending task scheduling".into();
            }
            b.update(t);
        }
        node.write(&b)
            .await?
            .result
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report(
        "3. raft+sled, 1 writer, versioned updates",
        all.len(),
        entries,
        started.elapsed(),
    );
    node.shutdown().await?;

    // 4. Four concurrent writers.
    let dir = tempfile::tempdir()?;
    let node = std::sync::Arc::new(single_node(dir.path()).await?);
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    let per_writer = objects / 4;
    for w in 0..4 {
        let node = node.clone();
        writers.spawn(async move {
            let base = w * per_writer;
            for start in (base..base + per_writer).step_by(batch) {
                let res = node
                    .write(&creates(start..(start + batch).min(base + per_writer)))
                    .await?;
                res.result.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(res) = writers.join_next().await {
        res??;
    }
    report(
        "4. raft+sled, 4 writers, creates",
        per_writer * 4,
        entries,
        started.elapsed(),
    );
    let node = std::sync::Arc::into_inner(node).context("writers still hold the node")?;
    node.shutdown().await?;

    // 5. One object per entry.
    let dir = tempfile::tempdir()?;
    let node = single_node(dir.path()).await?;
    let singles = 500.min(objects);
    let started = Instant::now();
    for i in 0..singles {
        let mut t = task(i);
        t.meta = Some(Meta::default());
        let mut b = StoreActions::new();
        b.create(t);
        node.write(&b)
            .await?
            .result
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    report(
        "5. raft+sled, 1 writer, 1 object per entry",
        singles,
        singles,
        started.elapsed(),
    );
    node.shutdown().await?;
    Ok(())
}
