//! The broker without gRPC: listeners, publishers and subscribers driven directly.

use std::time::Duration;

use berth_proto::v1::{
    Annotations, LogContext, LogMessage, LogSelector, LogSubscriptionOptions, Node,
    NodeDescription, PublishLogsMessage, Service, ServiceSpec, SubscribeLogsMessage,
    SubscribeLogsRequest, SubscriptionMessage, Task, TaskState, TaskStatus,
};
use futures::{Stream, StreamExt};
use prost_types::Timestamp;
use tonic::Status;

use super::*;
use crate::store::{Store, StoreActions};

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        description: Some(NodeDescription {
            hostname: format!("host-{id}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, node: &str) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        slot: 1,
        node_id: node.into(),
        status: Some(TaskStatus {
            state: TaskState::Running as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Nodes a, b, c; service svc with tasks on a and b.
fn store() -> Store {
    let store = Store::new();
    let mut batch = StoreActions::new();
    batch
        .create(node("a"))
        .create(node("b"))
        .create(node("c"))
        .create(Service {
            id: "svc".into(),
            spec: Some(ServiceSpec {
                annotations: Some(Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .create(task("t1", "a"))
        .create(task("t2", "b"));
    store
        .apply(1, crate::store::timestamp(1, 0), batch)
        .expect("fixture applies");
    store
}

fn request(follow: bool) -> SubscribeLogsRequest {
    SubscribeLogsRequest {
        selector: Some(LogSelector {
            service_ids: vec!["svc".into()],
            ..Default::default()
        }),
        options: Some(LogSubscriptionOptions {
            follow,
            tail: Some(5),
            ..Default::default()
        }),
    }
}

fn line(task: &str, text: &str, seconds: i64) -> LogMessage {
    LogMessage {
        context: Some(LogContext {
            service_id: "svc".into(),
            node_id: "spoofed".into(),
            task_id: task.into(),
        }),
        timestamp: Some(Timestamp { seconds, nanos: 0 }),
        stream: 1,
        data: format!("{text}\n").into_bytes(),
    }
}

async fn next_sub(
    listener: &mut (impl Stream<Item = Result<SubscriptionMessage, Status>> + Unpin),
) -> SubscriptionMessage {
    tokio::time::timeout(Duration::from_secs(5), listener.next())
        .await
        .expect("a subscription message in time")
        .expect("the listener is open")
        .expect("not an error")
}

/// Publishes `msg` as `node` the way the PublishLogs handler does.
async fn publish(broker: &LogBroker, node: &str, msg: PublishLogsMessage) {
    let id = msg.subscription_id.clone();
    let close = msg.close;
    if let Some((tx, batch)) = broker.publish(node, msg).expect("asked")
        && !batch.messages.is_empty()
    {
        tx.send(batch).await.expect("subscriber open");
    }
    if close {
        broker.node_done(&id, node, None);
    }
}

async fn collect(
    stream: impl Stream<Item = SubscribeLogsMessage>,
) -> (Vec<(String, String)>, Vec<String>) {
    let all: Vec<SubscribeLogsMessage> =
        tokio::time::timeout(Duration::from_secs(30), stream.collect())
            .await
            .expect("the subscription ends");
    let mut lines = Vec::new();
    let mut warnings = Vec::new();
    for m in all {
        warnings.extend(m.warnings);
        for l in m.messages {
            let ctx = l.context.unwrap_or_default();
            lines.push((ctx.node_id, String::from_utf8(l.data).unwrap()));
        }
    }
    (lines, warnings)
}

#[tokio::test]
async fn lines_from_every_node_then_the_end() {
    let broker = LogBroker::new(store());
    let mut la = Box::pin(broker.listen("a"));
    let mut lb = Box::pin(broker.listen("b"));
    let stream = broker.subscribe(request(false)).unwrap();
    let sa = next_sub(&mut la).await;
    let sb = next_sub(&mut lb).await;
    assert_eq!(sa.id, sb.id);
    assert_eq!(sa.options.as_ref().unwrap().tail, Some(5));
    assert!(!sa.close);
    publish(
        &broker,
        "a",
        PublishLogsMessage {
            subscription_id: sa.id.clone(),
            messages: vec![line("t1", "from a", 10)],
            close: true,
        },
    )
    .await;
    publish(
        &broker,
        "b",
        PublishLogsMessage {
            subscription_id: sb.id.clone(),
            messages: vec![line("t2", "from b", 11)],
            close: false,
        },
    )
    .await;
    publish(
        &broker,
        "b",
        PublishLogsMessage {
            subscription_id: sb.id.clone(),
            messages: vec![],
            close: true,
        },
    )
    .await;
    let (lines, warnings) = collect(stream).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    // Node ids come from the publisher, never from what it wrote.
    assert_eq!(
        lines,
        vec![
            ("a".to_string(), "from a\n".to_string()),
            ("b".to_string(), "from b\n".to_string())
        ]
    );
}

#[tokio::test]
async fn a_node_that_is_not_connected_gives_a_warning_and_partial_results() {
    let broker = LogBroker::new(store());
    let mut la = Box::pin(broker.listen("a"));
    let stream = broker.subscribe(request(false)).unwrap();
    let sa = next_sub(&mut la).await;
    // Node c holds no selected task: it may not publish for this subscription.
    let _lc = Box::pin(broker.listen("c"));
    let refused = broker.publish(
        "c",
        PublishLogsMessage {
            subscription_id: sa.id.clone(),
            messages: vec![line("t1", "forged", 1)],
            close: false,
        },
    );
    assert!(matches!(refused, Err(LogBrokerError::NotAsked { .. })));
    publish(
        &broker,
        "a",
        PublishLogsMessage {
            subscription_id: sa.id.clone(),
            messages: vec![line("t1", "from a", 10)],
            close: true,
        },
    )
    .await;
    let (lines, warnings) = collect(stream).await;
    assert_eq!(lines, vec![("a".to_string(), "from a\n".to_string())]);
    assert_eq!(warnings, vec!["node host-b is not connected".to_string()]);
}

#[tokio::test]
async fn no_reachable_node_ends_at_once_with_warnings() {
    let broker = LogBroker::new(store());
    let (lines, warnings) = collect(broker.subscribe(request(false)).unwrap()).await;
    assert!(lines.is_empty());
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    let err = broker
        .subscribe(SubscribeLogsRequest::default())
        .err()
        .expect("refused");
    assert!(matches!(err, LogBrokerError::EmptySelector));
}

#[tokio::test]
async fn a_departed_subscriber_stops_its_nodes() {
    let broker = LogBroker::new(store());
    let mut la = Box::pin(broker.listen("a"));
    let stream = broker.subscribe(request(true)).unwrap();
    let sa = next_sub(&mut la).await;
    drop(stream);
    let stop = next_sub(&mut la).await;
    assert_eq!(stop.id, sa.id);
    assert!(stop.close);
    // Late lines for it are dropped, not refused.
    assert!(
        broker
            .publish(
                "a",
                PublishLogsMessage {
                    subscription_id: sa.id,
                    messages: vec![line("t1", "late", 1)],
                    close: false,
                },
            )
            .unwrap()
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn silent_or_vanished_nodes_are_given_up() {
    let broker = LogBroker::with_config(
        store(),
        BrokerConfig {
            start_timeout: Duration::from_secs(3),
            recheck: Duration::from_millis(500),
        },
    );
    let mut la = Box::pin(broker.listen("a"));
    let mut lb = Box::pin(broker.listen("b"));
    let stream = broker.subscribe(request(false)).unwrap();
    let _ = next_sub(&mut la).await;
    let _ = next_sub(&mut lb).await;
    // b goes away before answering; a never answers.
    drop(lb);
    let (lines, warnings) = collect(stream).await;
    assert!(lines.is_empty());
    assert_eq!(
        warnings,
        vec![
            "node host-b disconnected before it sent its logs".to_string(),
            "node host-a did not answer within 3s".to_string()
        ]
    );
    let stop = next_sub(&mut la).await;
    assert!(stop.close, "the silent node is told to stop");
}

#[tokio::test(start_paused = true)]
async fn follow_asks_nodes_that_connect_later_and_resumes_after_the_last_line() {
    let broker = LogBroker::with_config(
        store(),
        BrokerConfig {
            start_timeout: Duration::from_secs(30),
            recheck: Duration::from_millis(200),
        },
    );
    let mut la = Box::pin(broker.listen("a"));
    // The subscriber keeps reading, as tonic does for a connected client.
    let mut stream = broker.subscribe(request(true)).unwrap().boxed();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            if tx.send(m).is_err() {
                return;
            }
        }
    });
    let first = rx.recv().await.unwrap();
    assert_eq!(first.warnings, vec!["node host-b is not connected"]);
    let sa = next_sub(&mut la).await;
    // b connects later and is asked by the next re-check.
    let mut lb = Box::pin(broker.listen("b"));
    let sb = next_sub(&mut lb).await;
    assert_eq!(sb.id, sa.id);
    publish(
        &broker,
        "b",
        PublishLogsMessage {
            subscription_id: sb.id.clone(),
            messages: vec![line("t2", "one", 100)],
            close: false,
        },
    )
    .await;
    let got = rx.recv().await.unwrap();
    assert_eq!(got.messages.len(), 1);
    // b's agent reconnects: its publish stream ended, a new listener opens.
    broker.node_done(
        &sb.id,
        "b",
        Some("the log stream of node host-b stopped".into()),
    );
    drop(lb);
    let warned = rx.recv().await.unwrap();
    assert_eq!(warned.warnings.len(), 1);
    let mut lb = Box::pin(broker.listen("b"));
    let again = next_sub(&mut lb).await;
    let options = again.options.unwrap();
    assert_eq!(options.tail, None);
    assert_eq!(
        options.since,
        Some(Timestamp {
            seconds: 100,
            nanos: 1
        })
    );
    assert!(options.follow);
    reader.abort();
}
