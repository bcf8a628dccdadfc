//! Object names: the derived names of tasks and the rules user-chosen names must follow.
//!
//! Task names are `<service>.<slot>.<task id>` for replicated services and
//! `<service>.<node id>.<task id>` for global ones (Swarm's format; `service ps` prints them
//! without the task id). Service and network names must be DNS labels, because they are
//! resolved by the cluster's DNS; secret and config names follow Swarm's file-name rule.
//! The rules match Swarm's exactly, so names that work there work here.

use std::fmt;

use crate::v1::Task;

/// Longest service or network name: a DNS label.
pub const MAX_DNS_NAME_LEN: usize = 63;

/// Longest secret or config name.
pub const MAX_FILE_NAME_LEN: usize = 64;

/// The kind of object a name is for (it decides the rule and appears in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A service name.
    Service,
    /// A network name.
    Network,
    /// A secret name.
    Secret,
    /// A config name.
    Config,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Service => "service",
            NameKind::Network => "network",
            NameKind::Secret => "secret",
            NameKind::Config => "config",
        })
    }
}

/// What is wrong with a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    /// The name is empty.
    #[error("{kind} name must not be empty")]
    Empty {
        /// Kind of object named.
        kind: NameKind,
    },
    /// The name is longer than its kind allows.
    #[error("{kind} name {name:?} is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Kind of object named.
        kind: NameKind,
        /// The name.
        name: String,
        /// Its length in characters.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a character its kind does not allow.
    #[error(
        "{kind} name {name:?} contains {found:?} at position {position}; only {allowed} are allowed"
    )]
    InvalidCharacter {
        /// Kind of object named.
        kind: NameKind,
        /// The name.
        name: String,
        /// The offending character.
        found: char,
        /// Its position, counting characters from 0.
        position: usize,
        /// The allowed characters, e.g. "letters, digits, '-' and '_'".
        allowed: &'static str,
    },
    /// The name starts or ends with a character that is allowed only inside it.
    #[error("{kind} name {name:?} must start and end with a letter or digit")]
    BadEdge {
        /// Kind of object named.
        kind: NameKind,
        /// The name.
        name: String,
    },
}

/// Checks a service name: a DNS label of at most 63 characters. Letters and digits, with
/// '-' and '_' allowed inside (stack services are named `<stack>_<service>`).
pub fn validate_service_name(name: &str) -> Result<(), NamingError> {
    validate_dns_name(NameKind::Service, name)
}

/// Checks a network name, by the same rule as service names.
pub fn validate_network_name(name: &str) -> Result<(), NamingError> {
    validate_dns_name(NameKind::Network, name)
}

/// Checks a secret name: at most 64 characters of `[a-zA-Z0-9-_.]`, starting and ending with
/// a letter or digit.
pub fn validate_secret_name(name: &str) -> Result<(), NamingError> {
    validate_file_name(NameKind::Secret, name)
}

/// Checks a config name, by the same rule as secret names.
pub fn validate_config_name(name: &str) -> Result<(), NamingError> {
    validate_file_name(NameKind::Config, name)
}

/// Swarm's `^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$`, at most 63 characters.
fn validate_dns_name(kind: NameKind, name: &str) -> Result<(), NamingError> {
    validate(
        kind,
        name,
        MAX_DNS_NAME_LEN,
        "letters, digits, '-' and '_'",
        |c| c == '-' || c == '_',
    )
}

/// Swarm's `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`, at most 64 characters.
fn validate_file_name(kind: NameKind, name: &str) -> Result<(), NamingError> {
    validate(
        kind,
        name,
        MAX_FILE_NAME_LEN,
        "letters, digits, '-', '_' and '.'",
        |c| c == '-' || c == '_' || c == '.',
    )
}

/// A name of ASCII letters and digits plus `inner` characters that may not come first or last.
fn validate(
    kind: NameKind,
    name: &str,
    max: usize,
    allowed: &'static str,
    inner: impl Fn(char) -> bool,
) -> Result<(), NamingError> {
    if name.is_empty() {
        return Err(NamingError::Empty { kind });
    }
    let len = name.chars().count();
    if len > max {
        return Err(NamingError::TooLong {
            kind,
            name: name.to_owned(),
            len,
            max,
        });
    }
    if let Some((position, found)) = name
        .chars()
        .enumerate()
        .find(|&(_, c)| !c.is_ascii_alphanumeric() && !inner(c))
    {
        return Err(NamingError::InvalidCharacter {
            kind,
            name: name.to_owned(),
            found,
            position,
            allowed,
        });
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().next_back()) {
        return Err(NamingError::BadEdge {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Name of a replicated service's task: `<service>.<slot>.<task id>`.
pub fn replicated_task_name(service: &str, slot: u64, task_id: &str) -> String {
    format!("{service}.{slot}.{task_id}")
}

/// Name of a global service's task: `<service>.<node id>.<task id>`.
pub fn global_task_name(service: &str, node_id: &str, task_id: &str) -> String {
    format!("{service}.{node_id}.{task_id}")
}

/// A task's full name: its own annotation if set, else derived from its service name, its slot
/// (replicated) or node id (global, slot 0), and its id. Also the container name on the node.
pub fn task_name(task: &Task) -> String {
    if let Some(name) = task
        .annotations
        .as_ref()
        .map(|a| a.name.as_str())
        .filter(|n| !n.is_empty())
    {
        return name.to_owned();
    }
    let service = service_name(task);
    if task.slot == 0 {
        global_task_name(service, &task.node_id, &task.id)
    } else {
        replicated_task_name(service, task.slot, &task.id)
    }
}

/// A task's name as `service ps` prints it: `<service>.<slot>`, or `<service>.<node id>` for
/// global services (the task id is a column of its own).
pub fn task_display_name(task: &Task) -> String {
    let service = service_name(task);
    if task.slot == 0 {
        format!("{service}.{}", task.node_id)
    } else {
        format!("{service}.{}", task.slot)
    }
}

/// The service name a task carries, or "" if it has none.
fn service_name(task: &Task) -> &str {
    task.service_annotations
        .as_ref()
        .map_or("", |a| a.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Annotations;

    fn task(service: &str, slot: u64, node_id: &str, id: &str) -> Task {
        Task {
            id: id.to_owned(),
            slot,
            node_id: node_id.to_owned(),
            service_annotations: Some(Annotations {
                name: service.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn task_names_follow_swarm() {
        let t = task("web", 3, "node1", "task1");
        assert_eq!(task_name(&t), "web.3.task1");
        assert_eq!(task_display_name(&t), "web.3");

        let g = task("agent", 0, "vk8ec4fjjfb8df77q8f6odi4u", "task2");
        assert_eq!(task_name(&g), "agent.vk8ec4fjjfb8df77q8f6odi4u.task2");
        assert_eq!(task_display_name(&g), "agent.vk8ec4fjjfb8df77q8f6odi4u");

        assert_eq!(replicated_task_name("a", 10, "x"), "a.10.x");
        assert_eq!(global_task_name("a", "n", "x"), "a.n.x");
    }

    #[test]
    fn task_annotation_name_wins() {
        let mut t = task("web", 1, "", "task1");
        t.annotations = Some(Annotations {
            name: "custom".to_owned(),
            ..Default::default()
        });
        assert_eq!(task_name(&t), "custom");
        // An empty annotation name does not count.
        t.annotations = Some(Annotations::default());
        assert_eq!(task_name(&t), "web.1.task1");
    }

    #[test]
    fn dns_names_accepted() {
        for name in [
            "web",
            "a",
            "A1",
            "my-app",
            "stack_web",
            "a--b",
            "a_-_b",
            "0",
            &"x".repeat(63),
        ] {
            assert_eq!(validate_service_name(name), Ok(()), "{name}");
            assert_eq!(validate_network_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn dns_names_rejected_with_reason() {
        assert_eq!(
            validate_service_name(""),
            Err(NamingError::Empty {
                kind: NameKind::Service
            })
        );
        assert_eq!(
            validate_service_name(&"x".repeat(64)),
            Err(NamingError::TooLong {
                kind: NameKind::Service,
                name: "x".repeat(64),
                len: 64,
                max: 63
            })
        );
        assert_eq!(
            validate_network_name("my.net"),
            Err(NamingError::InvalidCharacter {
                kind: NameKind::Network,
                name: "my.net".to_owned(),
                found: '.',
                position: 2,
                allowed: "letters, digits, '-' and '_'",
            })
        );
        for name in ["-web", "web-", "_web", "web_", "-"] {
            assert_eq!(
                validate_service_name(name),
                Err(NamingError::BadEdge {
                    kind: NameKind::Service,
                    name: name.to_owned()
                }),
                "{name}"
            );
        }
        for name in ["web app", "wéb", "web/1", "web:1"] {
            assert!(
                matches!(
                    validate_service_name(name),
                    Err(NamingError::InvalidCharacter { .. })
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn file_names_accepted() {
        for name in [
            "db_password",
            "site.key",
            "a",
            "a.b-c_d",
            "9",
            "x..y",
            &"x".repeat(64),
        ] {
            assert_eq!(validate_secret_name(name), Ok(()), "{name}");
            assert_eq!(validate_config_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn file_names_rejected_with_reason() {
        assert_eq!(
            validate_config_name(""),
            Err(NamingError::Empty {
                kind: NameKind::Config
            })
        );
        assert!(matches!(
            validate_secret_name(&"x".repeat(65)),
            Err(NamingError::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        for name in [".hidden", "key.", "-a", "a_"] {
            assert_eq!(
                validate_secret_name(name),
                Err(NamingError::BadEdge {
                    kind: NameKind::Secret,
                    name: name.to_owned()
                }),
                "{name}"
            );
        }
        assert!(matches!(
            validate_secret_name("a/b"),
            Err(NamingError::InvalidCharacter {
                found: '/',
                position: 1,
                ..
            })
        ));
    }

    #[test]
    fn errors_read_well() {
        let err = validate_secret_name("my secret").unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret name \"my secret\" contains ' ' at position 2; only letters, digits, '-', '_' and '.' are allowed"
        );
        let err = validate_service_name("web-").unwrap_err();
        assert_eq!(
            err.to_string(),
            "service name \"web-\" must start and end with a letter or digit"
        );
        let err = validate_network_name(&"n".repeat(70)).unwrap_err();
        assert!(
            err.to_string()
                .contains("is 70 characters long; at most 63 are allowed"),
            "{err}"
        );
    }
}
