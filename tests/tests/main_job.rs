//! The README's main job on real processes: `deploy/local-cluster.sh up` starts one manager
//! and two workers, each a real `berthd` in its own network namespace, loads the test image,
//! deploys a replicated service and waits for it to converge; `status` shows the cluster;
//! `down` removes every namespace, daemon and file. This test runs the script itself, with
//! its own namespace prefix, subnet and state directory so that it cannot meet a cluster a
//! developer has up, and takes the cluster down even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, ensure};
use berth_tests::hosts::require_root;

/// One cluster brought up by the script; `down` runs on drop.
struct LocalCluster {
    script: PathBuf,
    env: Vec<(&'static str, String)>,
    prefix: String,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    fn new() -> anyhow::Result<LocalCluster> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh");
        let bin = berth_tests::bins::berth()?
            .parent()
            .context("berth has no directory")?
            .to_path_buf();
        let pid = std::process::id();
        let prefix = format!("mj{:04}", pid % 10_000);
        let dir = tempfile::tempdir()?;
        let env = vec![
            ("BERTH_BIN", bin.display().to_string()),
            (
                "BERTH_CLUSTER_DIR",
                dir.path().join("cluster").display().to_string(),
            ),
            ("BERTH_CLUSTER_PREFIX", prefix.clone()),
            // Outside the test nets' 10.200.0.0/13 and the main job's own 10.199.77.
            (
                "BERTH_CLUSTER_SUBNET",
                format!("10.199.{}", 100 + pid % 100),
            ),
        ];
        Ok(LocalCluster {
            script,
            env,
            prefix,
            dir,
        })
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .with_context(|| format!("running local-cluster.sh {args:?}"))?;
        Ok(out)
    }

    fn run_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "local-cluster.sh {args:?} failed ({}):\n{stdout}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon_logs()
        );
        Ok(stdout)
    }

    fn daemon_logs(&self) -> String {
        let mut logs = String::new();
        for h in ["h0", "h1", "h2"] {
            let path = self.dir.path().join("cluster").join(h).join("berthd.log");
            if let Ok(text) = std::fs::read_to_string(&path) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                logs.push_str(&format!("--- {h} (last lines)\n"));
                for line in tail.into_iter().rev() {
                    logs.push_str(line);
                    logs.push('\n');
                }
            }
        }
        logs
    }

    fn namespaces(&self) -> anyhow::Result<Vec<String>> {
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries {
                let name = e?.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.prefix)) {
                    found.push(name);
                }
            }
        }
        found.sort();
        Ok(found)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// The rows of a plain table (header skipped), each split into its words.
fn rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[test]
fn the_main_job_brings_up_a_cluster_with_a_converged_service_and_removes_it() -> anyhow::Result<()>
{
    require_root()?;
    let cluster = LocalCluster::new()?;

    let up = cluster.run_ok(&["up", "1", "2"])?;
    // `service create` without -d waits for convergence and says so (Docker's wording).
    assert!(up.contains("verify: Service converged"), "{up}");
    assert_eq!(
        cluster.namespaces()?,
        [
            format!("{}-h0", cluster.prefix),
            format!("{}-h1", cluster.prefix),
            format!("{}-h2", cluster.prefix),
            format!("{}-sw", cluster.prefix),
        ]
    );

    let status = cluster.run_ok(&["status"])?;
    let (nodes, rest) = status
        .split_once("== berth service ls")
        .context("no service ls section")?;
    let node_rows = rows(nodes.trim_start_matches("== berth node ls\n"));
    assert_eq!(node_rows.len(), 3, "{nodes}");
    assert!(node_rows.iter().all(|r| r.contains(&"Ready")), "{nodes}");
    assert_eq!(
        node_rows.iter().filter(|r| r.contains(&"Leader")).count(),
        1,
        "{nodes}"
    );
    let (services, ps) = rest
        .split_once("== berth service ps web")
        .context("no service ps section")?;
    let web = rows(services)
        .into_iter()
        .find(|r| r.get(1) == Some(&"web"))
        .with_context(|| format!("no web service in {services}"))?;
    assert_eq!(web.get(3), Some(&"6/6"), "{services}");
    // Spread: two running replicas on each of the three nodes.
    for node in ["node-0", "node-1", "node-2"] {
        let on_node = rows(ps)
            .iter()
            .filter(|r| r.contains(&node) && r.contains(&"Running"))
            .count();
        assert_eq!(on_node, 2, "{node} runs {on_node} of web:\n{ps}");
    }

    let down = cluster.run_ok(&["down"])?;
    assert!(down.contains("cluster removed"), "{down}");
    assert_eq!(cluster.namespaces()?, Vec::<String>::new());
    assert!(!cluster.dir.path().join("cluster").exists());
    Ok(())
}
