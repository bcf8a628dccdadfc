//! `berth run|ps|logs|exec|stop|kill|rm|inspect`: local containers on this node's daemon,
//! with Docker's flags, columns, messages and exit codes (`run` exits with the container's
//! code; 125 when the container could not be created, 126/127 when its command could not
//! be run).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use berth_proto::v1::{
    self, ContainerConfig, ContainerCreateRequest, ContainerExecRequest, ContainerInfo,
    ContainerInspectRequest, ContainerKillRequest, ContainerListRequest, ContainerLogsMessage,
    ContainerLogsRequest, ContainerRemoveRequest, ContainerStartRequest, ContainerState,
    ContainerStopRequest, ContainerWaitRequest, ImageInspectRequest, LogStream,
    container_exec_message,
};
use clap::Args;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use super::format::{ago, go_template, human_duration, json_pretty, rfc3339, seconds_since};
use super::{Daemon, short_id, status_error};
use crate::exit::StatusError;
use crate::table::Table;

/// `berth run`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Run container in background and print container ID
    #[arg(short, long)]
    pub detach: bool,
    /// Automatically remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Assign a name to the container
    #[arg(long)]
    pub name: Option<String>,
    /// Set environment variables
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Username or UID (format: "<name|uid>[:<group|gid>]")
    #[arg(short, long)]
    pub user: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container host name
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Memory limit (e.g. 512m, 1g)
    #[arg(short, long, value_parser = parse_bytes)]
    pub memory: Option<i64>,
    /// Number of CPUs
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Tune container pids limit (set -1 for unlimited)
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    pub read_only: bool,
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long)]
    pub init: bool,
    /// Add Linux capabilities
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Signal to stop the container
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container
    #[arg(long)]
    pub stop_timeout: Option<u64>,
    /// Connect a container to a network ("none" or "host")
    #[arg(long, default_value = "none")]
    pub network: String,
    /// The image to run
    pub image: String,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `berth ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Don't truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Format output (`json`)
    #[arg(long)]
    pub format: Option<String>,
}

/// `berth logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of the logs ("all" or a number)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Show logs since a timestamp (2013-01-02T13:23:37Z) or relative (e.g. 42m for 42 minutes)
    #[arg(long)]
    pub since: Option<String>,
    /// The container
    pub container: String,
}

/// `berth exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Set environment variables
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Username or UID (format: "<name|uid>[:<group|gid>]")
    #[arg(short, long)]
    pub user: Option<String>,
    /// The container
    pub container: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `berth stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container
    #[arg(short = 't', long = "time", visible_alias = "timeout")]
    pub time: Option<u64>,
    /// Containers
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `berth kill`.
#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send to the container
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Containers
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `berth rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL)
    #[arg(short, long)]
    pub force: bool,
    /// Containers
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `berth inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Format output using a template (`{{.State.Status}}`, `{{json .Config.Env}}`)
    #[arg(short, long)]
    pub format: Option<String>,
    /// Only inspect objects of this type ("container" or "image")
    #[arg(long = "type")]
    pub kind: Option<String>,
    /// Containers or images
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Docker's `RAMInBytes`: a number with an optional binary unit (b, k, m, g, t, p), e.g.
/// `512m`, `1.5g`, `1024`.
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid size: {text:?}");
    let lower = text.trim().to_ascii_lowercase();
    let trimmed = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    if number < 0.0 {
        return Err(bad());
    }
    Ok((number * mult) as i64)
}

/// `KEY=VALUE` entries from `-e` and `--env-file`, Docker's way: files first, a bare `KEY`
/// takes the client's value (and is dropped when unset), comments and blank lines skipped.
fn environment(env: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut push = |entry: &str| {
        if entry.contains('=') {
            out.push(entry.to_string());
        } else if let Ok(v) = std::env::var(entry) {
            out.push(format!("{entry}={v}"));
        }
    };
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("open {}: {e}", file.display()))?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((key, _)) = line.split_once('=')
                && (key.is_empty() || key.contains(char::is_whitespace))
            {
                anyhow::bail!("variable '{key}' contains whitespaces");
            }
            push(line);
        }
    }
    for e in env {
        push(e);
    }
    Ok(out)
}

fn config(args: &RunArgs) -> anyhow::Result<ContainerConfig> {
    let network_mode = match args.network.as_str() {
        "none" | "default" | "bridge" => v1::NetworkMode::None,
        "host" => v1::NetworkMode::Host,
        other => anyhow::bail!("network {other} not found"),
    };
    let nano_cpus = match args.cpus {
        Some(c) if !(c.is_finite() && c > 0.0) => {
            anyhow::bail!("invalid argument {c} for \"--cpus\" flag: must be a positive number")
        }
        Some(c) => (c * 1e9).round() as i64,
        None => 0,
    };
    Ok(ContainerConfig {
        image: args.image.clone(),
        cmd: args.command.clone(),
        entrypoint: args.entrypoint.iter().cloned().collect(),
        env: environment(&args.env, &args.env_file)?,
        workdir: args.workdir.clone().unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
        hostname: args.hostname.clone().unwrap_or_default(),
        memory: args.memory.unwrap_or(0),
        nano_cpus,
        pids_limit: args.pids_limit.unwrap_or(0).max(0),
        read_only: args.read_only,
        init: args.init,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        auto_remove: args.rm,
        stop_signal: args.stop_signal.clone().unwrap_or_default(),
        stop_grace_period: args.stop_timeout.map(|s| prost_types::Duration {
            seconds: i64::try_from(s).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        network_mode: network_mode as i32,
        ..ContainerConfig::default()
    })
}

/// Docker's exit code for a command that could not be started: 127 when it was not
/// found, 126 when it could not be executed, 125 otherwise.
fn start_failure_code(message: &str) -> u8 {
    let m = message.to_ascii_lowercase();
    if m.contains("not found") || m.contains("no such file") {
        127
    } else if m.contains("permission denied") || m.contains("exec format") {
        126
    } else {
        125
    }
}

/// Writes a chunk of container output to our stdout or stderr.
fn write_output(stream: i32, prefix: Option<String>, data: &[u8]) {
    let mut buf = Vec::with_capacity(data.len() + 32);
    if let Some(p) = prefix {
        buf.extend_from_slice(p.as_bytes());
        buf.push(b' ');
    }
    buf.extend_from_slice(data);
    // a closed stdout (`| head`) is not an error worth reporting
    if stream == LogStream::Stderr as i32 {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&buf);
        let _ = err.flush();
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }
}

fn exit_with(code: i32) -> anyhow::Result<()> {
    match code {
        0 => Ok(()),
        c => Err(StatusError::silent(u8::try_from(c).unwrap_or(255)).into()),
    }
}

/// `berth run`: create, start, and — unless `-d` — stream the output and exit with the
/// container's code. Ctrl-C and SIGTERM are forwarded to the container.
pub async fn run(daemon: &mut Daemon, args: RunArgs) -> anyhow::Result<()> {
    let cfg = config(&args).map_err(|e| StatusError::new(125, format!("{e:#}")))?;
    let created = daemon
        .node
        .container_create(ContainerCreateRequest {
            config: Some(cfg),
            name: args.name.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| {
            // the runtime finds the command while it sets the container up
            let m = s.message().to_string();
            let code = if s.code() == tonic::Code::Internal {
                start_failure_code(&m)
            } else {
                125
            };
            StatusError::new(code, m)
        })?
        .into_inner();
    for w in &created.warnings {
        eprintln!("WARNING: {w}");
    }
    let id = created.id;
    let start = |mut node: berth_proto::v1::local_node_client::LocalNodeClient<_>, id: String| async move {
        node.container_start(ContainerStartRequest { container: id })
            .await
            .map_err(|s| {
                let m = s.message().to_string();
                StatusError::new(start_failure_code(&m), m)
            })
    };
    if args.detach {
        start(daemon.node.clone(), id.clone()).await?;
        println!("{id}");
        return Ok(());
    }
    // The log stream subscribes to the exit before it answers, so opening it before the
    // start cannot miss output or the end.
    let mut output = daemon
        .node
        .container_logs(ContainerLogsRequest {
            container: id.clone(),
            follow: true,
            tail: None,
            since: None,
        })
        .await
        .map_err(|s| StatusError::new(125, s.message().to_string()))?
        .into_inner();
    start(daemon.node.clone(), id.clone()).await?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let forward = tokio::select! {
            msg = output.next() => match msg {
                Some(Ok(m)) => {
                    write_output(m.stream, None, &m.data);
                    None
                }
                Some(Err(s)) => return Err(status_error(s)),
                None => break,
            },
            _ = interrupt.recv() => Some("INT"),
            _ = terminate.recv() => Some("TERM"),
        };
        if let Some(signal) = forward {
            let _ = daemon
                .node
                .container_kill(ContainerKillRequest {
                    container: id.clone(),
                    signal: signal.into(),
                })
                .await;
        }
    }
    let exit = daemon
        .node
        .container_wait(ContainerWaitRequest {
            container: id.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    exit_with(exit.exit_code)
}

fn command_text(c: &ContainerInfo) -> String {
    c.args.join(" ")
}

/// Docker's `Ellipsis`: at most `max` characters, the last one "…" when cut.
fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

fn state_of(c: &ContainerInfo) -> ContainerState {
    ContainerState::try_from(c.state).unwrap_or(ContainerState::Dead)
}

/// The STATUS column: `Up 5 minutes`, `Up 3 seconds (healthy)`, `Exited (0) 2 seconds ago`,
/// `Created`.
pub fn status_text(c: &ContainerInfo) -> String {
    match state_of(c) {
        ContainerState::Created => "Created".into(),
        ContainerState::Running => {
            let health = match v1::HealthState::try_from(c.health) {
                Ok(v1::HealthState::Starting) => " (health: starting)",
                Ok(v1::HealthState::Healthy) => " (healthy)",
                Ok(v1::HealthState::Unhealthy) => " (unhealthy)",
                _ => "",
            };
            format!(
                "Up {}{health}",
                human_duration(seconds_since(c.started_at.as_ref()))
            )
        }
        ContainerState::Exited => format!(
            "Exited ({}) {} ago",
            c.exit_code,
            human_duration(seconds_since(c.finished_at.as_ref()))
        ),
        ContainerState::Removing => "Removal In Progress".into(),
        ContainerState::Dead => "Dead".into(),
    }
}

fn state_word(c: &ContainerInfo) -> &'static str {
    match state_of(c) {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
        ContainerState::Removing => "removing",
        ContainerState::Dead => "dead",
    }
}

fn image_of(c: &ContainerInfo) -> String {
    c.config
        .as_ref()
        .map(|cfg| cfg.image.clone())
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| short_id(c.image_id.trim_start_matches("sha256:")).to_string())
}

/// `berth ps`.
pub async fn ps(daemon: &mut Daemon, args: PsArgs) -> anyhow::Result<()> {
    let containers = daemon
        .node
        .container_list(ContainerListRequest { all: args.all })
        .await
        .map_err(status_error)?
        .into_inner()
        .containers;
    if args.quiet {
        for c in &containers {
            println!(
                "{}",
                if args.no_trunc {
                    &c.id
                } else {
                    short_id(&c.id)
                }
            );
        }
        return Ok(());
    }
    match args.format.as_deref() {
        Some("json") => {
            for c in &containers {
                let line = json!({
                    "ID": if args.no_trunc { c.id.as_str() } else { short_id(&c.id) },
                    "Image": image_of(c),
                    "Command": format!("{:?}", command_text(c)),
                    "CreatedAt": rfc3339(c.created.as_ref()),
                    "RunningFor": ago(c.created.as_ref()),
                    "State": state_word(c),
                    "Status": status_text(c),
                    "Names": c.name,
                    "Ports": "",
                });
                println!("{line}");
            }
            return Ok(());
        }
        Some(other) => anyhow::bail!("unsupported format {other:?}: expected json"),
        None => {}
    }
    let mut table = Table::new(&[
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ]);
    for c in &containers {
        let command = if args.no_trunc {
            command_text(c)
        } else {
            ellipsis(&command_text(c), 20)
        };
        table.row(vec![
            if args.no_trunc {
                c.id.clone()
            } else {
                short_id(&c.id).to_string()
            },
            image_of(c),
            format!("{command:?}"),
            ago(c.created.as_ref()),
            status_text(c),
            String::new(),
            c.name.clone(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

fn print_log(m: &ContainerLogsMessage, timestamps: bool) {
    let prefix = timestamps.then(|| rfc3339(m.timestamp.as_ref()));
    write_output(m.stream, prefix, &m.data);
}

/// `--since`: an RFC 3339 time, Unix seconds, or a duration before now (`10m`, `1h30m`).
fn parse_since(text: &str) -> anyhow::Result<prost_types::Timestamp> {
    if let Some(t) = berth_agent::engine::parse_rfc3339(text) {
        return Ok(t);
    }
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        });
    }
    let ago = crate::duration::parse(text)
        .map_err(|_| anyhow::anyhow!("invalid value for --since: {text:?}"))?;
    let at = std::time::SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(std::time::UNIX_EPOCH);
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(0),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// `berth logs`.
pub async fn logs(daemon: &mut Daemon, args: LogsArgs) -> anyhow::Result<()> {
    let tail = match args.tail.as_str() {
        "all" | "" => None,
        n => Some(
            n.parse::<i64>()
                .map_err(|_| anyhow::anyhow!("invalid value for --tail: {n:?}"))?,
        )
        .filter(|n| *n >= 0),
    };
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let mut stream = daemon
        .node
        .container_logs(ContainerLogsRequest {
            container: args.container,
            follow: args.follow,
            tail,
            since,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(msg) = stream.next().await {
        print_log(&msg.map_err(status_error)?, args.timestamps);
    }
    Ok(())
}

/// `berth exec`: streams the command's output and exits with its code.
pub async fn exec(daemon: &mut Daemon, args: ExecArgs) -> anyhow::Result<()> {
    let env = environment(&args.env, &args.env_file)?;
    let mut stream = daemon
        .node
        .container_exec(ContainerExecRequest {
            container: args.container,
            cmd: args.command,
            env,
            workdir: args.workdir.unwrap_or_default(),
            user: args.user.unwrap_or_default(),
        })
        .await
        .map_err(|s| {
            let m = s.message().to_string();
            let code = if s.code() == tonic::Code::Internal {
                start_failure_code(&m)
            } else {
                1
            };
            StatusError::new(code, m)
        })?
        .into_inner();
    while let Some(msg) = stream.next().await {
        match msg.map_err(status_error)?.kind {
            Some(container_exec_message::Kind::Output(o)) => write_output(o.stream, None, &o.data),
            Some(container_exec_message::Kind::ExitCode(code)) => return exit_with(code),
            None => {}
        }
    }
    anyhow::bail!("the exec stream ended without an exit code")
}

/// Runs `op` on each name, printing the name on success and each error on stderr as
/// Docker does; fails (exit 1) if any failed.
async fn each<F, Fut>(names: Vec<String>, mut op: F) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut errors = Vec::new();
    for name in names {
        match op(name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(s) => errors.push(s.message().to_string()),
        }
    }
    match errors.pop() {
        None => Ok(()),
        Some(last) => {
            for e in errors {
                eprintln!("Error: {e}");
            }
            anyhow::bail!("{last}")
        }
    }
}

/// `berth stop`.
pub async fn stop(daemon: &mut Daemon, args: StopArgs) -> anyhow::Result<()> {
    let node = daemon.node.clone();
    let timeout = args.time.map(|s| prost_types::Duration {
        seconds: i64::try_from(s).unwrap_or(i64::MAX),
        nanos: 0,
    });
    each(args.containers, |container| {
        let mut node = node.clone();
        async move {
            node.container_stop(ContainerStopRequest { container, timeout })
                .await
                .map(|_| ())
        }
    })
    .await
}

/// `berth kill`.
pub async fn kill(daemon: &mut Daemon, args: KillArgs) -> anyhow::Result<()> {
    let node = daemon.node.clone();
    let signal = args.signal;
    each(args.containers, |container| {
        let mut node = node.clone();
        let signal = signal.clone();
        async move {
            node.container_kill(ContainerKillRequest { container, signal })
                .await
                .map(|_| ())
        }
    })
    .await
}

/// `berth rm`.
pub async fn rm(daemon: &mut Daemon, args: RmArgs) -> anyhow::Result<()> {
    let node = daemon.node.clone();
    let force = args.force;
    each(args.containers, |container| {
        let mut node = node.clone();
        async move {
            node.container_remove(ContainerRemoveRequest { container, force })
                .await
                .map(|_| ())
        }
    })
    .await
}

fn strings(v: &[String]) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}

/// A container as `docker inspect` shows it (the fields Berth has).
fn container_json(c: &ContainerInfo, image: Option<&v1::ImageInfo>) -> Value {
    let cfg = c.config.clone().unwrap_or_default();
    let image_cfg = image.and_then(|i| i.config.clone()).unwrap_or_default();
    // Docker's rules, as the runtime applied them: --entrypoint resets the image's cmd
    let (entrypoint, cmd) = if !cfg.entrypoint.is_empty() {
        (cfg.entrypoint.clone(), cfg.cmd.clone())
    } else if !cfg.cmd.is_empty() {
        (image_cfg.entrypoint.clone(), cfg.cmd.clone())
    } else {
        (image_cfg.entrypoint.clone(), image_cfg.cmd.clone())
    };
    let state = state_of(c);
    let labels: BTreeMap<_, _> = cfg.labels.iter().collect();
    let mut value = json!({
        "Id": c.id,
        "Created": rfc3339(c.created.as_ref()),
        "Path": c.args.first().cloned().unwrap_or_default(),
        "Args": c.args.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": state_word(c),
            "Running": state == ContainerState::Running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": c.oom_killed,
            "Dead": state == ContainerState::Dead,
            "Pid": c.pid,
            "ExitCode": c.exit_code,
            "Error": c.error,
            "StartedAt": rfc3339(c.started_at.as_ref()),
            "FinishedAt": rfc3339(c.finished_at.as_ref()),
        },
        "Image": c.image_id,
        "LogPath": c.log_path,
        "Name": format!("/{}", c.name),
        "RestartCount": 0,
        "HostConfig": {
            "AutoRemove": cfg.auto_remove,
            "CapAdd": strings(&cfg.cap_add),
            "CapDrop": strings(&cfg.cap_drop),
            "Init": cfg.init,
            "Memory": cfg.memory,
            "NanoCpus": cfg.nano_cpus,
            "NetworkMode": if cfg.network_mode == v1::NetworkMode::Host as i32 { "host" } else { "none" },
            "PidsLimit": if cfg.pids_limit > 0 { json!(cfg.pids_limit) } else { Value::Null },
            "ReadonlyRootfs": cfg.read_only,
        },
        "Config": {
            "Hostname": c.hostname,
            "User": c.user,
            "Env": c.env,
            "Cmd": strings(&cmd),
            "Image": cfg.image,
            "WorkingDir": c.working_dir,
            "Entrypoint": strings(&entrypoint),
            "Labels": labels,
            "StopSignal": c.stop_signal,
        },
    });
    if let Some(h) = &c.health_detail {
        value["State"]["Health"] = health_json(h);
    }
    if let Some(h) = &cfg.healthcheck {
        value["Config"]["Healthcheck"] = healthcheck_json(h);
    }
    value
}

/// Docker's `State.Health`: status, failing streak and the last probes.
fn health_json(h: &v1::ContainerHealth) -> Value {
    let status = match v1::HealthState::try_from(h.status) {
        Ok(v1::HealthState::Starting) => "starting",
        Ok(v1::HealthState::Healthy) => "healthy",
        Ok(v1::HealthState::Unhealthy) => "unhealthy",
        _ => "none",
    };
    let log: Vec<Value> = h
        .log
        .iter()
        .map(|p| {
            json!({
                "Start": rfc3339(p.start.as_ref()),
                "End": rfc3339(p.end.as_ref()),
                "ExitCode": p.exit_code,
                "Output": p.output,
            })
        })
        .collect();
    json!({ "Status": status, "FailingStreak": h.failing_streak, "Log": log })
}

/// Docker's `Config.Healthcheck` (durations in nanoseconds, 0 = unset).
fn healthcheck_json(h: &v1::HealthConfig) -> Value {
    let ns = |d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map_or(0, |d| d.seconds * 1_000_000_000 + i64::from(d.nanos))
    };
    json!({
        "Test": h.test,
        "Interval": ns(&h.interval),
        "Timeout": ns(&h.timeout),
        "StartPeriod": ns(&h.start_period),
        "Retries": h.retries,
    })
}

/// An image as `docker image inspect` shows it.
pub fn image_json(i: &v1::ImageInfo) -> Value {
    let cfg = i.config.clone().unwrap_or_default();
    let platform = i.platform.clone().unwrap_or_default();
    let ports: BTreeMap<&String, Value> =
        cfg.exposed_ports.iter().map(|p| (p, json!({}))).collect();
    let labels: BTreeMap<_, _> = cfg.labels.iter().collect();
    let mut config = json!({
        "User": cfg.user,
        "Env": strings(&cfg.env),
        "Cmd": strings(&cfg.cmd),
        "Entrypoint": strings(&cfg.entrypoint),
        "WorkingDir": cfg.working_dir,
        "Labels": labels,
        "StopSignal": cfg.stop_signal,
        "ExposedPorts": ports,
    });
    if let Some(h) = &cfg.healthcheck {
        let ns = |d: &Option<prost_types::Duration>| {
            d.as_ref()
                .map_or(0, |d| d.seconds * 1_000_000_000 + i64::from(d.nanos))
        };
        config["Healthcheck"] = json!({
            "Test": h.test,
            "Interval": ns(&h.interval),
            "Timeout": ns(&h.timeout),
            "StartPeriod": ns(&h.start_period),
            "Retries": h.retries,
        });
    }
    json!({
        "Id": i.id,
        "RepoTags": i.repo_tags,
        "RepoDigests": i.repo_digests,
        "Created": rfc3339(i.created.as_ref()),
        "Size": i.size,
        "Architecture": platform.architecture,
        "Os": platform.os,
        "Config": config,
        "RootFS": {"Type": "layers", "Layers": i.layers},
    })
}

/// Prints inspected objects: a JSON array, or one template line per object.
pub fn print_inspected(values: &[Value], format: Option<&str>) -> anyhow::Result<()> {
    match format {
        Some(t) => {
            for v in values {
                println!("{}", go_template(t, v).map_err(|e| anyhow::anyhow!(e))?);
            }
        }
        None => println!("{}", json_pretty(&Value::Array(values.to_vec()))),
    }
    Ok(())
}

/// `berth inspect`: containers, or images when no container has the name.
pub async fn inspect(daemon: &mut Daemon, args: InspectArgs) -> anyhow::Result<()> {
    let (containers, images) = match args.kind.as_deref() {
        None => (true, true),
        Some("container") => (true, false),
        Some("image") => (false, true),
        Some(other) => anyhow::bail!("\"{other}\" is not a valid value for --type"),
    };
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for name in &args.names {
        if containers {
            match daemon
                .node
                .container_inspect(ContainerInspectRequest {
                    container: name.clone(),
                })
                .await
            {
                Ok(r) => {
                    let c = r.into_inner().container.unwrap_or_default();
                    let image = daemon
                        .node
                        .image_inspect(ImageInspectRequest {
                            image: c.image_id.clone(),
                        })
                        .await
                        .ok()
                        .and_then(|r| r.into_inner().image);
                    values.push(container_json(&c, image.as_ref()));
                    continue;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => {
                    errors.push(s.message().to_string());
                    continue;
                }
            }
        }
        if images {
            match daemon
                .node
                .image_inspect(ImageInspectRequest {
                    image: name.clone(),
                })
                .await
            {
                Ok(r) => {
                    if let Some(i) = r.into_inner().image {
                        values.push(image_json(&i));
                    }
                    continue;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => {
                    errors.push(s.message().to_string());
                    continue;
                }
            }
        }
        errors.push(match args.kind.as_deref() {
            Some("container") => format!("No such container: {name}"),
            Some("image") => format!("No such image: {name}"),
            _ => format!("No such object: {name}"),
        });
    }
    print_inspected(&values, args.format.as_deref())?;
    match errors.pop() {
        None => Ok(()),
        Some(last) => {
            for e in errors {
                eprintln!("Error: {e}");
            }
            anyhow::bail!("{last}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_dockers_ram_in_bytes() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("12x").is_err());
        assert!(parse_bytes("m").is_err());
    }

    #[test]
    fn status_and_inspect_show_health_like_docker() {
        let mut c = ContainerInfo {
            state: ContainerState::Running as i32,
            health: v1::HealthState::Starting as i32,
            ..Default::default()
        };
        assert!(status_text(&c).ends_with(" (health: starting)"));
        c.health = v1::HealthState::Healthy as i32;
        assert!(status_text(&c).ends_with(" (healthy)"));
        c.health = v1::HealthState::None as i32;
        assert!(status_text(&c).ends_with(" second"), "{}", status_text(&c));
        c.health_detail = Some(v1::ContainerHealth {
            status: v1::HealthState::Unhealthy as i32,
            failing_streak: 3,
            log: vec![v1::HealthProbe {
                exit_code: -1,
                output: "Health check exceeded timeout (300ms)".into(),
                ..Default::default()
            }],
        });
        let j = container_json(&c, None);
        assert_eq!(j["State"]["Health"]["Status"], "unhealthy");
        assert_eq!(j["State"]["Health"]["FailingStreak"], 3);
        assert_eq!(j["State"]["Health"]["Log"][0]["ExitCode"], -1);
    }

    #[test]
    fn environment_merges_files_then_flags() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("env");
        std::fs::write(
            &file,
            "# comment\n\nA=1\n  B=two words\nBERTH_SURELY_UNSET_VAR\n",
        )
        .unwrap();
        let env = environment(
            &["C=3".into(), "A=override".into()],
            std::slice::from_ref(&file),
        )
        .unwrap();
        assert_eq!(env, vec!["A=1", "B=two words", "C=3", "A=override"]);
        std::fs::write(&file, "BAD KEY=1\n").unwrap();
        assert!(environment(&[], &[file]).is_err());
    }

    #[test]
    fn run_takes_flags_before_the_image_and_the_command_after() {
        use crate::client::{ClientArgs, ClientCommand};
        use clap::Parser;
        let args = ClientArgs::try_parse_from([
            "berth", "run", "--rm", "-h", "box", "-e", "A=1", "-m", "64m", "busybox", "sh", "-c",
            "exit 3",
        ])
        .unwrap();
        let ClientCommand::Run(run) = args.command else {
            panic!("not run")
        };
        assert!(run.rm);
        assert_eq!(run.hostname.as_deref(), Some("box"));
        assert_eq!(run.memory, Some(64 << 20));
        assert_eq!(run.image, "busybox");
        assert_eq!(run.command, vec!["sh", "-c", "exit 3"]);
        let cfg = config(&run).unwrap();
        assert!(cfg.auto_remove);
        assert_eq!(cfg.env, vec!["A=1"]);
    }

    #[test]
    fn since_takes_times_seconds_and_durations() {
        assert_eq!(
            parse_since("2024-01-01T00:00:00Z").unwrap().seconds,
            1_704_067_200
        );
        assert_eq!(parse_since("1704067200").unwrap().seconds, 1_704_067_200);
        let ten_min_ago = parse_since("10m").unwrap().seconds;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((now - 600 - ten_min_ago).abs() <= 2);
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn command_column_is_cut_at_twenty() {
        assert_eq!(ellipsis("sleep 100", 20), "sleep 100");
        assert_eq!(
            ellipsis("sh -c while true; do sleep 1; done", 20),
            "sh -c while true; d…"
        );
        assert_eq!(
            start_failure_code("exec: \"nope\": executable file not found"),
            127
        );
        assert_eq!(start_failure_code("permission denied"), 126);
        assert_eq!(start_failure_code("boom"), 125);
    }
}
