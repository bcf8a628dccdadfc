//! Which health check a container has: the request's `HealthConfig` merged over the image's
//! `HEALTHCHECK` field by field (Docker's rule: an empty test, a zero duration or zero retries
//! in the request take the image's value), then Docker's defaults for what is still unset.
//! A test of `["NONE"]` (`--no-healthcheck`), or no test anywhere, means no health check.

use std::time::Duration;

use berth_proto::v1::HealthConfig;

use super::HealthError;
use crate::image::Healthcheck as ImageHealthcheck;

/// Time between probes when neither the request nor the image sets one (Docker's).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Time a probe may take when neither the request nor the image sets one (Docker's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive counted failures before unhealthy when nothing sets it (Docker's).
pub const DEFAULT_RETRIES: u32 = 3;
/// The shell of `CMD-SHELL` tests when the image names none (Docker's).
pub const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// A container's resolved health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The probe's argv, run inside the container (`CMD-SHELL` already wrapped in the shell).
    pub args: Vec<String>,
    /// Time between the end of one probe and the start of the next.
    pub interval: Duration,
    /// A probe still running after this is killed and counts as a failure.
    pub timeout: Duration,
    /// Failures of probes that start within this time after the container started do not
    /// count (until the first success, which ends the start period).
    pub start_period: Duration,
    /// Consecutive counted failures that make the container unhealthy.
    pub retries: u32,
}

fn from_proto(d: Option<&prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        Duration::new(
            u64::try_from(d.seconds).unwrap_or(0),
            u32::try_from(d.nanos).unwrap_or(0),
        )
    })
}

fn from_nanos(ns: i64) -> Duration {
    Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

fn or_default(d: Duration, default: Duration) -> Duration {
    if d.is_zero() { default } else { d }
}

/// The health check of a container created with `request` from an image whose config has
/// `image` (and `shell`, its `SHELL`), or `None` when it has none.
pub fn resolve(
    request: Option<&HealthConfig>,
    image: Option<&ImageHealthcheck>,
    shell: Option<&[String]>,
) -> Result<Option<HealthCheck>, HealthError> {
    let (mut test, mut interval, mut timeout, mut start_period, mut retries) = match request {
        Some(r) => (
            r.test.clone(),
            from_proto(r.interval.as_ref()),
            from_proto(r.timeout.as_ref()),
            from_proto(r.start_period.as_ref()),
            u32::try_from(r.retries).unwrap_or(0),
        ),
        None => (
            Vec::new(),
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            0,
        ),
    };
    if let Some(img) = image {
        if test.is_empty() {
            test = img.test.clone();
        }
        if interval.is_zero() {
            interval = from_nanos(img.interval_ns);
        }
        if timeout.is_zero() {
            timeout = from_nanos(img.timeout_ns);
        }
        if start_period.is_zero() {
            start_period = from_nanos(img.start_period_ns);
        }
        if retries == 0 {
            retries = u32::try_from(img.retries).unwrap_or(0);
        }
    }
    let Some((kind, rest)) = test.split_first() else {
        return Ok(None);
    };
    let args = match kind.as_str() {
        "NONE" => return Ok(None),
        "CMD" => rest.to_vec(),
        "CMD-SHELL" => {
            let mut args: Vec<String> = match shell {
                Some(s) if !s.is_empty() => s.to_vec(),
                _ => DEFAULT_SHELL.iter().map(|s| (*s).to_owned()).collect(),
            };
            if rest.is_empty() {
                return Err(HealthError::InvalidTest {
                    test,
                    reason: "CMD-SHELL needs a command",
                });
            }
            args.push(rest.join(" "));
            args
        }
        _ => {
            return Err(HealthError::InvalidTest {
                test,
                reason: "the first element must be NONE, CMD or CMD-SHELL",
            });
        }
    };
    if args.is_empty() || args[0].is_empty() {
        return Err(HealthError::InvalidTest {
            test,
            reason: "CMD needs a program to run",
        });
    }
    Ok(Some(HealthCheck {
        args,
        interval: or_default(interval, DEFAULT_INTERVAL),
        timeout: or_default(timeout, DEFAULT_TIMEOUT),
        start_period,
        retries: if retries == 0 {
            DEFAULT_RETRIES
        } else {
            retries
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(ms: u64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        })
    }

    fn image(test: &[&str]) -> ImageHealthcheck {
        ImageHealthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval_ns: 5_000_000_000,
            timeout_ns: 0,
            start_period_ns: 1_000_000_000,
            start_interval_ns: 0,
            retries: 7,
        }
    }

    #[test]
    fn nothing_configured_means_no_health_check() {
        assert_eq!(resolve(None, None, None).unwrap(), None);
        let empty = HealthConfig::default();
        assert_eq!(resolve(Some(&empty), None, None).unwrap(), None);
    }

    #[test]
    fn a_request_alone_gets_dockers_defaults() {
        let req = HealthConfig {
            test: vec!["CMD-SHELL".into(), "test -f /ok".into()],
            ..Default::default()
        };
        let hc = resolve(Some(&req), None, None).unwrap().unwrap();
        assert_eq!(hc.args, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!(hc.interval, Duration::from_secs(30));
        assert_eq!(hc.timeout, Duration::from_secs(30));
        assert_eq!(hc.start_period, Duration::ZERO);
        assert_eq!(hc.retries, 3);
    }

    #[test]
    fn the_image_fills_what_the_request_leaves_unset() {
        let req = HealthConfig {
            interval: dur(200),
            retries: 0,
            ..Default::default()
        };
        let img = image(&["CMD", "true"]);
        let hc = resolve(Some(&req), Some(&img), None).unwrap().unwrap();
        assert_eq!(hc.args, ["true"]);
        assert_eq!(hc.interval, Duration::from_millis(200), "request wins");
        assert_eq!(hc.timeout, Duration::from_secs(30), "neither: default");
        assert_eq!(hc.start_period, Duration::from_secs(1), "image's");
        assert_eq!(hc.retries, 7, "image's");
        let hc = resolve(None, Some(&img), None).unwrap().unwrap();
        assert_eq!(hc.interval, Duration::from_secs(5));
    }

    #[test]
    fn none_disables_the_images_check() {
        let req = HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        let img = image(&["CMD", "true"]);
        assert_eq!(resolve(Some(&req), Some(&img), None).unwrap(), None);
        assert_eq!(resolve(None, Some(&image(&["NONE"])), None).unwrap(), None);
    }

    #[test]
    fn cmd_shell_uses_the_images_shell() {
        let req = HealthConfig {
            test: vec!["CMD-SHELL".into(), "exit".into(), "0".into()],
            ..Default::default()
        };
        let shell = vec!["/bin/ash".to_string(), "-ec".to_string()];
        let hc = resolve(Some(&req), None, Some(&shell)).unwrap().unwrap();
        assert_eq!(hc.args, ["/bin/ash", "-ec", "exit 0"]);
    }

    #[test]
    fn malformed_tests_are_refused() {
        for test in [
            &["CMD"][..],
            &["CMD-SHELL"],
            &["SHELL", "true"],
            &["CMD", ""],
        ] {
            let req = HealthConfig {
                test: test.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            assert!(
                matches!(
                    resolve(Some(&req), None, None),
                    Err(HealthError::InvalidTest { .. })
                ),
                "{test:?}"
            );
        }
    }
}
