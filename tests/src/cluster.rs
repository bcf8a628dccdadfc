//! Real `berthd` daemons in test hosts, driven by the real `berth` CLI.
//!
//! A [`TestCluster`] owns a [`TestNet`] of N hosts and one daemon slot per host. Each daemon
//! gets its own state directory, socket and cgroup parent under the net's private directory,
//! and listens on its host's address, so tests run in parallel without sharing anything.
//! Dropping the cluster kills the daemons and tears the net down (also on panic).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::bins;
use crate::hosts::{Host, HostProcess, TestNet};
use crate::wait;

/// The cluster port every test daemon listens on (each host has its own address).
pub const CLUSTER_PORT: u16 = 4377;

/// One daemon slot: a host, its daemon's paths and, while it runs, the process.
#[derive(Debug)]
pub struct TestNode {
    host: Host,
    state_dir: PathBuf,
    socket: PathBuf,
    cgroup_parent: String,
    process: Option<HostProcess>,
}

impl TestNode {
    /// The host this daemon runs in.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The daemon's state directory.
    pub fn state_dir(&self) -> &PathBuf {
        &self.state_dir
    }

    /// `IP:port` of this node's cluster port.
    pub fn cluster_addr(&self) -> String {
        self.host.socket_addr(CLUSTER_PORT).to_string()
    }

    /// Starts (or restarts after a kill) this node's `berthd`, and waits until its local API
    /// answers.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.as_mut() {
            if process.is_running()? {
                bail!("berthd on {} is already running", self.host.name());
            }
            process.restart()?;
        } else {
            let (state, socket, cgroup, hostname) = (
                self.state_dir.clone(),
                self.socket.clone(),
                self.cgroup_parent.clone(),
                format!("node-{}", self.host.index()),
            );
            let process = self
                .host
                .spawn_with("berthd", bins::berthd()?, move |cmd| {
                    cmd.arg("--data-dir")
                        .arg(&state)
                        .arg("--socket")
                        .arg(&socket)
                        .args(["--cgroup-parent", &cgroup])
                        .args(["--hostname", &hostname])
                        .env("RUST_LOG", "info");
                })?;
            self.process = Some(process);
        }
        let name = self.host.name().to_string();
        wait::wait_until_or_dump(
            Duration::from_secs(20),
            &format!("berthd on {name} answers"),
            || Ok(self.berth(&["info"])?.status.success()),
            || self.log(),
        )?;
        Ok(())
    }

    /// SIGKILLs the daemon (containers and state stay).
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.kill9()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(process) = self.process.as_mut() {
            process.stop(grace)?;
        }
        Ok(())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.process.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// Runs `berth ARGS` against this node's daemon (inside its host).
    pub fn berth(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd: Command = self.host.command(bins::berth()?)?;
        cmd.args(["-H", &format!("unix://{}", self.socket.display())])
            .args(args);
        cmd.output()
            .with_context(|| format!("running berth {args:?}"))
    }

    /// Runs `berth ARGS` like [`TestNode::berth`], killing it when it has not finished within
    /// `limit` (for commands that wait for the cluster to converge).
    pub fn berth_within(&self, args: &[&str], limit: Duration) -> anyhow::Result<Output> {
        let mut cmd: Command = self.host.command(bins::berth()?)?;
        cmd.args(["-H", &format!("unix://{}", self.socket.display())])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running berth {args:?}"))?;
        // Drain the pipes while waiting, so a chatty command cannot block on a full pipe.
        let mut stdout = child.stdout.take().context("stdout")?;
        let mut stderr = child.stderr.take().context("stderr")?;
        let out_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
            buf
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
            buf
        });
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                let err = err_reader.join().unwrap_or_default();
                bail!(
                    "berth {} on {} did not finish within {limit:?}; stderr so far: {}",
                    args.join(" "),
                    self.host.name(),
                    String::from_utf8_lossy(&err).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Output {
            status,
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        })
    }

    /// Runs `berth ARGS` and returns its stdout, or an error with its stderr.
    pub fn berth_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.berth(args)?;
        if !out.status.success() {
            bail!(
                "berth {} on {} failed ({}): {}",
                args.join(" "),
                self.host.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs `berth ARGS`, expects it to fail, and returns its stderr.
    pub fn berth_err(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.berth(args)?;
        if out.status.success() {
            bail!(
                "berth {} on {} succeeded but should have failed: {}",
                args.join(" "),
                self.host.name(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8(out.stderr)?)
    }
}

/// N hosts with a `berthd` each (started by [`TestCluster::new`]).
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<TestNode>,
    // Dropped after the nodes: killing daemons first, then removing namespaces.
    net: TestNet,
}

impl TestCluster {
    /// Builds a net of `n` hosts and starts a daemon in each.
    pub fn new(n: usize) -> anyhow::Result<TestCluster> {
        let net = TestNet::new(n)?;
        let mut nodes = Vec::with_capacity(n);
        for host in net.hosts() {
            let dir = net.dir().join(host.name());
            std::fs::create_dir_all(&dir)?;
            nodes.push(TestNode {
                host: host.clone(),
                state_dir: dir.join("state"),
                socket: dir.join("berthd.sock"),
                cgroup_parent: format!("berth-{}-{}", net.tag(), host.name()),
                process: None,
            });
        }
        let mut cluster = TestCluster { nodes, net };
        for node in &mut cluster.nodes {
            node.start()?;
        }
        Ok(cluster)
    }

    /// The network the daemons live in.
    pub fn net(&self) -> &TestNet {
        &self.net
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to kill or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut TestNode {
        &mut self.nodes[i]
    }

    /// Every node.
    pub fn nodes(&self) -> &[TestNode] {
        &self.nodes
    }

    /// Every daemon's log, for failure reports.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("==== {} ====\n{}", n.host.name(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Builds the busybox test image as a `docker save` archive and loads it on every node.
    pub fn load_test_image(&self) -> anyhow::Result<()> {
        let archive = self.net.dir().join("busybox.tar");
        crate::image::TestImage::busybox(crate::image::DEFAULT_REF)
            .write_docker_archive(&archive)?;
        let path = archive.display().to_string();
        for node in &self.nodes {
            node.berth_ok(&["image", "load", "-i", &path])?;
        }
        Ok(())
    }

    /// `berth swarm init` on node `i` with extra flags, advertising its host address.
    pub fn init_with(&self, i: usize, flags: &[&str]) -> anyhow::Result<String> {
        let addr = self.nodes[i].cluster_addr();
        let mut args = vec![
            "swarm",
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
        ];
        args.extend_from_slice(flags);
        self.nodes[i].berth_ok(&args)
    }

    /// `berth swarm init` on node `i`, advertising its host address.
    pub fn init(&self, i: usize) -> anyhow::Result<String> {
        let addr = self.nodes[i].cluster_addr();
        self.nodes[i].berth_ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
        ])
    }

    /// The join token for `role` ("worker" or "manager"), asked of node `manager`.
    pub fn join_token(&self, manager: usize, role: &str) -> anyhow::Result<String> {
        Ok(self.nodes[manager]
            .berth_ok(&["swarm", "join-token", "-q", role])?
            .trim()
            .to_string())
    }

    /// `berth swarm join` of node `i` through node `via`, with `role`'s token.
    pub fn join(&self, i: usize, via: usize, role: &str) -> anyhow::Result<String> {
        let token = self.join_token(via, role)?;
        let addr = self.nodes[i].cluster_addr();
        let remote = self.nodes[via].cluster_addr();
        self.nodes[i].berth_ok(&[
            "swarm",
            "join",
            "--token",
            &token,
            "--advertise-addr",
            &addr,
            "--listen-addr",
            &addr,
            &remote,
        ])
    }
}

impl Drop for TestCluster {
    /// Containers outlive their daemon by design, so they go first (through the daemon when it
    /// runs), then the daemons, then whatever the node's cgroup parent and state directory
    /// still hold: processes, cgroups and mounts.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(process) = node.process.as_mut()
                && process.is_running().unwrap_or(false)
                && let Ok(ids) = node.berth_ok(&["ps", "-aq"])
            {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = node.berth(&args);
                }
            }
            if let Some(mut process) = node.process.take() {
                let _ = process.kill9();
            }
            crate::cleanup::kill_cgroup(&node.cgroup_parent);
            crate::cleanup::unmount_under(self.net.dir());
            crate::cleanup::remove_cgroup(&node.cgroup_parent);
        }
    }
}
