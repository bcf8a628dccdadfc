//! `berth stack deploy|ls|services|ps|rm|config`: Compose files as stacks, like
//! `docker stack`.
//!
//! A stack is the set of services, networks, secrets and configs labelled
//! `com.docker.stack.namespace=NAME`; services are named `NAME_SERVICE`. Reading a stack from
//! files is pure and happens first ([`load`]: [`yaml`] → [`interpolate`] → [`merge`] →
//! [`convert`]/[`service`], values through [`read`]); only a stack without errors reaches
//! [`deploy`], which checks the cluster before its first write and undoes its own writes if a
//! later one fails. [`list`] has `ls`, `services` and `ps`; [`rm`] removes a stack.

pub mod convert;
pub mod deploy;
pub mod interpolate;
pub mod list;
pub mod load;
pub mod merge;
pub mod read;
pub mod rm;
pub mod service;
pub mod yaml;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Daemon;

/// `berth stack` subcommands.
#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// Deploy a new stack or update an existing stack
    #[command(visible_alias = "up")]
    Deploy(deploy::DeployArgs),
    /// List stacks
    #[command(visible_alias = "list")]
    Ls(list::LsArgs),
    /// List the services in the stack
    Services(list::ServicesArgs),
    /// List the tasks in the stack
    Ps(list::PsArgs),
    /// Remove one or more stacks
    #[command(visible_aliases = ["remove", "down"])]
    Rm(rm::RmArgs),
    /// Outputs the final config file, after doing merges and interpolations
    Config(ConfigArgs),
}

/// `berth stack config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Path to a Compose file, or "-" to read from stdin
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "strings",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Skip interpolation and output only merged config
    #[arg(long)]
    pub skip_interpolation: bool,
}

/// Runs one `berth stack` command.
pub async fn run(daemon: &mut Daemon, command: StackCommand) -> anyhow::Result<()> {
    match command {
        StackCommand::Deploy(args) => deploy::deploy(daemon, args).await,
        StackCommand::Ls(args) => list::ls(daemon, args).await,
        StackCommand::Services(args) => list::services(daemon, args).await,
        StackCommand::Ps(args) => list::ps(daemon, args).await,
        StackCommand::Rm(args) => rm::rm(daemon, args).await,
        StackCommand::Config(args) => config(&args),
    }
}

/// `berth stack config`: the merged (and, unless skipped, interpolated and checked) file on
/// stdout. Needs no daemon.
pub fn config(args: &ConfigArgs) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let text = config_text(args, &env)?;
    print!("{text}");
    Ok(())
}

/// What `berth stack config` prints.
pub fn config_text(
    args: &ConfigArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<String> {
    if args.skip_interpolation {
        let loaded = load::load_raw(&args.files)?;
        return yaml::to_yaml(&loaded);
    }
    let loaded = load::load(&args.files, env)?;
    // The same checks as deploy (a placeholder stack name only shapes object names).
    let (_, warnings) = load::plan_from(&loaded, "stack", env)?;
    load::print_warnings(&warnings);
    yaml::to_yaml(&loaded.root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: StackCommand,
    }

    #[test]
    fn commands_parse_like_dockers() {
        let cli = Cli::try_parse_from([
            "stack", "up", "-c", "a.yml", "-c", "b.yml", "--prune", "app",
        ])
        .unwrap();
        let StackCommand::Deploy(args) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(args.files, [PathBuf::from("a.yml"), PathBuf::from("b.yml")]);
        assert!(args.prune && args.detach && args.name == "app");
        let cli =
            Cli::try_parse_from(["stack", "deploy", "--detach=false", "-c", "a.yml", "x"]).unwrap();
        assert!(matches!(cli.command, StackCommand::Deploy(a) if !a.detach));
        assert!(
            Cli::try_parse_from(["stack", "deploy", "app"]).is_err(),
            "-c is required"
        );
        for down in ["rm", "remove", "down"] {
            let cli = Cli::try_parse_from(["stack", down, "a", "b"]).unwrap();
            assert!(matches!(cli.command, StackCommand::Rm(a) if a.stacks == ["a", "b"]));
        }
        assert!(matches!(
            Cli::try_parse_from(["stack", "ls"]).unwrap().command,
            StackCommand::Ls(_)
        ));
    }

    #[test]
    fn the_example_stacks_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let files = [dir.join("webapp.yml"), dir.join("webapp.prod.yml")];
        let (stack, warnings) = load::plan(&files, "webapp", &|_| None).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let names: Vec<_> = stack.services.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(names, ["web", "api", "worker"]);
        let web = &stack.services[0].spec;
        assert_eq!(
            web.mode,
            Some(berth_proto::v1::service_spec::Mode::Replicated(
                berth_proto::v1::ReplicatedService { replicas: 4 }
            )),
            "the override file wins"
        );
        let api = stack.services[1].spec.task.as_ref().unwrap();
        let env = &api.container.as_ref().unwrap().env;
        assert_eq!(env, &["GREETING=hello", "LOG_LEVEL=warn"]);
        assert_eq!(stack.secrets[0].data, b"change-me\n");
        assert_eq!(stack.networks.len(), 2);
    }

    #[test]
    fn config_prints_the_merged_interpolated_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "services:\n  web:\n    image: busybox:${TAG:-1.36}\n    ports: [\"80:80\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "services:\n  web:\n    ports: [\"$$HOME:81\"]\n",
        )
        .unwrap();
        let files = vec![dir.path().join("a.yml"), dir.path().join("b.yml")];
        let args = ConfigArgs {
            files: files.clone(),
            skip_interpolation: true,
        };
        let raw = config_text(&args, &|_| None).unwrap();
        assert!(raw.contains("busybox:${TAG:-1.36}"), "{raw}");
        let args = ConfigArgs {
            files,
            skip_interpolation: false,
        };
        // `$HOME:81` is not a valid port: interpolated output is checked like a deploy.
        let err = config_text(&args, &|_| None).unwrap_err().to_string();
        assert!(err.contains("b.yml line 3: services.web.ports[1]"), "{err}");
        std::fs::write(
            dir.path().join("b.yml"),
            "services:\n  web:\n    ports: [\"81:81\"]\n",
        )
        .unwrap();
        let out = config_text(&args, &|_| None).unwrap();
        let root = yaml::parse(&out, "out").unwrap();
        let web = root.get("services").unwrap().get("web").unwrap();
        assert_eq!(
            web.get("image").unwrap().value,
            yaml::Value::Str("busybox:1.36".into())
        );
        assert!(matches!(&web.get("ports").unwrap().value, yaml::Value::Seq(p) if p.len() == 2));
    }
}
