//! `berth service create [OPTIONS] IMAGE [COMMAND] [ARG...]`: builds the spec from the flags
//! ([`super::spec`]), looks up secret and config ids, creates the service, prints its id and,
//! unless `-d`, shows its convergence ([`super::progress`]).

use berth_proto::v1::{
    CreateServiceRequest, ListConfigsRequest, ListSecretsRequest, ServiceSpec,
    list_configs_request, list_secrets_request,
};
use clap::Args;

use super::progress::{self, RenderMode, WatchOptions};
use super::spec::CreateFlags;
use super::{Daemon, status_error};

/// `berth service create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Spec flags.
    #[command(flatten)]
    pub flags: CreateFlags,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    pub quiet: bool,
    /// The image, then the command and its arguments (options end at the image, like Docker)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    pub command: Vec<String>,
}

/// Docker-style generated names (`adjective_surname`) for services created without `--name`.
const ADJECTIVES: [&str; 24] = [
    "admiring", "amazing", "bold", "brave", "busy", "clever", "eager", "elegant", "epic",
    "focused", "gallant", "happy", "jolly", "keen", "loving", "nifty", "peaceful", "quirky",
    "serene", "sharp", "stoic", "tender", "vibrant", "zealous",
];
const SURNAMES: [&str; 24] = [
    "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "fermi", "galileo",
    "gauss", "hopper", "hypatia", "kepler", "knuth", "lamport", "liskov", "lovelace", "newton",
    "noether", "pascal", "ritchie", "shannon", "thompson", "turing",
];

/// A random `adjective_surname` name, drawn from a fresh random id (base 36).
fn generated_name() -> anyhow::Result<String> {
    let id = berth_proto::ids::try_new_id()
        .map_err(|e| anyhow::anyhow!("generating a service name: {e}"))?;
    let number = |digits: &str| {
        digits
            .chars()
            .filter_map(|c| c.to_digit(36))
            .fold(0u64, |n, d| n.wrapping_mul(36).wrapping_add(u64::from(d)))
    };
    let (a, b) = id.split_at(id.len() / 2);
    let pick = |n: u64, len: usize| usize::try_from(n % len as u64).unwrap_or(0);
    Ok(format!(
        "{}_{}",
        ADJECTIVES[pick(number(a), ADJECTIVES.len())],
        SURNAMES[pick(number(b), SURNAMES.len())]
    ))
}

/// Fills in the ids of the secrets and configs the spec names by name only (references that
/// already carry an id keep it: `service update` leaves existing ones alone).
pub(super) async fn resolve_references(
    daemon: &mut Daemon,
    spec: &mut ServiceSpec,
) -> anyhow::Result<()> {
    let Some(container) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return Ok(());
    };
    if container.secrets.iter().any(|s| s.secret_id.is_empty()) {
        let names = container
            .secrets
            .iter()
            .map(|s| s.secret_name.clone())
            .collect();
        let found = daemon
            .control
            .list_secrets(ListSecretsRequest {
                filters: Some(list_secrets_request::Filters {
                    names,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("looking up --secret: {}", s.message()))?
            .into_inner()
            .secrets;
        for reference in container
            .secrets
            .iter_mut()
            .filter(|r| r.secret_id.is_empty())
        {
            let secret = found
                .iter()
                .find(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|s| s.annotations.as_ref())
                        .is_some_and(|a| a.name == reference.secret_name)
                })
                .ok_or_else(|| anyhow::anyhow!("secret not found: {}", reference.secret_name))?;
            reference.secret_id = secret.id.clone();
        }
    }
    if container.configs.iter().any(|c| c.config_id.is_empty()) {
        let names = container
            .configs
            .iter()
            .map(|c| c.config_name.clone())
            .collect();
        let found = daemon
            .control
            .list_configs(ListConfigsRequest {
                filters: Some(list_configs_request::Filters {
                    names,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| anyhow::anyhow!("looking up --config: {}", s.message()))?
            .into_inner()
            .configs;
        for reference in container
            .configs
            .iter_mut()
            .filter(|r| r.config_id.is_empty())
        {
            let config = found
                .iter()
                .find(|c| {
                    c.spec
                        .as_ref()
                        .and_then(|s| s.annotations.as_ref())
                        .is_some_and(|a| a.name == reference.config_name)
                })
                .ok_or_else(|| anyhow::anyhow!("config not found: {}", reference.config_name))?;
            reference.config_id = config.id.clone();
        }
    }
    Ok(())
}

/// `berth service create`.
pub async fn create(daemon: &mut Daemon, args: CreateArgs) -> anyhow::Result<()> {
    let (image, command) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("an image is required"))?;
    let name = match &args.flags.name {
        Some(name) => name.clone(),
        None => generated_name()?,
    };
    let mut spec = args
        .flags
        .to_spec(&name, image, command, &|key| std::env::var(key).ok())?;
    resolve_references(daemon, &mut spec).await?;
    let service = daemon
        .control
        .create_service(CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner()
        .service
        .ok_or_else(|| anyhow::anyhow!("the manager answered without the service"))?;
    println!("{}", service.id);
    if args.detach {
        return Ok(());
    }
    progress::watch(
        daemon,
        &service.id,
        RenderMode::for_stdout(args.quiet),
        WatchOptions::default(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }

    #[test]
    fn options_end_at_the_image() {
        let cli = Cli::try_parse_from([
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "busybox",
            "sh",
            "-c",
            "echo --name x",
            "--replicas",
            "-d",
        ])
        .unwrap();
        assert!(cli.args.detach);
        assert_eq!(cli.args.flags.name.as_deref(), Some("web"));
        assert_eq!(cli.args.flags.common.replicas, Some(2));
        assert_eq!(
            cli.args.command,
            ["busybox", "sh", "-c", "echo --name x", "--replicas", "-d"]
        );
        assert!(Cli::try_parse_from(["create", "--name", "web"]).is_err());
    }

    #[test]
    fn generated_names_are_valid_service_names() {
        for _ in 0..20 {
            let name = generated_name().unwrap();
            berth_proto::naming::validate_service_name(&name).unwrap();
            assert!(name.contains('_'), "{name}");
        }
    }
}
