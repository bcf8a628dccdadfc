//! When a node renews its certificate: at a random point between 50 % and 80 % of the
//! validity period (Swarm's `ca/renewer.go` window), or at once when that point has passed or
//! the certificate has expired.
//!
//! The functions are pure: callers pass the current time and a jitter in `[0, 1)` (from
//! [`random_jitter`] in production, fixed in tests). This lives in `proto`, not in the
//! manager's CA, because the renewing party is every node's agent, which never depends on the
//! manager crate.

use std::time::{Duration, SystemTime};

/// Earliest renewal point, as a fraction of the validity period.
pub const RENEW_WINDOW_START: f64 = 0.5;
/// Latest renewal point, as a fraction of the validity period.
pub const RENEW_WINDOW_END: f64 = 0.8;

/// The moment to renew a certificate valid from `not_before` to `not_after`. `jitter` in
/// `[0, 1]` picks the point inside the 50 %–80 % window (values outside are clamped; NaN
/// counts as 0). A certificate whose `not_after` is not after `not_before` renews at
/// `not_before`.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let Ok(validity) = not_after.duration_since(not_before) else {
        return not_before;
    };
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let fraction = RENEW_WINDOW_START + (RENEW_WINDOW_END - RENEW_WINDOW_START) * jitter;
    not_before + validity.mul_f64(fraction)
}

/// How long to wait from `now` before renewing; zero when the renewal point has passed or the
/// certificate has already expired.
pub fn renewal_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    if now >= not_after {
        return Duration::ZERO;
    }
    renewal_time(not_before, not_after, jitter)
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
}

/// A uniform jitter in `[0, 1)` from the OS random source (0.5 if it fails, which still lands
/// inside the window).
pub fn random_jitter() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        // 53 random bits make an exactly representable f64 in [0, 1).
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const HOUR: u64 = 3600;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_point_spans_50_to_80_percent() {
        // A 100-hour certificate starting at t=1000h.
        let nb = t(1000 * HOUR);
        let na = t(1100 * HOUR);
        let table = [
            (0.0, 1050 * HOUR),
            (0.5, 1065 * HOUR),
            (1.0, 1080 * HOUR),
            (-3.0, 1050 * HOUR),
            (7.0, 1080 * HOUR),
            (f64::NAN, 1050 * HOUR),
        ];
        for (jitter, expected) in table {
            assert_eq!(renewal_time(nb, na, jitter), t(expected), "jitter {jitter}");
        }
    }

    #[test]
    fn delay_counts_down_from_now_and_is_zero_when_due_or_expired() {
        let nb = t(0);
        let na = t(90 * 24 * HOUR); // 90 days, Swarm's default
        // jitter 0 -> renew at day 45.
        assert_eq!(
            renewal_delay(nb, na, t(HOUR), 0.0),
            Duration::from_secs(45 * 24 * HOUR - HOUR)
        );
        // jitter 1 -> renew at day 72.
        assert_eq!(
            renewal_delay(nb, na, t(0), 1.0),
            Duration::from_secs(72 * 24 * HOUR)
        );
        // Past the chosen point but still valid: renew now.
        assert_eq!(
            renewal_delay(nb, na, t(80 * 24 * HOUR), 0.0),
            Duration::ZERO
        );
        // Expired: renew now.
        assert_eq!(
            renewal_delay(nb, na, t(91 * 24 * HOUR), 1.0),
            Duration::ZERO
        );
        // Clock before not_before: wait the whole way to the point.
        let nb2 = t(10 * HOUR);
        let na2 = t(20 * HOUR);
        assert_eq!(
            renewal_delay(nb2, na2, t(0), 0.0),
            Duration::from_secs(15 * HOUR)
        );
    }

    #[test]
    fn inverted_validity_renews_immediately() {
        assert_eq!(renewal_time(t(100), t(50), 0.3), t(100));
        assert_eq!(renewal_delay(t(100), t(50), t(60), 0.3), Duration::ZERO);
    }

    #[test]
    fn random_jitter_stays_in_unit_interval_and_varies() {
        let samples: Vec<f64> = (0..64).map(|_| random_jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(samples.iter().any(|j| *j != samples[0]));
    }
}
