//! Which manager to dial next, and how long to wait before dialling.
//!
//! [`Managers`] is the list of manager addresses the agent knows: the ones it was configured
//! with, replaced by the weighted list every session message carries (the leader heaviest),
//! and optionally remembered in a file so a restarted agent can find the cluster even if the
//! manager it joined through is gone. Dialling starts at the heaviest and moves down the list
//! after each failure.
//!
//! [`Backoff`]: 100 ms doubling to 8 s, each wait a random point in the upper half of the
//! current step (so agents that lost the same manager do not come back in lockstep), reset
//! once a session is established.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::identity::renewal::random_jitter;
use berth_proto::v1::WeightedPeer;

/// The managers an agent knows (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Managers {
    /// Addresses, heaviest first.
    addrs: Vec<String>,
    next: usize,
    file: Option<PathBuf>,
}

impl Managers {
    /// `seeds` first, then any remembered in `file` (read if it exists).
    pub fn new(seeds: &[String], file: Option<&Path>) -> Self {
        let mut addrs: Vec<String> = Vec::new();
        let remembered: Vec<String> = file
            .and_then(|f| fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for a in seeds.iter().chain(remembered.iter()) {
            if !a.is_empty() && !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        Managers {
            addrs,
            next: 0,
            file: file.map(Path::to_path_buf),
        }
    }

    /// The address to dial now, if any is known.
    pub fn current(&self) -> Option<&str> {
        if self.addrs.is_empty() {
            return None;
        }
        self.addrs
            .get(self.next % self.addrs.len())
            .map(String::as_str)
    }

    /// Dialling `addr` failed: the next attempt goes to the next manager.
    pub fn failed(&mut self, addr: &str) {
        if self.current() == Some(addr) {
            self.next = (self.next + 1) % self.addrs.len().max(1);
        }
    }

    /// A session with `connected` reported `peers`: they become the list (heaviest first;
    /// an empty report keeps the list), and dialling restarts from the top. Returns whether
    /// the list changed.
    pub fn update(&mut self, peers: &[WeightedPeer]) -> bool {
        let mut sorted: Vec<&WeightedPeer> = peers.iter().filter(|p| !p.addr.is_empty()).collect();
        if sorted.is_empty() {
            return false;
        }
        sorted.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.addr.cmp(&b.addr)));
        let mut addrs: Vec<String> = Vec::with_capacity(sorted.len());
        for p in sorted {
            if !addrs.contains(&p.addr) {
                addrs.push(p.addr.clone());
            }
        }
        if addrs == self.addrs {
            return false;
        }
        self.addrs = addrs;
        self.next = 0;
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "could not remember the manager list");
        }
        true
    }

    /// The addresses, heaviest first.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Writes the list to the file (atomically), if one is configured.
    fn save(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.addrs).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, file)
    }
}

/// Reconnect delays (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Delays from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            step: Duration::ZERO,
        }
    }

    /// The next wait: the step doubles (starting at `min`, capped at `max`), and the wait is
    /// a random point in its upper half.
    pub fn next_delay(&mut self) -> Duration {
        self.step = if self.step.is_zero() {
            self.min
        } else {
            (self.step * 2).min(self.max)
        };
        self.step.mul_f64(0.5 + random_jitter() / 2.0)
    }

    /// A session was established: start again from `min`.
    pub fn reset(&mut self) {
        self.step = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addr: &str, weight: i64) -> WeightedPeer {
        WeightedPeer {
            node_id: format!("id-{addr}"),
            addr: addr.into(),
            weight,
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(8));
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(b.next_delay());
        }
        let caps = [100u64, 200, 400, 800, 1600, 3200, 6400, 8000, 8000, 8000];
        for (d, cap) in steps.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn dialling_rotates_on_failure_and_follows_the_reported_list() {
        let mut m = Managers::new(&["a:1".into(), "b:1".into(), "a:1".into()], None);
        assert_eq!(m.addrs(), ["a:1", "b:1"]);
        assert_eq!(m.current(), Some("a:1"));
        m.failed("a:1");
        assert_eq!(m.current(), Some("b:1"));
        // A stale failure report for another address does not skip the current one.
        m.failed("a:1");
        assert_eq!(m.current(), Some("b:1"));
        m.failed("b:1");
        assert_eq!(m.current(), Some("a:1"));

        assert!(m.update(&[peer("c:1", 1), peer("leader:1", 10), peer("b:1", 1)]));
        assert_eq!(m.addrs(), ["leader:1", "b:1", "c:1"]);
        assert_eq!(m.current(), Some("leader:1"));
        assert!(!m.update(&[peer("b:1", 1), peer("leader:1", 10), peer("c:1", 1)]));
        // An empty report keeps what we know.
        assert!(!m.update(&[]));
        assert_eq!(m.addrs().len(), 3);
        assert_eq!(Managers::new(&[], None).current(), None);
    }

    #[test]
    fn the_list_is_remembered_across_restarts() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("agent/managers.json");
        let mut m = Managers::new(&["seed:1".into()], Some(&file));
        assert!(m.update(&[peer("m1:1", 10), peer("m2:1", 1)]));
        let again = Managers::new(&["seed:1".into()], Some(&file));
        assert_eq!(again.addrs(), ["seed:1", "m1:1", "m2:1"]);
        Ok(())
    }
}
