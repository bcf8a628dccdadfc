//! Secret calls: create, get, list, update (labels only), remove, rotate.
//!
//! - Create: the name follows Swarm's rule ([`berth_proto::naming::validate_secret_name`]),
//!   the data is 1 byte to less than 500 KiB. The data is sealed with the cluster's data key
//!   ([`crate::secrets`]) before the write is proposed: the stored object has an empty
//!   `spec.data` and the sealed payload in `sealed`.
//! - Answers never carry the data, sealed or not.
//! - Update changes labels only; remove is refused while a service's spec uses the secret
//!   (naming the services); rotate is [`super::payload::rotate`].

use berth_proto::ids;
use berth_proto::naming::validate_secret_name;
use berth_proto::v1::{
    Annotations, CreateSecretRequest, ListSecretsRequest, RotateSecretRequest, Secret, SecretSpec,
    UpdateSecretRequest,
};

use super::payload::{self, Payload, Rotated};
use super::status::ControlError;
use crate::raft_net::Replica;
use crate::secrets::{Keyring, SecretsError};
use crate::store::{ObjectKind, StoreActions, StoreObject};

/// Swarm's limit: secret data must be less than 500 KiB.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

fn key_error(e: SecretsError) -> ControlError {
    match e {
        SecretsError::NoKey => ControlError::FailedPrecondition(e.to_string()),
        other => ControlError::Internal(other.to_string()),
    }
}

/// The secret as answers show it: without data.
fn redacted(mut s: Secret) -> Secret {
    s.sealed = None;
    if let Some(spec) = s.spec.as_mut() {
        spec.data.clear();
    }
    s
}

fn sealed_secret(
    keyring: &Keyring,
    id: &str,
    annotations: Annotations,
    data: &[u8],
) -> Result<Secret, ControlError> {
    let sealed = keyring.seal(id, data).map_err(key_error)?;
    Ok(Secret {
        id: id.to_owned(),
        meta: None,
        spec: Some(SecretSpec {
            annotations: Some(annotations),
            data: Vec::new(),
        }),
        sealed: Some(sealed),
    })
}

/// Creates a secret; its name must be free.
pub async fn create(
    replica: &Replica,
    keyring: &Keyring,
    req: CreateSecretRequest,
) -> Result<Secret, ControlError> {
    let spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("secret spec is required".into()))?;
    let annotations = spec.annotations.unwrap_or_default();
    validate_secret_name(&annotations.name)
        .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
    payload::check_size("secret", spec.data.len(), MAX_SECRET_SIZE)?;
    let id = ids::try_new_id().map_err(|e| ControlError::Internal(e.to_string()))?;
    let secret = sealed_secret(keyring, &id, annotations, &spec.data)?;
    let mut batch = StoreActions::new();
    batch.create(secret);
    replica.propose_and_wait(&batch).await?;
    get(replica, &id)
}

/// The secret with this id, without its data.
pub fn get(replica: &Replica, id: &str) -> Result<Secret, ControlError> {
    replica
        .store()
        .get::<Secret>(id)
        .map(|s| redacted((*s).clone()))
        .ok_or_else(|| ControlError::not_found("secret", id))
}

/// The secrets matching the filters, without their data, sorted by name.
pub fn list(replica: &Replica, req: ListSecretsRequest) -> Vec<Secret> {
    let f = req.filters.unwrap_or_default();
    replica
        .store()
        .view(|t| payload::list::<Secret>(t, &f.names, &f.name_prefixes, &f.id_prefixes, &f.labels))
        .into_iter()
        .map(redacted)
        .collect()
}

/// Changes a secret's labels; any other change is refused.
pub async fn update(
    replica: &Replica,
    keyring: &Keyring,
    req: UpdateSecretRequest,
) -> Result<Secret, ControlError> {
    let stored = replica
        .store()
        .get::<Secret>(&req.secret_id)
        .ok_or_else(|| ControlError::not_found("secret", &req.secret_id))?;
    let spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("secret spec is required".into()))?;
    let annotations = spec.annotations.unwrap_or_default();
    let refused = || {
        ControlError::InvalidArgument(
            "only updates to Labels are allowed (secrets are immutable; use `berth secret rotate` for new content)"
                .into(),
        )
    };
    if annotations.name != stored.object_name() {
        return Err(refused());
    }
    if !spec.data.is_empty() {
        let current = stored
            .sealed
            .as_ref()
            .map(|s| keyring.open_sealed(&stored.id, s))
            .transpose()
            .map_err(key_error)?
            .unwrap_or_default();
        if current != spec.data {
            return Err(refused());
        }
    }
    let mut secret = (*stored).clone();
    secret.annotations_mut().labels = annotations.labels;
    secret.meta_mut().version = req.secret_version;
    let mut batch = StoreActions::new();
    batch.update(secret);
    replica.propose_and_wait(&batch).await?;
    get(replica, &req.secret_id)
}

/// Removes a secret no service uses.
pub async fn remove(replica: &Replica, id: &str) -> Result<(), ControlError> {
    replica.store().view(|t| {
        let secret = t
            .get::<Secret>(id)
            .ok_or_else(|| ControlError::not_found("secret", id))?;
        payload::check_unused(t, &*secret)
    })?;
    let mut batch = StoreActions::new();
    batch.remove(ObjectKind::Secret, id);
    replica.propose_and_wait(&batch).await?;
    Ok(())
}

/// Rotates a secret (see [`super::payload`]); returns the new version, without data, and the
/// services moved onto it.
pub async fn rotate(
    replica: &Replica,
    keyring: &Keyring,
    req: RotateSecretRequest,
) -> Result<(Secret, Vec<String>), ControlError> {
    payload::check_size("secret", req.data.len(), MAX_SECRET_SIZE)?;
    // Fail before proposing anything when the key is missing.
    keyring.require().map_err(key_error)?;
    let Rotated { id, service_ids } =
        payload::rotate::<Secret>(replica, &req.secret_id, req.secret_version, |id, a| {
            sealed_secret(keyring, id, a, &req.data)
        })
        .await?;
    Ok((get(replica, &id)?, service_ids))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use berth_proto::v1::{
        ConfigReference, ConfigSpec, ContainerSpec, CreateServiceRequest, ServiceSpec, TaskSpec,
    };

    use super::*;
    use crate::control::{configs, services};
    use crate::manager::{InitOptions, Manager, ManagerConfig};

    fn annotations(name: &str) -> Option<Annotations> {
        Some(Annotations {
            name: name.into(),
            ..Default::default()
        })
    }

    /// Base64 at the three alignments a value can take inside a longer encoded stream.
    fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut all = vec![value.to_vec()];
        for k in 0..3usize {
            let mut bytes = vec![0u8; k];
            bytes.extend_from_slice(value);
            let mut text = Vec::new();
            for c in bytes.chunks(3) {
                let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..4 {
                    text.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
                }
            }
            let from = if k > 0 { 4 } else { 0 };
            all.push(text[from..4 * (bytes.len() / 3)].to_vec());
        }
        all
    }

    /// Files under `dir` holding `value` in clear or base64.
    fn files_holding(dir: &Path, value: &[u8]) -> Vec<String> {
        let needles = encodings(value);
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(bytes) = std::fs::read(&path)
                    && needles
                        .iter()
                        .any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
                {
                    found.push(path.display().to_string());
                }
            }
        }
        found
    }

    fn uses(spec: Option<&ServiceSpec>) -> Vec<String> {
        spec.and_then(|s| s.task.as_ref())
            .and_then(|t| t.container.as_ref())
            .map(|c| c.secrets.iter().map(|r| r.secret_id.clone()).collect())
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_are_sealed_in_log_and_snapshot_and_rotation_moves_services()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let node_id = ids::new_id();
        let cfg = ManagerConfig::new(dir.path(), &node_id, "127.0.0.1:1");
        let (manager, _) = Manager::init_cluster(cfg, InitOptions::default()).await?;
        let replica = manager.replica();
        let keyring = Keyring::open(dir.path())?;
        assert!(keyring.key().is_some(), "init wrote the data key");
        let plain = format!("sealed-secret-{}-{}", std::process::id(), ids::new_id());
        let clear = format!("clear-config-{}-{}", std::process::id(), ids::new_id());

        let secret = create(
            &replica,
            &keyring,
            CreateSecretRequest {
                spec: Some(SecretSpec {
                    annotations: annotations("pw"),
                    data: plain.clone().into_bytes(),
                }),
            },
        )
        .await?;
        assert!(secret.sealed.is_none() && secret.spec.as_ref().unwrap().data.is_empty());
        let stored = replica.store().get::<Secret>(&secret.id).unwrap();
        assert!(
            stored.spec.as_ref().unwrap().data.is_empty(),
            "clear data in the store"
        );
        let sealed = stored.sealed.as_ref().expect("sealed in the store");
        assert_eq!(keyring.open_sealed(&secret.id, sealed)?, plain.as_bytes());
        assert!(
            list(&replica, ListSecretsRequest::default())
                .iter()
                .all(|s| s.sealed.is_none())
        );
        let config = configs::create(
            &replica,
            berth_proto::v1::CreateConfigRequest {
                spec: Some(ConfigSpec {
                    annotations: annotations("cf"),
                    data: clear.clone().into_bytes(),
                }),
            },
        )
        .await?;

        let spec = ServiceSpec {
            annotations: annotations("web"),
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    secrets: vec![berth_proto::v1::SecretReference {
                        secret_id: secret.id.clone(),
                        secret_name: "pw".into(),
                        target: None,
                    }],
                    configs: vec![ConfigReference {
                        config_id: config.id.clone(),
                        config_name: "cf".into(),
                        target: None,
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let service = services::create(&replica, CreateServiceRequest { spec: Some(spec) }).await?;

        // In use: refused, naming the service.
        let err = remove(&replica, &secret.id).await.unwrap_err().to_string();
        assert!(err.contains("in use") && err.contains("web"), "{err}");
        let err = configs::remove(&replica, &config.id)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("web"), "{err}");
        // Labels may change, data may not.
        let version = get(&replica, &secret.id)?.meta.unwrap().version;
        let mut labels = Annotations {
            name: "pw".into(),
            ..Default::default()
        };
        labels.labels.insert("team".into(), "a".into());
        let req = |data: &str, version| UpdateSecretRequest {
            secret_id: secret.id.clone(),
            secret_version: version,
            spec: Some(SecretSpec {
                annotations: Some(labels.clone()),
                data: data.as_bytes().to_vec(),
            }),
        };
        let err = update(&replica, &keyring, req("other", version))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only updates to Labels"), "{err}");
        let updated = update(&replica, &keyring, req(&plain, version)).await?;
        assert_eq!(
            updated.spec.unwrap().annotations.unwrap().labels["team"],
            "a"
        );

        // Rotation: new id under the name, old kept for the previous spec, service moved.
        let version = get(&replica, &secret.id)?.meta.unwrap().version;
        let stale = rotate(
            &replica,
            &keyring,
            RotateSecretRequest {
                secret_id: secret.id.clone(),
                secret_version: version - 1,
                data: b"v2".to_vec(),
            },
        )
        .await;
        assert!(stale.is_err(), "a stale rotation is refused");
        let (v2, moved) = rotate(
            &replica,
            &keyring,
            RotateSecretRequest {
                secret_id: secret.id.clone(),
                secret_version: version,
                data: b"second".to_vec(),
            },
        )
        .await?;
        assert_eq!(moved, [service.id.as_str()]);
        assert_eq!(v2.object_name(), "pw");
        let l = &v2.annotations().unwrap().labels;
        assert_eq!(
            (l["berth.secret.version"].as_str(), l["team"].as_str()),
            ("2", "a")
        );
        assert_eq!(get(&replica, &secret.id)?.object_name(), "pw.v1");
        let svc = services::get(&replica, &service.id)?;
        assert_eq!(uses(svc.spec.as_ref()), [v2.id.as_str()]);
        assert_eq!(uses(svc.previous_spec.as_ref()), [secret.id.as_str()]);
        let sealed = replica
            .store()
            .get::<Secret>(&v2.id)
            .unwrap()
            .sealed
            .clone()
            .unwrap();
        assert_eq!(keyring.open_sealed(&v2.id, &sealed)?, b"second");

        // A second rotation: v1 is used by nothing any more and goes; v2 stays as pw.v2.
        let version = get(&replica, &v2.id)?.meta.unwrap().version;
        let (v3, _) = rotate(
            &replica,
            &keyring,
            RotateSecretRequest {
                secret_id: v2.id.clone(),
                secret_version: version,
                data: b"third".to_vec(),
            },
        )
        .await?;
        assert!(get(&replica, &secret.id).is_err(), "v1 was not collected");
        assert_eq!(get(&replica, &v2.id)?.object_name(), "pw.v2");
        assert_eq!(
            v3.annotations().unwrap().labels["berth.secret.version"],
            "3"
        );

        // The log and a snapshot hold sealed secrets only; the clear config is found there.
        replica.raft()?.snapshot_now().await?;
        let snapshot = dir.path().join("raft/snapshot/current");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !snapshot.is_file() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(snapshot.is_file(), "no snapshot was written");
        let raft = dir.path().join("raft");
        let found = files_holding(&raft, clear.as_bytes());
        assert!(
            found.iter().any(|f| f.ends_with("snapshot/current")) && found.len() >= 2,
            "the scan does not see the clear config in the log and snapshot: {found:?}"
        );
        assert!(
            files_holding(&raft, plain.as_bytes()).is_empty(),
            "clear secret on disk"
        );
        manager.shutdown().await?;
        Ok(())
    }
}
