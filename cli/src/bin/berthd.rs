//! `berthd`: the Berth daemon (node agent, plus manager on manager nodes).

use std::process::ExitCode;

use berth_cli::daemon::{DaemonArgs, DaemonCommand};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // The runtime re-executes this binary as its single-threaded container setup helper;
    // that must happen before anything else, threads above all.
    berth_agent::runtime::init::maybe_run_init();
    let args = DaemonArgs::parse();
    berth_cli::exit::report(run(args))
}

fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(DaemonCommand::Version) => {
            println!("berthd version {}", berth_cli::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let filter = EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(&args.run.log_level));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(berth_cli::node::run(args.run))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
