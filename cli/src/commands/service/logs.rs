//! `berth service logs SERVICE|TASK`: the logs of a service's tasks (or of one task),
//! gathered from every node through the managers' log broker (`berth.v1.Logs`), printed the
//! way Docker prints them:
//!
//! ```text
//! web.1.k2v8a0q7d1xa@node-1    | hello
//! web.10.p0q3n4f5c6xz@node-2   | hello
//! ```
//!
//! `<service>.<slot>[.<task id>]@<node>`, padded so that slots of up to the service's replica
//! count line up, then `    | ` and the line; stderr lines go to stderr. `-t` puts the
//! RFC 3339 timestamp (nanoseconds, zero-padded) first; `--raw` prints the lines alone;
//! `--no-resolve` shows ids instead of names; `--no-task-ids` drops the task id, `--no-trunc`
//! shows it whole. Nodes that could not answer are named on stderr ("warning: incomplete log
//! stream: ...") and the command still prints what the other nodes sent and exits 0.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::v1::service_spec::Mode;
use berth_proto::v1::{
    GetNodeRequest, GetServiceRequest, GetTaskRequest, LogContext, LogMessage, LogSelector,
    LogStream, LogSubscriptionOptions, SubscribeLogsRequest, Task,
};
use clap::Args;
use prost_types::Timestamp;
use tokio_stream::StreamExt;

use super::{Daemon, resolve, service_name};
use crate::commands::format::rfc3339;
use crate::commands::{short_id, status_error};

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

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        let mut padded = frac[..digits].to_string();
        padded.truncate(9);
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset;
    Some(Timestamp {
        seconds,
        nanos: i32::try_from(nanos).ok()?,
    })
}

/// `--since`: a relative duration ("42m"), a Unix time ("1700000000.5") or RFC 3339.
fn parse_since(text: &str, now: SystemTime) -> anyhow::Result<Timestamp> {
    if let Ok(d) = crate::duration::parse(text) {
        let t = now.checked_sub(d).unwrap_or(UNIX_EPOCH);
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        return Ok(Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        });
    }
    if let Ok(secs) = text.parse::<f64>()
        && secs >= 0.0
    {
        let d = Duration::try_from_secs_f64(secs)?;
        return Ok(Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        });
    }
    parse_rfc3339(text).ok_or_else(|| {
        anyhow::anyhow!(
            "invalid value for --since: {text:?} (expected e.g. 2013-01-02T13:23:37Z or 42m)"
        )
    })
}

/// Digits of `n` in base 10.
fn digits(n: u64) -> usize {
    n.to_string().len()
}

/// Turns log contexts into Docker's prefixes, asking the managers once per task.
struct Prefixes {
    no_resolve: bool,
    no_task_ids: bool,
    no_trunc: bool,
    /// Slot digits to pad to.
    width: usize,
    nodes: HashMap<String, String>,
    services: HashMap<String, String>,
    cache: HashMap<(String, String, String), String>,
}

impl Prefixes {
    async fn node(&mut self, daemon: &mut Daemon, id: &str) -> String {
        if self.no_resolve {
            return id.to_owned();
        }
        if let Some(n) = self.nodes.get(id) {
            return n.clone();
        }
        let name = daemon
            .control
            .get_node(GetNodeRequest {
                node_id: id.to_owned(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().node)
            .and_then(|n| n.description)
            .map(|d| d.hostname)
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| id.to_owned());
        self.nodes.insert(id.to_owned(), name.clone());
        name
    }

    async fn service(&mut self, daemon: &mut Daemon, id: &str) -> String {
        if self.no_resolve {
            return id.to_owned();
        }
        if let Some(n) = self.services.get(id) {
            return n.clone();
        }
        let name = daemon
            .control
            .get_service(GetServiceRequest {
                service_id: id.to_owned(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().service)
            .map(|s| service_name(&s).to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.to_owned());
        self.services.insert(id.to_owned(), name.clone());
        name
    }

    async fn prefix(&mut self, daemon: &mut Daemon, ctx: &LogContext) -> String {
        let key = (
            ctx.node_id.clone(),
            ctx.service_id.clone(),
            ctx.task_id.clone(),
        );
        if let Some(p) = self.cache.get(&key) {
            return p.clone();
        }
        let node = self.node(daemon, &ctx.node_id).await;
        let service = self.service(daemon, &ctx.service_id).await;
        let slot = get_task(daemon, &ctx.task_id)
            .await
            .ok()
            .flatten()
            .map_or(0, |t| t.slot);
        let mut name = format!("{service}.{slot}");
        if !self.no_task_ids {
            let id = if self.no_trunc {
                ctx.task_id.as_str()
            } else {
                short_id(&ctx.task_id)
            };
            name = format!("{name}.{id}");
        }
        let pad = " ".repeat(self.width.saturating_sub(digits(slot)));
        let prefix = format!("{name}@{node}{pad}");
        self.cache.insert(key, prefix.clone());
        prefix
    }
}

/// The task with id `id`, `None` when there is none.
async fn get_task(daemon: &mut Daemon, id: &str) -> anyhow::Result<Option<Task>> {
    match daemon
        .control
        .get_task(GetTaskRequest {
            task_id: id.to_owned(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().task),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(status_error(s)),
    }
}

/// One output line, as bytes.
fn render(prefix: Option<&str>, timestamps: bool, msg: &LogMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.data.len() + 64);
    if timestamps {
        out.extend_from_slice(rfc3339(msg.timestamp.as_ref()).as_bytes());
        out.push(b' ');
    }
    if let Some(p) = prefix {
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"    | ");
    }
    out.extend_from_slice(&msg.data);
    out
}

/// `berth service logs`.
pub async fn logs(daemon: &mut Daemon, args: LogsArgs) -> anyhow::Result<()> {
    let (selector, width) = match resolve(daemon, &args.target).await {
        Ok(service) => {
            let width = match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
                Some(Mode::Replicated(r)) => digits(r.replicas),
                _ => 1,
            };
            let selector = LogSelector {
                service_ids: vec![service.id.clone()],
                ..Default::default()
            };
            (selector, width)
        }
        Err(not_service) => match get_task(daemon, &args.target).await? {
            Some(task) => (
                LogSelector {
                    task_ids: vec![task.id.clone()],
                    ..Default::default()
                },
                digits(task.slot),
            ),
            None if not_service.to_string().starts_with("no such service") => {
                anyhow::bail!("no such task or service: {}", args.target)
            }
            None => return Err(not_service),
        },
    };
    let tail = match args.tail.as_str() {
        "all" => None,
        n => Some(n.parse::<i64>()?),
    };
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let request = SubscribeLogsRequest {
        selector: Some(selector),
        options: Some(LogSubscriptionOptions {
            streams: Vec::new(),
            follow: args.follow,
            tail,
            since,
        }),
    };
    let mut stream = daemon
        .logs
        .subscribe_logs(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut prefixes = Prefixes {
        no_resolve: args.no_resolve,
        no_task_ids: args.no_task_ids,
        no_trunc: args.no_trunc,
        width,
        nodes: HashMap::new(),
        services: HashMap::new(),
        cache: HashMap::new(),
    };
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(status_error)?;
        for w in &batch.warnings {
            eprintln!("warning: incomplete log stream: {w}");
        }
        for msg in &batch.messages {
            let prefix = if args.raw {
                None
            } else {
                let ctx = msg.context.clone().unwrap_or_default();
                Some(prefixes.prefix(daemon, &ctx).await)
            };
            let line = render(prefix.as_deref(), args.timestamps, msg);
            // A closed stdout (`| head`) is not an error worth reporting.
            if msg.stream == LogStream::Stderr as i32 {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&line);
                let _ = err.flush();
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&line);
                let _ = out.flush();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_look_like_dockers() {
        let msg = LogMessage {
            context: None,
            timestamp: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            stream: LogStream::Stdout as i32,
            data: b"hello\n".to_vec(),
        };
        let line = render(Some("web.1.abc@node-1 "), false, &msg);
        assert_eq!(line, b"web.1.abc@node-1     | hello\n");
        let line = render(None, true, &msg);
        assert_eq!(line, b"2023-11-14T22:13:20.000000005Z hello\n");
    }

    #[test]
    fn since_accepts_relative_unix_and_rfc3339_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_since("10m", now).unwrap().seconds, 1_000_000 - 600);
        assert_eq!(
            parse_since("1700000000.25", now).unwrap(),
            Timestamp {
                seconds: 1_700_000_000,
                nanos: 250_000_000
            }
        );
        assert_eq!(
            parse_since("2023-11-14T22:13:20.5Z", now).unwrap(),
            Timestamp {
                seconds: 1_700_000_000,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20+01:00", now)
                .unwrap()
                .seconds,
            1_700_000_000
        );
        assert!(parse_since("yesterday", now).is_err());
        assert_eq!(digits(9), 1);
        assert_eq!(digits(10), 2);
    }
}
