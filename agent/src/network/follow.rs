//! Keeps the data path fed: while the agent's session with the managers is open, follow the
//! dispatcher's Networks stream for that session and hand every view to the
//! [`NetworkAgent`].
//!
//! It rides on the session rather than inside it: it dials the session's manager with the
//! node's credentials and quotes the session id, so the dispatcher serves exactly that node's
//! view and ends the stream with the session. When no manager is reachable the last view
//! stays applied (containers keep their data path, like they keep running).

use std::time::Duration;

use berth_proto::identity::{NodeCredentials, client_tls_config};
use berth_proto::v1::NetworksRequest;
use berth_proto::v1::dispatcher_client::DispatcherClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Endpoint;

use super::NetworkAgent;
use crate::session::{MAX_MESSAGE_SIZE, SessionState};

/// Pause before asking again after the stream failed while the session stays the same.
const RETRY: Duration = Duration::from_secs(1);

/// Pause before asking a manager that does not serve the stream again.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(30);

/// Follows `sessions` until `cancel`, feeding `agent` the views of each open session.
pub async fn follow(
    agent: NetworkAgent,
    mut sessions: watch::Receiver<SessionState>,
    credentials: watch::Receiver<NodeCredentials>,
    cancel: CancellationToken,
) {
    loop {
        let current = sessions.borrow_and_update().clone();
        let wait = match (&current.manager, current.session_id.as_str()) {
            (Some(addr), id) if !id.is_empty() => {
                let creds = credentials.borrow().clone();
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = sessions.changed() => continue,
                    r = stream(&agent, addr, id, &creds) => r,
                }
            }
            _ => None,
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = sessions.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait.unwrap_or(RETRY)), if wait.is_some() => {}
        }
    }
}

/// One stream: how long to wait before the next attempt (`None`: until the session changes).
async fn stream(
    agent: &NetworkAgent,
    addr: &str,
    session_id: &str,
    creds: &NodeCredentials,
) -> Option<Duration> {
    let tls = match client_tls_config(creds) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "network view: no usable credentials");
            return Some(RETRY);
        }
    };
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tls_config(tls)
        .ok()?;
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(manager = %addr, error = %e, "network view: cannot connect");
            return Some(RETRY);
        }
    };
    let mut client = DispatcherClient::new(channel).max_decoding_message_size(MAX_MESSAGE_SIZE);
    let mut stream = match client
        .networks(NetworksRequest {
            session_id: session_id.to_owned(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::Unimplemented => return Some(UNSUPPORTED_RETRY),
        Err(s) => {
            tracing::debug!(manager = %addr, error = %s.message(), "network view refused");
            return Some(RETRY);
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(view)) => agent.set_view(view),
            Ok(None) => return Some(RETRY),
            Err(s) => {
                tracing::debug!(manager = %addr, error = %s.message(), "network view stream ended");
                return Some(RETRY);
            }
        }
    }
}
