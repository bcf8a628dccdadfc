//! The dispatcher over real mutual TLS: a tonic server on 127.0.0.1 with certificates from a
//! fresh [`RootCa`], agents played by raw `DispatcherClient`s holding worker certificates,
//! the store written through a [`LocalWriter`]. Heartbeat periods are short (200 ms).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_proto::identity::{
    NoneRemoved, Role, client_tls_config, install_crypto_provider, server_tls_config,
};
use berth_proto::v1::assignment_change::Assignment;
use berth_proto::v1::dispatcher_client::DispatcherClient;
use berth_proto::v1::{
    AssignmentAction, AssignmentsRequest, AssignmentsType, ClusterSpec,
    DispatcherConfig as WireDispatcherConfig, HeartbeatRequest, ManagerStatus, NodeStatus,
    SessionRequest, TaskState, TaskStatus, TaskStatusUpdate, UpdateTaskStatusRequest,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};

use super::*;
use crate::ca::{DEFAULT_NODE_CERT_VALIDITY, RootCa};
use crate::orchestrator::{LocalWriter, SystemClock};
use crate::raft_net::leader_addr_of;
use crate::store::StoreActions;

const CLUSTER: &str = "cluster-dispatch";
const PERIOD: Duration = Duration::from_millis(200);

struct Fx {
    store: Store,
    writer: Arc<LocalWriter>,
    root: RootCa,
    addr: SocketAddr,
    slot: DispatcherSlot,
    dispatcher: Option<(CancellationToken, JoinHandle<Result<(), DispatcherError>>)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Some((cancel, _)) = &self.dispatcher {
            cancel.cancel();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.abort();
    }
}

fn node(id: &str, state: NodeState) -> Node {
    Node {
        id: id.into(),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, node_id: &str, state: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        node_id: node_id.into(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: state as i32,
            message: "seeded".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn status(state: TaskState, message: &str) -> Option<TaskStatus> {
    Some(TaskStatus {
        state: state as i32,
        message: message.into(),
        ..Default::default()
    })
}

impl Fx {
    /// A store with the cluster (heartbeat `period`), a leader manager m0 and workers n1, n2
    /// (READY, as under a previous leader), plus `tasks`; the server; a running dispatcher.
    async fn start(period: Duration, tasks: Vec<Task>) -> anyhow::Result<Fx> {
        install_crypto_provider();
        let store = Store::new();
        let writer = Arc::new(LocalWriter::new(store.clone(), Arc::new(SystemClock)));
        let mut seed = StoreActions::new();
        seed.create(Cluster {
            id: "c1".into(),
            spec: Some(ClusterSpec {
                dispatcher: Some(WireDispatcherConfig {
                    heartbeat_period: Some(prost_types::Duration::try_from(period)?),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut m0 = node("m0", NodeState::Ready);
        m0.role = NodeRole::Manager as i32;
        m0.manager_status = Some(ManagerStatus {
            addr: "10.0.0.1:4377".into(),
            leader: true,
            ..Default::default()
        });
        seed.create(m0);
        seed.create(node("n1", NodeState::Ready));
        seed.create(node("n2", NodeState::Ready));
        for t in tasks {
            seed.create(t);
        }
        writer.apply(seed)?;

        let root = RootCa::generate()?;
        let server_creds =
            root.issue_node_credentials("m0", Role::Manager, CLUSTER, DEFAULT_NODE_CERT_VALIDITY)?;
        let slot = DispatcherSlot::new();
        let service =
            DispatcherService::new(slot.clone(), Arc::new(NoneRemoved), Arc::new(|| None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(server_tls_config(&server_creds)?)?
            .add_service(service.into_server());
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        let mut fx = Fx {
            store,
            writer,
            root,
            addr,
            slot,
            dispatcher: None,
            shutdown: Some(tx),
            server,
        };
        fx.start_dispatcher();
        Ok(fx)
    }

    fn start_dispatcher(&mut self) {
        let cancel = CancellationToken::new();
        let d = Dispatcher::new(
            self.store.clone(),
            self.writer.clone(),
            self.slot.clone(),
            DispatcherConfig::default(),
        );
        let join = tokio::spawn(d.run(cancel.clone()));
        self.dispatcher = Some((cancel, join));
    }

    async fn stop_dispatcher(&mut self) -> anyhow::Result<()> {
        if let Some((cancel, join)) = self.dispatcher.take() {
            cancel.cancel();
            join.await??;
        }
        Ok(())
    }

    async fn client(&self, node_id: &str) -> anyhow::Result<DispatcherClient<Channel>> {
        let creds = self.root.issue_node_credentials(
            node_id,
            Role::Worker,
            CLUSTER,
            DEFAULT_NODE_CERT_VALIDITY,
        )?;
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))?
            .connect_timeout(Duration::from_secs(5))
            .tls_config(client_tls_config(&creds)?)?
            .connect()
            .await?;
        Ok(DispatcherClient::new(channel))
    }

    fn node_state(&self, id: &str) -> (i32, String) {
        self.store
            .get::<Node>(id)
            .and_then(|n| n.status.clone())
            .map(|s| (s.state, s.message))
            .unwrap_or_default()
    }

    fn task_status(&self, id: &str) -> TaskStatus {
        self.store
            .get::<Task>(id)
            .and_then(|t| t.status.clone())
            .unwrap_or_default()
    }

    fn write(&self, f: impl FnOnce(&mut StoreActions)) -> anyhow::Result<()> {
        let mut b = StoreActions::new();
        f(&mut b);
        self.writer.apply(b)?;
        Ok(())
    }
}

/// Polls `probe` every 10 ms until it holds; fails after `within`.
async fn wait_until(
    within: Duration,
    what: &str,
    mut probe: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !probe() {
        if start.elapsed() > within {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(start.elapsed())
}

async fn open_session(
    c: &mut DispatcherClient<Channel>,
    hostname: &str,
) -> anyhow::Result<(tonic::Streaming<SessionMessage>, SessionMessage)> {
    let mut stream = c
        .session(SessionRequest {
            description: Some(NodeDescription {
                hostname: hostname.into(),
                ..Default::default()
            }),
            session_id: String::new(),
        })
        .await?
        .into_inner();
    let first = stream
        .message()
        .await?
        .context("no first session message")?;
    Ok((stream, first))
}

#[tokio::test]
async fn a_session_registers_the_node_ready() -> anyhow::Result<()> {
    let fx = Fx::start(PERIOD, vec![]).await?;
    let mut c = fx.client("n1").await?;
    let (_stream, first) = open_session(&mut c, "host1").await?;
    assert_eq!(first.session_id.len(), berth_proto::ids::ID_LEN);
    // READY in the store as soon as the session is open, with description and address.
    let n1 = fx.store.get::<Node>("n1").context("n1")?;
    let st = n1.status.clone().unwrap_or_default();
    assert_eq!(st.state, NodeState::Ready as i32);
    assert_eq!(st.addr, "127.0.0.1");
    assert_eq!(
        n1.description.as_ref().map(|d| d.hostname.as_str()),
        Some("host1")
    );
    assert_eq!(
        first.node.and_then(|n| n.status).map(|s| s.state),
        Some(NodeState::Ready as i32)
    );
    let managers: Vec<(String, String)> = first
        .managers
        .iter()
        .map(|m| (m.node_id.clone(), m.addr.clone()))
        .collect();
    assert_eq!(
        managers,
        vec![("m0".to_string(), "10.0.0.1:4377".to_string())]
    );

    // A node that is not in the store cannot open a session.
    let mut stranger = fx.client("n9").await?;
    let err = open_session(&mut stranger, "x")
        .await
        .err()
        .context("n9 registered")?;
    let status = err.downcast_ref::<Status>().context("not a status")?;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_that_stops_beating_is_down_after_three_periods() -> anyhow::Result<()> {
    let fx = Fx::start(PERIOD, vec![]).await?;
    let mut c = fx.client("n1").await?;
    let (mut stream, first) = open_session(&mut c, "host1").await?;
    // Beating for 5 periods keeps it READY; each answer is the period ± 10 %.
    for _ in 0..5 {
        let period = c
            .heartbeat(HeartbeatRequest {
                session_id: first.session_id.clone(),
            })
            .await?
            .into_inner()
            .period
            .context("period")?;
        let period = Duration::try_from(period)?;
        assert!(
            period >= PERIOD.mul_f64(0.89) && period <= PERIOD.mul_f64(1.11),
            "{period:?}"
        );
        tokio::time::sleep(period).await;
    }
    assert_eq!(fx.node_state("n1").0, NodeState::Ready as i32);
    // Stop beating (the session stream stays open).
    let took = wait_until(Duration::from_secs(3), "n1 down", || {
        fx.node_state("n1").0 == NodeState::Down as i32
    })
    .await?;
    // The last beat was one period ago at most; the window is 3 periods; flushes add ≤ 100 ms.
    assert!(
        took >= PERIOD * 2 - Duration::from_millis(50)
            && took <= PERIOD * 3 + Duration::from_millis(400),
        "down after {took:?}"
    );
    assert_eq!(fx.node_state("n1").1, HEARTBEAT_FAILURE);
    // Its session ended: the stream closes with UNAVAILABLE (after, possibly, one last
    // message carrying the node's DOWN status), the session id is refused.
    let mut end = stream.message().await;
    while let Ok(Some(_)) = &end {
        end = stream.message().await;
    }
    assert!(
        matches!(&end, Err(s) if s.code() == Code::Unavailable),
        "{end:?}"
    );
    let err = c
        .heartbeat(HeartbeatRequest {
            session_id: first.session_id,
        })
        .await
        .err()
        .context("beat accepted after expiry")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    Ok(())
}

#[tokio::test]
async fn a_dropped_session_is_disconnected_then_down() -> anyhow::Result<()> {
    let fx = Fx::start(PERIOD, vec![]).await?;
    let mut c = fx.client("n1").await?;
    let (stream, _) = open_session(&mut c, "host1").await?;
    drop(stream);
    drop(c);
    wait_until(Duration::from_secs(2), "n1 disconnected", || {
        fx.node_state("n1").0 == NodeState::Disconnected as i32
    })
    .await?;
    assert_eq!(fx.node_state("n1").1, DISCONNECTED_MESSAGE);
    wait_until(Duration::from_secs(3), "n1 down", || {
        fx.node_state("n1").0 == NodeState::Down as i32
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn after_a_leader_change_silent_nodes_go_unknown_then_down() -> anyhow::Result<()> {
    let fx = Fx::start(PERIOD, vec![]).await?;
    // n2 was READY under the previous leader and never connects to this dispatcher.
    wait_until(Duration::from_secs(1), "n2 unknown", || {
        fx.node_state("n2").0 == NodeState::Unknown as i32
    })
    .await?;
    let took = wait_until(Duration::from_secs(4), "n2 down", || {
        fx.node_state("n2").0 == NodeState::Down as i32
    })
    .await?;
    // Six periods of grace (1.2 s) rather than three.
    assert!(took >= PERIOD * 5, "down after {took:?}");
    Ok(())
}

#[tokio::test]
async fn assignments_are_a_complete_set_then_increments_for_this_node() -> anyhow::Result<()> {
    let fx = Fx::start(
        Duration::from_secs(5),
        vec![
            task("t1", "n1", TaskState::Assigned),
            task("t2", "n2", TaskState::Assigned),
            task("t3", "n1", TaskState::Pending),
        ],
    )
    .await?;
    let mut c = fx.client("n1").await?;
    let (_session, first) = open_session(&mut c, "host1").await?;
    let mut stream = c
        .assignments(AssignmentsRequest {
            session_id: first.session_id.clone(),
        })
        .await?
        .into_inner();
    let ids = |m: &AssignmentsMessage| -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = m
            .changes
            .iter()
            .filter_map(|c| match &c.assignment {
                Some(Assignment::Task(t)) => {
                    Some((t.id.clone(), c.action == AssignmentAction::Remove as i32))
                }
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    let complete = stream.message().await?.context("complete")?;
    assert_eq!(complete.r#type, AssignmentsType::Complete as i32);
    assert_eq!(ids(&complete), vec![("t1".to_string(), false)]);

    // The scheduler assigns t3 to n1 and t4 to n2; the orchestrator shuts t1 down.
    let mut t3 = task("t3", "n1", TaskState::Assigned);
    t3.meta = fx.store.get::<Task>("t3").and_then(|t| t.meta);
    let mut t1 = (*fx.store.get::<Task>("t1").context("t1")?).clone();
    t1.desired_state = TaskState::Shutdown as i32;
    let sent = Instant::now();
    fx.write(|b| {
        b.update(t3);
        b.update(t1);
        b.create(task("t4", "n2", TaskState::Assigned));
    })?;
    let inc = stream.message().await?.context("increment")?;
    let latency = sent.elapsed();
    assert_eq!(inc.r#type, AssignmentsType::Incremental as i32);
    assert_eq!(inc.applies_to, complete.results_in);
    assert_eq!(
        ids(&inc),
        vec![("t1".to_string(), false), ("t3".to_string(), false)]
    );
    assert!(latency < Duration::from_millis(500), "{latency:?}");

    // The task reaper deletes t1.
    fx.write(|b| {
        b.remove(crate::store::ObjectKind::Task, "t1");
    })?;
    let inc2 = stream.message().await?.context("increment 2")?;
    assert_eq!(inc2.applies_to, inc.results_in);
    assert_eq!(ids(&inc2), vec![("t1".to_string(), true)]);

    // A stale session id gets no stream.
    let err = c
        .assignments(AssignmentsRequest {
            session_id: "bogus".into(),
        })
        .await
        .err()
        .context("bogus session accepted")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    Ok(())
}

#[tokio::test]
async fn status_batches_land_in_the_store_and_backwards_ones_are_dropped() -> anyhow::Result<()> {
    let mut tasks: Vec<Task> = (0..50)
        .map(|i| task(&format!("t{i:02}"), "n1", TaskState::Assigned))
        .collect();
    tasks.push(task("run", "n1", TaskState::Running));
    let fx = Fx::start(Duration::from_secs(5), tasks).await?;
    let mut c = fx.client("n1").await?;
    let (_session, first) = open_session(&mut c, "host1").await?;
    // Let the registration and leader-change writes settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = fx.store.version();

    let mut updates: Vec<TaskStatusUpdate> = (0..50)
        .map(|i| TaskStatusUpdate {
            task_id: format!("t{i:02}"),
            status: status(TaskState::Running, "started"),
        })
        .collect();
    // Backwards for "run"; and an update for a task that no longer exists.
    updates.push(TaskStatusUpdate {
        task_id: "run".into(),
        status: status(TaskState::Starting, "late"),
    });
    updates.push(TaskStatusUpdate {
        task_id: "gone".into(),
        status: status(TaskState::Running, "x"),
    });
    c.update_task_status(UpdateTaskStatusRequest {
        session_id: first.session_id.clone(),
        updates,
    })
    .await?;
    wait_until(Duration::from_secs(2), "statuses in the store", || {
        (0..50).all(|i| fx.task_status(&format!("t{i:02}")).state == TaskState::Running as i32)
    })
    .await?;
    // All 50 in one write, and "run" untouched.
    assert_eq!(fx.store.version(), before + 1);
    let run = fx.task_status("run");
    assert_eq!(
        (run.state, run.message.as_str()),
        (TaskState::Running as i32, "seeded")
    );

    // A forward update of the same task lands.
    c.update_task_status(UpdateTaskStatusRequest {
        session_id: first.session_id.clone(),
        updates: vec![TaskStatusUpdate {
            task_id: "run".into(),
            status: status(TaskState::Failed, "exit 1"),
        }],
    })
    .await?;
    wait_until(Duration::from_secs(2), "run failed", || {
        fx.task_status("run").state == TaskState::Failed as i32
    })
    .await?;

    // A stale session id is refused.
    let err = c
        .update_task_status(UpdateTaskStatusRequest {
            session_id: "bogus".into(),
            updates: vec![],
        })
        .await
        .err()
        .context("bogus session accepted")?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    Ok(())
}

#[tokio::test]
async fn a_node_cannot_update_another_nodes_task() -> anyhow::Result<()> {
    let fx = Fx::start(
        Duration::from_secs(5),
        vec![
            task("mine", "n2", TaskState::Assigned),
            task("theirs", "n1", TaskState::Assigned),
        ],
    )
    .await?;
    let mut c = fx.client("n2").await?;
    let (_session, first) = open_session(&mut c, "host2").await?;
    let err = c
        .update_task_status(UpdateTaskStatusRequest {
            session_id: first.session_id.clone(),
            updates: vec![
                TaskStatusUpdate {
                    task_id: "mine".into(),
                    status: status(TaskState::Running, ""),
                },
                TaskStatusUpdate {
                    task_id: "theirs".into(),
                    status: status(TaskState::Running, ""),
                },
            ],
        })
        .await
        .err()
        .context("foreign update accepted")?;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("theirs"), "{}", err.message());
    // The whole call was refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.task_status("mine").state, TaskState::Assigned as i32);
    assert_eq!(fx.task_status("theirs").state, TaskState::Assigned as i32);
    Ok(())
}

#[tokio::test]
async fn without_a_running_dispatcher_calls_are_unavailable_and_name_the_leader()
-> anyhow::Result<()> {
    let mut fx = Fx::start(Duration::from_secs(5), vec![]).await?;
    let mut c = fx.client("n1").await?;
    let (mut stream, first) = open_session(&mut c, "host1").await?;
    fx.stop_dispatcher().await?;
    assert!(!fx.slot.is_running());
    // Open streams end.
    let end = stream.message().await;
    assert!(
        matches!(&end, Err(s) if s.code() == Code::Unavailable),
        "{end:?}"
    );
    let err = c
        .heartbeat(HeartbeatRequest {
            session_id: first.session_id,
        })
        .await
        .err()
        .context("beat accepted without a dispatcher")?;
    assert_eq!(err.code(), Code::Unavailable);

    // A follower's service names the leader.
    let follower = DispatcherService::new(
        DispatcherSlot::new(),
        Arc::new(NoneRemoved),
        Arc::new(|| Some("10.0.0.7:4377".to_string())),
    );
    let status = follower.current().err().context("empty slot served")?;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(leader_addr_of(&status).as_deref(), Some("10.0.0.7:4377"));

    // A new dispatcher (a new term) serves again.
    fx.start_dispatcher();
    wait_until(Duration::from_secs(2), "dispatcher running", || {
        fx.slot.is_running()
    })
    .await?;
    let (_s, again) = open_session(&mut c, "host1").await?;
    assert_ne!(again.session_id, "");
    Ok(())
}

#[tokio::test]
async fn a_dispatcher_runs_only_while_this_manager_leads() -> anyhow::Result<()> {
    let store = Store::new();
    let writer = Arc::new(LocalWriter::new(store.clone(), Arc::new(SystemClock)));
    writer.apply({
        let mut b = StoreActions::new();
        b.create(node("n1", NodeState::Ready));
        b
    })?;
    let slot = DispatcherSlot::new();
    let (lead, leadership) = tokio::sync::watch::channel(false);
    let cancel = CancellationToken::new();
    let join = tokio::spawn(run_while_leader(
        store.clone(),
        writer.clone(),
        slot.clone(),
        DispatcherConfig::default(),
        leadership,
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!slot.is_running());
    lead.send_replace(true);
    wait_until(Duration::from_secs(2), "dispatcher started", || {
        slot.is_running()
    })
    .await?;
    // A new term marks the nodes it has not heard from UNKNOWN.
    wait_until(Duration::from_secs(2), "n1 unknown", || {
        store
            .get::<Node>("n1")
            .and_then(|n| n.status.clone())
            .is_some_and(|s| s.state == NodeState::Unknown as i32)
    })
    .await?;
    lead.send_replace(false);
    wait_until(Duration::from_secs(2), "dispatcher stopped", || {
        !slot.is_running()
    })
    .await?;
    lead.send_replace(true);
    wait_until(Duration::from_secs(2), "dispatcher restarted", || {
        slot.is_running()
    })
    .await?;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), join).await??;
    assert!(!slot.is_running());
    Ok(())
}
