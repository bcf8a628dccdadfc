//! Helpers on the generated [`TaskState`]: lifecycle order, terminal states, and the names
//! Docker prints.
//!
//! Invariant: a task's state never moves backwards. The wire values increase along the
//! lifecycle (NEW = 0 ... RUNNING = 512 ... ORPHANED = 832), so "backwards" is a numeric
//! comparison and the larger of two observations wins ([`TaskState::can_move_to`]).

use std::fmt;

use crate::v1::TaskState;

impl TaskState {
    /// Every state, in lifecycle (and numeric) order.
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    /// Whether the task is done: its container ended or never will run (every state after
    /// RUNNING). A terminal task is never started again; a replacement is a new task.
    pub fn is_terminal(self) -> bool {
        (self as i32) > (TaskState::Running as i32)
    }

    /// Whether a task in this state may be moved to `next`: never backwards. Staying in the
    /// same state is allowed (a fresher message or timestamp for the same state), and so is
    /// skipping states (a task can fail straight from PREPARING).
    pub fn can_move_to(self, next: TaskState) -> bool {
        (next as i32) >= (self as i32)
    }

    /// Docker's lower-case name ("running"), as in API JSON and `desired-state=` filters.
    pub fn docker_name(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// The state named `name` in Docker's spelling, ignoring case ("running", "Shutdown").
    pub fn from_docker_name(name: &str) -> Option<TaskState> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.docker_name().eq_ignore_ascii_case(name))
    }
}

/// The name as `docker service ps` prints it: capitalised, e.g. "Running", "Shutdown".
impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.docker_name();
        let mut chars = name.chars();
        let capitalised: String = chars
            .next()
            .map(|first| first.to_ascii_uppercase())
            .into_iter()
            .chain(chars)
            .collect();
        // pad() honours width and alignment, so tables can use `{:<15}`.
        f.pad(&capitalised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_are_swarms() {
        let values: Vec<i32> = TaskState::ALL.iter().map(|&s| s as i32).collect();
        assert_eq!(
            values,
            [
                0, 64, 192, 256, 320, 384, 448, 512, 576, 640, 704, 768, 800, 832
            ]
        );
    }

    #[test]
    fn all_lists_every_state_in_order() {
        // Every value the enum accepts from the wire appears in ALL, and ALL is sorted.
        for raw in 0..=1024 {
            if let Ok(state) = TaskState::try_from(raw) {
                assert!(
                    TaskState::ALL.contains(&state),
                    "{state:?} missing from ALL"
                );
            }
        }
        assert!(
            TaskState::ALL
                .windows(2)
                .all(|w| (w[0] as i32) < (w[1] as i32))
        );
    }

    #[test]
    fn terminal_states_are_those_after_running() {
        let terminal: Vec<TaskState> = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                TaskState::Complete,
                TaskState::Shutdown,
                TaskState::Failed,
                TaskState::Rejected,
                TaskState::Remove,
                TaskState::Orphaned
            ]
        );
        assert!(!TaskState::Running.is_terminal());
        assert!(!TaskState::New.is_terminal());
    }

    #[test]
    fn never_backwards() {
        assert!(TaskState::New.can_move_to(TaskState::Pending));
        assert!(TaskState::Preparing.can_move_to(TaskState::Rejected));
        assert!(TaskState::Running.can_move_to(TaskState::Running));
        assert!(TaskState::Running.can_move_to(TaskState::Failed));
        assert!(!TaskState::Running.can_move_to(TaskState::Starting));
        assert!(!TaskState::Failed.can_move_to(TaskState::Running));
        assert!(!TaskState::Shutdown.can_move_to(TaskState::Complete));
        assert!(!TaskState::Assigned.can_move_to(TaskState::New));
        // Exhaustively: allowed exactly when the lifecycle position does not decrease.
        for (i, a) in TaskState::ALL.into_iter().enumerate() {
            for (j, b) in TaskState::ALL.into_iter().enumerate() {
                assert_eq!(a.can_move_to(b), j >= i, "{a:?} -> {b:?}");
            }
        }
    }

    #[test]
    fn display_matches_docker() {
        assert_eq!(TaskState::Running.to_string(), "Running");
        assert_eq!(TaskState::Shutdown.to_string(), "Shutdown");
        assert_eq!(TaskState::Complete.to_string(), "Complete");
        assert_eq!(TaskState::New.to_string(), "New");
        assert_eq!(TaskState::Orphaned.to_string(), "Orphaned");
        assert_eq!(format!("{:<10}|", TaskState::Ready), "Ready     |");
    }

    #[test]
    fn docker_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(
                TaskState::from_docker_name(state.docker_name()),
                Some(state)
            );
            assert_eq!(TaskState::from_docker_name(&state.to_string()), Some(state));
        }
        assert_eq!(
            TaskState::from_docker_name("RUNNING"),
            Some(TaskState::Running)
        );
        assert_eq!(TaskState::from_docker_name("allocated"), None);
        assert_eq!(TaskState::from_docker_name(""), None);
    }
}
