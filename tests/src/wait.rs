//! Test diagnostics: polling for a condition with a deadline, and test logging.
//!
//! [`wait_until`] is how cluster tests wait for convergence: it polls a probe until it says
//! yes and, on timeout, fails with an error that names what was awaited, how long, and the
//! probe's last error; [`wait_until_or_dump`] also captures the cluster state at that moment.
//! [`init_test_logging`] routes `tracing` output through the test harness's capture.

use std::time::{Duration, Instant};

/// Pause between two probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok(true)` or `deadline` has passed;
/// returns how long it took.
///
/// `Ok(false)` means "not yet"; an error also means "not yet" but is remembered and reported
/// if the wait times out. The probe always runs at least once, and once more at the deadline.
pub fn wait_until(
    deadline: Duration,
    what: &str,
    probe: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    wait_until_or_dump(deadline, what, probe, String::new)
}

/// Like [`wait_until`], and on timeout calls `dump` and appends what it returns (for example
/// `berth node ls` output) to the error, also logging it.
pub fn wait_until_or_dump(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> anyhow::Result<bool>,
    dump: impl FnOnce() -> String,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut probes = 0u32;
    let mut last_error: Option<anyhow::Error>;
    loop {
        probes += 1;
        match probe() {
            Ok(true) => {
                let took = start.elapsed();
                tracing::debug!(what, ?took, probes, "condition met");
                return Ok(took);
            }
            Ok(false) => last_error = None,
            Err(e) => last_error = Some(e),
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            break;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - elapsed));
    }
    let last = match last_error {
        Some(e) => format!("last probe error: {e:#}"),
        None => "last probe: not yet".to_owned(),
    };
    let mut msg = format!(
        "timed out after {:.2?} waiting for {what} ({probes} probes; {last})",
        start.elapsed()
    );
    let state = dump();
    if !state.is_empty() {
        tracing::error!(what, "state at timeout:\n{state}");
        msg.push_str("\nstate at timeout:\n");
        msg.push_str(&state);
    }
    Err(anyhow::Error::msg(msg))
}

/// Installs a `tracing` subscriber writing through the test harness's output capture, filtered
/// by `RUST_LOG` (default `info`). Safe to call from every test; only the first call installs.
pub fn init_test_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Err means a subscriber is already installed, by an earlier call or by the test itself.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_once_the_probe_says_yes() {
        let calls = Cell::new(0);
        let took = wait_until(Duration::from_secs(5), "third call", || {
            calls.set(calls.get() + 1);
            Ok(calls.get() == 3)
        })
        .unwrap();
        assert_eq!(calls.get(), 3);
        assert!(took >= 2 * POLL_INTERVAL, "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn timeout_names_what_and_the_last_error_and_dumps() {
        let start = Instant::now();
        let calls = Cell::new(0);
        let err = wait_until_or_dump(
            Duration::from_millis(200),
            "the leader to appear",
            || {
                calls.set(calls.get() + 1);
                anyhow::bail!("connection refused #{}", calls.get())
            },
            || "node ls: nobody home".to_owned(),
        )
        .unwrap_err();
        let waited = start.elapsed();
        let msg = format!("{err:#}");
        assert!(msg.contains("waiting for the leader to appear"), "{msg}");
        assert!(
            msg.contains(&format!("connection refused #{}", calls.get())),
            "reports the last error: {msg}"
        );
        assert!(msg.contains("node ls: nobody home"), "{msg}");
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert!(calls.get() >= 4, "polled repeatedly: {}", calls.get());
    }

    #[test]
    fn a_later_not_yet_clears_an_earlier_error() {
        let calls = Cell::new(0);
        let err = wait_until(Duration::from_millis(100), "x", || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                anyhow::bail!("early failure")
            }
            Ok(false)
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("last probe: not yet"), "{msg}");
        assert!(!msg.contains("early failure"), "{msg}");
    }

    #[test]
    fn logging_init_is_idempotent() {
        init_test_logging();
        init_test_logging();
        tracing::info!("still fine");
    }
}
