//! `berth service rm SERVICE...`: removes each service (its tasks are shut down by the
//! managers), printing each name as given; failures are reported together at the end.

use berth_proto::v1::RemoveServiceRequest;
use clap::Args;

use super::{Daemon, find, joined_errors, list_services};

/// `berth service rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Services (id, name or id prefix)
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// `berth service rm`.
pub async fn rm(daemon: &mut Daemon, args: RmArgs) -> anyhow::Result<()> {
    let services = list_services(daemon).await?;
    let mut errors = Vec::new();
    for name in &args.services {
        let id = match find(&services, name) {
            Ok(s) => s.id.clone(),
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match daemon
            .control
            .remove_service(RemoveServiceRequest { service_id: id })
            .await
        {
            Ok(_) => println!("{name}"),
            Err(status) if status.code() == tonic::Code::NotFound => {
                errors.push(format!("no such service: {name}"));
            }
            Err(status) => errors.push(format!("{name}: {}", status.message())),
        }
    }
    joined_errors(errors)
}
