//! Config calls: create, get, list, update (labels only), remove, rotate.
//!
//! Configs are not secret: their data is stored as given and returned by get and list (like
//! Docker's `Spec.Data`). Names follow the secret rule; data is 1 byte to less than 1000 KiB.
//! Remove is refused while a service's spec uses the config; rotate is
//! [`super::payload::rotate`].

use berth_proto::ids;
use berth_proto::naming::validate_config_name;
use berth_proto::v1::{
    Config, ConfigSpec, CreateConfigRequest, ListConfigsRequest, RotateConfigRequest,
    UpdateConfigRequest,
};

use super::payload::{self, Payload, Rotated};
use super::status::ControlError;
use crate::raft_net::Replica;
use crate::store::{ObjectKind, StoreActions, StoreObject};

/// Swarm's limit: config data must be less than 1000 KiB.
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;

/// Creates a config; its name must be free.
pub async fn create(replica: &Replica, req: CreateConfigRequest) -> Result<Config, ControlError> {
    let spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("config spec is required".into()))?;
    let name = spec.annotations.as_ref().map_or("", |a| a.name.as_str());
    validate_config_name(name).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
    payload::check_size("config", spec.data.len(), MAX_CONFIG_SIZE)?;
    let id = ids::try_new_id().map_err(|e| ControlError::Internal(e.to_string()))?;
    let mut batch = StoreActions::new();
    batch.create(Config {
        id: id.clone(),
        meta: None,
        spec: Some(spec),
    });
    replica.propose_and_wait(&batch).await?;
    get(replica, &id)
}

/// The config with this id.
pub fn get(replica: &Replica, id: &str) -> Result<Config, ControlError> {
    replica
        .store()
        .get::<Config>(id)
        .map(|c| (*c).clone())
        .ok_or_else(|| ControlError::not_found("config", id))
}

/// The configs matching the filters, sorted by name.
pub fn list(replica: &Replica, req: ListConfigsRequest) -> Vec<Config> {
    let f = req.filters.unwrap_or_default();
    replica
        .store()
        .view(|t| payload::list::<Config>(t, &f.names, &f.name_prefixes, &f.id_prefixes, &f.labels))
}

/// Changes a config's labels; any other change is refused.
pub async fn update(replica: &Replica, req: UpdateConfigRequest) -> Result<Config, ControlError> {
    let stored = replica
        .store()
        .get::<Config>(&req.config_id)
        .ok_or_else(|| ControlError::not_found("config", &req.config_id))?;
    let spec = req
        .spec
        .ok_or_else(|| ControlError::InvalidArgument("config spec is required".into()))?;
    let annotations = spec.annotations.unwrap_or_default();
    let stored_data = stored.spec.as_ref().map_or(&[][..], |s| s.data.as_slice());
    if annotations.name != stored.object_name()
        || (!spec.data.is_empty() && spec.data != stored_data)
    {
        return Err(ControlError::InvalidArgument(
            "only updates to Labels are allowed (configs are immutable; use `berth config rotate` for new content)"
                .into(),
        ));
    }
    let mut config = (*stored).clone();
    config.annotations_mut().labels = annotations.labels;
    config.meta_mut().version = req.config_version;
    let mut batch = StoreActions::new();
    batch.update(config);
    replica.propose_and_wait(&batch).await?;
    get(replica, &req.config_id)
}

/// Removes a config no service uses.
pub async fn remove(replica: &Replica, id: &str) -> Result<(), ControlError> {
    replica.store().view(|t| {
        let config = t
            .get::<Config>(id)
            .ok_or_else(|| ControlError::not_found("config", id))?;
        payload::check_unused(t, &*config)
    })?;
    let mut batch = StoreActions::new();
    batch.remove(ObjectKind::Config, id);
    replica.propose_and_wait(&batch).await?;
    Ok(())
}

/// Rotates a config (see [`super::payload`]); returns the new version and the services moved
/// onto it.
pub async fn rotate(
    replica: &Replica,
    req: RotateConfigRequest,
) -> Result<(Config, Vec<String>), ControlError> {
    payload::check_size("config", req.data.len(), MAX_CONFIG_SIZE)?;
    let Rotated { id, service_ids } =
        payload::rotate::<Config>(replica, &req.config_id, req.config_version, |id, a| {
            Ok(Config {
                id: id.to_owned(),
                meta: None,
                spec: Some(ConfigSpec {
                    annotations: Some(a),
                    data: req.data.clone(),
                }),
            })
        })
        .await?;
    Ok((get(replica, &id)?, service_ids))
}
