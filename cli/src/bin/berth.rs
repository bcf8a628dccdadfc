//! `berth`: the command-line client of a Berth node.

use std::process::ExitCode;

use berth_cli::client::{ClientArgs, ClientCommand};
use clap::Parser;

fn main() -> ExitCode {
    let args = ClientArgs::parse();
    berth_cli::exit::report(run(args))
}

fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClientCommand::Version(version) => {
            match version.format.as_deref() {
                Some("json") => println!(
                    "{{\"Client\":{{\"Version\":\"{}\",\"Os\":\"{}\",\"Arch\":\"{}\"}}}}",
                    berth_cli::VERSION,
                    std::env::consts::OS,
                    std::env::consts::ARCH
                ),
                Some(other) => anyhow::bail!("unknown format {other:?}: expected json"),
                None => {
                    println!("Client:");
                    println!(" Version:    {}", berth_cli::VERSION);
                    println!(
                        " OS/Arch:    {}/{}",
                        std::env::consts::OS,
                        std::env::consts::ARCH
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
