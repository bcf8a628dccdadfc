//! `berth service scale SERVICE=REPLICAS...`: sets the replica count of replicated services
//! (Docker's messages, errors collected per service) and, unless `-d`, shows each one's
//! convergence.

use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    ListTasksRequest, ReplicatedService, UpdateServiceRequest, list_tasks_request::Filters,
};
use clap::Args;

use super::progress::{self, RenderMode, Tracker, WatchOptions};
use super::{Daemon, joined_errors, replicas, resolve, status_error};

/// Attempts when the service changed between reading and writing it.
const ATTEMPTS: usize = 3;

/// `berth service scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Services and their replica counts
    #[arg(required = true, value_name = "SERVICE=REPLICAS", value_parser = parse_scale)]
    pub services: Vec<(String, u64)>,
}

/// `web=5` → ("web", 5), with Docker's messages.
pub fn parse_scale(text: &str) -> Result<(String, u64), String> {
    let Some((name, count)) = text.split_once('=') else {
        return Err(format!("invalid scale specifier '{text}'"));
    };
    if name.is_empty() {
        return Err(format!("invalid scale specifier '{text}'"));
    }
    let count = count
        .parse::<u64>()
        .map_err(|e| format!("invalid replicas value {count}: {e}"))?;
    Ok((name.to_string(), count))
}

/// Sets the replica count of one service; returns its id and the tasks that had already
/// ended (history for the progress).
async fn scale_one(
    daemon: &mut Daemon,
    name: &str,
    count: u64,
) -> anyhow::Result<(String, std::collections::HashSet<String>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let service = resolve(daemon, name).await?;
        if replicas(&service).is_none() {
            anyhow::bail!("{name}: scale can only be used with replicated mode");
        }
        let tasks = daemon
            .control
            .list_tasks(ListTasksRequest {
                filters: Some(Filters {
                    service_ids: vec![service.id.clone()],
                    ..Default::default()
                }),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .tasks;
        let mut spec = service.spec.clone().unwrap_or_default();
        spec.mode = Some(Mode::Replicated(ReplicatedService { replicas: count }));
        let answer = daemon
            .control
            .update_service(UpdateServiceRequest {
                service_id: service.id.clone(),
                service_version: service.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
                rollback: false,
            })
            .await;
        match answer {
            Ok(_) => return Ok((service.id, Tracker::ended(&tasks))),
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && status.message().contains("out of sequence")
                    && attempt < ATTEMPTS => {}
            Err(status) => return Err(anyhow::anyhow!("{name}: {}", status.message())),
        }
    }
}

/// `berth service scale`.
pub async fn scale(daemon: &mut Daemon, args: ScaleArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    let mut scaled = Vec::new();
    for (name, count) in &args.services {
        match scale_one(daemon, name, *count).await {
            Ok((id, ended_before)) => {
                println!("{name} scaled to {count}");
                scaled.push((id, ended_before));
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !args.detach {
        for (id, ended_before) in scaled {
            let options = WatchOptions {
                up_to_date: false,
                ended_before,
            };
            if let Err(e) =
                progress::watch(daemon, &id, RenderMode::for_stdout(false), options).await
            {
                errors.push(format!("{e:#}"));
            }
        }
    }
    joined_errors(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifiers_parse_like_dockers() {
        assert_eq!(parse_scale("web=5").unwrap(), ("web".to_string(), 5));
        assert_eq!(parse_scale("web=0").unwrap(), ("web".to_string(), 0));
        assert_eq!(
            parse_scale("web").unwrap_err(),
            "invalid scale specifier 'web'"
        );
        assert_eq!(
            parse_scale("=3").unwrap_err(),
            "invalid scale specifier '=3'"
        );
        let err = parse_scale("web=-1").unwrap_err();
        assert!(err.starts_with("invalid replicas value -1: "), "{err}");
        assert!(parse_scale("web=x").is_err());
    }
}
