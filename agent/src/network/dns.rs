//! The embedded DNS of one container: a UDP server on 127.0.0.11:53 inside the container's
//! namespace, answering from the node's current network view ([`super::plan::resolve`]).
//!
//! Every query reads the latest view, so a task that stops leaves the answers with the very
//! view update that says so. Names that are not on the container's networks are answered
//! NXDOMAIN: nothing is forwarded, so no query ever leaves the node (a forwarder to upstream
//! resolvers is future work). Only UDP is served.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;

use berth_proto::v1::NetworksMessage;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::plan::{self, Answer, TaskNet};
use super::{NetworkError, netns};

/// TTL of answers: zero, since tasks come and go (resolvers must ask again).
const TTL: u32 = 0;

/// The answer to the DNS message `query` for a container on `net`'s networks, per `view`;
/// `None` when it is not a parsable query (dropped, like a real server would).
pub fn answer(query: &[u8], view: Option<&NetworksMessage>, net: &TaskNet) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.authoritative = true;
    let Some(q) = msg.queries.first().cloned() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    resp.add_query(q.clone());
    if msg.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().ok();
    }
    let empty = NetworksMessage::default();
    match plan::resolve(view.unwrap_or(&empty), net, &q.name().to_ascii()) {
        Answer::Known(addrs) => {
            if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                for ip in addrs {
                    resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
                }
            }
        }
        Answer::Unknown => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    resp.to_vec().ok()
}

/// Binds the DNS socket inside the namespace bound at `netns` (its loopback must be up).
pub fn bind(netns_path: &Path) -> Result<UdpSocket, NetworkError> {
    let addr = SocketAddr::from((plan::DNS_ADDR, 53));
    netns::run_in(Some(netns_path), move || {
        let s = UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .map_err(|source| NetworkError::Io {
        what: format!("binding the embedded DNS at {addr} in {netns_path:?}"),
        source,
    })
}

/// Serves `socket` until `cancel`.
pub async fn serve(
    socket: UdpSocket,
    view: watch::Receiver<Option<Arc<NetworksMessage>>>,
    net: TaskNet,
    cancel: CancellationToken,
) {
    let socket = match tokio::net::UdpSocket::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(task_id = %net.task_id, error = %e, "embedded DNS could not start");
            return;
        }
    };
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(task_id = %net.task_id, error = %e, "embedded DNS receive failed");
                    continue;
                }
            },
        };
        let reply = {
            let current = view.borrow();
            answer(&buf[..len], current.as_deref(), &net)
        };
        if let Some(reply) = reply
            && let Err(e) = socket.send_to(&reply, from).await
        {
            tracing::debug!(task_id = %net.task_id, error = %e, "embedded DNS reply failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Network, NetworkEndpoint, NetworkView, ResolutionMode, ServiceEndpoint};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;
    use crate::network::plan::Attachment;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 42;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
        m.to_vec().expect("encode")
    }

    fn decode(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).expect("decode")
    }

    #[test]
    fn queries_get_the_views_answers() {
        let view = NetworksMessage {
            data_path_port: 4789,
            networks: vec![NetworkView {
                network: Some(Network {
                    id: "n".into(),
                    vxlan_id: 4097,
                    ..Default::default()
                }),
                endpoints: vec![
                    NetworkEndpoint {
                        task_id: "t1".into(),
                        service_id: "s".into(),
                        addr: "10.0.1.3/24".into(),
                        active: true,
                        ..Default::default()
                    },
                    NetworkEndpoint {
                        task_id: "t2".into(),
                        service_id: "s".into(),
                        addr: "10.0.1.4/24".into(),
                        active: true,
                        ..Default::default()
                    },
                ],
                services: vec![ServiceEndpoint {
                    service_id: "s".into(),
                    name: "web".into(),
                    vip: "10.0.1.2/24".into(),
                    mode: ResolutionMode::Vip as i32,
                    ports: vec![],
                }],
                ..Default::default()
            }],
        };
        let net = TaskNet {
            task_id: "c".into(),
            service_id: "c".into(),
            attachments: vec![Attachment {
                network_id: "n".into(),
                vni: 4097,
                addr: "10.0.1.9".parse().expect("ip"),
                prefix: 24,
                internal: false,
                ingress: false,
            }],
            host_ports: vec![],
        };
        let r = decode(&answer(&query("web.", RecordType::A), Some(&view), &net).expect("reply"));
        assert_eq!(r.metadata.id, 42);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        let r =
            decode(&answer(&query("tasks.web.", RecordType::A), Some(&view), &net).expect("reply"));
        assert_eq!(r.answers.len(), 2);
        // AAAA of a known name: no data, no error.
        let r =
            decode(&answer(&query("web.", RecordType::AAAA), Some(&view), &net).expect("reply"));
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
        let r = decode(
            &answer(&query("example.com.", RecordType::A), Some(&view), &net).expect("reply"),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        // Before any view: nothing is known.
        let r = decode(&answer(&query("web.", RecordType::A), None, &net).expect("reply"));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(answer(b"garbage", Some(&view), &net).is_none());
    }
}
