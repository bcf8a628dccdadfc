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
