//! A container's health as its probes move it (Docker's rules, pure and unit-tested):
//!
//! - it starts as STARTING;
//! - a probe that exits 0 resets the failing streak and makes it HEALTHY (also after
//!   UNHEALTHY: Docker lets a container recover);
//! - any other outcome (non-zero exit, timeout, a probe that cannot run) is a failure; a
//!   failure counts unless the container is still STARTING and the probe began within the
//!   start period (so a success ends the start period); `retries` counted failures in a row
//!   make it UNHEALTHY;
//! - the last [`MAX_LOG`] probes are kept, each output cut to [`MAX_OUTPUT`] bytes.

use std::collections::VecDeque;
use std::time::SystemTime;

use berth_proto::v1::{ContainerHealth, HealthProbe, HealthState};

/// How many probes the log keeps (Docker's).
pub const MAX_LOG: usize = 5;
/// How much of a probe's output is kept, in bytes (Docker's).
pub const MAX_OUTPUT: usize = 4096;

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its exit code; -1 when it could not run or timed out.
    pub exit_code: i32,
    /// Its output, or why it failed.
    pub output: String,
}

impl ProbeResult {
    /// Whether the probe passed.
    pub fn passed(&self) -> bool {
        self.exit_code == 0
    }
}

/// A container's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Starting, healthy or unhealthy.
    pub status: HealthState,
    /// Counted failures in a row.
    pub failing_streak: u32,
    /// The last probes, oldest first.
    pub log: VecDeque<ProbeResult>,
}

impl Default for Health {
    fn default() -> Self {
        Health::starting()
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl Health {
    /// A container whose checks have not passed yet.
    pub fn starting() -> Health {
        Health {
            status: HealthState::Starting,
            failing_streak: 0,
            log: VecDeque::new(),
        }
    }

    /// Records a probe that began `in_start_period` (within the start period after the
    /// container started), for a check with `retries`; returns the new status when it changed.
    pub fn record(
        &mut self,
        mut probe: ProbeResult,
        in_start_period: bool,
        retries: u32,
    ) -> Option<HealthState> {
        let before = self.status;
        if probe.passed() {
            self.failing_streak = 0;
            self.status = HealthState::Healthy;
        } else if !(self.status == HealthState::Starting && in_start_period) {
            self.failing_streak = self.failing_streak.saturating_add(1);
            if self.failing_streak >= retries.max(1) {
                self.status = HealthState::Unhealthy;
            }
        }
        probe.output = truncate(probe.output, MAX_OUTPUT);
        if self.log.len() >= MAX_LOG {
            self.log.pop_front();
        }
        self.log.push_back(probe);
        (self.status != before).then_some(self.status)
    }

    /// The wire form (`ContainerInfo.health_detail`).
    pub fn to_proto(&self) -> ContainerHealth {
        ContainerHealth {
            status: self.status as i32,
            failing_streak: i32::try_from(self.failing_streak).unwrap_or(i32::MAX),
            log: self
                .log
                .iter()
                .map(|p| HealthProbe {
                    start: Some(prost_types::Timestamp::from(p.start)),
                    end: Some(prost_types::Timestamp::from(p.end)),
                    exit_code: p.exit_code,
                    output: p.output.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(exit_code: i32) -> ProbeResult {
        ProbeResult {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            exit_code,
            output: String::new(),
        }
    }

    use HealthState::{Healthy, Starting, Unhealthy};

    /// Name, probes as (exit code, in start period), retries → status after each probe.
    type Case = (
        &'static str,
        &'static [(i32, bool)],
        u32,
        &'static [HealthState],
    );

    #[test]
    fn transitions_follow_dockers_rules() {
        let table: &[Case] = &[
            ("first success", &[(0, false)], 3, &[Healthy]),
            (
                "retries failures",
                &[(1, false), (1, false), (1, false)],
                3,
                &[Starting, Starting, Unhealthy],
            ),
            (
                "start-period failures do not count",
                &[(1, true), (1, true), (1, true), (1, false)],
                2,
                &[Starting, Starting, Starting, Starting],
            ),
            (
                "a success ends the start period",
                &[(0, true), (1, true), (1, true)],
                2,
                &[Healthy, Healthy, Unhealthy],
            ),
            (
                "a success resets the streak",
                &[(0, false), (1, false), (0, false), (1, false), (1, false)],
                2,
                &[Healthy, Healthy, Healthy, Healthy, Unhealthy],
            ),
            (
                "unhealthy recovers",
                &[(2, false), (0, false)],
                1,
                &[Unhealthy, Healthy],
            ),
            (
                "timeouts (-1) and other codes fail",
                &[(-1, false), (137, false)],
                2,
                &[Starting, Unhealthy],
            ),
        ];
        for (name, probes, retries, want) in table {
            let mut h = Health::starting();
            let got: Vec<HealthState> = probes
                .iter()
                .map(|&(code, start)| {
                    h.record(probe(code), start, *retries);
                    h.status
                })
                .collect();
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn record_reports_only_changes() {
        let mut h = Health::starting();
        assert_eq!(h.record(probe(1), false, 2), None);
        assert_eq!(h.record(probe(1), false, 2), Some(Unhealthy));
        assert_eq!(h.record(probe(1), false, 2), None);
        assert_eq!(h.failing_streak, 3);
        assert_eq!(h.record(probe(0), false, 2), Some(Healthy));
        assert_eq!(h.failing_streak, 0);
    }

    #[test]
    fn the_log_keeps_the_last_probes_with_bounded_output() {
        let mut h = Health::starting();
        for code in 0..8 {
            let mut p = probe(code);
            p.output = "é".repeat(MAX_OUTPUT);
            h.record(p, false, 100);
        }
        assert_eq!(h.log.len(), MAX_LOG);
        assert_eq!(h.log.front().map(|p| p.exit_code), Some(3));
        assert!(h.log.iter().all(|p| p.output.len() <= MAX_OUTPUT));
        let wire = h.to_proto();
        assert_eq!(wire.log.len(), MAX_LOG);
        assert_eq!(wire.failing_streak, 7, "codes 1..=7 failed in a row");
    }
}
