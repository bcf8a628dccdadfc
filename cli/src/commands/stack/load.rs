//! Compose files → one checked [`Stack`]: read each file (`-` is stdin), parse it
//! ([`super::yaml`]), interpolate it ([`super::interpolate`]) with the environment and the
//! `.env` beside the first file, merge the files in order ([`super::merge`]), and convert the
//! result ([`super::convert`]).
//!
//! Invariant: nothing here talks to the cluster; a file that fails here deploys nothing.
//! Every error is reported at once, one per line, each naming its file, line and key.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::convert::{self, Context, Stack};
use super::interpolate::{self, Report};
use super::merge;
use super::read::Diags;
use super::yaml::{self, Node};

/// Where interpolation reads variables from.
type Variables<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The merged, interpolated files, before conversion.
#[derive(Debug)]
pub struct Loaded {
    /// The merged tree.
    pub root: Node,
    /// The directory of the first file: relative paths start here.
    pub project_dir: PathBuf,
    /// Variables from the `.env` file there.
    pub dotenv: HashMap<String, String>,
    /// Warnings so far (unset variables).
    pub warnings: Vec<String>,
}

impl Loaded {
    /// A variable: `env` first, then `.env`.
    pub fn lookup(&self, env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
        env(name).or_else(|| self.dotenv.get(name).cloned())
    }
}

/// The directory relative paths of `first` start from.
fn project_dir(first: &Path) -> PathBuf {
    if first == Path::new("-") {
        return PathBuf::from(".");
    }
    match first.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Reads, parses, interpolates and merges `files`; `env` is the process environment.
pub fn load(files: &[PathBuf], env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Loaded> {
    let first = files
        .first()
        .ok_or_else(|| anyhow::anyhow!("please specify a Compose file (with -c)"))?;
    let project_dir = project_dir(first);
    let dotenv_path = project_dir.join(".env");
    let dotenv: HashMap<String, String> = match std::fs::read_to_string(&dotenv_path) {
        Ok(text) => interpolate::parse_dotenv(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dotenv_path.display()))?
            .into_iter()
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dotenv_path.display())),
    };
    let lookup = |name: &str| env(name).or_else(|| dotenv.get(name).cloned());
    let (root, warnings) = read_and_merge(files, Some(&lookup))?;
    Ok(Loaded {
        root,
        project_dir,
        dotenv,
        warnings,
    })
}

/// Reads, parses and merges `files` without interpolating them.
pub fn load_raw(files: &[PathBuf]) -> anyhow::Result<Node> {
    Ok(read_and_merge(files, None)?.0)
}

/// Reads, parses, interpolates (when given variables) and merges `files`; returns the tree
/// and the warnings.
fn read_and_merge(
    files: &[PathBuf],
    lookup: Option<&Variables<'_>>,
) -> anyhow::Result<(Node, Vec<String>)> {
    let mut report = Report::default();
    let mut trees = Vec::with_capacity(files.len());
    let mut parse_errors = Vec::new();
    let mut stdin_used = false;
    for file in files {
        let shown = file.display().to_string();
        let text = if file == Path::new("-") {
            if std::mem::replace(&mut stdin_used, true) {
                anyhow::bail!("the standard input (-) can be given only once");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the Compose file from the standard input")?;
            text
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {shown}"))?
        };
        match yaml::parse(&text, &shown) {
            Ok(mut root) => {
                if let Some(lookup) = lookup {
                    interpolate::interpolate_tree(&mut root, "", lookup, &mut report);
                }
                trees.push(root);
            }
            Err(e) => parse_errors.push(e.0),
        }
    }
    let errors: Vec<String> = parse_errors.into_iter().chain(report.errors).collect();
    if !errors.is_empty() {
        anyhow::bail!("{}", errors.join("\n"));
    }
    let root = merge::merge(trees).ok_or_else(|| anyhow::anyhow!("no Compose file given"))?;
    Ok((root, report.warnings))
}

/// Loads `files` and converts them into stack `name`; returns the stack and every warning,
/// or every error.
pub fn plan(
    files: &[PathBuf],
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(Stack, Vec<String>)> {
    convert::validate_stack_name(name).map_err(|e| anyhow::anyhow!(e))?;
    let loaded = load(files, env)?;
    plan_from(&loaded, name, env)
}

/// Converts loaded files into stack `name` (see [`plan`]).
pub fn plan_from(
    loaded: &Loaded,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<(Stack, Vec<String>)> {
    let lookup = |var: &str| loaded.lookup(env, var);
    let ctx = Context {
        stack: name,
        project_dir: loaded.project_dir.clone(),
        lookup: &lookup,
    };
    let mut diags = Diags {
        errors: Vec::new(),
        warnings: loaded.warnings.clone(),
    };
    let stack = convert::convert(&loaded.root, &ctx, &mut diags);
    if !diags.ok() {
        // Warnings first, so they are not lost; errors are the command's error.
        print_warnings(&diags.warnings);
        anyhow::bail!("{}", diags.errors.join("\n"));
    }
    Ok((stack, diags.warnings))
}

/// Prints warnings on stderr, Docker style.
pub fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("Warning: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("from-env".into()),
            _ => None,
        }
    }

    #[test]
    fn dotenv_fills_what_the_environment_lacks_and_files_merge() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "TAG=from-dotenv\nREPLICAS=3\n").unwrap();
        std::fs::write(
            dir.path().join("base.yml"),
            "services:\n  web:\n    image: busybox:${TAG}\n    deploy:\n      replicas: ${REPLICAS}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("prod.yml"),
            "services:\n  web:\n    environment: [MODE=prod]\n",
        )
        .unwrap();
        let files = [dir.path().join("base.yml"), dir.path().join("prod.yml")];
        let (stack, warnings) = plan(&files, "app", &env).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let spec = &stack.services[0].spec;
        let container = spec.task.as_ref().unwrap().container.as_ref().unwrap();
        assert_eq!(container.image, "busybox:from-env");
        assert_eq!(container.env, ["MODE=prod"]);
        assert_eq!(
            spec.mode,
            Some(berth_proto::v1::service_spec::Mode::Replicated(
                berth_proto::v1::ReplicatedService { replicas: 3 }
            ))
        );
    }

    #[test]
    fn every_error_of_every_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "services:\n  web:\n    image: ${X:?set X}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yml"), "services: [\n").unwrap();
        let files = [dir.path().join("a.yml"), dir.path().join("b.yml")];
        let err = plan(&files, "app", &env).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(lines.iter().any(|l| l.contains("b.yml line ")), "{err}");
        assert!(
            lines.iter().any(|l| l.contains(
                "a.yml line 3: services.web.image: required variable X is missing a value: set X"
            )),
            "{err}"
        );
        let err = plan(&files, "bad name", &env).unwrap_err().to_string();
        assert!(err.contains("invalid stack name"), "{err}");
        let err = plan(&[dir.path().join("none.yml")], "app", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("none.yml"), "{err}");
    }
}
