//! Secrets and configs of a task, delivered into its container without touching the node's
//! disk in clear.
//!
//! The worker keeps the secrets and configs the managers sent in memory only (see
//! [`crate::worker`]). When a task's container is created:
//!
//! ```text
//!  plan(spec, secrets, configs)            pure: which bytes go to which file, owner, mode
//!      │
//!  TaskFiles::materialize(root, name, plan)
//!      │  mount a fresh tmpfs (noswap when the kernel has it) at <root>/<name>, private,
//!      │  write secrets/<target> and files/<n> into it with uid/gid/mode
//!      ▼
//!  container created with read-only binds: <tmpfs>/secrets → /run/secrets,
//!      │                                   <tmpfs>/files/<n> → each config's target path
//!      ▼                                   (and each secret with an absolute target)
//!  TaskFiles::detach(): lazy unmount + rmdir on the host; the container's mount namespace
//!  keeps the only reference, so the data lives exactly as long as the container.
//! ```
//!
//! Targets: a secret's target is a file name (or relative path) under `/run/secrets`, or an
//! absolute path; a config's is an absolute path (a relative one is taken from `/`). Paths
//! must not contain `..`; two references may not share a target. `uid`/`gid` are numeric
//! ("" = 0), mode 0 = 0444.
//!
//! Invariant: the bytes of a secret exist on this node only in the worker's memory and in a
//! tmpfs (which is never written to swap when the kernel supports `noswap`, 6.4+).

mod tmpfs;

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use berth_proto::v1::{Config, ContainerSpec, FileTarget, Secret};

pub use tmpfs::{TaskFiles, sweep};

/// Where secrets with a relative target appear in the container.
pub const SECRETS_DIR: &str = "/run/secrets";

/// Why a task's files cannot be planned or written.
#[derive(Debug, thiserror::Error)]
pub enum TaskFilesError {
    /// The task references a secret or config this node was not sent.
    #[error("{kind} {name} ({id}) is not available on this node")]
    Missing {
        /// "secret" or "config".
        kind: &'static str,
        /// Its name as the task references it.
        name: String,
        /// Its id.
        id: String,
    },
    /// A target path, owner or mode is not usable.
    #[error("{kind} {name}: {reason}")]
    BadTarget {
        /// "secret" or "config".
        kind: &'static str,
        /// Its name as the task references it.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A host operation on the tmpfs failed.
    #[error("{action} {path:?}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One file to write into the tmpfs.
#[derive(Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Path relative to the tmpfs root.
    pub rel: PathBuf,
    /// Content.
    pub data: Vec<u8>,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

impl std::fmt::Debug for PlannedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content: logs must not carry secrets.
        f.debug_struct("PlannedFile")
            .field("rel", &self.rel)
            .field("len", &self.data.len())
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// One read-only bind from the tmpfs into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBind {
    /// Source relative to the tmpfs root (a directory or a file).
    pub rel: PathBuf,
    /// Absolute destination in the container.
    pub target: String,
}

/// What a task's container needs (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesPlan {
    /// Files to write, parents first.
    pub files: Vec<PlannedFile>,
    /// Binds, `/run/secrets` first.
    pub binds: Vec<PlannedBind>,
}

impl FilesPlan {
    /// Whether the task needs no files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Total bytes of content.
    pub fn bytes(&self) -> usize {
        self.files.iter().map(|f| f.data.len()).sum()
    }
}

fn parse_id(kind: &'static str, name: &str, what: &str, v: &str) -> Result<u32, TaskFilesError> {
    if v.is_empty() {
        return Ok(0);
    }
    v.parse().map_err(|_| TaskFilesError::BadTarget {
        kind,
        name: name.to_owned(),
        reason: format!("{what} {v:?} must be a number"),
    })
}

/// A clean relative path: normal components only.
fn clean_relative(kind: &'static str, name: &str, path: &str) -> Result<PathBuf, TaskFilesError> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(TaskFilesError::BadTarget {
            kind,
            name: name.to_owned(),
            reason: format!("target {path:?} must be a plain path without '..'"),
        });
    }
    Ok(p.to_path_buf())
}

/// An absolute target without `..`, normalised (`//a/./b` → `/a/b`).
fn clean_absolute(kind: &'static str, name: &str, path: &str) -> Result<String, TaskFilesError> {
    let rel = path.trim_start_matches('/');
    let clean = clean_relative(kind, name, rel)?;
    Ok(format!("/{}", clean.display()))
}

struct Target<'a> {
    kind: &'static str,
    name: &'a str,
    file: Option<&'a FileTarget>,
}

impl Target<'_> {
    fn owner(&self) -> Result<(u32, u32, u32), TaskFilesError> {
        let (uid, gid, mode) = self
            .file
            .map_or(("", "", 0), |f| (f.uid.as_str(), f.gid.as_str(), f.mode));
        let mode = if mode == 0 { 0o444 } else { mode };
        if mode > 0o7777 {
            return Err(TaskFilesError::BadTarget {
                kind: self.kind,
                name: self.name.to_owned(),
                reason: format!("mode {mode:o} is not a permission mode"),
            });
        }
        Ok((
            parse_id(self.kind, self.name, "uid", uid)?,
            parse_id(self.kind, self.name, "gid", gid)?,
            mode,
        ))
    }
}

/// Plans the files of a container: every secret and config `spec` references must be among
/// `secrets`/`configs` (what the managers sent for this task), with its data.
pub fn plan(
    spec: &ContainerSpec,
    secrets: &[Secret],
    configs: &[Config],
) -> Result<FilesPlan, TaskFilesError> {
    let mut plan = FilesPlan::default();
    let mut targets = HashSet::new();
    let mut claim = |kind: &'static str, name: &str, target: String| {
        if targets.insert(target.clone()) {
            Ok(())
        } else {
            Err(TaskFilesError::BadTarget {
                kind,
                name: name.to_owned(),
                reason: format!("target {target} is used twice"),
            })
        }
    };
    let mut extra = 0usize;
    for r in &spec.secrets {
        let kind = "secret";
        let name = r.secret_name.as_str();
        let secret = secrets
            .iter()
            .find(|s| s.id == r.secret_id)
            .ok_or_else(|| TaskFilesError::Missing {
                kind,
                name: name.to_owned(),
                id: r.secret_id.clone(),
            })?;
        let data = secret
            .spec
            .as_ref()
            .map(|s| s.data.clone())
            .unwrap_or_default();
        let t = Target {
            kind,
            name,
            file: r.target.as_ref(),
        };
        let (uid, gid, mode) = t.owner()?;
        let target_name = r
            .target
            .as_ref()
            .map(|f| f.name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(name);
        if target_name.starts_with('/') {
            let target = clean_absolute(kind, name, target_name)?;
            claim(kind, name, target.clone())?;
            let rel = PathBuf::from(format!("files/{extra}"));
            extra += 1;
            plan.binds.push(PlannedBind {
                rel: rel.clone(),
                target,
            });
            plan.files.push(PlannedFile {
                rel,
                data,
                uid,
                gid,
                mode,
            });
        } else {
            let rel = clean_relative(kind, name, target_name)?;
            claim(kind, name, format!("{SECRETS_DIR}/{}", rel.display()))?;
            plan.files.push(PlannedFile {
                rel: Path::new("secrets").join(rel),
                data,
                uid,
                gid,
                mode,
            });
        }
    }
    for r in &spec.configs {
        let kind = "config";
        let name = r.config_name.as_str();
        let config = configs
            .iter()
            .find(|c| c.id == r.config_id)
            .ok_or_else(|| TaskFilesError::Missing {
                kind,
                name: name.to_owned(),
                id: r.config_id.clone(),
            })?;
        let t = Target {
            kind,
            name,
            file: r.target.as_ref(),
        };
        let (uid, gid, mode) = t.owner()?;
        let target_name = r
            .target
            .as_ref()
            .map(|f| f.name.as_str())
            .filter(|n| !n.is_empty())
            .unwrap_or(name);
        let target = clean_absolute(kind, name, target_name)?;
        claim(kind, name, target.clone())?;
        let rel = PathBuf::from(format!("files/{extra}"));
        extra += 1;
        plan.binds.push(PlannedBind {
            rel: rel.clone(),
            target,
        });
        plan.files.push(PlannedFile {
            rel,
            data: config
                .spec
                .as_ref()
                .map(|s| s.data.clone())
                .unwrap_or_default(),
            uid,
            gid,
            mode,
        });
    }
    if plan.files.iter().any(|f| f.rel.starts_with("secrets")) {
        plan.binds.insert(
            0,
            PlannedBind {
                rel: PathBuf::from("secrets"),
                target: SECRETS_DIR.to_owned(),
            },
        );
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{ConfigReference, ConfigSpec, SecretReference, SecretSpec};

    use super::*;

    fn secret(id: &str, data: &[u8]) -> Secret {
        Secret {
            id: id.into(),
            spec: Some(SecretSpec {
                data: data.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn target(name: &str, uid: &str, gid: &str, mode: u32) -> Option<FileTarget> {
        Some(FileTarget {
            name: name.into(),
            uid: uid.into(),
            gid: gid.into(),
            mode,
        })
    }

    fn sref(id: &str, name: &str, t: Option<FileTarget>) -> SecretReference {
        SecretReference {
            secret_id: id.into(),
            secret_name: name.into(),
            target: t,
        }
    }

    #[test]
    fn secrets_go_under_run_secrets_and_configs_to_their_paths() {
        let spec = ContainerSpec {
            secrets: vec![
                sref("s1", "pw", target("db_pw", "1000", "1001", 0o400)),
                sref("s2", "token", None),
                sref("s3", "cert", target("/etc/ssl/c.pem", "", "", 0)),
            ],
            configs: vec![ConfigReference {
                config_id: "c1".into(),
                config_name: "app".into(),
                target: target("etc/app.conf", "0", "0", 0o644),
            }],
            ..Default::default()
        };
        let secrets = [secret("s1", b"p"), secret("s2", b"t"), secret("s3", b"c")];
        let configs = [Config {
            id: "c1".into(),
            spec: Some(ConfigSpec {
                data: b"conf".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let p = plan(&spec, &secrets, &configs).unwrap();
        let files: Vec<(String, &[u8], u32, u32, u32)> = p
            .files
            .iter()
            .map(|f| {
                (
                    f.rel.display().to_string(),
                    f.data.as_slice(),
                    f.uid,
                    f.gid,
                    f.mode,
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("secrets/db_pw".into(), &b"p"[..], 1000, 1001, 0o400),
                ("secrets/token".into(), &b"t"[..], 0, 0, 0o444),
                ("files/0".into(), &b"c"[..], 0, 0, 0o444),
                ("files/1".into(), &b"conf"[..], 0, 0, 0o644),
            ]
        );
        let binds: Vec<(String, &str)> = p
            .binds
            .iter()
            .map(|b| (b.rel.display().to_string(), b.target.as_str()))
            .collect();
        assert_eq!(
            binds,
            [
                ("secrets".into(), "/run/secrets"),
                ("files/0".into(), "/etc/ssl/c.pem"),
                ("files/1".into(), "/etc/app.conf"),
            ]
        );
        assert_eq!(p.bytes(), 7);
        assert!(
            !format!("{:?}", p.files[0]).contains("[112]"),
            "debug shows data"
        );
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        let ok = [secret("s1", b"x")];
        let cases: Vec<(Vec<SecretReference>, &str)> = vec![
            (vec![sref("nope", "ghost", None)], "not available"),
            (
                vec![sref("s1", "a", target("../etc/shadow", "", "", 0))],
                "'..'",
            ),
            (vec![sref("s1", "a", target("/x/../y", "", "", 0))], "'..'"),
            (
                vec![sref("s1", "a", target("f", "root", "", 0))],
                "must be a number",
            ),
            (vec![sref("s1", "a", target("f", "", "", 0o17777))], "mode"),
            (
                vec![
                    sref("s1", "a", target("f", "", "", 0)),
                    sref("s1", "b", target("f", "", "", 0)),
                ],
                "used twice",
            ),
        ];
        for (refs, want) in cases {
            let spec = ContainerSpec {
                secrets: refs,
                ..Default::default()
            };
            let err = plan(&spec, &ok, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        assert!(
            plan(&ContainerSpec::default(), &[], &[])
                .unwrap()
                .is_empty()
        );
    }
}
