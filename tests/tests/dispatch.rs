//! The agent's session and worker against the real dispatcher, in one process: a manager's
//! dispatcher served over mutual TLS on 127.0.0.1 (certificates from a fresh root CA), an
//! agent with a node certificate, a task database in a temp dir and the fake executor.
//! Heartbeats every 200 ms.
//!
//! Proves: the agent registers and runs what it is assigned, reporting every state into the
//! store; tasks keep running while no dispatcher is reachable and the statuses queued
//! meanwhile land once one is back; an agent that dials a follower is sent to the leader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_agent::session::{Session, SessionConfig, SessionState};
use berth_agent::worker::fake::FakeExecutor;
use berth_agent::worker::{Worker, WorkerConfig, WorkerHandle};
use berth_manager::ca::{DEFAULT_NODE_CERT_VALIDITY, RootCa};
use berth_manager::dispatcher::{
    Dispatcher, DispatcherConfig, DispatcherError, DispatcherService, DispatcherSlot,
};
use berth_manager::orchestrator::{LocalWriter, SystemClock};
use berth_manager::store::{Store, StoreActions};
use berth_proto::identity::{
    NodeCredentials, NoneRemoved, Role, install_crypto_provider, server_tls_config,
};
use berth_proto::v1::{
    Cluster, ClusterSpec, ContainerSpec, DispatcherConfig as WireDispatcherConfig, ManagerStatus,
    Node, NodeDescription, NodeRole, NodeState, Task, TaskSpec, TaskState, TaskStatus,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

const CLUSTER: &str = "cluster-dispatch-e2e";
const PERIOD: Duration = Duration::from_millis(200);

/// A TLS server on 127.0.0.1 serving a DispatcherService; stops when dropped.
struct Served {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join.abort();
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    creds: &NodeCredentials,
    service: DispatcherService,
) -> anyhow::Result<Served> {
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let router = Server::builder()
        .tls_config(server_tls_config(creds)?)?
        .add_service(service.into_server());
    let join = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Served {
        addr,
        shutdown: Some(tx),
        join,
    })
}

/// The leader: store, writer, dispatcher (restartable) and its server.
struct Leader {
    store: Store,
    writer: Arc<LocalWriter>,
    root: Arc<RootCa>,
    slot: DispatcherSlot,
    served: Served,
    dispatcher: Option<(CancellationToken, JoinHandle<Result<(), DispatcherError>>)>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some((cancel, _)) = &self.dispatcher {
            cancel.cancel();
        }
    }
}

impl Leader {
    async fn start() -> anyhow::Result<Leader> {
        install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let store = Store::new();
        let writer = Arc::new(LocalWriter::new(store.clone(), Arc::new(SystemClock)));
        let mut seed = StoreActions::new();
        seed.create(Cluster {
            id: "c1".into(),
            spec: Some(ClusterSpec {
                dispatcher: Some(WireDispatcherConfig {
                    heartbeat_period: Some(prost_types::Duration::try_from(PERIOD)?),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        // The manager list agents receive names this server only (127.0.0.1).
        seed.create(Node {
            id: "m0".into(),
            role: NodeRole::Manager as i32,
            manager_status: Some(ManagerStatus {
                addr: addr.to_string(),
                leader: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        seed.create(Node {
            id: "n1".into(),
            ..Default::default()
        });
        writer.apply(seed)?;
        let root = Arc::new(RootCa::generate()?);
        let creds =
            root.issue_node_credentials("m0", Role::Manager, CLUSTER, DEFAULT_NODE_CERT_VALIDITY)?;
        let slot = DispatcherSlot::new();
        let service =
            DispatcherService::new(slot.clone(), Arc::new(NoneRemoved), Arc::new(|| None));
        let served = serve(listener, &creds, service).await?;
        let mut leader = Leader {
            store,
            writer,
            root,
            slot,
            served,
            dispatcher: None,
        };
        leader.start_dispatcher();
        Ok(leader)
    }

    fn start_dispatcher(&mut self) {
        let cancel = CancellationToken::new();
        let d = Dispatcher::new(
            self.store.clone(),
            self.writer.clone(),
            self.slot.clone(),
            DispatcherConfig::default(),
        );
        self.dispatcher = Some((cancel.clone(), tokio::spawn(d.run(cancel))));
    }

    async fn stop_dispatcher(&mut self) -> anyhow::Result<()> {
        if let Some((cancel, join)) = self.dispatcher.take() {
            cancel.cancel();
            join.await??;
        }
        Ok(())
    }

    fn creds(&self, node_id: &str, role: Role) -> anyhow::Result<NodeCredentials> {
        Ok(self
            .root
            .issue_node_credentials(node_id, role, CLUSTER, DEFAULT_NODE_CERT_VALIDITY)?)
    }

    fn node_state(&self, id: &str) -> i32 {
        self.store
            .get::<Node>(id)
            .and_then(|n| n.status.clone())
            .map_or(-1, |s| s.state)
    }

    fn task_status(&self, id: &str) -> TaskStatus {
        self.store
            .get::<Task>(id)
            .and_then(|t| t.status.clone())
            .unwrap_or_default()
    }

    fn assign(&self, ids: &[&str]) -> anyhow::Result<()> {
        let mut b = StoreActions::new();
        for id in ids {
            b.create(Task {
                id: (*id).into(),
                service_id: "svc".into(),
                node_id: "n1".into(),
                desired_state: TaskState::Running as i32,
                spec: Some(TaskSpec {
                    container: Some(ContainerSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: Some(TaskStatus {
                    state: TaskState::Assigned as i32,
                    message: "scheduler assigned task to node".into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        self.writer.apply(b)?;
        Ok(())
    }
}

/// An agent: worker on the fake executor plus session; stops when dropped.
struct Agent {
    handle: WorkerHandle,
    state: watch::Receiver<SessionState>,
    cancel: CancellationToken,
    _db: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn start_agent(
    managers: Vec<String>,
    creds: NodeCredentials,
    fake: &FakeExecutor,
) -> anyhow::Result<Agent> {
    let db = tempfile::tempdir()?;
    let worker = Worker::open(WorkerConfig::new(db.path()), Arc::new(fake.clone()))?;
    let handle = worker.handle();
    let (_creds_tx, creds_rx) = watch::channel(creds);
    let cfg = SessionConfig::new(
        managers,
        creds_rx,
        NodeDescription {
            hostname: "agent-n1".into(),
            ..Default::default()
        },
    );
    let session = Session::new(cfg, handle.clone());
    let state = session.state();
    let cancel = CancellationToken::new();
    tokio::spawn(worker.run(cancel.child_token()));
    tokio::spawn(session.run(cancel.child_token()));
    Ok(Agent {
        handle,
        state,
        cancel,
        _db: db,
    })
}

async fn wait_until(
    within: Duration,
    what: &str,
    mut probe: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !probe() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn an_agent_runs_its_assignments_and_reports_back() -> anyhow::Result<()> {
    let leader = Leader::start().await?;
    let fake = FakeExecutor::new();
    let _agent = start_agent(
        vec![leader.served.addr.to_string()],
        leader.creds("n1", Role::Worker)?,
        &fake,
    )?;
    wait_until(Duration::from_secs(5), "n1 ready", || {
        leader.node_state("n1") == NodeState::Ready as i32
    })
    .await?;
    let n1 = leader.store.get::<Node>("n1").context("n1")?;
    assert_eq!(
        n1.description.as_ref().map(|d| d.hostname.as_str()),
        Some("agent-n1")
    );

    leader.assign(&["t1"])?;
    wait_until(Duration::from_secs(5), "t1 running in the store", || {
        leader.task_status("t1").state == TaskState::Running as i32
    })
    .await?;
    assert_eq!(fake.running(), vec!["t1".to_string()]);
    assert!(
        leader
            .task_status("t1")
            .container_status
            .is_some_and(|c| c.pid > 0)
    );

    fake.exit("t1", 0);
    wait_until(Duration::from_secs(5), "t1 complete in the store", || {
        leader.task_status("t1").state == TaskState::Complete as i32
    })
    .await?;

    // The orchestrator marks it for removal: it leaves the set and its container goes.
    let mut t1 = (*leader.store.get::<Task>("t1").context("t1")?).clone();
    t1.desired_state = TaskState::Remove as i32;
    let mut b = StoreActions::new();
    b.update(t1);
    leader.writer.apply(b)?;
    wait_until(Duration::from_secs(5), "t1's container removed", || {
        fake.state("t1").is_none()
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn tasks_keep_running_without_a_dispatcher_and_statuses_arrive_after_it_returns()
-> anyhow::Result<()> {
    let mut leader = Leader::start().await?;
    let fake = FakeExecutor::new();
    let agent = start_agent(
        vec![leader.served.addr.to_string()],
        leader.creds("n1", Role::Worker)?,
        &fake,
    )?;
    leader.assign(&["t1", "t2"])?;
    wait_until(Duration::from_secs(5), "both running in the store", || {
        leader.task_status("t1").state == TaskState::Running as i32
            && leader.task_status("t2").state == TaskState::Running as i32
    })
    .await?;

    // The dispatcher goes away (the manager lost leadership, say).
    leader.stop_dispatcher().await?;
    let mut state = agent.state.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| s.manager.is_none()),
    )
    .await
    .context("the session never ended")??;
    // Well past three heartbeat periods: the tasks still run.
    tokio::time::sleep(PERIOD * 5).await;
    assert_eq!(fake.running(), vec!["t1".to_string(), "t2".to_string()]);

    // t2 ends while no manager is reachable: the worker knows, the store does not yet.
    fake.exit("t2", 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = agent.handle.tasks().await?;
        let t2 = tasks.iter().find(|t| t.id == "t2").context("t2")?;
        if t2.status.as_ref().map(|s| s.state) == Some(TaskState::Failed as i32) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "worker never saw t2 fail"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(PERIOD).await;
    assert_eq!(leader.task_status("t2").state, TaskState::Running as i32);
    let sessions_before = agent.state.borrow().sessions;

    // A dispatcher is back (a new term): the agent reconnects and the queued status lands.
    leader.start_dispatcher();
    wait_until(Duration::from_secs(15), "t2 failed in the store", || {
        leader.task_status("t2").state == TaskState::Failed as i32
    })
    .await?;
    let t2 = leader.task_status("t2");
    assert_eq!(t2.err, "task: non-zero exit (3)");
    assert_eq!(t2.container_status.map(|c| c.exit_code), Some(3));
    assert!(agent.state.borrow().sessions > sessions_before);
    wait_until(Duration::from_secs(5), "n1 ready again", || {
        leader.node_state("n1") == NodeState::Ready as i32
    })
    .await?;
    // t1 was never stopped or restarted.
    assert_eq!(leader.task_status("t1").state, TaskState::Running as i32);
    assert_eq!(fake.running(), vec!["t1".to_string()]);
    assert_eq!(
        fake.calls("t1").iter().filter(|c| **c == "start").count(),
        1
    );
    assert!(!fake.calls("t1").contains(&"shutdown"));
    Ok(())
}

#[tokio::test]
async fn an_agent_that_dials_a_follower_is_sent_to_the_leader() -> anyhow::Result<()> {
    let leader = Leader::start().await?;
    let leader_addr = leader.served.addr.to_string();
    // A follower: no dispatcher runs there; it names the leader.
    let hint = leader_addr.clone();
    let follower_service = DispatcherService::new(
        DispatcherSlot::new(),
        Arc::new(NoneRemoved),
        Arc::new(move || Some(hint.clone())),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let follower = serve(
        listener,
        &leader.creds("m1", Role::Manager)?,
        follower_service,
    )
    .await?;
    let fake = FakeExecutor::new();
    let agent = start_agent(
        vec![follower.addr.to_string()],
        leader.creds("n1", Role::Worker)?,
        &fake,
    )?;
    let mut state = agent.state.clone();
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| s.manager.is_some()),
    )
    .await
    .context("never connected")??
    .clone();
    assert_eq!(connected.manager.as_deref(), Some(leader_addr.as_str()));
    assert_eq!(leader.node_state("n1"), NodeState::Ready as i32);
    Ok(())
}
