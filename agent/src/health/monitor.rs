//! The probe loop of one running container: wait `interval`, run the probe through a
//! [`Prober`] with the check's timeout, record the result ([`Health::record`]), publish the
//! health on a watch channel, repeat until told to stop (the container exited).
//!
//! Probes run one at a time; the interval counts from the end of the previous probe
//! (Docker's). A probe that does not answer by its timeout counts as a failure even if the
//! prober fails to kill it in time: the loop gives up waiting at timeout + [`KILL_GRACE`].
//! A probe the prober declines to judge (the container is being stopped) is not recorded.
//! Time comes from `tokio::time`, so the loop is tested with paused time and a fake prober.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::config::HealthCheck;
use super::state::{Health, ProbeResult};

/// A boxed, sendable future (what [`Prober::probe`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long past the timeout the loop still waits for a probe being killed.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// What a probe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Exit code; -1 when it could not run or timed out.
    pub exit_code: i32,
    /// Output (stdout then stderr), or why it could not run.
    pub output: String,
}

impl ProbeOutcome {
    /// The outcome of a probe that hit `timeout` (Docker's wording).
    pub fn timed_out(timeout: Duration) -> ProbeOutcome {
        ProbeOutcome {
            exit_code: -1,
            output: format!("Health check exceeded timeout ({timeout:?})"),
        }
    }
}

/// Runs probes inside one container.
pub trait Prober: Send + Sync + 'static {
    /// Runs `args` in the container and kills it if it still runs after `timeout`
    /// ([`ProbeOutcome::timed_out`]). A probe that cannot run is an outcome with exit code -1,
    /// except while the container is being stopped: then `None` (nothing to record).
    fn probe(&self, args: Vec<String>, timeout: Duration) -> BoxFuture<'_, Option<ProbeOutcome>>;
}

/// Probes a container started at `started` with `check` until `stop` completes, publishing
/// every result on `health` (which the caller created with [`Health::starting`]). `name`
/// identifies the container in logs.
pub async fn monitor<P: Prober>(
    name: String,
    check: HealthCheck,
    started: Instant,
    prober: P,
    health: watch::Sender<Health>,
    stop: impl Future<Output = ()> + Send,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(check.interval) => {}
        }
        let begun = Instant::now();
        let start = SystemTime::now();
        let probe = tokio::time::timeout(
            check.timeout + KILL_GRACE,
            prober.probe(check.args.clone(), check.timeout),
        );
        let outcome = tokio::select! {
            () = &mut stop => return,
            r = probe => match r {
                Ok(Some(outcome)) => outcome,
                Ok(None) => continue,
                Err(_) => ProbeOutcome::timed_out(check.timeout),
            },
        };
        let in_start_period = begun.duration_since(started) < check.start_period;
        let result = ProbeResult {
            start,
            end: SystemTime::now(),
            exit_code: outcome.exit_code,
            output: outcome.output,
        };
        let mut changed = None;
        health.send_modify(|h| changed = h.record(result, in_start_period, check.retries));
        if let Some(status) = changed {
            tracing::info!(container = %name, ?status, "health status changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use berth_proto::v1::HealthState;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A probe as the prober saw it: argv, timeout, when.
    type Call = (Vec<String>, Duration, Instant);

    /// A scripted "exit code" for a probe the prober declines to judge.
    const SKIP: i32 = i32::MIN;

    /// Each probe takes `took` of (paused) time and exits with the next scripted code; after
    /// the script, probes hang forever.
    #[derive(Clone)]
    struct Scripted {
        script: Arc<Mutex<VecDeque<(Duration, i32)>>>,
        calls: Arc<Mutex<Vec<Call>>>,
    }

    impl Scripted {
        fn new(script: &[(u64, i32)]) -> Scripted {
            Scripted {
                script: Arc::new(Mutex::new(
                    script
                        .iter()
                        .map(|&(ms, code)| (Duration::from_millis(ms), code))
                        .collect(),
                )),
                calls: Arc::default(),
            }
        }
    }

    impl Prober for Scripted {
        fn probe(
            &self,
            args: Vec<String>,
            timeout: Duration,
        ) -> BoxFuture<'_, Option<ProbeOutcome>> {
            self.calls
                .lock()
                .unwrap()
                .push((args, timeout, Instant::now()));
            let next = self.script.lock().unwrap().pop_front();
            Box::pin(async move {
                match next {
                    // The container is being stopped.
                    Some((_, SKIP)) => None,
                    Some((took, code)) if took <= timeout => {
                        tokio::time::sleep(took).await;
                        Some(ProbeOutcome {
                            exit_code: code,
                            output: format!("exit {code}"),
                        })
                    }
                    // A prober that kills at the timeout.
                    Some(_) => {
                        tokio::time::sleep(timeout).await;
                        Some(ProbeOutcome::timed_out(timeout))
                    }
                    // A prober that never returns: the loop's own guard must fire.
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn check(start_period_ms: u64, retries: u32) -> HealthCheck {
        HealthCheck {
            args: vec!["probe".into()],
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            start_period: Duration::from_millis(start_period_ms),
            retries,
        }
    }

    async fn run(
        check: HealthCheck,
        prober: Scripted,
        wait_for: HealthState,
    ) -> (Health, Duration) {
        let (tx, mut rx) = watch::channel(Health::starting());
        let stop = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(monitor(
            "c".into(),
            check,
            started,
            prober,
            tx,
            stop.clone().cancelled_owned(),
        ));
        let h = rx
            .wait_for(|h| h.status == wait_for)
            .await
            .expect("the monitor publishes")
            .clone();
        let took = started.elapsed();
        stop.cancel();
        task.await.expect("the monitor ends when stopped");
        (h, took)
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_passing_probe_after_one_interval_makes_it_healthy() {
        let prober = Scripted::new(&[(10, 0)]);
        let (h, took) = run(check(0, 3), prober.clone(), HealthState::Healthy).await;
        assert_eq!(took, Duration::from_millis(110));
        assert_eq!(h.log.len(), 1);
        let calls = prober.calls.lock().unwrap();
        assert_eq!(calls[0].0, ["probe"]);
        assert_eq!(calls[0].1, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_consecutive_failures_make_it_unhealthy() {
        // 100 ms interval + 10 ms probe each: the third failure ends at 330 ms.
        let prober = Scripted::new(&[(10, 1), (10, 1), (10, 1)]);
        let (h, took) = run(check(0, 3), prober, HealthState::Unhealthy).await;
        assert_eq!(took, Duration::from_millis(330));
        assert_eq!(h.failing_streak, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_the_start_period_do_not_count() {
        // Probes start at 100, 210, 320, 430 ms; the start period is 250 ms, so only the
        // probes starting at 320 and 430 count: unhealthy after the fourth.
        let prober = Scripted::new(&[(10, 1), (10, 1), (10, 1), (10, 1)]);
        let (h, took) = run(check(250, 2), prober, HealthState::Unhealthy).await;
        assert_eq!(took, Duration::from_millis(440));
        assert_eq!(h.log.len(), 4);
        assert_eq!(h.failing_streak, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_times_out_and_fails() {
        // The first probe is killed by the prober at 300 ms; the second never returns and
        // the loop's guard gives up at timeout + KILL_GRACE.
        let prober = Scripted::new(&[(10_000, 0)]);
        let (h, took) = run(check(0, 2), prober, HealthState::Unhealthy).await;
        let want = Duration::from_millis(100 + 300 + 100 + 300) + KILL_GRACE;
        assert_eq!(took, want);
        assert!(
            h.log
                .iter()
                .all(|p| p.exit_code == -1 && p.output == "Health check exceeded timeout (300ms)"),
            "{:?}",
            h.log
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probes_the_prober_declines_are_not_recorded() {
        let prober = Scripted::new(&[(0, SKIP), (0, SKIP), (10, 0)]);
        let (h, took) = run(check(0, 1), prober, HealthState::Healthy).await;
        assert_eq!(took, Duration::from_millis(310));
        assert_eq!(h.log.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_the_loop_even_mid_probe() {
        let prober = Scripted::new(&[]);
        let (tx, rx) = watch::channel(Health::starting());
        let stop = CancellationToken::new();
        let task = tokio::spawn(monitor(
            "c".into(),
            check(0, 1),
            Instant::now(),
            prober.clone(),
            tx,
            stop.clone().cancelled_owned(),
        ));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(prober.calls.lock().unwrap().len(), 1, "a probe is running");
        stop.cancel();
        task.await.expect("the monitor ends");
        assert_eq!(rx.borrow().status, HealthState::Starting);
    }
}
