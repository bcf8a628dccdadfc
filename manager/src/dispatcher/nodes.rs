//! The dispatcher's registry of nodes it watches: each node's current session (if any) and
//! the instant it is declared DOWN unless it beats (or registers) before.
//!
//! A node enters the registry when it registers, or — right after a leader change — when the
//! new dispatcher starts watching every node that was not DOWN. It leaves when it expires (the
//! caller marks it DOWN). A dropped session keeps the node's deadline: a node that does not
//! come back within its heartbeat window goes DOWN like one that stopped beating.
//!
//! Pure bookkeeping over [`Instant`]s (tokio's clock, so unit tests run on paused time).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A live session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The id quoted by every call of the session.
    pub id: String,
    /// Cancelled when the session ends (replaced, expired, or the dispatcher stops); its
    /// streams end with it.
    pub token: CancellationToken,
}

#[derive(Debug)]
struct Entry {
    session: Option<Session>,
    deadline: Instant,
}

/// Why a call naming a session is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SessionRefused {
    /// No such session for this node (it expired or was replaced): open a new one.
    #[error("session {session_id} of node {node_id} is not current; open a new session")]
    Invalid {
        /// The node.
        node_id: String,
        /// The session it named.
        session_id: String,
    },
    /// The node registered too often recently.
    #[error("node {node_id} opened {count} sessions within {period:?}; retry in a few seconds")]
    RateLimited {
        /// The node.
        node_id: String,
        /// Registrations counted.
        count: usize,
        /// The window.
        period: Duration,
    },
}

/// Registrations allowed per node within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// At most this many registrations...
    pub count: usize,
    /// ...within this window (Swarm: 3 per 8 s).
    pub period: Duration,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    nodes: HashMap<String, Entry>,
    registrations: HashMap<String, VecDeque<Instant>>,
}

impl Registry {
    /// Opens a new session for `node_id` expiring at `deadline`, replacing (and cancelling)
    /// any previous one. `parent` is the dispatcher's token.
    pub fn register(
        &mut self,
        node_id: &str,
        session_id: String,
        now: Instant,
        deadline: Instant,
        limit: RateLimit,
        parent: &CancellationToken,
    ) -> Result<Session, SessionRefused> {
        let recent = self.registrations.entry(node_id.to_owned()).or_default();
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= limit.period)
        {
            recent.pop_front();
        }
        if recent.len() >= limit.count {
            return Err(SessionRefused::RateLimited {
                node_id: node_id.to_owned(),
                count: recent.len(),
                period: limit.period,
            });
        }
        recent.push_back(now);
        let session = Session {
            id: session_id,
            token: parent.child_token(),
        };
        let old = self.nodes.insert(
            node_id.to_owned(),
            Entry {
                session: Some(session.clone()),
                deadline,
            },
        );
        if let Some(old) = old.and_then(|e| e.session) {
            old.token.cancel();
        }
        Ok(session)
    }

    /// The current session of `node_id` if it is `session_id`.
    pub fn session(&self, node_id: &str, session_id: &str) -> Result<Session, SessionRefused> {
        self.nodes
            .get(node_id)
            .and_then(|e| e.session.as_ref())
            .filter(|s| s.id == session_id)
            .cloned()
            .ok_or_else(|| SessionRefused::Invalid {
                node_id: node_id.to_owned(),
                session_id: session_id.to_owned(),
            })
    }

    /// A heartbeat of the current session: moves the deadline.
    pub fn heartbeat(
        &mut self,
        node_id: &str,
        session_id: &str,
        deadline: Instant,
    ) -> Result<(), SessionRefused> {
        match self.nodes.get_mut(node_id) {
            Some(e) if e.session.as_ref().is_some_and(|s| s.id == session_id) => {
                e.deadline = deadline;
                Ok(())
            }
            _ => Err(SessionRefused::Invalid {
                node_id: node_id.to_owned(),
                session_id: session_id.to_owned(),
            }),
        }
    }

    /// The session's stream was dropped by the agent: the node keeps its deadline but has no
    /// session. True if `session_id` was the current session (the node is now
    /// DISCONNECTED).
    pub fn disconnect(&mut self, node_id: &str, session_id: &str) -> bool {
        match self.nodes.get_mut(node_id) {
            Some(e) if e.session.as_ref().is_some_and(|s| s.id == session_id) => {
                if let Some(s) = e.session.take() {
                    s.token.cancel();
                }
                true
            }
            _ => false,
        }
    }

    /// Watches a node that has no session yet (after a leader change): DOWN at `deadline`
    /// unless it registers first. A node already watched is left alone.
    pub fn watch(&mut self, node_id: &str, deadline: Instant) {
        self.nodes.entry(node_id.to_owned()).or_insert(Entry {
            session: None,
            deadline,
        });
    }

    /// Removes and returns the nodes whose deadline is at or before `now`, cancelling their
    /// sessions.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(s) = self.nodes.remove(id).and_then(|e| e.session) {
                s.token.cancel();
            }
        }
        expired
    }

    /// Forgets `node_id` (removed from the cluster), cancelling its session.
    pub fn forget(&mut self, node_id: &str) {
        if let Some(s) = self.nodes.remove(node_id).and_then(|e| e.session) {
            s.token.cancel();
        }
        self.registrations.remove(node_id);
    }

    /// The earliest deadline, if any node is watched.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.nodes.values().map(|e| e.deadline).min()
    }

    /// Number of nodes with a live session.
    pub fn connected(&self) -> usize {
        self.nodes.values().filter(|e| e.session.is_some()).count()
    }

    /// Cancels every session (the dispatcher stops).
    pub fn close_all(&mut self) {
        for e in self.nodes.values_mut() {
            if let Some(s) = e.session.take() {
                s.token.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        count: 3,
        period: Duration::from_secs(8),
    };
    const TTL: Duration = Duration::from_millis(600);

    #[tokio::test(start_paused = true)]
    async fn a_session_expires_unless_it_beats() {
        let parent = CancellationToken::new();
        let mut r = Registry::default();
        let t0 = Instant::now();
        let s = r
            .register("n1", "s1".into(), t0, t0 + TTL, LIMIT, &parent)
            .expect("register");
        assert_eq!(r.next_deadline(), Some(t0 + TTL));
        tokio::time::advance(Duration::from_millis(500)).await;
        r.heartbeat("n1", "s1", Instant::now() + TTL).expect("beat");
        assert_eq!(r.expire(t0 + TTL), Vec::<String>::new());
        assert!(matches!(
            r.heartbeat("n1", "other", Instant::now() + TTL),
            Err(SessionRefused::Invalid { .. })
        ));
        let expired = r.expire(Instant::now() + TTL);
        assert_eq!(expired, vec!["n1".to_string()]);
        assert!(s.token.is_cancelled());
        assert_eq!(r.next_deadline(), None);
        assert!(r.session("n1", "s1").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_session_replaces_the_old_one() {
        let parent = CancellationToken::new();
        let mut r = Registry::default();
        let now = Instant::now();
        let a = r
            .register("n1", "a".into(), now, now + TTL, LIMIT, &parent)
            .expect("a");
        let b = r
            .register("n1", "b".into(), now, now + TTL, LIMIT, &parent)
            .expect("b");
        assert!(a.token.is_cancelled() && !b.token.is_cancelled());
        assert!(r.session("n1", "a").is_err());
        assert_eq!(r.session("n1", "b").map(|s| s.id), Ok("b".into()));
        // Dropping the old stream does not disconnect the new session.
        assert!(!r.disconnect("n1", "a"));
        assert!(r.disconnect("n1", "b"));
        assert!(b.token.is_cancelled());
        assert_eq!(r.connected(), 0);
        // Disconnected nodes keep their deadline.
        assert_eq!(r.expire(now + TTL), vec!["n1".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn registrations_are_rate_limited_per_node() {
        let parent = CancellationToken::new();
        let mut r = Registry::default();
        for i in 0..3 {
            let now = Instant::now();
            r.register("n1", format!("s{i}"), now, now + TTL, LIMIT, &parent)
                .expect("within the limit");
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let now = Instant::now();
        assert!(matches!(
            r.register("n1", "s3".into(), now, now + TTL, LIMIT, &parent),
            Err(SessionRefused::RateLimited { count: 3, .. })
        ));
        // Another node is not affected; after the window the node may register again.
        r.register("n2", "x".into(), now, now + TTL, LIMIT, &parent)
            .expect("other node");
        tokio::time::advance(Duration::from_secs(6)).await;
        let now = Instant::now();
        r.register("n1", "s4".into(), now, now + TTL, LIMIT, &parent)
            .expect("window passed");
    }

    #[tokio::test(start_paused = true)]
    async fn watched_nodes_expire_unless_they_register() {
        let parent = CancellationToken::new();
        let mut r = Registry::default();
        let now = Instant::now();
        r.watch("n1", now + TTL);
        r.watch("n2", now + TTL);
        r.register("n1", "s".into(), now, now + TTL * 2, LIMIT, &parent)
            .expect("register");
        // Watching an already registered node does not shorten its deadline.
        r.watch("n1", now);
        assert_eq!(r.expire(now + TTL), vec!["n2".to_string()]);
        parent.cancel();
        assert!(r.session("n1", "s").is_ok_and(|s| s.token.is_cancelled()));
    }
}
