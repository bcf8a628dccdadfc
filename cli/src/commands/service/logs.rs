//! `berth service logs`: Docker's flags are accepted, but gathering task logs from the nodes
//! through the managers (the Logs and LogBroker services of logs.proto) is not implemented
//! yet, so the command says so instead of printing nothing.

use clap::Args;

use super::{Daemon, resolve};

/// `berth service logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Show extra details provided to logs
    #[arg(long)]
    pub details: bool,
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Do not map IDs to Names in output
    #[arg(long)]
    pub no_resolve: bool,
    /// Do not include task IDs in output
    #[arg(long)]
    pub no_task_ids: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Do not neatly format logs
    #[arg(long)]
    pub raw: bool,
    /// Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m")
    #[arg(long, value_name = "string")]
    pub since: Option<String>,
    /// Number of lines to show from the end of the logs ("all" or a number)
    #[arg(short = 'n', long, value_name = "string", default_value = "all",
          value_parser = parse_tail)]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// The service (or task)
    #[arg(value_name = "SERVICE|TASK")]
    pub target: String,
}

fn parse_tail(text: &str) -> Result<String, String> {
    if text == "all" || text.parse::<u64>().is_ok() {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid tail {text:?}: expected \"all\" or a number"
        ))
    }
}

/// `berth service logs`.
pub async fn logs(daemon: &mut Daemon, args: LogsArgs) -> anyhow::Result<()> {
    let service = resolve(daemon, &args.target).await?;
    anyhow::bail!(
        "berth service logs is not supported yet: the managers do not gather task logs from the nodes (service {})",
        super::service_name(&service)
    )
}
