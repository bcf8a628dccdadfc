//! `berth`: the command-line client of a Berth node.

use std::process::ExitCode;

use berth_cli::client::{ClientArgs, ClientCommand};
use berth_cli::commands::{self, Daemon};
use clap::Parser;

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    berth_cli::exit::report(run(args))
}

fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    if let ClientCommand::Version(version) = &args.command {
        print_version(version.format.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    if let ClientCommand::Stack(commands::stack::StackCommand::Config(config)) = &args.command {
        // Reads files only: no daemon needed.
        commands::stack::config(config)?;
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut daemon = Daemon::connect(&args.host).await?;
        match args.command {
            ClientCommand::Version(_) => unreachable!("handled above"),
            ClientCommand::Info(info) => {
                commands::info::info(&mut daemon, info.format.as_deref()).await
            }
            ClientCommand::Swarm(command) => commands::swarm::run(&mut daemon, command).await,
            ClientCommand::Node(command) => commands::node::run(&mut daemon, command).await,
            ClientCommand::Network(command) => commands::network::run(&mut daemon, command).await,
            ClientCommand::Service(command) => commands::service::run(&mut daemon, command).await,
            ClientCommand::Stack(command) => commands::stack::run(&mut daemon, command).await,
            ClientCommand::Secret(command) => commands::secret::run(&mut daemon, command).await,
            ClientCommand::Config(command) => commands::config::run(&mut daemon, command).await,
            ClientCommand::Run(args) => commands::container::run(&mut daemon, *args).await,
            ClientCommand::Ps(args) => commands::container::ps(&mut daemon, args).await,
            ClientCommand::Logs(args) => commands::container::logs(&mut daemon, args).await,
            ClientCommand::Exec(args) => commands::container::exec(&mut daemon, args).await,
            ClientCommand::Stop(args) => commands::container::stop(&mut daemon, args).await,
            ClientCommand::Kill(args) => commands::container::kill(&mut daemon, args).await,
            ClientCommand::Rm(args) => commands::container::rm(&mut daemon, args).await,
            ClientCommand::Inspect(args) => commands::container::inspect(&mut daemon, args).await,
            ClientCommand::Image(command) => commands::image::run(&mut daemon, command).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn print_version(format: Option<&str>) -> anyhow::Result<()> {
    let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);
    match format {
        Some("json") => println!(
            "{}",
            serde_json::json!({"Client": {"Version": berth_cli::VERSION, "Os": os, "Arch": arch}})
        ),
        Some(other) => anyhow::bail!("unknown format {other:?}: expected json"),
        None => {
            println!("Client:");
            println!(" Version:    {}", berth_cli::VERSION);
            println!(" OS/Arch:    {os}/{arch}");
        }
    }
    Ok(())
}
