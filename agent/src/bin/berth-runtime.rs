//! `berth-runtime`: Berth's OCI runtime command line, compatible with runc's for
//! `create --bundle B [--pid-file F] ID`, `start`, `state` (runtime-spec JSON), `kill ID
//! [SIGNAL]`, `delete [--force]`, `run` and `list`, with the global `--root DIR`.
//!
//! It is also a setup-helper host: `main` calls `maybe_run_init()` before anything else, so
//! the runtime library can re-execute this binary (from a sealed copy) as its helper.
//!
//! Differences from runc: stdin of the container is `/dev/null`; `--console-socket` and
//! terminals are not supported; see `runtime::oci` for the config.json subset.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_agent::runtime::plan::parse_signal;
use berth_agent::runtime::{Runtime, RuntimeConfig, RuntimeError, Status, oci};

const DEFAULT_ROOT: &str = "/run/berth-runtime";
const USAGE: &str = "usage: berth-runtime [--root DIR] COMMAND [OPTIONS] ID
commands:
  create --bundle DIR [--pid-file FILE] ID   set up a container, stopped before its process
  start ID                                   run the created container's process
  state ID                                   print the runtime-spec state JSON
  kill [--all] ID [SIGNAL]                   signal the container (default SIGTERM)
  delete [--force] ID                        remove the container
  run --bundle DIR [--pid-file FILE] [--detach] ID   create + start (+ wait + delete)
  list                                       list containers";

/// Parsed command line: flags with values, boolean flags, positionals.
struct Args {
    values: Vec<(String, String)>,
    flags: Vec<String>,
    positional: Vec<String>,
}

impl Args {
    fn parse(raw: &[String], with_value: &[&str]) -> Result<Args> {
        let mut a = Args {
            values: Vec::new(),
            flags: Vec::new(),
            positional: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
                if name.is_empty() {
                    a.positional.extend(it.by_ref().cloned());
                    break;
                }
                let (name, inline) = match name.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (name, None),
                };
                if with_value.contains(&name) {
                    let v = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .with_context(|| format!("--{name} needs a value"))?
                            .clone(),
                    };
                    a.values.push((name.to_string(), v));
                } else {
                    a.flags.push(name.to_string());
                }
            } else {
                a.positional.push(arg.clone());
            }
        }
        Ok(a)
    }

    fn value(&self, names: &[&str]) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|f| names.contains(&f.as_str()))
    }

    fn id(&self) -> Result<&str> {
        match self.positional.as_slice() {
            [id, ..] => Ok(id),
            [] => bail!("container id required\n{USAGE}"),
        }
    }
}

static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(sig: libc::c_int) {
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
}

fn forward_signals() {
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, remember_signal as *const () as libc::sighandler_t) };
    }
}

/// `create` (stopped before exec, output to the log) or, with `start`, `run` (one step;
/// output passed through unless detached).
fn create(rt: &Runtime, args: &Args, start: bool, inherit: bool) -> Result<String> {
    let id = args.id()?.to_string();
    if args.value(&["console-socket"]).is_some() {
        bail!("--console-socket is not supported (no terminals)");
    }
    let bundle = match args.value(&["bundle", "b"]) {
        Some(b) => PathBuf::from(b),
        None => std::env::current_dir()?,
    };
    let bundle = std::fs::canonicalize(&bundle).with_context(|| format!("bundle {bundle:?}"))?;
    let mut plan =
        oci::plan_from_bundle(&bundle, &id, &rt.state_dir(&id), &rt.config().cgroup_parent)?;
    if !inherit {
        plan.stdio = berth_agent::runtime::plan::StdioMode::Log;
    }
    let st = if start {
        rt.run(&plan)?
    } else {
        rt.create(&plan)?
    };
    if let (Some(file), Some(r)) = (args.value(&["pid-file"]), &st.record) {
        std::fs::write(file, r.init_pid.to_string()).with_context(|| format!("writing {file}"))?;
    }
    Ok(id)
}

fn state_json(rt: &Runtime, id: &str) -> Result<serde_json::Value> {
    let st = rt.state(id)?;
    let bundle = rt
        .plan(id)?
        .and_then(|p| p.annotations.get(oci::BUNDLE_ANNOTATION).cloned())
        .unwrap_or_default();
    let status = match st.status {
        Status::Creating => "creating",
        Status::Created => "created",
        Status::Running => "running",
        Status::Stopped => "stopped",
    };
    let pid = match st.status {
        Status::Created | Status::Running => st.record.as_ref().map(|r| r.init_pid).unwrap_or(0),
        _ => 0,
    };
    Ok(serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "created": st.record.as_ref().map(|r| r.created.clone()).unwrap_or_default(),
        "owner": "",
        "annotations": {},
    }))
}

fn run(rt: &Runtime, args: &Args) -> Result<i32> {
    let detach = args.flag(&["detach", "d"]);
    forward_signals();
    let id = create(rt, args, true, !detach)?;
    if detach {
        return Ok(0);
    }
    let exit = loop {
        if let Some(exit) = rt.wait(&id, Some(Duration::from_millis(100)))? {
            break exit;
        }
        let sig = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            match rt.kill(&id, sig) {
                Ok(()) | Err(RuntimeError::InvalidState { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    };
    rt.delete(&id, true)?;
    Ok(exit.exit_code)
}

fn real_main() -> Result<i32> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // global options come before the command
    let mut root = PathBuf::from(DEFAULT_ROOT);
    let mut i = 0;
    while i < raw.len() && raw[i].starts_with('-') {
        let (name, inline) = match raw[i].split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (raw[i].clone(), None),
        };
        match name.as_str() {
            "--root" | "--log" | "--log-format" | "--criu" | "--rootless" => {
                let v = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        raw.get(i)
                            .with_context(|| format!("{name} needs a value"))?
                            .clone()
                    }
                };
                if name == "--root" {
                    root = PathBuf::from(v);
                }
            }
            "--debug" | "--systemd-cgroup" => {}
            "--version" | "-v" => {
                println!(
                    "berth-runtime version {}\nspec: 1.0.2",
                    env!("CARGO_PKG_VERSION")
                );
                return Ok(0);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(0);
            }
            other => bail!("unknown global option {other}\n{USAGE}"),
        }
        i += 1;
    }
    let Some(cmd) = raw.get(i) else {
        bail!("{USAGE}");
    };
    let rest = &raw[i + 1..];
    let rt = Runtime::new(RuntimeConfig::new(&root))?;
    let args = Args::parse(
        rest,
        &["bundle", "b", "pid-file", "console-socket", "process"],
    )?;
    match cmd.as_str() {
        "create" => {
            create(&rt, &args, false, false)?;
            Ok(0)
        }
        "start" => {
            rt.start(args.id()?)?;
            Ok(0)
        }
        "state" => {
            let v = state_json(&rt, args.id()?)?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &v)?;
            writeln!(out)?;
            Ok(0)
        }
        "kill" => {
            let id = args.id()?;
            let sig = match args.positional.get(1) {
                Some(s) => parse_signal(s)?,
                None => libc::SIGTERM,
            };
            rt.kill(id, sig)?;
            Ok(0)
        }
        "delete" => {
            let id = args.id()?;
            match rt.delete(id, args.flag(&["force", "f"])) {
                Err(RuntimeError::NotFound(_)) if args.flag(&["force", "f"]) => Ok(0),
                r => r.map(|()| 0).map_err(Into::into),
            }
        }
        "run" => run(&rt, &args),
        "list" => {
            println!("{:<24} {:<8} {:<10} CREATED", "ID", "PID", "STATUS");
            for c in rt.list()? {
                let pid = c.record.as_ref().map(|r| r.init_pid).unwrap_or(0);
                let created = c
                    .record
                    .as_ref()
                    .map(|r| r.created.clone())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<8} {:<10} {created}",
                    c.id,
                    pid,
                    format!("{:?}", c.status).to_lowercase()
                );
            }
            Ok(0)
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

fn main() {
    // must come first: this binary is also the runtime's setup helper
    berth_agent::runtime::init::maybe_run_init();
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("berth-runtime: {e:#}");
            std::process::exit(1);
        }
    }
}
