//! `berth service ps` and `berth node ps`: the task table Docker prints
//! (`ID NAME IMAGE NODE DESIRED STATE CURRENT STATE ERROR PORTS`), newest task of each slot
//! first and its older tasks below it under ` \_ `. CURRENT STATE carries the health of a
//! task with a health check like `docker ps` STATUS does: `Running 5 seconds ago (healthy)`,
//! `Starting 2 seconds ago (health: starting)`, `Failed 1 second ago (unhealthy)`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::naming::task_display_name;
use berth_proto::v1::list_tasks_request::Filters;
use berth_proto::v1::{
    HealthState, InfoRequest, ListNodesRequest, ListTasksRequest, Node, Task, TaskState,
};
use clap::Args;

use super::{Daemon, display_image, list_services, ports_text, service_name, status_error};
use crate::commands::format::{go_template, human_duration};
use crate::commands::short_id;
use crate::table::Table;

/// Longest error `service ps` shows without `--no-trunc` (Docker's).
const MAX_ERROR_LEN: usize = 30;

/// Flags of both `service ps` and `node ps`.
#[derive(Debug, Default, Clone, Args)]
pub struct TaskListFlags {
    /// Filter output based on conditions provided (id=, name=, node=, desired-state=)
    #[arg(short = 'f', long = "filter", value_name = "filter")]
    pub filters: Vec<String>,
    /// Format output (`json` or a Go template such as '{{.Name}}')
    #[arg(long, value_name = "string")]
    pub format: Option<String>,
    /// Do not map IDs to Names
    #[arg(long)]
    pub no_resolve: bool,
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
}

/// `berth service ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Shared flags.
    #[command(flatten)]
    pub flags: TaskListFlags,
    /// Services (id, name or id prefix)
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
}

/// `berth node ps`.
#[derive(Debug, Args)]
pub struct NodePsArgs {
    /// Shared flags.
    #[command(flatten)]
    pub flags: TaskListFlags,
    /// Nodes (id, id prefix, hostname or `self`); default `self`
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
}

/// The `-f` filters, parsed.
#[derive(Debug, Default, PartialEq)]
pub struct TaskFilters {
    /// `id=` prefixes.
    pub ids: Vec<String>,
    /// `name=` prefixes of the display name (`web.1`).
    pub names: Vec<String>,
    /// `node=` ids, id prefixes or hostnames.
    pub nodes: Vec<String>,
    /// `desired-state=` values.
    pub desired_states: Vec<TaskState>,
}

/// Parses `-f KEY=VALUE` filters with Docker's keys and messages.
pub fn parse_filters(filters: &[String]) -> anyhow::Result<TaskFilters> {
    let mut parsed = TaskFilters::default();
    for filter in filters {
        let Some((key, value)) = filter.split_once('=') else {
            anyhow::bail!("bad format of filter (expected name=value): {filter}");
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "id" => parsed.ids.push(value.to_string()),
            "name" => parsed.names.push(value.to_string()),
            "node" => parsed.nodes.push(value.to_string()),
            "desired-state" => {
                let state = match value.to_ascii_lowercase().as_str() {
                    "running" => TaskState::Running,
                    "shutdown" => TaskState::Shutdown,
                    "accepted" => TaskState::Accepted,
                    _ => anyhow::bail!(
                        "invalid desired-state filter {value:?}: expected running, shutdown or accepted"
                    ),
                };
                parsed.desired_states.push(state);
            }
            other => anyhow::bail!("invalid filter '{other}'"),
        }
    }
    Ok(parsed)
}

async fn list_nodes(daemon: &mut Daemon) -> anyhow::Result<Vec<Node>> {
    Ok(daemon
        .control
        .list_nodes(ListNodesRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .nodes)
}

fn hostname(node: &Node) -> &str {
    node.description
        .as_ref()
        .map_or("", |d| d.hostname.as_str())
}

/// Finds a node by full id, hostname or unique id prefix (`self` is resolved by the caller).
fn find_node<'a>(nodes: &'a [Node], name: &str) -> anyhow::Result<&'a Node> {
    if let Some(n) = nodes.iter().find(|n| n.id == name) {
        return Ok(n);
    }
    let by_host: Vec<&Node> = nodes.iter().filter(|n| hostname(n) == name).collect();
    if let [n] = by_host.as_slice() {
        return Ok(n);
    }
    let by_prefix: Vec<&Node> = nodes.iter().filter(|n| n.id.starts_with(name)).collect();
    match (by_host.len(), by_prefix.as_slice()) {
        (0, [n]) => Ok(n),
        (0, []) => anyhow::bail!("node {name} not found"),
        (hosts, prefixes) => anyhow::bail!(
            "node {name} is ambiguous ({} matches)",
            hosts.max(prefixes.len())
        ),
    }
}

async fn self_node_id(daemon: &mut Daemon) -> anyhow::Result<String> {
    Ok(daemon
        .node
        .info(InfoRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .node_id)
}

/// `berth service ps SERVICE...`.
pub async fn service_ps(daemon: &mut Daemon, args: PsArgs) -> anyhow::Result<()> {
    let services = list_services(daemon).await?;
    let mut service_ids = Vec::new();
    for name in &args.services {
        let id = super::find(&services, name)?.id.clone();
        if !service_ids.contains(&id) {
            service_ids.push(id);
        }
    }
    let mut filters = Filters {
        service_ids,
        ..Default::default()
    };
    print_tasks(daemon, &args.flags, &mut filters).await
}

/// `berth node ps [NODE...]` (default `self`).
pub async fn node_ps(daemon: &mut Daemon, args: NodePsArgs) -> anyhow::Result<()> {
    let names = if args.nodes.is_empty() {
        vec!["self".to_string()]
    } else {
        args.nodes.clone()
    };
    let nodes = list_nodes(daemon).await?;
    let mut node_ids = Vec::new();
    for name in &names {
        let id = if name == "self" {
            self_node_id(daemon).await?
        } else {
            find_node(&nodes, name)?.id.clone()
        };
        if !node_ids.contains(&id) {
            node_ids.push(id);
        }
    }
    let mut filters = Filters {
        node_ids,
        ..Default::default()
    };
    print_tasks(daemon, &args.flags, &mut filters).await
}

/// Lists the tasks matching `filters` plus the `-f` filters, and prints them.
async fn print_tasks(
    daemon: &mut Daemon,
    flags: &TaskListFlags,
    filters: &mut Filters,
) -> anyhow::Result<()> {
    let parsed = parse_filters(&flags.filters)?;
    let nodes = list_nodes(daemon).await?;
    filters.id_prefixes = parsed.ids;
    filters.name_prefixes = parsed.names;
    filters.desired_states = parsed.desired_states.iter().map(|s| *s as i32).collect();
    if !parsed.nodes.is_empty() {
        let mut wanted = Vec::new();
        for name in &parsed.nodes {
            wanted.push(find_node(&nodes, name)?.id.clone());
        }
        if filters.node_ids.is_empty() {
            filters.node_ids = wanted;
        } else {
            filters.node_ids.retain(|id| wanted.contains(id));
            if filters.node_ids.is_empty() {
                // The node arguments and the node= filter do not meet: nothing matches.
                return print_rows(flags, &[]);
            }
        }
    }
    let tasks = daemon
        .control
        .list_tasks(ListTasksRequest {
            filters: Some(filters.clone()),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .tasks;
    let services = list_services(daemon).await?;
    let service_names: HashMap<String, String> = services
        .iter()
        .map(|s| (s.id.clone(), service_name(s).to_string()))
        .collect();
    let hostnames: HashMap<String, String> = nodes
        .iter()
        .map(|n| (n.id.clone(), hostname(n).to_string()))
        .collect();
    let view = TableView {
        no_trunc: flags.no_trunc,
        no_resolve: flags.no_resolve,
        now: SystemTime::now(),
    };
    let rows = task_rows(&tasks, &service_names, &hostnames, &view);
    print_rows(flags, &rows)
}

fn print_rows(flags: &TaskListFlags, rows: &[TaskRow]) -> anyhow::Result<()> {
    if flags.quiet {
        for row in rows {
            println!("{}", row.id);
        }
        return Ok(());
    }
    match flags.format.as_deref() {
        None | Some("table") => print!("{}", render_table(rows)),
        Some("json") => {
            for row in rows {
                println!("{}", row.json());
            }
        }
        Some(template) => {
            for row in rows {
                println!(
                    "{}",
                    go_template(template, &row.json()).map_err(|e| anyhow::anyhow!("{e}"))?
                );
            }
        }
    }
    Ok(())
}

/// How the table is shown.
#[derive(Debug, Clone)]
pub struct TableView {
    /// `--no-trunc`: full ids, images and errors.
    pub no_trunc: bool,
    /// `--no-resolve`: node ids instead of hostnames.
    pub no_resolve: bool,
    /// The time "N seconds ago" counts from.
    pub now: SystemTime,
}

/// One row of the task table, already formatted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// ID.
    pub id: String,
    /// NAME (` \_ ` prefixed for older tasks of a slot).
    pub name: String,
    /// IMAGE.
    pub image: String,
    /// NODE.
    pub node: String,
    /// DESIRED STATE.
    pub desired: String,
    /// CURRENT STATE.
    pub current: String,
    /// ERROR.
    pub error: String,
    /// PORTS.
    pub ports: String,
}

impl TaskRow {
    /// The row as `--format json` prints it (Docker's keys).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ID": self.id,
            "Name": self.name,
            "Image": self.image,
            "Node": self.node,
            "DesiredState": self.desired,
            "CurrentState": self.current,
            "Error": self.error,
            "Ports": self.ports,
        })
    }
}

fn seconds(t: Option<&prost_types::Timestamp>) -> Option<f64> {
    t.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// The health suffix of CURRENT STATE (`docker ps` words): shown while a task with a
/// health check starts or runs, and on any task its check found unhealthy.
pub fn health_suffix(state: TaskState, health: i32) -> &'static str {
    let live = matches!(state, TaskState::Starting | TaskState::Running);
    match HealthState::try_from(health) {
        Ok(HealthState::Starting) if live => " (health: starting)",
        Ok(HealthState::Healthy) if live => " (healthy)",
        Ok(HealthState::Unhealthy) => " (unhealthy)",
        _ => "",
    }
}

/// `Running 13 seconds ago`, as Docker prints CURRENT STATE, plus [`health_suffix`].
pub fn current_state(task: &Task, now: SystemTime) -> String {
    let status = task.status.clone().unwrap_or_default();
    let state = TaskState::try_from(status.state).unwrap_or(TaskState::New);
    let health = health_suffix(state, status.health);
    let at = seconds(status.timestamp.as_ref())
        .or_else(|| seconds(task.meta.as_ref().and_then(|m| m.created_at.as_ref())));
    let text = match at {
        Some(at) => {
            let now = now
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            format!(
                "{state} {} ago",
                human_duration((now - at).max(0.0)).to_lowercase()
            )
        }
        None => state.to_string(),
    };
    format!("{text}{health}")
}

/// Docker's `Ellipsis`: at most `max` characters, the last one `…` when cut.
pub fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn created(task: &Task) -> (i64, i32) {
    task.meta
        .as_ref()
        .and_then(|m| m.created_at.as_ref())
        .map_or((0, 0), |t| (t.seconds, t.nanos))
}

/// The rows of `tasks`: sorted by service name, slot (or node), newest first; older tasks of
/// a slot get the ` \_ ` prefix.
pub fn task_rows(
    tasks: &[Task],
    service_names: &HashMap<String, String>,
    hostnames: &HashMap<String, String>,
    view: &TableView,
) -> Vec<TaskRow> {
    let mut sorted: Vec<&Task> = tasks.iter().collect();
    let service_of = |t: &Task| {
        service_names
            .get(&t.service_id)
            .cloned()
            .unwrap_or_else(|| {
                t.service_annotations
                    .as_ref()
                    .map_or(String::new(), |a| a.name.clone())
            })
    };
    sorted.sort_by(|a, b| {
        (service_of(a), &a.service_id, a.slot, &a.node_id)
            .cmp(&(service_of(b), &b.service_id, b.slot, &b.node_id))
            .then(created(b).cmp(&created(a)))
            .then(b.id.cmp(&a.id))
    });
    let mut rows = Vec::with_capacity(sorted.len());
    let mut previous: Option<(String, u64, String)> = None;
    for task in sorted {
        let key = (
            task.service_id.clone(),
            task.slot,
            if task.slot == 0 {
                task.node_id.clone()
            } else {
                String::new()
            },
        );
        let mut shown = task.clone();
        if let Some(annotations) = shown.service_annotations.as_mut() {
            annotations.name = service_of(task);
        }
        let name = task_display_name(&shown);
        let name = if previous.as_ref() == Some(&key) {
            format!(" \\_ {name}")
        } else {
            name
        };
        previous = Some(key);
        let image = task
            .spec
            .as_ref()
            .and_then(|s| s.container.as_ref())
            .map_or("", |c| c.image.as_str());
        let status = task.status.clone().unwrap_or_default();
        let err = status.err.replace('\n', " ");
        let error = if err.is_empty() {
            String::new()
        } else if view.no_trunc {
            format!("\"{err}\"")
        } else {
            format!("\"{}\"", ellipsis(&err, MAX_ERROR_LEN))
        };
        let node = if view.no_resolve {
            task.node_id.clone()
        } else {
            hostnames
                .get(&task.node_id)
                .filter(|h| !h.is_empty())
                .cloned()
                .unwrap_or_else(|| task.node_id.clone())
        };
        let desired = TaskState::try_from(task.desired_state)
            .map_or_else(|_| "Unknown".to_string(), |s| s.to_string());
        rows.push(TaskRow {
            id: if view.no_trunc {
                task.id.clone()
            } else {
                short_id(&task.id).to_string()
            },
            name,
            image: if view.no_trunc {
                image.to_string()
            } else {
                display_image(image).to_string()
            },
            node,
            desired,
            current: current_state(task, view.now),
            error,
            ports: status
                .port_status
                .as_ref()
                .map_or(String::new(), |p| ports_text(&p.ports)),
        });
    }
    rows
}

/// The rows as Docker's table.
pub fn render_table(rows: &[TaskRow]) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
        "PORTS",
    ]);
    for r in rows {
        table.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.image.clone(),
            r.node.clone(),
            r.desired.clone(),
            r.current.clone(),
            r.error.clone(),
            r.ports.clone(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::service::fixtures::{service, task};
    use std::time::Duration;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000)
    }

    #[test]
    fn slots_group_newest_first_with_history_indented() {
        let web = service("svcweb000000000000000000a", "web", Some(2));
        let mut failed = task(
            "t1old0000000000000000000a",
            &web,
            1,
            "n1",
            TaskState::Shutdown,
            TaskState::Failed,
            900,
        );
        failed.status.as_mut().unwrap().err =
            "no suitable node (insufficient memory on 3 nodes)".into();
        let tasks = vec![
            task(
                "t2000000000000000000000aa",
                &web,
                2,
                "n2",
                TaskState::Running,
                TaskState::Pending,
                990,
            ),
            failed,
            task(
                "t1new0000000000000000000a",
                &web,
                1,
                "n1",
                TaskState::Running,
                TaskState::Running,
                987,
            ),
        ];
        let names = HashMap::from([(web.id.clone(), "web".to_string())]);
        let hosts = HashMap::from([
            ("n1".to_string(), "node-1".to_string()),
            ("n2".to_string(), "node-2".to_string()),
        ]);
        let view = TableView {
            no_trunc: false,
            no_resolve: false,
            now: now(),
        };
        let table = render_table(&task_rows(&tasks, &names, &hosts, &view));
        let expected = "\
ID             NAME        IMAGE          NODE     DESIRED STATE   CURRENT STATE               ERROR                              PORTS
t1new0000000   web.1       busybox:1.36   node-1   Running         Running 13 seconds ago
t1old0000000    \\_ web.1   busybox:1.36   node-1   Shutdown        Failed about a minute ago   \"no suitable node (insufficien…\"
t20000000000   web.2       busybox:1.36   node-2   Running         Pending 10 seconds ago
";
        assert_eq!(table, expected);

        let view = TableView {
            no_trunc: true,
            no_resolve: true,
            now: now(),
        };
        let rows = task_rows(&tasks, &names, &hosts, &view);
        assert_eq!(rows[1].id, "t1old0000000000000000000a");
        assert_eq!(rows[1].node, "n1");
        assert_eq!(
            rows[1].error,
            "\"no suitable node (insufficient memory on 3 nodes)\""
        );
        let json = rows[0].json();
        assert_eq!(json["Name"], "web.1");
        assert_eq!(json["CurrentState"], "Running 13 seconds ago");
    }

    #[test]
    fn global_tasks_are_named_by_node() {
        let agent = service("svcagent0000000000000000a", "agent", None);
        let tasks = vec![
            task(
                "ta",
                &agent,
                0,
                "nodeb",
                TaskState::Running,
                TaskState::Running,
                999,
            ),
            task(
                "tb",
                &agent,
                0,
                "nodea",
                TaskState::Running,
                TaskState::Running,
                999,
            ),
            task(
                "tc",
                &agent,
                0,
                "nodea",
                TaskState::Shutdown,
                TaskState::Complete,
                500,
            ),
        ];
        let view = TableView {
            no_trunc: false,
            no_resolve: false,
            now: now(),
        };
        let rows = task_rows(&tasks, &HashMap::new(), &HashMap::new(), &view);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["agent.nodea", " \\_ agent.nodea", "agent.nodeb"]);
        assert_eq!(rows[0].current, "Running 1 second ago");
        assert_eq!(rows[1].current, "Complete 8 minutes ago");
        assert_eq!(rows[1].desired, "Shutdown");
    }

    #[test]
    fn filters_parse_with_dockers_keys() {
        let f = parse_filters(&[
            "desired-state=running".into(),
            "name=web.1".into(),
            "node=n1".into(),
            "id=abc".into(),
        ])
        .unwrap();
        assert_eq!(
            f,
            TaskFilters {
                ids: vec!["abc".into()],
                names: vec!["web.1".into()],
                nodes: vec!["n1".into()],
                desired_states: vec![TaskState::Running],
            }
        );
        let err = parse_filters(&["foo=1".into()]).unwrap_err().to_string();
        assert_eq!(err, "invalid filter 'foo'");
        let err = parse_filters(&["name".into()]).unwrap_err().to_string();
        assert!(err.contains("expected name=value"), "{err}");
        let err = parse_filters(&["desired-state=gone".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"gone\""), "{err}");
    }

    #[test]
    fn current_state_shows_health_like_docker_ps() {
        let web = service("svcweb00000000000000000a", "web", Some(1));
        let at = |state, health: HealthState| {
            let mut t = task("t1", &web, 1, "n1", TaskState::Running, state, 999);
            if let Some(s) = t.status.as_mut() {
                s.health = health as i32;
            }
            current_state(&t, now())
        };
        assert_eq!(
            at(TaskState::Running, HealthState::Healthy),
            "Running 1 second ago (healthy)"
        );
        assert_eq!(
            at(TaskState::Starting, HealthState::Starting),
            "Starting 1 second ago (health: starting)"
        );
        assert_eq!(
            at(TaskState::Failed, HealthState::Unhealthy),
            "Failed 1 second ago (unhealthy)"
        );
        assert_eq!(
            at(TaskState::Shutdown, HealthState::Healthy),
            "Shutdown 1 second ago"
        );
        assert_eq!(
            at(TaskState::Running, HealthState::None),
            "Running 1 second ago"
        );
    }

    #[test]
    fn errors_are_cut_at_thirty_characters() {
        assert_eq!(ellipsis("short", 30), "short");
        let cut = ellipsis(&"x".repeat(40), 30);
        assert_eq!(cut.chars().count(), 30);
        assert!(cut.ends_with('…'));
    }
}
