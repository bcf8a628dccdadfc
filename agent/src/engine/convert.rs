//! Conversions between the wire types of the local API and the image store's and runtime's
//! types: image descriptions, a request's container configuration, and timestamps.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::v1;
use prost_types::Timestamp;

use super::EngineError;
use crate::image::Image;
use crate::runtime::ContainerConfig;
use crate::runtime::plan::{ImageDefaults, NetworkMode, Resources, Rlimit, UserMount};

/// Docker's smallest accepted memory limit (`Minimum memory limit allowed is 6MB`).
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` when it is not that.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let s = text.trim();
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &frac[..digits.min(9)];
        nanos = kept.parse::<i64>().ok()? * 10i64.pow(9 - kept.len() as u32);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let h: i64 = tz.get(1..3)?.parse().ok()?;
            let m: i64 = tz.get(4..6)?.parse().ok()?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec - offset;
    Some(Timestamp {
        seconds,
        nanos: nanos as i32,
    })
}

/// A system time as a wire timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// The wire description of a stored image.
pub fn image_info(img: &Image) -> v1::ImageInfo {
    let c = &img.config;
    v1::ImageInfo {
        id: img.id.to_string(),
        repo_tags: img.repo_tags.clone(),
        repo_digests: Vec::new(),
        created: img.created.as_deref().and_then(parse_rfc3339),
        size: i64::try_from(img.size).unwrap_or(i64::MAX),
        platform: Some(v1::Platform {
            architecture: c.architecture.clone(),
            os: c.os.clone(),
        }),
        config: Some(v1::ImageConfig {
            env: c.env.clone(),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            user: c.user.clone().unwrap_or_default(),
            labels: c.labels.clone().into_iter().collect(),
            stop_signal: c.stop_signal.clone().unwrap_or_default(),
            exposed_ports: c.exposed_ports.clone(),
            healthcheck: c.healthcheck.as_ref().map(|h| v1::HealthConfig {
                test: h.test.clone(),
                interval: nanos_duration(h.interval_ns),
                timeout: nanos_duration(h.timeout_ns),
                retries: i32::try_from(h.retries).unwrap_or(i32::MAX),
                start_period: nanos_duration(h.start_period_ns),
            }),
        }),
        layers: img.layers.iter().map(|l| l.diff_id.to_string()).collect(),
    }
}

fn nanos_duration(ns: i64) -> Option<prost_types::Duration> {
    (ns > 0).then_some(prost_types::Duration {
        seconds: ns / 1_000_000_000,
        nanos: (ns % 1_000_000_000) as i32,
    })
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn non_empty_vec(v: &[String]) -> Option<Vec<String>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// The `RLIMIT_*` number of a `--ulimit` name.
fn rlimit_resource(name: &str) -> Option<u32> {
    let r = match name {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    };
    Some(r)
}

/// The runtime's container request for `cfg` on `image`, whose layer directories (base
/// first) are `layers`. Docker's rules (env by key, `--entrypoint` resets the image's cmd,
/// ...) are applied by the runtime's plan.
pub fn container_config(
    cfg: &v1::ContainerConfig,
    image: &Image,
    layers: Vec<PathBuf>,
) -> Result<ContainerConfig, EngineError> {
    let ic = &image.config;
    let invalid = EngineError::InvalidArgument;
    if cfg.memory < 0 || (cfg.memory > 0 && cfg.memory < MIN_MEMORY) {
        return Err(invalid("Minimum memory limit allowed is 6MB".into()));
    }
    if cfg.nano_cpus < 0 {
        return Err(invalid(format!(
            "invalid CPU limit {}: it must be positive",
            cfg.nano_cpus as f64 / 1e9
        )));
    }
    let network = match v1::NetworkMode::try_from(cfg.network_mode) {
        _ if !cfg.network_namespace.is_empty() => {
            NetworkMode::Join(PathBuf::from(&cfg.network_namespace))
        }
        Ok(v1::NetworkMode::Host) => NetworkMode::Host,
        _ => NetworkMode::New,
    };
    let mut mounts = Vec::new();
    for m in &cfg.mounts {
        match v1::MountType::try_from(m.r#type) {
            Ok(v1::MountType::Bind) => mounts.push(UserMount::Bind {
                source: PathBuf::from(&m.source),
                destination: m.target.clone(),
                readonly: m.read_only,
            }),
            Ok(v1::MountType::Tmpfs) => {
                let opts = m.tmpfs_options.unwrap_or_default();
                mounts.push(UserMount::Tmpfs {
                    destination: m.target.clone(),
                    size: u64::try_from(opts.size_bytes).unwrap_or(0),
                    mode: if opts.mode == 0 { 0o1777 } else { opts.mode },
                });
            }
            _ => {
                return Err(invalid(format!(
                    "mount at {:?}: only bind and tmpfs mounts are supported for local containers",
                    m.target
                )));
            }
        }
    }
    let mut rlimits = Vec::new();
    for u in &cfg.ulimits {
        let resource = rlimit_resource(&u.name)
            .ok_or_else(|| invalid(format!("invalid ulimit type: {}", u.name)))?;
        if u.soft < 0 || u.hard < 0 || u.soft > u.hard {
            return Err(invalid(format!(
                "ulimit {}: soft limit {} must be between 0 and the hard limit {}",
                u.name, u.soft, u.hard
            )));
        }
        rlimits.push(Rlimit {
            resource,
            soft: u.soft as u64,
            hard: u.hard as u64,
        });
    }
    Ok(ContainerConfig {
        layers,
        image: ImageDefaults {
            env: ic.env.clone(),
            entrypoint: ic.entrypoint.clone().unwrap_or_default(),
            cmd: ic.cmd.clone().unwrap_or_default(),
            working_dir: ic.working_dir.clone(),
            user: ic.user.clone(),
            stop_signal: ic.stop_signal.clone(),
        },
        entrypoint: non_empty_vec(&cfg.entrypoint),
        cmd: non_empty_vec(&cfg.cmd),
        env: cfg.env.clone(),
        working_dir: non_empty(&cfg.workdir),
        user: non_empty(&cfg.user),
        hostname: non_empty(&cfg.hostname),
        network,
        mounts,
        cap_add: cfg.cap_add.clone(),
        cap_drop: cfg.cap_drop.clone(),
        read_only: cfg.read_only,
        init: cfg.init,
        rlimits,
        resources: Resources {
            memory: (cfg.memory > 0).then_some(cfg.memory as u64),
            cpus: (cfg.nano_cpus > 0).then(|| cfg.nano_cpus as f64 / 1e9),
            pids_limit: (cfg.pids_limit > 0).then_some(cfg.pids_limit),
            ..Resources::default()
        },
        stop_signal: non_empty(&cfg.stop_signal),
        ..ContainerConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logs::rfc3339_nanos;
    use std::time::Duration;

    #[test]
    fn rfc3339_round_trips_with_the_log_format() {
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 5);
        let ts = parse_rfc3339(&rfc3339_nanos(t)).unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_709_210_096, 5));
        let ts = parse_rfc3339("2000-03-01T00:00:00Z").unwrap();
        assert_eq!(ts.seconds, 951_868_800);
        let ts = parse_rfc3339("2024-01-01T01:00:00.5+01:00").unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_704_067_200, 500_000_000));
        let ts = parse_rfc3339("1969-12-31T23:59:59Z").unwrap();
        assert_eq!(ts.seconds, -1);
        for bad in [
            "",
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00",
            "x",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn limits_are_checked_and_translated() {
        let img = Image {
            id: crate::image::Digest::of_bytes(b"x"),
            repo_tags: vec![],
            manifest_digest: crate::image::Digest::of_bytes(b"m"),
            config: Default::default(),
            layers: vec![],
            size: 0,
            created: None,
        };
        let mut cfg = v1::ContainerConfig {
            memory: 1024,
            ..Default::default()
        };
        assert!(container_config(&cfg, &img, vec![]).is_err());
        cfg.memory = 64 << 20;
        cfg.nano_cpus = 1_500_000_000;
        cfg.pids_limit = 10;
        cfg.cmd = vec!["echo".into(), "hi".into()];
        cfg.ulimits = vec![v1::Ulimit {
            name: "nofile".into(),
            soft: 100,
            hard: 200,
        }];
        let c = container_config(&cfg, &img, vec!["/l".into()]).unwrap();
        assert_eq!(c.resources.memory, Some(64 << 20));
        assert_eq!(c.resources.cpus, Some(1.5));
        assert_eq!(c.resources.pids_limit, Some(10));
        assert_eq!(c.cmd, Some(vec!["echo".to_string(), "hi".to_string()]));
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.rlimits[0].resource, libc::RLIMIT_NOFILE);
        assert_eq!(c.network, NetworkMode::New);
        cfg.network_namespace = "/run/berth/netns/t1".into();
        let c = container_config(&cfg, &img, vec!["/l".into()]).unwrap();
        assert_eq!(c.network, NetworkMode::Join("/run/berth/netns/t1".into()));
        cfg.ulimits[0].name = "bogus".into();
        assert!(container_config(&cfg, &img, vec![]).is_err());
    }
}
