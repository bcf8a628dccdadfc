//! The publisher against a stand-in broker served over real gRPC (plain TCP on 127.0.0.1),
//! a real worker on the fake executor, and in-memory task logs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use berth_proto::v1::assignment_change::Assignment;
use berth_proto::v1::log_broker_server::{LogBroker, LogBrokerServer};
use berth_proto::v1::{
    AssignmentAction, AssignmentChange, AssignmentsMessage, AssignmentsType, ContainerSpec,
    PublishLogsResponse, TaskSpec, TaskState, TaskStatus,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::worker::fake::FakeExecutor;
use crate::worker::{Worker, WorkerConfig};

/// The broker's side, driven by the test.
struct Broker {
    subscriptions: Mutex<Option<mpsc::Receiver<Result<SubscriptionMessage, Status>>>>,
    published: mpsc::UnboundedSender<PublishLogsMessage>,
}

#[tonic::async_trait]
impl LogBroker for Broker {
    async fn listen_subscriptions(
        &self,
        _: Request<ListenSubscriptionsRequest>,
    ) -> Result<Response<BoxStream<SubscriptionMessage>>, Status> {
        let rx = self
            .subscriptions
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Status::already_exists("one listener only"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish_logs(
        &self,
        request: Request<Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        let mut inbound = request.into_inner();
        while let Some(m) = inbound.message().await? {
            let _ = self.published.send(m);
        }
        Ok(Response::new(PublishLogsResponse {}))
    }
}

/// In-memory logs: fixed lines per task, plus a live feed for follow mode.
#[derive(Default)]
struct Memory {
    lines: BTreeMap<String, Vec<(i32, String)>>,
    live: Mutex<BTreeMap<String, mpsc::Sender<ContainerLogsMessage>>>,
}

impl TaskLogs for Memory {
    fn open(
        &self,
        task: &Task,
        options: &LogSubscriptionOptions,
    ) -> BoxFuture<'_, Result<Option<LineStream>, LogsError>> {
        let Some(lines) = self.lines.get(&task.id) else {
            return Box::pin(async { Ok(None) });
        };
        let mut lines: Vec<ContainerLogsMessage> = lines
            .iter()
            .map(|(stream, text)| ContainerLogsMessage {
                timestamp: None,
                stream: *stream,
                data: format!("{text}\n").into_bytes(),
            })
            .collect();
        if let Some(n) = options.tail {
            let skip = lines.len().saturating_sub(n as usize);
            lines.drain(..skip);
        }
        let head = tokio_stream::iter(lines.into_iter().map(Ok));
        let stream: LineStream = if options.follow {
            let (tx, rx) = mpsc::channel(16);
            self.live.lock().unwrap().insert(task.id.clone(), tx);
            Box::pin(head.chain(ReceiverStream::new(rx).map(Ok)))
        } else {
            Box::pin(head)
        };
        Box::pin(async move { Ok(Some(stream)) })
    }
}

fn task(id: &str, service: &str) -> Task {
    Task {
        id: id.into(),
        service_id: service.into(),
        slot: 1,
        node_id: "n1".into(),
        spec: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn assign(tasks: &[Task]) -> AssignmentsMessage {
    AssignmentsMessage {
        r#type: AssignmentsType::Complete as i32,
        changes: tasks
            .iter()
            .map(|t| AssignmentChange {
                action: AssignmentAction::Update as i32,
                assignment: Some(Assignment::Task(t.clone())),
            })
            .collect(),
        ..Default::default()
    }
}

struct Fixture {
    subscribe: mpsc::Sender<Result<SubscriptionMessage, Status>>,
    published: mpsc::UnboundedReceiver<PublishLogsMessage>,
    memory: Arc<Memory>,
    worker: WorkerHandle,
    cancel: CancellationToken,
}

async fn fixture(memory: Memory, tasks: &[Task]) -> Fixture {
    let (sub_tx, sub_rx) = mpsc::channel(8);
    let (pub_tx, pub_rx) = mpsc::unbounded_channel();
    let broker = Broker {
        subscriptions: Mutex::new(Some(sub_rx)),
        published: pub_tx,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogBrokerServer::new(broker))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned()),
    );
    let worker = Worker::open(WorkerConfig::in_memory(), Arc::new(FakeExecutor::new())).unwrap();
    let handle = worker.handle();
    tokio::spawn(worker.run(cancel.clone()));
    handle.assign(assign(tasks)).await.unwrap();
    let memory = Arc::new(memory);
    let publisher = LogPublisher::new(handle.clone(), memory.clone());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = publisher.listen(channel) => r.unwrap(),
            () = stop.cancelled() => {}
        }
    });
    Fixture {
        subscribe: sub_tx,
        published: pub_rx,
        memory,
        worker: handle,
        cancel,
    }
}

fn subscription(
    id: &str,
    selector: LogSelector,
    follow: bool,
    tail: Option<i64>,
) -> SubscriptionMessage {
    SubscriptionMessage {
        id: id.into(),
        selector: Some(selector),
        options: Some(LogSubscriptionOptions {
            follow,
            tail,
            ..Default::default()
        }),
        close: false,
    }
}

async fn next(f: &mut Fixture) -> PublishLogsMessage {
    tokio::time::timeout(Duration::from_secs(10), f.published.recv())
        .await
        .expect("a publish message in time")
        .expect("the broker is up")
}

/// Texts of the lines published, by task, until the subscription closes.
async fn until_close(f: &mut Fixture) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let m = next(f).await;
        for l in m.messages {
            let task = l.context.unwrap().task_id;
            out.entry(task)
                .or_default()
                .push(String::from_utf8(l.data).unwrap().trim_end().to_owned());
        }
        if m.close {
            return out;
        }
    }
}

#[tokio::test]
async fn publishes_the_selected_tasks_then_closes() {
    let mut memory = Memory::default();
    memory.lines.insert(
        "t1".into(),
        vec![(1, "a1".into()), (2, "a2".into()), (1, "a3".into())],
    );
    memory.lines.insert("t2".into(), vec![(1, "b1".into())]);
    memory
        .lines
        .insert("t3".into(), vec![(1, "other service".into())]);
    let tasks = [task("t1", "web"), task("t2", "web"), task("t3", "db")];
    let mut f = fixture(memory, &tasks).await;
    let web = LogSelector {
        service_ids: vec!["web".into()],
        ..Default::default()
    };
    f.subscribe
        .send(Ok(subscription("s1", web.clone(), false, None)))
        .await
        .unwrap();
    let hello = next(&mut f).await;
    assert_eq!(hello.subscription_id, "s1");
    assert!(hello.messages.is_empty() && !hello.close, "answers at once");
    let got = until_close(&mut f).await;
    assert_eq!(got["t1"], vec!["a1", "a2", "a3"], "in order");
    assert_eq!(got["t2"], vec!["b1"]);
    assert!(!got.contains_key("t3"));

    // --tail 1 and a single task.
    let one = LogSelector {
        task_ids: vec!["t1".into()],
        ..Default::default()
    };
    f.subscribe
        .send(Ok(subscription("s2", one, false, Some(1))))
        .await
        .unwrap();
    let _hello = next(&mut f).await;
    let got = until_close(&mut f).await;
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec![("t1".to_string(), vec!["a3".to_string()])]
    );
    f.cancel.cancel();
}

#[tokio::test]
async fn follow_streams_new_lines_and_new_tasks_until_closed() {
    let mut memory = Memory::default();
    memory.lines.insert("t1".into(), vec![(1, "old".into())]);
    memory
        .lines
        .insert("t9".into(), vec![(1, "late task".into())]);
    let mut f = fixture(memory, &[task("t1", "web")]).await;
    let web = LogSelector {
        service_ids: vec!["web".into()],
        ..Default::default()
    };
    f.subscribe
        .send(Ok(subscription("s1", web, true, Some(0))))
        .await
        .unwrap();
    let _hello = next(&mut f).await;
    // tail 0: nothing old; then a new line.
    let live = loop {
        if let Some(tx) = f.memory.live.lock().unwrap().get("t1").cloned() {
            break tx;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    live.send(ContainerLogsMessage {
        timestamp: None,
        stream: 1,
        data: b"new\n".to_vec(),
    })
    .await
    .unwrap();
    let m = next(&mut f).await;
    assert_eq!(m.messages.len(), 1);
    assert_eq!(m.messages[0].data, b"new\n");
    assert_eq!(m.messages[0].context.as_ref().unwrap().service_id, "web");
    // A task that arrives later is picked up by the rescan.
    f.worker
        .assign(assign(&[task("t1", "web"), task("t9", "web")]))
        .await
        .unwrap();
    let m = next(&mut f).await;
    assert_eq!(m.messages[0].context.as_ref().unwrap().task_id, "t9");
    // The broker closes it: the publish stream ends without more lines.
    f.subscribe
        .send(Ok(SubscriptionMessage {
            id: "s1".into(),
            close: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if live.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the task reader stopped");
    f.cancel.cancel();
}
