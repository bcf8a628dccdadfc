//! Wall-clock time for the control loops, behind a seam so that tests run on paused tokio time.
//!
//! Decisions compare "now" with times stored in objects (`meta.created_at`, `meta.updated_at`,
//! stamped from the Raft entry's proposal time), so they need wall-clock time rather than a
//! monotonic instant. [`SystemClock`] is the production clock; [`TokioClock`] follows tokio's
//! (pausable) clock from a fixed base, so `#[tokio::test(start_paused = true)]` tests see restart
//! delays and timeouts elapse instantly and deterministically.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// `base` plus the tokio time elapsed since the clock was made; follows paused test time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `base` now. Call it inside the runtime whose time it should follow.
    pub fn new(base: SystemTime) -> Self {
        TokioClock {
            base,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.base + self.start.elapsed()
    }
}

/// `t` as a protobuf timestamp (times before the epoch clamp to the epoch).
pub fn to_timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // subsec_nanos() < 1e9 fits in i32.
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf timestamp as a `SystemTime` (negative or malformed values clamp to the epoch).
pub fn from_timestamp(ts: &Timestamp) -> SystemTime {
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u32::try_from(ts.nanos).unwrap_or(0).min(999_999_999);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// A protobuf duration as a `Duration` (negative values clamp to zero).
pub fn from_duration(d: &prost_types::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0).min(999_999_999);
    Duration::new(secs, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_clamp() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(from_timestamp(&to_timestamp(t)), t);
        assert_eq!(
            from_timestamp(&Timestamp {
                seconds: -5,
                nanos: -1
            }),
            UNIX_EPOCH
        );
        assert_eq!(
            from_duration(&prost_types::Duration {
                seconds: -1,
                nanos: 0
            }),
            Duration::ZERO
        );
        assert_eq!(
            from_duration(&prost_types::Duration {
                seconds: 5,
                nanos: 1
            }),
            Duration::new(5, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let base = UNIX_EPOCH + Duration::from_secs(1000);
        let clock = TokioClock::new(base);
        assert_eq!(clock.now(), base);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), base + Duration::from_secs(90));
    }
}
