//! [`BurstWindow`]: the dispatcher's batching rule. A few sends in a row go out at once (the
//! agent waiting for a replacement task, the store waiting for a RUNNING status); beyond
//! `burst` sends within one `window`, the next waits until the oldest of them is a window
//! old, so a busy node still gets at most about `burst` messages per window.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct BurstWindow {
    window: Duration,
    burst: usize,
    /// Times of the last `burst` sends, oldest first.
    sent: VecDeque<Instant>,
}

impl BurstWindow {
    /// At most `burst` (at least 1) sends in any `window`.
    pub fn new(window: Duration, burst: usize) -> Self {
        let burst = burst.max(1);
        BurstWindow {
            window,
            burst,
            sent: VecDeque::with_capacity(burst),
        }
    }

    /// When the next send may go: `None` for now.
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        if self.sent.len() < self.burst {
            return None;
        }
        let free = *self.sent.front()? + self.window;
        (free > now).then_some(free)
    }

    /// Records a send at `now`.
    pub fn record(&mut self, now: Instant) {
        if self.sent.len() == self.burst {
            self.sent.pop_front();
        }
        self.sent.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_one_per_freed_slot() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = BurstWindow::new(Duration::from_millis(100), 3);
        for n in [0, 1, 2] {
            assert_eq!(w.ready_at(ms(n)), None, "send {n} waits");
            w.record(ms(n));
        }
        // The fourth within the window waits for the first to be 100 ms old.
        assert_eq!(w.ready_at(ms(3)), Some(ms(100)));
        assert_eq!(w.ready_at(ms(100)), None);
        w.record(ms(100));
        // Now the last three are at 1, 2 and 100 ms: the next slot frees at 101 ms.
        assert_eq!(w.ready_at(ms(50)), Some(ms(101)));
        // After a quiet window everything is free again.
        assert_eq!(w.ready_at(ms(250)), None);
    }
}
