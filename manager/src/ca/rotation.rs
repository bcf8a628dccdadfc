//! Root CA rotation (`berth swarm ca --rotate`): replace the cluster's root CA without
//! stopping the cluster, the way Swarm does it (`ca/reconciler.go`), in three steps.
//!
//! 1. **Begin** ([`begin`], from `UpdateCluster` when `spec.ca_config.force_rotate` rises): a
//!    new root and the intermediate that cross-signs it with the current root are stored in
//!    the cluster object as `root_ca.rotation` (key included; redacted from Control answers).
//!    From then on the CA signs every certificate with the *new* root and returns it followed
//!    by the intermediate ([`Signer`]), and tells nodes to trust both roots ([`trust_bundle`]).
//!    A node that still trusts only the old root verifies such a chain through the
//!    intermediate; a node that trusts both verifies old certificates too. So nodes can switch
//!    in any order and no connection is refused on the way.
//! 2. **Re-issue** (the leader's [`run`] loop): every node that is not DOWN and whose
//!    certificate the new root did not sign gets certificate status ROTATE, at most
//!    [`ROTATE_BATCH`] at a time; the node sees it in its dispatcher session (the session
//!    sends the node object on every change) and renews at once.
//! 3. **Swap**: once every node that is not DOWN holds a certificate of the new root, one write
//!    makes the new root the cluster's root, drops the old root's key and certificate, and
//!    regenerates both join tokens (they carry the root's digest, so old tokens stop working).
//!    Nodes renewed during step 2 still carry the intermediate and trust the old root; the
//!    leader marks them ROTATE again (a certificate chain longer than the leaf, while no
//!    rotation runs, means exactly that) and their next certificate comes alone with a trust
//!    bundle of the new root only. The rotation is over ([`Progress::Done`]) when no live node
//!    is left with an intermediate.
//!
//! A node that was DOWN for the whole of step 2 holds a certificate of the old root, which no
//! one trusts after the swap: it must leave and rejoin with a new token. One rotation runs at
//! a time; starting another while one runs is refused.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::identity::Role;
use berth_proto::identity::certs::{cert_ders, first_cert_der, is_signed_by};
use berth_proto::v1::{
    Cluster, IssuanceState, JoinTokens as WireJoinTokens, Node, NodeState, RootCa as WireRootCa,
    RootRotation,
};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{CaError, JoinTokens, RootCa};
use crate::raft_net::{ProposeError, Replica};

/// Nodes asked to renew (status ROTATE) at the same time at most (Swarm: 30).
pub const ROTATE_BATCH: usize = 30;

/// Why a rotation step failed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The CA material in the cluster object is unusable, or a key could not be made.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A rotation was asked for while one runs.
    #[error("a root CA rotation is already in progress; wait for it to finish")]
    InProgress,
    /// The cluster object has no root CA.
    #[error("the cluster object has no root CA")]
    NoRoot,
    /// Writing the next step failed.
    #[error("writing the root CA rotation failed: {0}")]
    Write(#[from] ProposeError),
}

fn root_of(cluster: &Cluster) -> Result<&WireRootCa, RotationError> {
    cluster.root_ca.as_ref().ok_or(RotationError::NoRoot)
}

fn current_root(ca: &WireRootCa) -> Result<RootCa, CaError> {
    RootCa::from_pem(
        &String::from_utf8_lossy(&ca.ca_cert),
        &String::from_utf8_lossy(&ca.ca_key),
    )
}

/// Step 1: a new root, cross-signed by `cluster`'s current root, to store as
/// `root_ca.rotation`. Refused while a rotation runs.
pub fn begin(cluster: &Cluster) -> Result<RootRotation, RotationError> {
    let ca = root_of(cluster)?;
    if ca.rotation.is_some() {
        return Err(RotationError::InProgress);
    }
    let (new, cross) = current_root(ca)?.rotate()?;
    Ok(RootRotation {
        ca_key: new.key_pem().into_bytes(),
        ca_cert: new.cert_pem().as_bytes().to_vec(),
        cross_signed_ca_cert: cross.into_bytes(),
    })
}

/// The CA that signs node certificates now: the new root while a rotation runs (its
/// certificates travel with the cross-signed intermediate), the cluster's root otherwise.
#[derive(Debug)]
pub struct Signer {
    root: RootCa,
    intermediate: Option<String>,
}

impl Signer {
    /// The signer of `cluster`.
    pub fn of(cluster: &Cluster) -> Result<Signer, RotationError> {
        let ca = root_of(cluster)?;
        Ok(match &ca.rotation {
            Some(rotation) => Signer {
                root: RootCa::from_pem(
                    &String::from_utf8_lossy(&rotation.ca_cert),
                    &String::from_utf8_lossy(&rotation.ca_key),
                )?,
                intermediate: Some(
                    String::from_utf8_lossy(&rotation.cross_signed_ca_cert).into_owned(),
                ),
            },
            None => Signer {
                root: current_root(ca)?,
                intermediate: None,
            },
        })
    }

    /// [`RootCa::sign_csr`], answering the certificate followed by the intermediate, if any.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<String, CaError> {
        let leaf = self
            .root
            .sign_csr(csr_pem, node_id, role, cluster_id, validity)?;
        Ok(match &self.intermediate {
            Some(cross) => format!("{}{cross}", with_newline(&leaf)),
            None => leaf,
        })
    }
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
}

/// The roots a node must trust now (PEM): the cluster's root, and during a rotation the new
/// root after it.
pub fn trust_bundle(cluster: &Cluster) -> String {
    let Some(ca) = cluster.root_ca.as_ref() else {
        return String::new();
    };
    let mut bundle = with_newline(&String::from_utf8_lossy(&ca.ca_cert));
    if let Some(rotation) = &ca.rotation {
        bundle.push_str(&with_newline(&String::from_utf8_lossy(&rotation.ca_cert)));
    }
    bundle
}

/// Step 3: `cluster`'s root CA after the swap — the new root with its key, new join tokens
/// for it, no rotation. `None` when no rotation runs.
pub fn swapped_root(cluster: &Cluster) -> Result<Option<WireRootCa>, RotationError> {
    let ca = root_of(cluster)?;
    let Some(rotation) = &ca.rotation else {
        return Ok(None);
    };
    let new = RootCa::from_pem(
        &String::from_utf8_lossy(&rotation.ca_cert),
        &String::from_utf8_lossy(&rotation.ca_key),
    )?;
    let tokens = JoinTokens::generate(&new)?;
    let hash: String = Sha256::digest(new.cert_der().as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(WireRootCa {
        ca_key: rotation.ca_key.clone(),
        ca_cert: rotation.ca_cert.clone(),
        ca_cert_hash: format!("sha256:{hash}"),
        join_tokens: Some(WireJoinTokens {
            worker: tokens.get(Role::Worker).to_string(),
            manager: tokens.get(Role::Manager).to_string(),
        }),
        rotation: None,
    }))
}

/// Where a rotation stands, as `berth swarm ca --rotate` shows it. Nodes that are DOWN are not
/// counted (they must rejoin if they missed the re-issue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Step 2: `reissued` of `nodes` live nodes hold a certificate of the new root.
    Reissuing {
        /// Live nodes with a certificate of the new root.
        reissued: usize,
        /// Live nodes.
        nodes: usize,
    },
    /// After the swap: `finished` of `nodes` live nodes renewed once more and trust only the
    /// new root.
    Finishing {
        /// Live nodes whose certificate comes without the intermediate.
        finished: usize,
        /// Live nodes holding a certificate of the (new) cluster root.
        nodes: usize,
    },
    /// No rotation runs and no live node holds a certificate with an intermediate.
    Done,
}

/// A node's stored certificate: the leaf and how many certificates the chain has.
fn chain_of(node: &Node) -> Option<(CertificateDer<'static>, usize)> {
    let pem = String::from_utf8_lossy(&node.certificate.as_ref()?.certificate).into_owned();
    let ders = cert_ders(&pem).ok()?;
    let len = ders.len();
    ders.into_iter().next().map(|leaf| (leaf, len))
}

fn is_live(node: &Node) -> bool {
    node.status
        .as_ref()
        .is_none_or(|s| s.state != NodeState::Down as i32)
}

fn is_marked(node: &Node) -> bool {
    node.certificate
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .is_some_and(|s| s.state == IssuanceState::Rotate as i32)
}

/// Which live nodes still have to renew: during a rotation, those without a certificate of
/// the new root; afterwards, those with a certificate of the cluster root that still carries
/// the intermediate. With `(done, pending)` counts for [`Progress`].
fn pending<'a>(cluster: &Cluster, nodes: &'a [Arc<Node>]) -> Option<(bool, Vec<&'a Node>, usize)> {
    let ca = cluster.root_ca.as_ref()?;
    let live = nodes.iter().map(Arc::as_ref).filter(|n| is_live(n));
    match &ca.rotation {
        Some(rotation) => {
            let new_root = first_cert_der(&String::from_utf8_lossy(&rotation.ca_cert)).ok()?;
            let (mut waiting, mut total) = (Vec::new(), 0);
            for node in live {
                total += 1;
                let signed = chain_of(node).is_some_and(|(leaf, _)| is_signed_by(&leaf, &new_root));
                if !signed {
                    waiting.push(node);
                }
            }
            Some((true, waiting, total))
        }
        None => {
            let root = first_cert_der(&String::from_utf8_lossy(&ca.ca_cert)).ok()?;
            let (mut waiting, mut total) = (Vec::new(), 0);
            for node in live {
                let Some((leaf, len)) = chain_of(node) else {
                    continue;
                };
                if !is_signed_by(&leaf, &root) {
                    // An old root's certificate: that node must rejoin.
                    continue;
                }
                total += 1;
                if len > 1 {
                    waiting.push(node);
                }
            }
            Some((false, waiting, total))
        }
    }
}

/// Where the rotation of `cluster` stands, given every node.
pub fn progress(cluster: &Cluster, nodes: &[Arc<Node>]) -> Progress {
    match pending(cluster, nodes) {
        Some((true, waiting, total)) => Progress::Reissuing {
            reissued: total - waiting.len(),
            nodes: total,
        },
        Some((false, waiting, total)) if !waiting.is_empty() => Progress::Finishing {
            finished: total - waiting.len(),
            nodes: total,
        },
        _ => Progress::Done,
    }
}

/// What the leader does next.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Nothing to do.
    Idle,
    /// Set these nodes' certificate status to ROTATE.
    Mark(Vec<String>),
    /// Every live node holds a certificate of the new root: swap roots.
    Swap,
}

fn plan(cluster: &Cluster, nodes: &[Arc<Node>]) -> Step {
    let Some((rotating, waiting, _)) = pending(cluster, nodes) else {
        return Step::Idle;
    };
    if rotating && waiting.is_empty() {
        return Step::Swap;
    }
    let outstanding = waiting.iter().filter(|n| is_marked(n)).count();
    let mark: Vec<String> = waiting
        .iter()
        .filter(|n| !is_marked(n))
        .take(ROTATE_BATCH.saturating_sub(outstanding))
        .map(|n| n.id.clone())
        .collect();
    if mark.is_empty() {
        Step::Idle
    } else {
        Step::Mark(mark)
    }
}

/// Runs the rotation on every manager, acting only while it leads, every `period` until
/// `cancel`.
pub async fn run(replica: Arc<Replica>, cancel: CancellationToken, period: Duration) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if !replica.is_leader() {
            continue;
        }
        if let Err(e) = reconcile_once(&replica).await {
            tracing::warn!(error = %e, "root CA rotation step failed; retrying");
        }
    }
}

/// One step of the rotation (see the module docs).
pub async fn reconcile_once(replica: &Replica) -> Result<(), RotationError> {
    let Some(cluster) = replica.store().list::<Cluster>().into_iter().next() else {
        return Ok(());
    };
    let nodes = replica.store().list::<Node>();
    match plan(&cluster, &nodes) {
        Step::Idle => Ok(()),
        Step::Mark(ids) => {
            for id in ids {
                let Some(seen) = nodes.iter().find(|n| n.id == id) else {
                    continue;
                };
                let seen_cert = seen.certificate.as_ref().map(|c| c.certificate.clone());
                replica
                    .update_node(&id, |n| {
                        let Some(cert) = n.certificate.as_mut() else {
                            return false;
                        };
                        // A renewal that landed meanwhile decides again next round.
                        if Some(&cert.certificate) != seen_cert.as_ref() {
                            return false;
                        }
                        let status = cert.status.get_or_insert_with(Default::default);
                        if status.state == IssuanceState::Rotate as i32 {
                            return false;
                        }
                        status.state = IssuanceState::Rotate as i32;
                        status.err.clear();
                        true
                    })
                    .await?;
                tracing::info!(node_id = %id, "root CA rotation: asked the node to renew");
            }
            Ok(())
        }
        Step::Swap => {
            let Some(next) = swapped_root(&cluster)? else {
                return Ok(());
            };
            let rotating = cluster
                .root_ca
                .as_ref()
                .and_then(|ca| ca.rotation.as_ref())
                .map(|r| r.ca_cert.clone());
            let updated = replica
                .update_cluster(&cluster.id, |c| {
                    let same = c
                        .root_ca
                        .as_ref()
                        .and_then(|ca| ca.rotation.as_ref())
                        .map(|r| r.ca_cert.clone());
                    if same.is_none() || same != rotating {
                        return false;
                    }
                    c.root_ca = Some(next.clone());
                    true
                })
                .await?;
            if updated.is_some() {
                tracing::info!(
                    cluster_id = %cluster.id,
                    "root CA rotation: every live node holds a certificate of the new root; it is now the cluster's root and the join tokens are new"
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
