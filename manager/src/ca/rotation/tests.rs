use std::sync::Arc;

use berth_proto::identity::certs::{cert_ders, first_cert_der, generate_key_and_csr, is_signed_by};
use berth_proto::identity::{JoinToken, Role};
use berth_proto::v1::{
    Cluster, IssuanceState, IssuanceStatus, JoinTokens as WireJoinTokens, Node, NodeCertificate,
    NodeState, NodeStatus, RootCa as WireRootCa,
};

use super::*;
use crate::ca::DEFAULT_NODE_CERT_VALIDITY;

fn cluster_with(root: &RootCa) -> Cluster {
    let tokens = JoinTokens::generate(root).expect("tokens");
    Cluster {
        id: "c1".into(),
        root_ca: Some(WireRootCa {
            ca_key: root.key_pem().into_bytes(),
            ca_cert: root.cert_pem().as_bytes().to_vec(),
            ca_cert_hash: String::new(),
            join_tokens: Some(WireJoinTokens {
                worker: tokens.get(Role::Worker).to_string(),
                manager: tokens.get(Role::Manager).to_string(),
            }),
            rotation: None,
        }),
        ..Default::default()
    }
}

fn node(id: &str, chain: &str, issuance: IssuanceState, state: NodeState) -> Arc<Node> {
    Arc::new(Node {
        id: id.into(),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        certificate: Some(NodeCertificate {
            certificate: chain.as_bytes().to_vec(),
            status: Some(IssuanceStatus {
                state: issuance as i32,
                err: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn sign(cluster: &Cluster, id: &str) -> String {
    let csr = generate_key_and_csr(id).expect("csr").csr_pem;
    Signer::of(cluster)
        .expect("signer")
        .sign_csr(&csr, id, Role::Worker, "c1", DEFAULT_NODE_CERT_VALIDITY)
        .expect("sign")
}

#[test]
fn begin_then_sign_with_the_new_root_and_trust_both() {
    let root = RootCa::generate().expect("root");
    let mut cluster = cluster_with(&root);
    assert_eq!(cluster_root_count(&trust_bundle(&cluster)), 1);
    let before = sign(&cluster, "n1");
    assert_eq!(cert_ders(&before).expect("chain").len(), 1);

    let rotation = begin(&cluster).expect("begin");
    let new_root = first_cert_der(&String::from_utf8_lossy(&rotation.ca_cert)).expect("new");
    let cross =
        first_cert_der(&String::from_utf8_lossy(&rotation.cross_signed_ca_cert)).expect("cross");
    assert!(is_signed_by(&cross, root.cert_der()));
    cluster.root_ca.as_mut().expect("root ca").rotation = Some(rotation);
    assert!(matches!(begin(&cluster), Err(RotationError::InProgress)));

    let bundle = cert_ders(&trust_bundle(&cluster)).expect("bundle");
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[0].as_ref(), root.cert_der().as_ref());
    assert_eq!(bundle[1].as_ref(), new_root.as_ref());

    let during = cert_ders(&sign(&cluster, "n1")).expect("chain");
    assert_eq!(during.len(), 2, "leaf + cross-signed intermediate");
    assert!(is_signed_by(&during[0], &new_root));
    assert!(!is_signed_by(&during[0], root.cert_der()));
    assert_eq!(during[1].as_ref(), cross.as_ref());

    // The swap: the new root with its key, tokens naming it, no rotation.
    let swapped = swapped_root(&cluster)
        .expect("swap")
        .expect("a rotation ran");
    assert!(swapped.rotation.is_none());
    assert_eq!(
        first_cert_der(&String::from_utf8_lossy(&swapped.ca_cert))
            .expect("cert")
            .as_ref(),
        new_root.as_ref()
    );
    let old_tokens = cluster
        .root_ca
        .as_ref()
        .and_then(|ca| ca.join_tokens.clone())
        .expect("tokens");
    let new_tokens = swapped.join_tokens.clone().expect("new tokens");
    let new_worker = JoinToken::parse(&new_tokens.worker).expect("parse");
    new_worker.verify_ca(&new_root).expect("names the new root");
    let old_worker = JoinToken::parse(&old_tokens.worker).expect("parse");
    assert!(old_worker.verify_ca(&new_root).is_err());
    assert!(swapped.ca_cert_hash.starts_with("sha256:"));
    let mut after = cluster.clone();
    after.root_ca = Some(swapped);
    assert!(swapped_root(&after).expect("no rotation").is_none());
    assert_eq!(cluster_root_count(&trust_bundle(&after)), 1);
    let after_chain = cert_ders(&sign(&after, "n1")).expect("chain");
    assert_eq!(after_chain.len(), 1);
    assert!(is_signed_by(&after_chain[0], &new_root));
}

fn cluster_root_count(bundle: &str) -> usize {
    cert_ders(bundle).map_or(0, |d| d.len())
}

#[test]
fn the_leader_marks_in_batches_swaps_then_finishes() {
    use IssuanceState::{Issued, Rotate};
    let root = RootCa::generate().expect("root");
    let mut cluster = cluster_with(&root);
    let old_chain = sign(&cluster, "n");
    let nodes: Vec<Arc<Node>> = (0..ROTATE_BATCH + 5)
        .map(|i| node(&format!("n{i}"), &old_chain, Issued, NodeState::Ready))
        .collect();
    assert_eq!(plan(&cluster, &nodes), Step::Idle);
    assert_eq!(progress(&cluster, &nodes), Progress::Done);

    cluster.root_ca.as_mut().expect("ca").rotation = Some(begin(&cluster).expect("begin"));
    let Step::Mark(first) = plan(&cluster, &nodes) else {
        panic!("expected marks");
    };
    assert_eq!(first.len(), ROTATE_BATCH);
    assert_eq!(
        progress(&cluster, &nodes),
        Progress::Reissuing {
            reissued: 0,
            nodes: ROTATE_BATCH + 5
        }
    );

    // The batch is out (ROTATE): nothing more until some of them renew.
    let new_chain = sign(&cluster, "n");
    let mut nodes: Vec<Arc<Node>> = nodes
        .iter()
        .map(|n| {
            if first.contains(&n.id) {
                node(&n.id, &old_chain, Rotate, NodeState::Ready)
            } else {
                n.clone()
            }
        })
        .collect();
    assert_eq!(plan(&cluster, &nodes), Step::Idle);
    // Three renewed: three more may be asked.
    for n in nodes.iter_mut().take(3) {
        *n = node(&n.id, &new_chain, Issued, NodeState::Ready);
    }
    let Step::Mark(second) = plan(&cluster, &nodes) else {
        panic!("expected marks");
    };
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|id| !first.contains(id)));

    // All renewed except one that is DOWN: it does not hold the swap up.
    let last = nodes.len() - 1;
    for (i, n) in nodes.iter_mut().enumerate() {
        *n = if i == last {
            node(&n.id, &old_chain, Issued, NodeState::Down)
        } else {
            node(&n.id, &new_chain, Issued, NodeState::Ready)
        };
    }
    assert_eq!(plan(&cluster, &nodes), Step::Swap);
    assert_eq!(
        progress(&cluster, &nodes),
        Progress::Reissuing {
            reissued: last,
            nodes: last
        }
    );

    // After the swap every re-issued node renews once more, to drop the intermediate and the
    // old root; the DOWN node with its old certificate is not waited for.
    cluster.root_ca = Some(swapped_root(&cluster).expect("swap").expect("rotation"));
    assert_eq!(
        progress(&cluster, &nodes),
        Progress::Finishing {
            finished: 0,
            nodes: last
        }
    );
    let Step::Mark(third) = plan(&cluster, &nodes) else {
        panic!("expected marks");
    };
    assert_eq!(third.len(), ROTATE_BATCH);
    let final_chain = sign(&cluster, "n");
    assert_eq!(cert_ders(&final_chain).expect("chain").len(), 1);
    for n in nodes.iter_mut().take(last) {
        *n = node(&n.id, &final_chain, Issued, NodeState::Ready);
    }
    assert_eq!(plan(&cluster, &nodes), Step::Idle);
    assert_eq!(progress(&cluster, &nodes), Progress::Done);
    // A node back from DOWN with an old-root certificate is not counted: it must rejoin.
    nodes[last] = node(&nodes[last].id, &old_chain, Issued, NodeState::Ready);
    assert_eq!(plan(&cluster, &nodes), Step::Idle);
    assert_eq!(progress(&cluster, &nodes), Progress::Done);
}

#[test]
fn no_root_means_nothing_to_do() {
    let cluster = Cluster::default();
    assert_eq!(plan(&cluster, &[]), Step::Idle);
    assert_eq!(progress(&cluster, &[]), Progress::Done);
    assert!(matches!(begin(&cluster), Err(RotationError::NoRoot)));
    assert_eq!(trust_bundle(&cluster), "");
}
