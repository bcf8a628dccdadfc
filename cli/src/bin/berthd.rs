//! `berthd`: the Berth daemon (node agent, plus manager on manager nodes).

use std::process::ExitCode;

use berth_cli::daemon::{DaemonArgs, DaemonCommand};
use clap::Parser;

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    berth_cli::exit::report(run(args))
}

fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(DaemonCommand::Version) => {
            println!("berthd version {}", berth_cli::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        None => anyhow::bail!(
            "the daemon is not built yet: only `berthd version` and `berthd --help` work (data dir {:?})",
            args.run.data_dir
        ),
    }
}
