//! `berth stack rm STACK...` (`down`): removes every service, secret, config and network
//! labelled with the stack's namespace, in that order (as Docker does). Networks may still be
//! held for a moment by the tasks of the services just removed, so their removal is retried
//! for a while. Kinds the managers do not offer yet are skipped.

use berth_proto::v1::{
    ListConfigsRequest, ListNetworksRequest, ListSecretsRequest, RemoveConfigRequest,
    RemoveSecretRequest, RemoveServiceRequest, list_configs_request, list_networks_request,
    list_secrets_request,
};
use clap::Args;

use super::convert::NAMESPACE_LABEL;
use super::deploy::remove_network_patiently;
use crate::commands::service::{list_services, service_name};
use crate::commands::{Daemon, status_error};

/// `berth stack rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Stacks to remove
    #[arg(required = true, value_name = "STACK")]
    pub stacks: Vec<String>,
}

/// A list answer, or nothing when the managers do not offer that kind yet.
fn offered<T>(answer: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<Option<T>> {
    match answer {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(status_error(s)),
    }
}

fn label(stack: &str) -> std::collections::HashMap<String, String> {
    [(NAMESPACE_LABEL.to_string(), stack.to_string())].into()
}

/// Removes one stack; returns the errors met (it goes on after one).
async fn remove_stack(daemon: &mut Daemon, stack: &str) -> anyhow::Result<Vec<String>> {
    let mut errors = Vec::new();
    let services: Vec<_> = list_services(daemon)
        .await?
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.annotations.as_ref())
                .and_then(|a| a.labels.get(NAMESPACE_LABEL))
                .is_some_and(|ns| ns == stack)
        })
        .collect();
    let secrets = offered(
        daemon
            .control
            .list_secrets(ListSecretsRequest {
                filters: Some(list_secrets_request::Filters {
                    labels: label(stack),
                    ..Default::default()
                }),
            })
            .await,
    )?
    .map(|r| r.secrets)
    .unwrap_or_default();
    let configs = offered(
        daemon
            .control
            .list_configs(ListConfigsRequest {
                filters: Some(list_configs_request::Filters {
                    labels: label(stack),
                    ..Default::default()
                }),
            })
            .await,
    )?
    .map(|r| r.configs)
    .unwrap_or_default();
    let networks = offered(
        daemon
            .control
            .list_networks(ListNetworksRequest {
                filters: Some(list_networks_request::Filters {
                    labels: label(stack),
                    ..Default::default()
                }),
            })
            .await,
    )?
    .map(|r| r.networks)
    .unwrap_or_default();
    if services.is_empty() && secrets.is_empty() && configs.is_empty() && networks.is_empty() {
        eprintln!("Nothing found in stack: {stack}");
        return Ok(errors);
    }
    let name_of =
        |a: Option<&berth_proto::v1::Annotations>| a.map_or(String::new(), |a| a.name.clone());
    for s in &services {
        let name = service_name(s).to_string();
        println!("Removing service {name}");
        if let Err(e) = daemon
            .control
            .remove_service(RemoveServiceRequest {
                service_id: s.id.clone(),
            })
            .await
        {
            errors.push(format!("failed to remove service {name}: {}", e.message()));
        }
    }
    for s in &secrets {
        let name = name_of(s.spec.as_ref().and_then(|sp| sp.annotations.as_ref()));
        println!("Removing secret {name}");
        if let Err(e) = daemon
            .control
            .remove_secret(RemoveSecretRequest {
                secret_id: s.id.clone(),
            })
            .await
        {
            errors.push(format!("failed to remove secret {name}: {}", e.message()));
        }
    }
    for c in &configs {
        let name = name_of(c.spec.as_ref().and_then(|sp| sp.annotations.as_ref()));
        println!("Removing config {name}");
        if let Err(e) = daemon
            .control
            .remove_config(RemoveConfigRequest {
                config_id: c.id.clone(),
            })
            .await
        {
            errors.push(format!("failed to remove config {name}: {}", e.message()));
        }
    }
    for n in &networks {
        let name = name_of(n.spec.as_ref().and_then(|sp| sp.annotations.as_ref()));
        println!("Removing network {name}");
        if let Err(e) = remove_network_patiently(daemon, &n.id).await {
            errors.push(format!("failed to remove network {name}: {}", e.message()));
        }
    }
    Ok(errors)
}

/// `berth stack rm`.
pub async fn rm(daemon: &mut Daemon, args: RmArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for stack in &args.stacks {
        errors.extend(remove_stack(daemon, stack).await?);
    }
    crate::commands::service::joined_errors(errors)
}
