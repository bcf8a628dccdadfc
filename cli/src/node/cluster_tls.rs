//! The cluster port's TLS, with a configuration that can change while the port stays open.
//!
//! [`incoming`] accepts TCP connections (Nagle off: Raft and control messages are small
//! request/response exchanges, and Nagle plus delayed ACKs would add ~40 ms to each), runs each
//! TLS handshake in its own task, bounded by [`HANDSHAKE_TIMEOUT`], with the configuration
//! [`ServerTls`] holds *at that moment*, and hands established streams to tonic (which reads
//! the peer's certificates from them for `require_role`). A renewed certificate or a new trust
//! bundle — several per node during a root CA rotation — is installed with [`ServerTls::set`]
//! and used from the next handshake on; the port is never closed and open connections keep
//! the session they negotiated.
//!
//! A failed handshake (no shared root, expired certificate, timeout) only drops that
//! connection; it is logged at debug level.

use std::sync::{Arc, PoisonError, RwLock};

use berth_proto::identity::tls::HANDSHAKE_TIMEOUT;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Established connections waiting for tonic to take them.
const ACCEPTED_BUFFER: usize = 64;

/// The server configuration new handshakes use; clones share it.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Starts with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            config: Arc::new(RwLock::new(config)),
        }
    }

    /// Uses `config` for every handshake from now on.
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.config
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The TLS connections accepted on `listener` until `cancel` (see the module docs).
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    cancel: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BUFFER);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of descriptors and the like: back off a little instead of spinning.
                    tracing::warn!("accepting on the cluster port failed: {err}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%peer, "setting TCP_NODELAY failed: {err}");
            }
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let stream = tokio::select! {
                    _ = cancel.cancelled() => return,
                    done = handshake => match done {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {err}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    },
                };
                let _ = tx.send(Ok(stream)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_manager::ca::{DEFAULT_NODE_CERT_VALIDITY, RootCa};
    use berth_proto::identity::{
        MANAGER_SERVER_NAME, NodeCredentials, Role, install_crypto_provider, server_rustls_config,
    };
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    use tokio_stream::StreamExt;

    fn manager(root: &RootCa) -> NodeCredentials {
        root.issue_node_credentials("m1", Role::Manager, "c1", DEFAULT_NODE_CERT_VALIDITY)
            .expect("credentials")
    }

    /// Connects trusting only `root` and presenting no certificate; true when the handshake
    /// completes and the server hands the connection on.
    async fn handshake(
        addr: std::net::SocketAddr,
        root: &RootCa,
        accepted: &mut ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    ) -> bool {
        let mut roots = RootCertStore::empty();
        roots.add(root.cert_der().clone()).expect("root");
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(MANAGER_SERVER_NAME).expect("name");
        let client = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await;
        if client.is_err() {
            return false;
        }
        let served = tokio::time::timeout(std::time::Duration::from_secs(5), accepted.next())
            .await
            .expect("the server hands the connection on");
        matches!(served, Some(Ok(_)))
    }

    #[tokio::test]
    async fn a_new_configuration_applies_to_the_next_handshake_without_closing_the_port() {
        install_crypto_provider();
        let (old, new) = (
            RootCa::generate().expect("old"),
            RootCa::generate().expect("new"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = ServerTls::new(server_rustls_config(&manager(&old)).expect("config"));
        let cancel = CancellationToken::new();
        let mut accepted = incoming(listener, tls.clone(), cancel.clone());

        assert!(handshake(addr, &old, &mut accepted).await);
        assert!(!handshake(addr, &new, &mut accepted).await);
        tls.set(server_rustls_config(&manager(&new)).expect("config"));
        assert!(handshake(addr, &new, &mut accepted).await);
        assert!(!handshake(addr, &old, &mut accepted).await);

        cancel.cancel();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), accepted.next())
            .await
            .expect("the stream ends once cancelled");
        assert!(end.is_none());
    }
}
