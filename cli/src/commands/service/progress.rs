//! Convergence progress of `service create`, `scale` (and `update`) without `-d`, like
//! Docker's: `overall progress: R out of N tasks`, one bar per slot (per node for global
//! services, up to 20), then `verify: Waiting N seconds to verify that tasks are stable...`
//! for the service's update monitor period (5 s unless set) and `verify: Service converged`.
//!
//! [`Tracker`] is the pure part: it is fed the service, its tasks and the live nodes on every
//! poll and says what to draw and whether to stop. The verify wait is real: the tasks are
//! watched during it, and a task that stops running sends it back to waiting
//! (`verify: Detected task failure`).
//!
//! Unlike Docker, which waits forever, the wait ends with an error when the service cannot
//! converge: a task ended and its restart policy does not replace it (condition none,
//! on-failure after a clean exit, or max attempts used up), or one slot's tasks ended
//! [`MAX_FAILURES_PER_SLOT`] times in a row (the service keeps retrying in the background).
//! Tasks waiting for a node (PENDING with a reason) are shown with that reason and waited
//! for, as they start once the cluster changes. A paused update or rollback ends the wait
//! with its message, like Docker's.
//!
//! [`Renderer`] draws the lines: in place with cursor movement on a terminal, as plain lines
//! (only those that changed) otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use berth_proto::naming::task_display_name;
use berth_proto::v1::{
    GetServiceRequest, ListNodesRequest, ListTasksRequest, NodeState, RestartCondition, Service,
    Task, TaskState, UpdateState, list_tasks_request::Filters,
};

use super::spec::{DEFAULT_MONITOR, default_restart_policy};
use super::{Daemon, service_name, std_duration};
use crate::commands::{short_id, status_error};

/// Poll period (Docker polls every 200 ms).
pub const POLL: Duration = Duration::from_millis(200);
/// Most slots (or nodes) that get a line of their own.
pub const MAX_BARS: usize = 20;
/// Ends of one slot's tasks after which the wait gives up when the restart policy retries
/// without limit.
pub const MAX_FAILURES_PER_SLOT: u32 = 3;
/// Longest per-task error shown in place of a bar (Docker's).
const MAX_ERROR_WIDTH: usize = 75;
/// Width of the longest state name shown ("preparing"), for alignment.
const STATE_WIDTH: usize = 9;
/// Bar steps (Docker numbers new=1 ... running=9).
const MAX_PROGRESS: u32 = 9;

/// Docker's progress number of a state; 0 for the states progress ignores.
fn numbered(state: TaskState) -> u32 {
    match state {
        TaskState::New => 1,
        TaskState::Pending => 3,
        TaskState::Assigned => 4,
        TaskState::Accepted => 5,
        TaskState::Preparing => 6,
        TaskState::Ready => 7,
        TaskState::Starting => 8,
        TaskState::Running => 9,
        TaskState::Complete => 10,
        TaskState::Shutdown => 11,
        TaskState::Failed => 12,
        TaskState::Rejected => 13,
        TaskState::Remove | TaskState::Orphaned => 0,
    }
}

fn state_of(value: i32) -> TaskState {
    TaskState::try_from(value).unwrap_or(TaskState::New)
}

fn observed(task: &Task) -> TaskState {
    state_of(task.status.as_ref().map_or(0, |s| s.state))
}

fn desired(task: &Task) -> TaskState {
    state_of(task.desired_state)
}

/// `running   [=============>       ]`: the state padded, then a 50-column bar.
pub fn bar(state: TaskState) -> String {
    let filled = ((numbered(state).min(MAX_PROGRESS) * 100 / MAX_PROGRESS) / 2) as usize;
    format!(
        "{:<width$} [{}>{}]",
        state.docker_name(),
        "=".repeat(filled),
        " ".repeat(50 - filled),
        width = STATE_WIDTH
    )
}

/// An error on one line, at most 75 characters (Docker's `truncError`).
pub fn trunc_error(err: &str) -> String {
    let err = err.replace('\n', " ");
    if err.chars().count() > MAX_ERROR_WIDTH {
        let mut cut: String = err.chars().take(MAX_ERROR_WIDTH - 1).collect();
        cut.push('…');
        cut
    } else {
        err
    }
}

/// One line of progress output: `KEY: TEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What the line is about: "overall progress", "1/3", a node id, "verify".
    pub key: String,
    /// Its current text.
    pub text: String,
    /// A countdown that plain output prints once rather than every second.
    pub countdown: bool,
}

/// What the progress decided after one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Keep polling.
    Waiting,
    /// Every task runs and stayed running for the monitor period.
    Converged,
    /// The service cannot converge; the reason, for the user.
    Failed(String),
}

/// Tracks one service's convergence over successive polls.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Per-slot (or per-node) line texts, kept between polls like Docker's lines.
    texts: BTreeMap<(u64, String), String>,
    /// The slot keys drawn, in order, at the last poll.
    shown: Vec<(u64, String)>,
    /// Replica count (or node count) the slot keys are written against.
    total: usize,
    overall: String,
    rollback_line: Option<String>,
    verify: Option<(String, bool)>,
    /// Tasks that had ended before the watch began: their ends are history, not failures.
    ended_before: HashSet<String>,
    /// Ended tasks already counted.
    counted: HashSet<String>,
    /// Ends per slot key since the watch began.
    failures: HashMap<(u64, String), u32>,
    converged_at: Option<Duration>,
    rollback: bool,
    rollback_done_message: Option<String>,
}

/// The slot a task fills: its replica number, or its node for global services.
fn slot_key(task: &Task) -> (u64, String) {
    if task.slot == 0 {
        (0, task.node_id.clone())
    } else {
        (task.slot, String::new())
    }
}

/// Why a task ended, for messages: `failed: "task: non-zero exit (1)"`.
fn end_reason(task: &Task) -> String {
    let status = task.status.clone().unwrap_or_default();
    let state = observed(task).docker_name();
    if !status.err.is_empty() {
        format!("{state}: {}", status.err)
    } else if let Some(c) = status.container_status.filter(|c| c.exit_code != 0) {
        format!("{state} (exit code {})", c.exit_code)
    } else {
        state.to_string()
    }
}

impl Tracker {
    /// A tracker for a service without history (just created): every task end counts.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker that ignores the ends of these tasks (listed before the command changed the
    /// service: `scale`, `update`).
    pub fn with_history(ended_before: HashSet<String>) -> Self {
        Self {
            ended_before,
            ..Self::default()
        }
    }

    /// The ids of the ended tasks in `tasks`, for [`Tracker::with_history`].
    pub fn ended(tasks: &[Task]) -> HashSet<String> {
        tasks
            .iter()
            .filter(|t| observed(t).is_terminal())
            .map(|t| t.id.clone())
            .collect()
    }

    /// The lines to draw now, in order.
    pub fn lines(&self) -> Vec<Line> {
        let mut lines = Vec::new();
        if !self.overall.is_empty() {
            lines.push(Line {
                key: "overall progress".into(),
                text: self.overall.clone(),
                countdown: false,
            });
        }
        for key in &self.shown {
            let label = if key.0 == 0 {
                short_id(&key.1).to_string()
            } else {
                format!("{}/{}", key.0, self.total)
            };
            lines.push(Line {
                key: label,
                text: self.texts.get(key).cloned().unwrap_or_default(),
                countdown: false,
            });
        }
        if let Some(text) = &self.rollback_line {
            lines.push(Line {
                key: "rollback".into(),
                text: text.clone(),
                countdown: false,
            });
        }
        if let Some((text, countdown)) = &self.verify {
            lines.push(Line {
                key: "verify".into(),
                text: text.clone(),
                countdown: *countdown,
            });
        }
        lines
    }

    /// Takes one poll: the service, all its tasks, the nodes that are not DOWN, and the time
    /// since the watch began.
    pub fn observe(
        &mut self,
        service: &Service,
        tasks: &[Task],
        active_nodes: &HashSet<String>,
        now: Duration,
    ) -> Outcome {
        if let Some(outcome) = self.update_status(service) {
            return outcome;
        }
        if let Some(reason) = self.count_failures(service, tasks) {
            return Outcome::Failed(reason);
        }
        let converged = match super::replicas(service) {
            Some(replicas) => self.replicated(replicas, tasks, active_nodes),
            None => self.global(tasks, active_nodes),
        };
        self.verify(service, converged, now)
    }

    /// Docker's handling of the update status (updates and rollbacks).
    fn update_status(&mut self, service: &Service) -> Option<Outcome> {
        let status = service.update_status.as_ref()?;
        let message = status.message.clone();
        match UpdateState::try_from(status.state).unwrap_or(UpdateState::None) {
            UpdateState::Updating => self.rollback = false,
            UpdateState::Paused => {
                return Some(Outcome::Failed(format!("service update paused: {message}")));
            }
            UpdateState::RollbackStarted => {
                if !self.rollback && !message.is_empty() {
                    self.rollback_line = Some(message);
                }
                self.rollback = true;
            }
            UpdateState::RollbackPaused => {
                return Some(Outcome::Failed(format!(
                    "service rollback paused: {message}"
                )));
            }
            UpdateState::RollbackCompleted => {
                self.rollback = true;
                self.rollback_done_message = Some(message);
            }
            UpdateState::None | UpdateState::Completed => {}
        }
        None
    }

    /// Counts tasks that ended on their own since the watch began, and says why the service
    /// cannot converge if it cannot.
    fn count_failures(&mut self, service: &Service, tasks: &[Task]) -> Option<String> {
        let policy = service
            .spec
            .as_ref()
            .and_then(|s| s.task.as_ref())
            .and_then(|t| t.restart)
            .unwrap_or_else(default_restart_policy);
        let condition =
            RestartCondition::try_from(policy.condition).unwrap_or(RestartCondition::Any);
        let name = service_name(service);
        let mut newly_ended: Vec<&Task> = tasks
            .iter()
            .filter(|t| {
                matches!(
                    observed(t),
                    TaskState::Complete | TaskState::Failed | TaskState::Rejected
                ) && !self.ended_before.contains(&t.id)
                    && !self.counted.contains(&t.id)
            })
            .collect();
        newly_ended.sort_by_key(|t| t.meta.as_ref().map_or(0, |m| m.version));
        for task in newly_ended {
            self.counted.insert(task.id.clone());
            let count = self.failures.entry(slot_key(task)).or_insert(0);
            *count += 1;
            let who = task_display_name(task);
            let reason = end_reason(task);
            let replaced = match condition {
                RestartCondition::None => false,
                RestartCondition::OnFailure => observed(task) != TaskState::Complete,
                RestartCondition::Any => true,
            };
            if !replaced {
                let condition = match condition {
                    RestartCondition::None => "none",
                    _ => "on-failure",
                };
                return Some(format!(
                    "service {name} cannot converge: task {who} {reason}, and its restart policy (condition {condition}) does not replace it"
                ));
            }
            if policy.max_attempts > 0 && u64::from(*count) > policy.max_attempts {
                return Some(format!(
                    "service {name} cannot converge: task {who} {reason}, and its restart policy allows only {} attempts",
                    policy.max_attempts
                ));
            }
            if *count >= MAX_FAILURES_PER_SLOT {
                return Some(format!(
                    "service {name} did not converge: tasks of {who} ended {count} times, the last one {reason} (the service keeps retrying; see `berth service ps {name}`)"
                ));
            }
        }
        None
    }

    /// Picks one task per slot like Docker: the lowest desired state, then the lowest
    /// observed state; tasks on DOWN nodes and states progress ignores are skipped.
    fn pick<'a>(
        tasks: &'a [Task],
        active_nodes: &HashSet<String>,
    ) -> BTreeMap<(u64, String), &'a Task> {
        let mut picked: BTreeMap<(u64, String), &Task> = BTreeMap::new();
        for task in tasks {
            if numbered(desired(task)) == 0 || numbered(observed(task)) == 0 {
                continue;
            }
            if !task.node_id.is_empty() && !active_nodes.contains(&task.node_id) {
                continue;
            }
            let key = slot_key(task);
            if let Some(existing) = picked.get(&key) {
                let (ed, td) = (numbered(desired(existing)), numbered(desired(task)));
                if ed < td || (ed == td && numbered(observed(existing)) <= numbered(observed(task)))
                {
                    continue;
                }
            }
            picked.insert(key, task);
        }
        picked
    }

    /// The line of one picked task, or `None` to keep the previous text (Docker draws
    /// nothing for ended tasks without an error).
    fn task_text(task: &Task) -> Option<String> {
        let err = task.status.as_ref().map_or("", |s| s.err.as_str());
        if !err.is_empty() {
            return Some(trunc_error(err));
        }
        if !desired(task).is_terminal() && !observed(task).is_terminal() {
            return Some(bar(observed(task)));
        }
        None
    }

    fn is_running(task: &Task) -> bool {
        !desired(task).is_terminal() && observed(task) == TaskState::Running
    }

    fn overall_text(&self, running: usize, total: usize) -> String {
        if self.rollback {
            format!("rolling back update: {running} out of {total} tasks")
        } else {
            format!("{running} out of {total} tasks")
        }
    }

    fn replicated(
        &mut self,
        replicas: u64,
        tasks: &[Task],
        active_nodes: &HashSet<String>,
    ) -> bool {
        let picked = Self::pick(tasks, active_nodes);
        let total = usize::try_from(replicas).unwrap_or(usize::MAX);
        let mut running = 0;
        for (key, task) in &picked {
            if key.0 == 0 || key.0 > replicas {
                continue;
            }
            if Self::is_running(task) {
                running += 1;
            }
            if let Some(text) = Self::task_text(task) {
                self.texts.insert(key.clone(), text);
            }
        }
        self.total = total;
        self.shown = if total <= MAX_BARS {
            (1..=replicas).map(|slot| (slot, String::new())).collect()
        } else {
            Vec::new()
        };
        self.overall = self.overall_text(running, total);
        running == total
    }

    fn global(&mut self, tasks: &[Task], active_nodes: &HashSet<String>) -> bool {
        let picked: BTreeMap<(u64, String), &Task> = Self::pick(tasks, active_nodes)
            .into_iter()
            .filter(|(key, task)| key.0 == 0 && !desired(task).is_terminal())
            .collect();
        let nodes = picked.len();
        if nodes == 0 && self.shown.is_empty() {
            self.overall = "waiting for new tasks".into();
            return false;
        }
        let mut running = 0;
        for (key, task) in &picked {
            if Self::is_running(task) {
                running += 1;
            }
            if let Some(text) = Self::task_text(task) {
                self.texts.insert(key.clone(), text);
            }
        }
        self.total = nodes;
        self.shown = if nodes <= MAX_BARS {
            picked.keys().cloned().collect()
        } else {
            Vec::new()
        };
        self.overall = self.overall_text(running, nodes);
        nodes > 0 && running == nodes
    }

    /// The verify phase: converged tasks must stay running for the monitor period.
    fn verify(&mut self, service: &Service, converged: bool, now: Duration) -> Outcome {
        if !converged {
            if self.converged_at.take().is_some() {
                self.verify = Some(("Detected task failure".into(), false));
            }
            return Outcome::Waiting;
        }
        let monitor = std_duration(
            service
                .spec
                .as_ref()
                .and_then(|s| s.update.as_ref())
                .and_then(|u| u.monitor.as_ref()),
        )
        .unwrap_or(DEFAULT_MONITOR);
        let since = *self.converged_at.get_or_insert(now);
        let waited = now.saturating_sub(since);
        if waited >= monitor {
            self.verify = Some(("Service converged".into(), false));
            if let Some(message) = self.rollback_done_message.take() {
                self.rollback_line = Some(message);
            }
            return Outcome::Converged;
        }
        let left = (monitor - waited).as_secs_f64().ceil() as u64;
        self.verify = Some((
            format!("Waiting {left} seconds to verify that tasks are stable..."),
            true,
        ));
        Outcome::Waiting
    }
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderMode {
    /// Lines redrawn in place (a terminal).
    Terminal,
    /// Changed lines appended (a pipe or file).
    Plain,
    /// Nothing (`-q`).
    Quiet,
}

impl RenderMode {
    /// Terminal or plain depending on stdout, or quiet.
    pub fn for_stdout(quiet: bool) -> Self {
        if quiet {
            RenderMode::Quiet
        } else if std::io::stdout().is_terminal() {
            RenderMode::Terminal
        } else {
            RenderMode::Plain
        }
    }
}

/// Draws successive sets of lines.
#[derive(Debug)]
pub struct Renderer<W: Write> {
    out: W,
    mode: RenderMode,
    drawn: usize,
    printed: HashMap<String, (String, bool)>,
}

impl<W: Write> Renderer<W> {
    /// A renderer writing to `out`.
    pub fn new(out: W, mode: RenderMode) -> Self {
        Self {
            out,
            mode,
            drawn: 0,
            printed: HashMap::new(),
        }
    }

    /// Draws the current lines.
    pub fn draw(&mut self, lines: &[Line]) -> std::io::Result<()> {
        match self.mode {
            RenderMode::Quiet => return Ok(()),
            RenderMode::Terminal => {
                // Auto-wrap off while drawing: a line wider than the terminal is clipped
                // instead of taking two rows, which would break the cursor-up count.
                write!(self.out, "\x1b[?7l")?;
                if self.drawn > 0 {
                    write!(self.out, "\x1b[{}A", self.drawn)?;
                }
                for line in lines {
                    write!(self.out, "\r\x1b[2K{}: {}\n", line.key, line.text)?;
                }
                write!(self.out, "\x1b[J\x1b[?7h")?;
                self.drawn = lines.len();
            }
            RenderMode::Plain => {
                for line in lines {
                    if line.text.trim().is_empty() {
                        continue;
                    }
                    let same = match self.printed.get(&line.key) {
                        Some((text, was_countdown)) => {
                            *text == line.text || (*was_countdown && line.countdown)
                        }
                        None => false,
                    };
                    if !same {
                        writeln!(self.out, "{}: {}", line.key, line.text)?;
                        self.printed
                            .insert(line.key.clone(), (line.text.clone(), line.countdown));
                    }
                }
            }
        }
        self.out.flush()
    }

    /// A message below the progress lines.
    pub fn message(&mut self, text: &str) -> std::io::Result<()> {
        if self.mode == RenderMode::Quiet {
            return Ok(());
        }
        writeln!(self.out, "{text}")?;
        self.drawn = 0;
        self.out.flush()
    }

    /// The writer (for tests).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Which tasks progress looks at.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Only tasks of the service's current spec (`service update`); create and scale look
    /// at all of them.
    pub up_to_date: bool,
    /// Tasks that had ended before the command changed the service (see
    /// [`Tracker::with_history`]).
    pub ended_before: HashSet<String>,
}

/// How long progress keeps polling through manager errors that may pass (no leader yet).
pub const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(30);

/// Errors a poll may get while managers elect a leader or restart.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
    )
}

/// One poll: the service, all its tasks (or the up-to-date ones) and the nodes not DOWN.
async fn poll(
    daemon: &mut Daemon,
    service_id: &str,
    up_to_date: bool,
) -> Result<(Service, Vec<Task>, HashSet<String>), tonic::Status> {
    let service = daemon
        .control
        .get_service(GetServiceRequest {
            service_id: service_id.to_string(),
        })
        .await?
        .into_inner()
        .service
        .unwrap_or_default();
    let tasks = daemon
        .control
        .list_tasks(ListTasksRequest {
            filters: Some(Filters {
                service_ids: vec![service_id.to_string()],
                up_to_date,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .tasks;
    let active = daemon
        .control
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes
        .into_iter()
        .filter(|n| n.status.as_ref().map_or(0, |s| s.state) != NodeState::Down as i32)
        .map(|n| n.id)
        .collect();
    Ok((service, tasks, active))
}

/// Polls the service until it converged, cannot converge, or Ctrl-C; draws progress to
/// stdout in `mode`.
pub async fn watch(
    daemon: &mut Daemon,
    service_id: &str,
    mode: RenderMode,
    options: WatchOptions,
) -> anyhow::Result<()> {
    let mut renderer = Renderer::new(std::io::stdout(), mode);
    let mut tracker = Tracker::with_history(options.ended_before);
    let start = tokio::time::Instant::now();
    // Registered now, before the first line is drawn: `tokio::signal::ctrl_c()` would only
    // install its handler when first polled, and a Ctrl-C before that would kill the CLI.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("listening for Ctrl-C: {e}"))?;
    let mut name = service_id.to_string();
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let (service, tasks, active) = match poll(daemon, service_id, options.up_to_date).await {
            Ok(state) => {
                failing_since = None;
                state
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                anyhow::bail!("service {name} was removed while waiting for it to converge")
            }
            Err(status) if transient(&status) => {
                // A leader election or a restarting manager: keep trying for a while.
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= UNAVAILABLE_PATIENCE {
                    return Err(status_error(status));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(status) => return Err(status_error(status)),
        };
        name = service_name(&service).to_string();
        let outcome = tracker.observe(&service, &tasks, &active, start.elapsed());
        renderer.draw(&tracker.lines())?;
        match outcome {
            Outcome::Converged => return Ok(()),
            Outcome::Failed(reason) => anyhow::bail!(reason),
            Outcome::Waiting => {}
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = interrupt.recv() => {
                renderer.message("Operation continuing in background.")?;
                renderer.message(&format!("Use `berth service ps {name}` to check progress."))?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::service::fixtures::{service, task};
    use berth_proto::v1::{RestartPolicy, UpdateConfig, UpdateStatus};

    fn nodes(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn texts(tracker: &Tracker) -> Vec<String> {
        tracker
            .lines()
            .into_iter()
            .map(|l| format!("{}: {}", l.key, l.text))
            .collect()
    }

    #[test]
    fn bars_match_dockers() {
        assert_eq!(
            bar(TaskState::Running),
            format!("running   [{}>]", "=".repeat(50))
        );
        assert_eq!(
            bar(TaskState::Preparing),
            format!("preparing [{}>{}]", "=".repeat(33), " ".repeat(17))
        );
        assert_eq!(
            bar(TaskState::New),
            format!("new       [{}>{}]", "=".repeat(5), " ".repeat(45))
        );
        let long = "x".repeat(100);
        assert_eq!(trunc_error(&long).chars().count(), 75);
        assert_eq!(trunc_error("a\nb"), "a b");
    }

    #[test]
    fn replicated_service_converges_after_the_monitor_period() {
        let web = service("svc", "web", Some(3));
        let live = nodes(&["n1", "n2"]);
        let mut tracker = Tracker::new();
        let mut tasks = vec![
            task(
                "a",
                &web,
                1,
                "n1",
                TaskState::Running,
                TaskState::Running,
                1,
            ),
            task(
                "b",
                &web,
                2,
                "n2",
                TaskState::Running,
                TaskState::Preparing,
                1,
            ),
            task("c", &web, 3, "", TaskState::Running, TaskState::Pending, 1),
        ];
        tasks[2].status.as_mut().unwrap().err =
            "no suitable node (insufficient memory on 2 nodes)".into();
        assert_eq!(
            tracker.observe(&web, &tasks, &live, secs(0)),
            Outcome::Waiting
        );
        assert_eq!(
            texts(&tracker),
            [
                "overall progress: 1 out of 3 tasks".to_string(),
                format!("1/3: {}", bar(TaskState::Running)),
                format!("2/3: {}", bar(TaskState::Preparing)),
                "3/3: no suitable node (insufficient memory on 2 nodes)".to_string(),
            ]
        );
        for t in &mut tasks {
            let status = t.status.as_mut().unwrap();
            status.state = TaskState::Running as i32;
            status.err.clear();
            t.node_id = "n1".into();
        }
        assert_eq!(
            tracker.observe(&web, &tasks, &live, secs(1)),
            Outcome::Waiting
        );
        let lines = tracker.lines();
        assert_eq!(lines[0].text, "3 out of 3 tasks");
        assert_eq!(
            lines.last().unwrap().text,
            "Waiting 5 seconds to verify that tasks are stable..."
        );
        assert!(lines.last().unwrap().countdown);
        assert_eq!(
            tracker.observe(&web, &tasks, &live, Duration::from_millis(3500)),
            Outcome::Waiting
        );
        assert_eq!(
            tracker.lines().last().unwrap().text,
            "Waiting 3 seconds to verify that tasks are stable..."
        );
        assert_eq!(
            tracker.observe(&web, &tasks, &live, secs(6)),
            Outcome::Converged
        );
        assert_eq!(tracker.lines().last().unwrap().text, "Service converged");
    }

    #[test]
    fn a_task_stopping_during_verify_restarts_the_wait() {
        let web = service("svc", "web", Some(1));
        let live = nodes(&["n1"]);
        let mut tracker = Tracker::new();
        let running = vec![task(
            "a",
            &web,
            1,
            "n1",
            TaskState::Running,
            TaskState::Running,
            1,
        )];
        assert_eq!(
            tracker.observe(&web, &running, &live, secs(0)),
            Outcome::Waiting
        );
        let mut failed = running.clone();
        failed[0].status.as_mut().unwrap().state = TaskState::Failed as i32;
        failed[0].status.as_mut().unwrap().err = "task: non-zero exit (1)".into();
        failed.push(task(
            "b",
            &web,
            1,
            "n1",
            TaskState::Ready,
            TaskState::Ready,
            2,
        ));
        assert_eq!(
            tracker.observe(&web, &failed, &live, secs(2)),
            Outcome::Waiting
        );
        assert_eq!(
            tracker.lines().last().unwrap().text,
            "Detected task failure"
        );
        // The replacement (desired READY, lower than RUNNING) is the slot's task now.
        assert_eq!(tracker.lines()[1].text, bar(TaskState::Ready));
        let mut replaced = failed.clone();
        replaced[1].desired_state = TaskState::Running as i32;
        replaced[1].status.as_mut().unwrap().state = TaskState::Running as i32;
        assert_eq!(
            tracker.observe(&web, &replaced, &live, secs(3)),
            Outcome::Waiting
        );
        assert_eq!(
            tracker.observe(&web, &replaced, &live, secs(7)),
            Outcome::Waiting
        );
        assert_eq!(
            tracker.observe(&web, &replaced, &live, secs(8)),
            Outcome::Converged
        );
    }

    #[test]
    fn zero_monitor_converges_at_once_and_scale_to_zero_too() {
        let mut web = service("svc", "web", Some(1));
        web.spec.as_mut().unwrap().update = Some(UpdateConfig {
            monitor: Some(prost_types::Duration::default()),
            ..Default::default()
        });
        let live = nodes(&["n1"]);
        let running = vec![task(
            "a",
            &web,
            1,
            "n1",
            TaskState::Running,
            TaskState::Running,
            1,
        )];
        let mut tracker = Tracker::new();
        assert_eq!(
            tracker.observe(&web, &running, &live, secs(0)),
            Outcome::Converged
        );

        let mut zero = service("svc", "web", Some(0));
        zero.spec.as_mut().unwrap().update = web.spec.as_ref().unwrap().update;
        let removing = vec![task(
            "a",
            &zero,
            1,
            "n1",
            TaskState::Remove,
            TaskState::Running,
            1,
        )];
        let mut tracker = Tracker::new();
        assert_eq!(
            tracker.observe(&zero, &removing, &live, secs(0)),
            Outcome::Converged
        );
        assert_eq!(tracker.lines()[0].text, "0 out of 0 tasks");
    }

    #[test]
    fn repeated_failures_end_the_wait_with_the_reason() {
        let web = service("svc", "web", Some(1));
        let live = nodes(&["n1"]);
        let mut tracker = Tracker::new();
        let mut tasks = Vec::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let mut t = task(
                id,
                &web,
                1,
                "n1",
                TaskState::Shutdown,
                TaskState::Failed,
                i as i64,
            );
            t.status.as_mut().unwrap().err = "task: non-zero exit (1)".into();
            tasks.push(t);
            let outcome = tracker.observe(&web, &tasks, &live, secs(i as u64));
            if i < 2 {
                assert_eq!(outcome, Outcome::Waiting, "after {} failures", i + 1);
            } else {
                let Outcome::Failed(reason) = outcome else {
                    panic!("expected a failure, got {outcome:?}")
                };
                assert!(
                    reason.contains("tasks of web.1 ended 3 times")
                        && reason.contains("task: non-zero exit (1)"),
                    "{reason}"
                );
            }
        }
    }

    #[test]
    fn history_from_before_the_watch_is_not_a_failure() {
        let web = service("svc", "web", Some(1));
        let live = nodes(&["n1"]);
        let old: Vec<Task> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| task(id, &web, 1, "n1", TaskState::Shutdown, TaskState::Failed, 1))
            .collect();
        let mut tracker = Tracker::with_history(Tracker::ended(&old));
        assert_eq!(
            tracker.observe(&web, &old, &live, secs(0)),
            Outcome::Waiting
        );
        // Without the history they are three ends of slot 1.
        let mut tracker = Tracker::new();
        assert!(matches!(
            tracker.observe(&web, &old, &live, secs(0)),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn restart_policy_none_fails_at_the_first_end() {
        let mut web = service("svc", "web", Some(2));
        web.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
            condition: RestartCondition::None as i32,
            ..Default::default()
        });
        let live = nodes(&["n1"]);
        let mut tracker = Tracker::new();
        let mut t = task(
            "a",
            &web,
            2,
            "n1",
            TaskState::Running,
            TaskState::Rejected,
            1,
        );
        t.status.as_mut().unwrap().err = "image busybox:9 not found".into();
        let Outcome::Failed(reason) = tracker.observe(&web, &[t], &live, secs(0)) else {
            panic!("expected a failure")
        };
        assert_eq!(
            reason,
            "service web cannot converge: task web.2 rejected: image busybox:9 not found, and its restart policy (condition none) does not replace it"
        );

        web.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            max_attempts: 1,
            ..Default::default()
        });
        let mut tracker = Tracker::new();
        let a = task("a", &web, 1, "n1", TaskState::Running, TaskState::Failed, 1);
        assert_eq!(
            tracker.observe(&web, std::slice::from_ref(&a), &live, secs(0)),
            Outcome::Waiting
        );
        let b = task("b", &web, 1, "n1", TaskState::Running, TaskState::Failed, 2);
        let Outcome::Failed(reason) = tracker.observe(&web, &[a, b], &live, secs(1)) else {
            panic!("expected a failure")
        };
        assert!(reason.contains("allows only 1 attempts"), "{reason}");
    }

    #[test]
    fn tasks_on_down_nodes_do_not_count() {
        let web = service("svc", "web", Some(1));
        let mut tracker = Tracker::new();
        let tasks = vec![task(
            "a",
            &web,
            1,
            "gone",
            TaskState::Running,
            TaskState::Running,
            1,
        )];
        assert_eq!(
            tracker.observe(&web, &tasks, &nodes(&["n1"]), secs(9)),
            Outcome::Waiting
        );
        assert_eq!(tracker.lines()[0].text, "0 out of 1 tasks");
    }

    #[test]
    fn global_service_has_one_line_per_node() {
        let agent = service("svc", "agent", None);
        let live = nodes(&["node-a-000000000000000000", "node-b-000000000000000000"]);
        let mut tracker = Tracker::new();
        assert_eq!(
            tracker.observe(&agent, &[], &live, secs(0)),
            Outcome::Waiting
        );
        assert_eq!(texts(&tracker), ["overall progress: waiting for new tasks"]);
        let tasks = vec![
            task(
                "a",
                &agent,
                0,
                "node-a-000000000000000000",
                TaskState::Running,
                TaskState::Running,
                1,
            ),
            task(
                "b",
                &agent,
                0,
                "node-b-000000000000000000",
                TaskState::Running,
                TaskState::Starting,
                1,
            ),
        ];
        assert_eq!(
            tracker.observe(&agent, &tasks, &live, secs(1)),
            Outcome::Waiting
        );
        assert_eq!(
            texts(&tracker),
            [
                "overall progress: 1 out of 2 tasks".to_string(),
                format!("node-a-00000: {}", bar(TaskState::Running)),
                format!("node-b-00000: {}", bar(TaskState::Starting)),
            ]
        );
    }

    #[test]
    fn paused_updates_and_rollbacks_end_the_wait() {
        let mut web = service("svc", "web", Some(1));
        web.update_status = Some(UpdateStatus {
            state: UpdateState::Paused as i32,
            message: "update paused due to failure or early termination of task x".into(),
            ..Default::default()
        });
        let mut tracker = Tracker::new();
        assert_eq!(
            tracker.observe(&web, &[], &nodes(&[]), secs(0)),
            Outcome::Failed(
                "service update paused: update paused due to failure or early termination of task x"
                    .into()
            )
        );
        web.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted as i32,
            message: "update rolled back due to failure".into(),
            ..Default::default()
        });
        let mut tracker = Tracker::new();
        assert_eq!(
            tracker.observe(&web, &[], &nodes(&[]), secs(0)),
            Outcome::Waiting
        );
        let lines = texts(&tracker);
        assert_eq!(
            lines[0],
            "overall progress: rolling back update: 0 out of 1 tasks"
        );
        assert!(lines.contains(&"rollback: update rolled back due to failure".to_string()));
    }

    fn lines(items: &[(&str, &str, bool)]) -> Vec<Line> {
        items
            .iter()
            .map(|(k, t, c)| Line {
                key: k.to_string(),
                text: t.to_string(),
                countdown: *c,
            })
            .collect()
    }

    #[test]
    fn plain_output_prints_changed_lines_once() {
        let mut r = Renderer::new(Vec::new(), RenderMode::Plain);
        r.draw(&lines(&[
            ("overall progress", "0 out of 1 tasks", false),
            ("1/1", "", false),
        ]))
        .unwrap();
        r.draw(&lines(&[
            ("overall progress", "0 out of 1 tasks", false),
            ("1/1", "pending", false),
        ]))
        .unwrap();
        r.draw(&lines(&[
            ("overall progress", "1 out of 1 tasks", false),
            ("1/1", "running", false),
            (
                "verify",
                "Waiting 5 seconds to verify that tasks are stable...",
                true,
            ),
        ]))
        .unwrap();
        r.draw(&lines(&[
            ("overall progress", "1 out of 1 tasks", false),
            ("1/1", "running", false),
            (
                "verify",
                "Waiting 4 seconds to verify that tasks are stable...",
                true,
            ),
        ]))
        .unwrap();
        r.draw(&lines(&[("verify", "Service converged", false)]))
            .unwrap();
        let out = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(
            out,
            "overall progress: 0 out of 1 tasks\n1/1: pending\noverall progress: 1 out of 1 tasks\n\
             1/1: running\nverify: Waiting 5 seconds to verify that tasks are stable...\n\
             verify: Service converged\n"
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn terminal_output_redraws_in_place() {
        let mut r = Renderer::new(Vec::new(), RenderMode::Terminal);
        r.draw(&lines(&[("a", "1", false), ("b", "2", false)]))
            .unwrap();
        r.draw(&lines(&[("a", "3", false)])).unwrap();
        let out = String::from_utf8(r.into_inner()).unwrap();
        assert_eq!(
            out,
            "\x1b[?7l\r\x1b[2Ka: 1\n\r\x1b[2Kb: 2\n\x1b[J\x1b[?7h\x1b[?7l\x1b[2A\r\x1b[2Ka: 3\n\x1b[J\x1b[?7h"
        );
        let mut q = Renderer::new(Vec::new(), RenderMode::Quiet);
        q.draw(&lines(&[("a", "1", false)])).unwrap();
        q.message("x").unwrap();
        assert!(q.into_inner().is_empty());
    }
}
