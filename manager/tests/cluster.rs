//! Three real managers in one test process: each serves its CA, Control, Raft and
//! RaftMembership services over mutual TLS on its own 127.0.0.1 port, and they talk to each
//! other only through those. Covers init, joins through the CA and RaftMembership, follower
//! forwarding, authorization, token checks, removal, optimistic concurrency, failover,
//! demotion with the quorum rule, restart from disk and force-new-cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use berth_manager::manager::{InitOptions, Manager, ManagerConfig};
use berth_manager::raft::RaftConfig;
use berth_manager::raft_net::leader_addr_of;
use berth_proto::identity::{
    JoinToken, NodeCredentials, NodeIdentity, Role, client_tls_config, generate_key_and_csr,
    install_crypto_provider, join_endpoint,
};
use berth_proto::v1::ca_client::CaClient;
use berth_proto::v1::control_client::ControlClient;
use berth_proto::v1::{
    Annotations, ConfigSpec, ContainerSpec, CreateConfigRequest, CreateSecretRequest,
    CreateServiceRequest, GetJoinTokensRequest, GetNodeRequest, GetRaftStatusRequest,
    GetRootCaCertificateRequest, IssuanceState, IssueNodeCertificateRequest, ListNodesRequest,
    ListServicesRequest, NodeCertificateStatusRequest, NodeRole, RemoveNodeRequest,
    RenewNodeCertificateRequest, RotateJoinTokenRequest, SecretSpec, ServiceSpec, TaskSpec,
    UpdateNodeRequest,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Server};

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(dir: &std::path::Path, node_id: &str, addr: &str) -> ManagerConfig {
    let mut cfg = ManagerConfig::new(dir, node_id, addr);
    cfg.raft = RaftConfig {
        write_timeout: Duration::from_secs(5),
        ..RaftConfig::default()
    };
    cfg
}

/// A manager and the gRPC server serving its routes.
struct Running {
    manager: Manager,
    cancel: CancellationToken,
    server: JoinHandle<()>,
}

/// One manager's fixed identity: state dir, port, credentials.
struct Member {
    dir: tempfile::TempDir,
    node_id: String,
    addr: String,
    creds: NodeCredentials,
    running: Option<Running>,
}

async fn serve(manager: Manager, addr: &str) -> anyhow::Result<Running> {
    // Rebinding the same port after a restart can race the old socket's close.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "rebinding");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("binding the cluster port"),
        }
    };
    serve_on(manager, listener).await
}

async fn serve_on(manager: Manager, listener: TcpListener) -> anyhow::Result<Running> {
    let cancel = CancellationToken::new();
    let router = Server::builder()
        .tls_config(manager.server_tls_config()?)?
        .add_routes(manager.routes());
    let stop = cancel.clone();
    let server = tokio::spawn(async move {
        let incoming = TcpListenerStream::new(listener);
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "server ended");
        }
    });
    Ok(Running {
        manager,
        cancel,
        server,
    })
}

impl Member {
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(r) = self.running.take() {
            r.cancel.cancel();
            let mut server = r.server;
            if tokio::time::timeout(Duration::from_secs(3), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
            r.manager.shutdown().await?;
        }
        Ok(())
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        let manager = Manager::open(
            config(self.dir.path(), &self.node_id, &self.addr),
            self.creds.clone(),
        )
        .await?;
        self.running = Some(serve(manager, &self.addr).await?);
        Ok(())
    }

    fn manager(&self) -> anyhow::Result<&Manager> {
        Ok(&self.running.as_ref().context("not running")?.manager)
    }
}

async fn channel(addr: &str, creds: &NodeCredentials) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(client_tls_config(creds)?)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

async fn control(addr: &str, creds: &NodeCredentials) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(channel(addr, creds).await?))
}

/// The node side of joining, spelled out with the raw CA calls (the agent's join client lives
/// in the agent crate, which the manager crate does not depend on): pinned TLS, root CA check,
/// CSR + token, following a redirect to the leader, polling the status.
async fn join_via_ca(addr: &str, token: &str) -> anyhow::Result<(String, NodeCredentials)> {
    let parsed = JoinToken::parse(token)?;
    let mut addr = addr.to_owned();
    for _ in 0..3 {
        let ep = join_endpoint(Endpoint::from_shared(format!("https://{addr}"))?, &parsed)?;
        let mut ca = CaClient::new(ep.connect().await?);
        let root = ca
            .get_root_ca_certificate(GetRootCaCertificateRequest {})
            .await?
            .into_inner()
            .certificate;
        parsed.verify_ca(&root)?;
        let bundle = generate_key_and_csr("joining")?;
        let issued = ca
            .issue_node_certificate(IssueNodeCertificateRequest {
                csr: bundle.csr_pem.clone().into_bytes(),
                token: token.to_owned(),
                ..Default::default()
            })
            .await;
        let node_id = match issued {
            Ok(r) => r.into_inner().node_id,
            Err(s) if s.code() == Code::Unavailable && leader_addr_of(&s).is_some() => {
                addr = leader_addr_of(&s).context("leader")?;
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = ca
                .node_certificate_status(NodeCertificateStatusRequest {
                    node_id: node_id.clone(),
                })
                .await?
                .into_inner();
            if st.status.as_ref().map(|s| s.state) == Some(IssuanceState::Issued as i32) {
                let cert = st.certificate.context("certificate")?;
                let creds = NodeCredentials {
                    cert_pem: String::from_utf8(cert.certificate)?,
                    key_pem: bundle.key_pem.clone(),
                    ca_pem: String::from_utf8(root.clone())?,
                };
                creds.identity()?;
                return Ok((node_id, creds));
            }
            if Instant::now() > deadline {
                bail!("certificate of {node_id} not issued in time");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    bail!("too many redirects")
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !probe().await {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

fn service_spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        annotations: Some(Annotations {
            name: name.into(),
            ..Default::default()
        }),
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "busybox:1.36".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn free_addr() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    Ok((l, addr))
}

/// Starts A (init) and joins `extra` more managers through A with the manager token.
async fn start_cluster(extra: usize) -> anyhow::Result<(Vec<Member>, String)> {
    install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let node_id = berth_proto::ids::new_id();
    let (listener, addr) = free_addr().await?;
    let (manager, creds) = Manager::init_cluster(
        config(dir.path(), &node_id, &addr),
        InitOptions {
            hostname: unique("host-a"),
            ..Default::default()
        },
    )
    .await?;
    let running = serve_on(manager, listener).await?;
    let mut members = vec![Member {
        dir,
        node_id,
        addr: addr.clone(),
        creds: creds.clone(),
        running: Some(running),
    }];
    let tokens = control(&addr, &creds)
        .await?
        .get_join_tokens(GetJoinTokensRequest {})
        .await?
        .into_inner()
        .join_tokens
        .context("tokens")?;
    for _ in 0..extra {
        let (node_id, creds) = join_via_ca(&addr, &tokens.manager).await?;
        let id = NodeIdentity::from_pem(&creds.cert_pem)?;
        assert_eq!(id.role, Role::Manager);
        let dir = tempfile::tempdir()?;
        let (listener, my_addr) = free_addr().await?;
        let manager = Manager::join(
            config(dir.path(), &node_id, &my_addr),
            creds.clone(),
            vec![addr.clone()],
        )
        .await?;
        let running = serve_on(manager, listener).await?;
        running.manager.wait_joined(Duration::from_secs(20)).await?;
        members.push(Member {
            dir,
            node_id,
            addr: my_addr,
            creds,
            running: Some(running),
        });
    }
    Ok((members, tokens.worker))
}

async fn voters(addr: &str, creds: &NodeCredentials) -> anyhow::Result<usize> {
    let st = control(addr, creds)
        .await?
        .get_raft_status(GetRaftStatusRequest {})
        .await?
        .into_inner();
    Ok(st.members.iter().filter(|m| m.voter).count())
}

async fn leader_of(members: &[Member]) -> anyhow::Result<usize> {
    let mut found = None;
    wait_until("a leader is elected", Duration::from_secs(10), || {
        found = members
            .iter()
            .position(|m| m.running.as_ref().is_some_and(|r| r.manager.is_leader()));
        let f = found.is_some();
        async move { f }
    })
    .await?;
    found.context("leader")
}

async fn service_names(addr: &str, creds: &NodeCredentials) -> anyhow::Result<Vec<String>> {
    Ok(control(addr, creds)
        .await?
        .list_services(ListServicesRequest::default())
        .await?
        .into_inner()
        .services
        .into_iter()
        .filter_map(|s| s.spec.and_then(|s| s.annotations).map(|a| a.name))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_join_replicate_authorize_fail_over_and_restart() -> anyhow::Result<()> {
    let (mut members, worker_token) = start_cluster(2).await?;
    tracing::info!("three managers up");
    let admin = members[0].creds.clone();

    // Every manager sees three voters and three nodes, with one leader (A) marked.
    for m in &members {
        wait_until("three voters", Duration::from_secs(10), || {
            let addr = m.addr.clone();
            let creds = m.creds.clone();
            async move { voters(&addr, &creds).await.unwrap_or(0) == 3 }
        })
        .await?;
        let nodes = control(&m.addr, &m.creds)
            .await?
            .list_nodes(ListNodesRequest::default())
            .await?
            .into_inner()
            .nodes;
        assert_eq!(nodes.len(), 3, "from {}", m.addr);
        let leaders: Vec<&str> = nodes
            .iter()
            .filter(|n| n.manager_status.as_ref().is_some_and(|s| s.leader))
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(
            leaders,
            vec![members[0].node_id.as_str()],
            "from {}",
            m.addr
        );
        assert!(nodes.iter().all(|n| n.role == NodeRole::Manager as i32));
    }

    // A write on a follower is forwarded to the leader and visible everywhere.
    let web = unique("web");
    let created = control(&members[1].addr, &members[1].creds)
        .await?
        .create_service(CreateServiceRequest {
            spec: Some(service_spec(&web)),
        })
        .await?
        .into_inner()
        .service
        .context("service")?;
    assert!(created.meta.is_some_and(|m| m.version > 0));
    for m in &members {
        wait_until("the service is replicated", Duration::from_secs(5), || {
            let (addr, creds, web) = (m.addr.clone(), m.creds.clone(), web.clone());
            async move {
                service_names(&addr, &creds)
                    .await
                    .is_ok_and(|n| n.contains(&web))
            }
        })
        .await?;
    }
    // The same name again is refused by the store on the leader.
    let err = control(&members[2].addr, &members[2].creds)
        .await?
        .create_service(CreateServiceRequest {
            spec: Some(service_spec(&web)),
        })
        .await
        .expect_err("duplicate name");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // A worker joins through a follower (redirected to the leader); its certificate cannot
    // call Control.
    let (worker_id, worker_creds) = join_via_ca(&members[2].addr, &worker_token).await?;
    assert_eq!(
        NodeIdentity::from_pem(&worker_creds.cert_pem)?.role,
        Role::Worker
    );
    let err = control(&members[1].addr, &worker_creds)
        .await?
        .list_nodes(ListNodesRequest::default())
        .await
        .expect_err("worker on control");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let node_count = || async {
        control(&members[0].addr, &admin)
            .await
            .expect("control")
            .list_nodes(ListNodesRequest::default())
            .await
            .expect("list")
            .into_inner()
            .nodes
            .len()
    };
    assert_eq!(node_count().await, 4);

    // Refused tokens create nothing: a wrong secret, another cluster's token, a rotated one.
    let digest = JoinToken::parse(&worker_token)?.ca_digest().to_owned();
    let wrong = format!("BRTKN-1-{digest}-{}", "0".repeat(25));
    let other = {
        let ca = berth_manager::ca::RootCa::generate()?;
        ca.new_join_token()?.to_string()
    };
    let err = join_via_ca(&members[0].addr, &wrong)
        .await
        .expect_err("wrong secret");
    assert!(err.to_string().contains("matches neither"), "{err:#}");
    // Pinned TLS against this cluster, but presenting another cluster's token.
    let ep = join_endpoint(
        Endpoint::from_shared(format!("https://{}", members[0].addr))?,
        &JoinToken::parse(&worker_token)?,
    )?;
    let err = CaClient::new(ep.connect().await?)
        .issue_node_certificate(IssueNodeCertificateRequest {
            csr: generate_key_and_csr("x")?.csr_pem.into_bytes(),
            token: other.clone(),
            ..Default::default()
        })
        .await
        .expect_err("other cluster's token");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("different cluster"),
        "{}",
        err.message()
    );
    // Dialling with the other cluster's token fails the pinned TLS check itself.
    assert!(join_via_ca(&members[0].addr, &other).await.is_err());
    let rotated = control(&members[1].addr, &members[1].creds)
        .await?
        .rotate_join_token(RotateJoinTokenRequest {
            role: NodeRole::Worker as i32,
        })
        .await?
        .into_inner()
        .join_tokens
        .context("tokens")?;
    assert_ne!(rotated.worker, worker_token);
    let err = join_via_ca(&members[2].addr, &worker_token)
        .await
        .expect_err("rotated token");
    assert!(err.to_string().contains("matches neither"), "{err:#}");
    assert_eq!(node_count().await, 4, "refused joins created no node");

    // Optimistic concurrency: a stale version is refused "update out of sequence".
    let mut c = control(&members[2].addr, &members[2].creds).await?;
    let node = c
        .get_node(GetNodeRequest {
            node_id: worker_id.clone(),
        })
        .await?
        .into_inner()
        .node
        .context("node")?;
    let version = node.meta.as_ref().map_or(0, |m| m.version);
    let mut spec = node.spec.clone().context("spec")?;
    spec.annotations
        .get_or_insert_with(Default::default)
        .labels
        .insert("zone".into(), "a".into());
    let updated = c
        .update_node(UpdateNodeRequest {
            node_id: worker_id.clone(),
            node_version: version,
            spec: Some(spec.clone()),
        })
        .await?
        .into_inner()
        .node
        .context("node")?;
    assert!(updated.meta.is_some_and(|m| m.version > version));
    let err = c
        .update_node(UpdateNodeRequest {
            node_id: worker_id.clone(),
            node_version: version,
            spec: Some(spec),
        })
        .await
        .expect_err("stale");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().starts_with("update out of sequence"),
        "{}",
        err.message()
    );
    let err = c
        .get_node(GetNodeRequest {
            node_id: "nosuchnode".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "node nosuchnode not found")
    );

    // A manager cannot be removed; the worker can, and its certificate is refused afterwards.
    let err = c
        .remove_node(RemoveNodeRequest {
            node_id: members[1].node_id.clone(),
            force: true,
        })
        .await
        .expect_err("manager removal");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("demote"), "{}", err.message());
    // The worker can renew while it is a member...
    CaClient::new(channel(&members[0].addr, &worker_creds).await?)
        .renew_node_certificate(RenewNodeCertificateRequest {
            csr: generate_key_and_csr(&worker_id)?.csr_pem.into_bytes(),
        })
        .await?;
    c.remove_node(RemoveNodeRequest {
        node_id: worker_id.clone(),
        force: false,
    })
    .await?;
    // ...and not once removed, on any manager.
    for m in &members {
        let err = CaClient::new(channel(&m.addr, &worker_creds).await?)
            .renew_node_certificate(RenewNodeCertificateRequest {
                csr: generate_key_and_csr(&worker_id)?.csr_pem.into_bytes(),
            })
            .await
            .expect_err("removed node renews");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("removed"), "{}", err.message());
    }
    assert_eq!(node_count().await, 3);

    // Shut the leader down: a new leader takes writes.
    let old = leader_of(&members).await?;
    assert_eq!(old, 0);
    let killed_at = Instant::now();
    members[old].stop().await?;
    let stopped_in = killed_at.elapsed();
    let survivor = if old == 1 { 2 } else { 1 };
    let after = unique("after");
    let mut first_ok = None;
    while first_ok.is_none() {
        let res = control(&members[survivor].addr, &members[survivor].creds)
            .await?
            .create_service(CreateServiceRequest {
                spec: Some(service_spec(&after)),
            })
            .await;
        match res {
            Ok(_) => first_ok = Some(killed_at.elapsed()),
            Err(s)
                if s.code() == Code::Unavailable
                    && killed_at.elapsed() < Duration::from_secs(20) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => bail!("write after failover failed: {s:?}"),
        }
    }
    let failover = first_ok.context("failover")?;
    println!(
        "FAILOVER: leader shutdown began -> first write committed by the new leader in {failover:?} (of which {stopped_in:?} stopping the old leader)"
    );
    let new_leader = leader_of(&members).await?;
    assert_ne!(new_leader, old);

    // With the old leader down, demoting a reachable manager would lose quorum.
    let other = if new_leader == 1 { 2 } else { 1 };
    let mut c = control(&members[new_leader].addr, &members[new_leader].creds).await?;
    wait_until(
        "the leader sees the old leader as unreachable",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            let id = members[old].node_id.clone();
            async move {
                c.get_node(GetNodeRequest { node_id: id })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().node)
                    .and_then(|n| n.manager_status)
                    .is_some_and(|s| {
                        s.reachability == berth_proto::v1::Reachability::Unreachable as i32
                    })
            }
        },
    )
    .await?;
    let node = c
        .get_node(GetNodeRequest {
            node_id: members[other].node_id.clone(),
        })
        .await?
        .into_inner()
        .node
        .context("node")?;
    let mut spec = node.spec.clone().context("spec")?;
    spec.desired_role = NodeRole::Worker as i32;
    let err = c
        .update_node(UpdateNodeRequest {
            node_id: node.id.clone(),
            node_version: node.meta.map_or(0, |m| m.version),
            spec: Some(spec),
        })
        .await
        .expect_err("demotion without quorum");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("would leave 1 of 2 remaining managers reachable; Raft quorum needs 2"),
        "{}",
        err.message()
    );

    // The old leader comes back and catches up; then all three restart from disk.
    members[old].restart().await?;
    for m in &members {
        let (addr, creds, after) = (m.addr.clone(), m.creds.clone(), after.clone());
        wait_until(
            "everyone has the post-failover write",
            Duration::from_secs(10),
            || {
                let (addr, creds, after) = (addr.clone(), creds.clone(), after.clone());
                async move {
                    service_names(&addr, &creds)
                        .await
                        .is_ok_and(|n| n.contains(&after))
                }
            },
        )
        .await?;
    }
    let before: Vec<u64> = members
        .iter()
        .map(|m| m.manager().map(|m| m.store().version()))
        .collect::<anyhow::Result<_>>()?;
    for m in members.iter_mut() {
        m.stop().await?;
    }
    for m in members.iter_mut() {
        m.restart().await?;
    }
    leader_of(&members).await?;
    for m in &members {
        let (addr, creds) = (m.addr.clone(), m.creds.clone());
        wait_until(
            "the restarted manager has everything",
            Duration::from_secs(10),
            || {
                let (addr, creds, web, after) =
                    (addr.clone(), creds.clone(), web.clone(), after.clone());
                async move {
                    service_names(&addr, &creds)
                        .await
                        .is_ok_and(|n| n.contains(&web) && n.contains(&after))
                }
            },
        )
        .await?;
        assert_eq!(voters(&m.addr, &m.creds).await?, 3);
        let nodes = control(&m.addr, &m.creds)
            .await?
            .list_nodes(ListNodesRequest::default())
            .await?
            .into_inner()
            .nodes;
        assert_eq!(nodes.len(), 3);
    }
    let after_restart: Vec<u64> = members
        .iter()
        .map(|m| m.manager().map(|m| m.store().version()))
        .collect::<anyhow::Result<_>>()?;
    for (b, a) in before.iter().zip(&after_restart) {
        assert!(a >= b, "store version went back from {b} to {a}");
    }
    // And writes still work after the full restart.
    control(&members[2].addr, &members[2].creds)
        .await?
        .create_service(CreateServiceRequest {
            spec: Some(service_spec(&unique("post"))),
        })
        .await?;
    for m in members.iter_mut() {
        m.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demoting_a_follower_removes_it_from_raft_and_makes_it_a_worker() -> anyhow::Result<()> {
    let (mut members, _) = start_cluster(2).await?;
    let admin = members[0].creds.clone();
    let mut c = control(&members[0].addr, &admin).await?;
    let target = members[2].node_id.clone();
    let node = c
        .get_node(GetNodeRequest {
            node_id: target.clone(),
        })
        .await?
        .into_inner()
        .node
        .context("node")?;
    let mut spec = node.spec.clone().context("spec")?;
    spec.desired_role = NodeRole::Worker as i32;
    c.update_node(UpdateNodeRequest {
        node_id: target.clone(),
        node_version: node.meta.map_or(0, |m| m.version),
        spec: Some(spec),
    })
    .await?;
    wait_until(
        "the demoted node is a worker outside raft",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            let target = target.clone();
            let addr = members[0].addr.clone();
            let admin = admin.clone();
            async move {
                let worker = c
                    .get_node(GetNodeRequest { node_id: target })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().node)
                    .is_some_and(|n| {
                        n.role == NodeRole::Worker as i32 && n.manager_status.is_none()
                    });
                worker && voters(&addr, &admin).await.unwrap_or(0) == 2
            }
        },
    )
    .await?;
    // Its renewal now yields a worker certificate.
    let bundle = generate_key_and_csr(&target)?;
    CaClient::new(channel(&members[0].addr, &members[2].creds).await?)
        .renew_node_certificate(RenewNodeCertificateRequest {
            csr: bundle.csr_pem.into_bytes(),
        })
        .await?;
    let status = CaClient::new(channel(&members[0].addr, &admin).await?)
        .node_certificate_status(NodeCertificateStatusRequest {
            node_id: target.clone(),
        })
        .await?
        .into_inner();
    let pem = String::from_utf8(status.certificate.context("cert")?.certificate)?;
    berth_proto::identity::certs::check_key_matches_cert(&bundle.key_pem, &pem)?;
    assert_eq!(NodeIdentity::from_pem(&pem)?.role, Role::Worker);
    // The two remaining managers still commit writes.
    control(&members[1].addr, &members[1].creds)
        .await?
        .create_service(CreateServiceRequest {
            spec: Some(service_spec(&unique("two"))),
        })
        .await?;

    // Demoting the leader itself (asked on the follower): it removes itself from the voters
    // and steps down; the remaining manager leads and records the role change.
    let leader_id = members[0].node_id.clone();
    let mut cb = control(&members[1].addr, &members[1].creds).await?;
    let node = cb
        .get_node(GetNodeRequest {
            node_id: leader_id.clone(),
        })
        .await?
        .into_inner()
        .node
        .context("node")?;
    let mut spec = node.spec.clone().context("spec")?;
    spec.desired_role = NodeRole::Worker as i32;
    cb.update_node(UpdateNodeRequest {
        node_id: leader_id.clone(),
        node_version: node.meta.map_or(0, |m| m.version),
        spec: Some(spec),
    })
    .await?;
    let b = members[1].manager()?;
    wait_until(
        "the other manager leads and the old leader is a worker",
        Duration::from_secs(10),
        || {
            let mut cb = cb.clone();
            let id = leader_id.clone();
            let leads = b.is_leader();
            let (addr, creds) = (members[1].addr.clone(), members[1].creds.clone());
            async move {
                let worker = cb
                    .get_node(GetNodeRequest { node_id: id })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().node)
                    .is_some_and(|n| n.role == NodeRole::Worker as i32);
                leads && worker && voters(&addr, &creds).await.unwrap_or(0) == 1
            }
        },
    )
    .await?;
    cb.create_service(CreateServiceRequest {
        spec: Some(service_spec(&unique("one"))),
    })
    .await?;
    for m in members.iter_mut() {
        m.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_new_cluster_recovers_a_lone_survivor_with_all_its_state() -> anyhow::Result<()> {
    let (mut members, _) = start_cluster(1).await?;
    let name = unique("kept");
    control(&members[1].addr, &members[1].creds)
        .await?
        .create_service(CreateServiceRequest {
            spec: Some(service_spec(&name)),
        })
        .await?;
    wait_until("both have the service", Duration::from_secs(5), || {
        let (addr, creds, name) = (
            members[1].addr.clone(),
            members[1].creds.clone(),
            name.clone(),
        );
        async move {
            service_names(&addr, &creds)
                .await
                .is_ok_and(|n| n.contains(&name))
        }
    })
    .await?;
    // Both stop; only the follower comes back, alone: it has no quorum.
    for m in members.iter_mut() {
        m.stop().await?;
    }
    let lone = &mut members[1];
    // Reopened normally, it cannot commit: writes fail with the no-quorum advice.
    let mut cfg = config(lone.dir.path(), &lone.node_id, &lone.addr);
    cfg.raft.write_timeout = Duration::from_secs(1);
    let manager = Manager::open(cfg, lone.creds.clone()).await?;
    lone.running = Some(serve(manager, &lone.addr).await?);
    let err = control(&lone.addr, &lone.creds)
        .await?
        .create_service(CreateServiceRequest {
            spec: Some(service_spec(&unique("lost"))),
        })
        .await
        .expect_err("no quorum");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().starts_with("no quorum:"), "{}", err.message());
    assert!(
        err.message().contains(
            "a majority of managers must be reachable; if they are lost for good, run `berth swarm init --force-new-cluster` on a surviving manager"
        ),
        "{}",
        err.message()
    );
    lone.stop().await?;
    let manager = Manager::force_new_cluster(
        config(lone.dir.path(), &lone.node_id, &lone.addr),
        lone.creds.clone(),
    )
    .await?;
    assert!(manager.is_leader());
    lone.running = Some(serve(manager, &lone.addr).await?);
    let (addr, creds) = (lone.addr.clone(), lone.creds.clone());
    assert!(service_names(&addr, &creds).await?.contains(&name));
    assert_eq!(voters(&addr, &creds).await?, 1);
    let st = control(&addr, &creds)
        .await?
        .get_raft_status(GetRaftStatusRequest {})
        .await?
        .into_inner();
    assert_eq!(st.leader_node_id, lone.node_id);
    control(&addr, &creds)
        .await?
        .create_service(CreateServiceRequest {
            spec: Some(service_spec(&unique("new"))),
        })
        .await?;
    assert_eq!(service_names(&addr, &creds).await?.len(), 2);
    lone.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_worker_renews_as_manager_and_joins_raft() -> anyhow::Result<()> {
    let (mut members, worker_token) = start_cluster(0).await?;
    let (addr, admin) = (members[0].addr.clone(), members[0].creds.clone());
    let (worker_id, worker_creds) = join_via_ca(&addr, &worker_token).await?;
    let mut c = control(&addr, &admin).await?;
    let node = c
        .get_node(GetNodeRequest {
            node_id: worker_id.clone(),
        })
        .await?
        .into_inner()
        .node
        .context("node")?;
    let mut spec = node.spec.clone().context("spec")?;
    spec.desired_role = NodeRole::Manager as i32;
    c.update_node(UpdateNodeRequest {
        node_id: worker_id.clone(),
        node_version: node.meta.map_or(0, |m| m.version),
        spec: Some(spec),
    })
    .await?;
    wait_until(
        "the reconciler makes it a manager",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            let id = worker_id.clone();
            async move {
                c.get_node(GetNodeRequest { node_id: id })
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().node)
                    .is_some_and(|n| n.role == NodeRole::Manager as i32)
            }
        },
    )
    .await?;
    // Its renewal now carries the manager role.
    let bundle = generate_key_and_csr(&worker_id)?;
    let mut ca = CaClient::new(channel(&addr, &worker_creds).await?);
    ca.renew_node_certificate(RenewNodeCertificateRequest {
        csr: bundle.csr_pem.clone().into_bytes(),
    })
    .await?;
    let cert = ca
        .node_certificate_status(NodeCertificateStatusRequest {
            node_id: worker_id.clone(),
        })
        .await?
        .into_inner()
        .certificate
        .context("certificate")?;
    let creds = NodeCredentials {
        cert_pem: String::from_utf8(cert.certificate)?,
        key_pem: bundle.key_pem,
        ca_pem: worker_creds.ca_pem.clone(),
    };
    assert_eq!(creds.identity()?.role, Role::Manager);
    // With it, the node's manager side joins raft.
    let dir = tempfile::tempdir()?;
    let (listener, my_addr) = free_addr().await?;
    let manager = Manager::join(
        config(dir.path(), &worker_id, &my_addr),
        creds.clone(),
        vec![addr.clone()],
    )
    .await?;
    let running = serve_on(manager, listener).await?;
    running.manager.wait_joined(Duration::from_secs(20)).await?;
    members.push(Member {
        dir,
        node_id: worker_id.clone(),
        addr: my_addr.clone(),
        creds: creds.clone(),
        running: Some(running),
    });
    assert_eq!(voters(&addr, &admin).await?, 2);
    let status = control(&my_addr, &creds)
        .await?
        .get_node(GetNodeRequest {
            node_id: worker_id.clone(),
        })
        .await?
        .into_inner()
        .node
        .context("node")?
        .manager_status
        .context("manager status")?;
    assert_eq!(status.addr, my_addr);
    assert!(!status.leader);
    for m in members.iter_mut() {
        m.stop().await?;
    }
    Ok(())
}

/// The largest secret (500 KiB - 1) and config (1000 KiB - 1) Docker accepts are one Raft
/// entry each; openraft 0.9 gives an AppendEntries call only one heartbeat interval, so these
/// must still reach every manager, and later small writes must still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_largest_secrets_and_configs_replicate_to_every_manager() -> anyhow::Result<()> {
    let (mut members, _) = start_cluster(2).await?;
    let (addr, creds) = (members[1].addr.clone(), members[1].creds.clone());
    let mut ids = Vec::new();
    for round in 0..2u8 {
        let started = Instant::now();
        let secret = control(&addr, &creds)
            .await?
            .create_secret(CreateSecretRequest {
                spec: Some(SecretSpec {
                    annotations: Some(Annotations {
                        name: unique("big-secret"),
                        ..Default::default()
                    }),
                    data: vec![b'a' + round; 500 * 1024 - 1],
                }),
            })
            .await?
            .into_inner()
            .secret
            .context("secret")?;
        let config = control(&addr, &creds)
            .await?
            .create_config(CreateConfigRequest {
                spec: Some(ConfigSpec {
                    annotations: Some(Annotations {
                        name: unique("big-config"),
                        ..Default::default()
                    }),
                    data: vec![b'A' + round; 1000 * 1024 - 1],
                }),
            })
            .await?
            .into_inner()
            .config
            .context("config")?;
        tracing::info!(elapsed = ?started.elapsed(), round, "large secret and config committed");
        ids.push((secret.id, config.id));
    }
    // A small write after them commits at once.
    let web = unique("web");
    tokio::time::timeout(
        Duration::from_secs(5),
        control(&addr, &creds)
            .await?
            .create_service(CreateServiceRequest {
                spec: Some(service_spec(&web)),
            }),
    )
    .await
    .context("a small write after the large ones timed out")??;
    for m in &members {
        let store = m.manager()?.store();
        wait_until(
            "the large objects are on every manager",
            Duration::from_secs(10),
            || {
                let all = ids.iter().all(|(s, c)| {
                    store.view(|t| {
                        let secret = t.get::<berth_proto::v1::Secret>(s);
                        let config = t.get::<berth_proto::v1::Config>(c);
                        secret.is_some_and(|s| {
                            s.sealed
                                .as_ref()
                                .is_some_and(|d| d.ciphertext.len() >= 500 * 1024 - 1)
                        }) && config.is_some_and(|c| {
                            c.spec
                                .as_ref()
                                .is_some_and(|s| s.data.len() == 1000 * 1024 - 1)
                        })
                    })
                });
                async move { all }
            },
        )
        .await?;
    }
    for m in members.iter_mut() {
        m.stop().await?;
    }
    Ok(())
}
