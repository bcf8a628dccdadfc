//! Simulated multi-host networks for cluster tests, built from network namespaces.
//!
//! A [`TestNet`] owns, for one test only: a unique tag, a /24 subnet in 10.200.0.0/13 leased for
//! its lifetime, a "switch" namespace holding a Linux bridge, and N host namespaces each wired
//! to the bridge with a veth pair (host side `10.X.Y.(10+i)/24`, `lo` up, no default route, so
//! nothing can leave the switch). [`Host::command`] runs programs inside a host and
//! [`Host::spawn`] keeps them under a [`HostProcess`] guard; [`TestNet::cut`] and
//! [`TestNet::partition`] break the network and [`TestNet::heal`] / [`TestNet::heal_partition`]
//! repair it.
//!
//! Invariants:
//! - Nothing is ever created in the machine's own network namespace: veth pairs are created in
//!   the switch namespace with their peer born directly in the host namespace.
//! - Every name carries the tag `bt<pid base36>-<counter base36>`: interfaces are
//!   `<tag>br` (bridge), `<tag>g<n>` (partition group bridges), `<tag>s<i>` (switch port) and
//!   `<tag>h<i>` (host side), all ≤ 15 chars; namespaces
//!   are `<tag>-sw` and `<tag>-h<i>`. The creating pid in the tag lets [`sweep_leftovers`]
//!   remove what crashed runs left behind.
//! - Dropping the net (also while unwinding from a panic) SIGKILLs the processes it started and
//!   anything else running in its namespaces, then deletes the namespaces, which destroys their
//!   bridge and veths.
//! - Only root can build a net; anyone else gets an error saying so (tests fail, never skip).

mod cmd;
mod netns;
mod process;
mod subnet;

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use nix::sys::signal::kill;
use nix::unistd::Pid;

pub use process::HostProcess;

/// First characters of every interface and namespace name the harness creates.
pub const PREFIX: &str = "bt";

/// Prefix length of every test subnet.
pub const PREFIX_LEN: u8 = 24;

/// Most hosts one net can hold (addresses .10 to .249).
pub const MAX_HOSTS: usize = 240;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Nets created by this process so far; makes tags unique within the process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serializes `ip netns add` within this process: the first one mounts `/run/netns` and
/// concurrent first calls would stack two mounts.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// What hosts and their processes share with the net that made them.
#[derive(Debug)]
struct Shared {
    registry: process::Registry,
    log_dir: PathBuf,
}

/// One simulated machine: a network namespace with one address on the test subnet.
///
/// Cheap to clone; clones refer to the same namespace.
#[derive(Debug, Clone)]
pub struct Host {
    index: usize,
    name: String,
    netns: String,
    iface: String,
    port: String,
    addr: Ipv4Addr,
    tag: String,
    shared: Arc<Shared>,
}

impl Host {
    /// Short name, `h0`, `h1`, ….
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Position in [`TestNet::hosts`].
    pub fn index(&self) -> usize {
        self.index
    }

    /// Name of its network namespace (as listed by `ip netns list`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Path of its namespace file, `/run/netns/<netns>`.
    pub fn netns_path(&self) -> PathBuf {
        netns::path(&self.netns)
    }

    /// Its interface towards the switch (inside its namespace).
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Its address on the test subnet.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `addr:port`.
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.addr, port))
    }

    /// A command that runs `program` inside this host's network namespace.
    ///
    /// The child enters the namespace with `setns` between fork and exec, so its pid is the
    /// program itself. Unlike `ip netns exec`, it keeps the caller's mount namespace (so
    /// `/sys/class/net` still shows the root namespace's view) and does not bind
    /// `/etc/netns/<name>`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> anyhow::Result<Command> {
        let fd = netns::open(&self.netns)?;
        let mut cmd = Command::new(program);
        // SAFETY: the hook runs in the forked child before exec. It only calls setns(2) on a
        // descriptor the closure owns (opened above, close-on-exec, kept alive as long as the
        // Command) and converts an errno into io::Error, which does not allocate; it takes no
        // locks, so it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || netns::enter(&fd));
        }
        Ok(cmd)
    }

    /// Spawns `program args...` in this host under a [`HostProcess`] guard labelled `label`
    /// (labels name the log file, `<host>.<label>.log` in [`TestNet::dir`]).
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        label: &str,
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> anyhow::Result<HostProcess> {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.spawn_with(label, program, move |cmd| {
            cmd.args(&args);
        })
    }

    /// Spawns `program` in this host, letting `configure` set arguments, environment and
    /// stdio. `configure` runs again on every [`HostProcess::restart`].
    pub fn spawn_with(
        &self,
        label: &str,
        program: impl AsRef<OsStr>,
        configure: impl Fn(&mut Command) + Send + Sync + 'static,
    ) -> anyhow::Result<HostProcess> {
        HostProcess::start(self, label, program.as_ref(), Arc::new(configure))
    }

    /// Runs `f` on a fresh thread that has entered this host's network namespace, and waits
    /// for it. Sockets `f` opens live in the host. A panic in `f` resumes on the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let netns = self.netns.clone();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("{}@{}", self.name, self.tag))
                .spawn_scoped(s, move || {
                    netns::enter_named(&netns)?;
                    f()
                })
                .context("spawning a host thread")?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a named thread that has entered this host's network namespace (for
    /// servers and other long-running work). The thread keeps the namespace alive while it
    /// runs, so make `f` stoppable (for example a flag it polls).
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<T>>> {
        let netns = self.netns.clone();
        std::thread::Builder::new()
            .name(format!("{}:{name}@{}", self.name, self.tag))
            .spawn(move || {
                netns::enter_named(&netns)?;
                f()
            })
            .context("spawning a host thread")
    }

    fn log_dir(&self) -> &Path {
        &self.shared.log_dir
    }

    fn registry(&self) -> &process::Registry {
        &self.shared.registry
    }
}

/// Bridges in the switch namespace and the one each host's port is attached to.
#[derive(Debug)]
struct Attachments {
    /// Bridges created so far; the first is the shared one.
    bridges: Vec<String>,
    /// Per host: its port's bridge, or `None` when isolated by a partition.
    masters: Vec<Option<String>>,
}

/// A private network of hosts for one test; see the module documentation.
#[derive(Debug)]
pub struct TestNet {
    tag: String,
    switch_ns: String,
    bridge: String,
    lease: subnet::Lease,
    hosts: Vec<Host>,
    /// Namespaces created so far, deleted on drop (the switch first in the list).
    namespaces: Vec<String>,
    /// Which bridge each switch port is attached to (partitions).
    attached: Mutex<Attachments>,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
}

impl TestNet {
    /// Builds a net of `n_hosts` hosts (1 to [`MAX_HOSTS`]) after sweeping the leftovers of
    /// crashed earlier runs. Fails (never skips) when not run as root.
    pub fn new(n_hosts: usize) -> anyhow::Result<TestNet> {
        require_root()?;
        let started = std::time::Instant::now();
        ensure!(
            (1..=MAX_HOSTS).contains(&n_hosts),
            "a test net holds 1 to {MAX_HOSTS} hosts, not {n_hosts}"
        );
        match sweep_leftovers() {
            Ok(swept) if !swept.is_empty() => tracing::info!(?swept, "swept leftovers"),
            Ok(_) => {}
            Err(e) => tracing::warn!("sweeping leftovers: {e:#}"),
        }
        let pid = std::process::id();
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}-{}", base36(pid.into()), base36(counter.into()));
        let lease = subnet::Lease::acquire(Path::new(subnet::LEASE_DIR), pid, counter)?;
        let bridge = ifname(&tag, "br", None)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-{tag}-"))
            .tempdir()
            .context("creating the net's temp dir")?;
        let shared = Arc::new(Shared {
            registry: process::Registry::default(),
            log_dir: dir.path().to_owned(),
        });
        let mut net = TestNet {
            switch_ns: format!("{tag}-sw"),
            bridge: bridge.clone(),
            tag,
            lease,
            hosts: Vec::with_capacity(n_hosts),
            namespaces: Vec::with_capacity(n_hosts + 1),
            attached: Mutex::new(Attachments {
                bridges: vec![bridge.clone()],
                masters: vec![Some(bridge.clone()); n_hosts],
            }),
            shared,
            dir,
        };
        // On error, dropping `net` deletes whatever was created so far.
        net.build(n_hosts)?;
        tracing::info!(
            tag = net.tag,
            subnet = %net.subnet(),
            hosts = n_hosts,
            took = ?started.elapsed(),
            "test net up"
        );
        Ok(net)
    }

    fn build(&mut self, n_hosts: usize) -> anyhow::Result<()> {
        let sw = self.switch_ns.clone();
        self.add_netns(&sw)?;
        cmd::ip(&["-n", &sw, "link", "add", &self.bridge, "type", "bridge"])?;
        cmd::ip(&["-n", &sw, "link", "set", &self.bridge, "up"])?;
        let octets = self.lease.network().octets();
        for i in 0..n_hosts {
            let host = Host {
                index: i,
                name: format!("h{i}"),
                netns: format!("{}-h{i}", self.tag),
                iface: ifname(&self.tag, "h", Some(i))?,
                port: ifname(&self.tag, "s", Some(i))?,
                addr: Ipv4Addr::new(octets[0], octets[1], octets[2], 10 + i as u8),
                tag: self.tag.clone(),
                shared: self.shared.clone(),
            };
            self.add_netns(&host.netns)?;
            let h = host.netns.as_str();
            // The peer is born inside the host namespace: nothing touches the root namespace.
            cmd::ip(&[
                "-n",
                &sw,
                "link",
                "add",
                &host.port,
                "type",
                "veth",
                "peer",
                "name",
                &host.iface,
                "netns",
                h,
            ])?;
            cmd::ip(&[
                "-n",
                &sw,
                "link",
                "set",
                &host.port,
                "master",
                &self.bridge,
                "up",
            ])?;
            let cidr = format!("{}/{PREFIX_LEN}", host.addr);
            cmd::ip(&["-n", h, "link", "set", "lo", "up"])?;
            cmd::ip(&["-n", h, "addr", "add", &cidr, "dev", &host.iface])?;
            cmd::ip(&["-n", h, "link", "set", &host.iface, "up"])?;
            self.hosts.push(host);
        }
        Ok(())
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        {
            let _one_at_a_time = NETNS_ADD.lock().unwrap_or_else(|p| p.into_inner());
            cmd::ip(&["netns", "add", name])?;
        }
        self.namespaces.push(name.to_owned());
        Ok(())
    }

    /// The unique tag in every name this net created, e.g. `bt2n9c-0`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Network address of the leased subnet, `10.X.Y.0` (prefix [`PREFIX_LEN`]).
    pub fn subnet(&self) -> Ipv4Addr {
        self.lease.network()
    }

    /// All hosts, in index order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host number `i`. Panics if out of range (a bug in the test).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Name of the switch namespace holding the bridge.
    pub fn switch_netns(&self) -> &str {
        &self.switch_ns
    }

    /// Name of the bridge inside the switch namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Every namespace this net created (the switch first).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Private scratch directory, removed with the net; process logs go here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Cuts `host` off: its switch port goes down, so it can reach no one and no one reaches
    /// it (established connections stall rather than reset).
    pub fn cut(&self, host: &Host) -> anyhow::Result<()> {
        self.check_mine(host)?;
        cmd::ip(&["-n", &self.switch_ns, "link", "set", &host.port, "down"])?;
        tracing::info!(host = host.name(), "cut");
        Ok(())
    }

    /// Reconnects a host cut with [`cut`](Self::cut).
    pub fn heal(&self, host: &Host) -> anyhow::Result<()> {
        self.check_mine(host)?;
        cmd::ip(&["-n", &self.switch_ns, "link", "set", &host.port, "up"])?;
        tracing::info!(host = host.name(), "healed");
        Ok(())
    }

    /// Splits the switch into `groups`: hosts talk only to hosts of their own group; hosts
    /// in no group are isolated alone. Replaces any earlier partition. Each group gets its own
    /// bridge in the switch namespace (an isolated host's port is attached to none), so this
    /// is independent of [`cut`](Self::cut).
    pub fn partition(&self, groups: &[&[&Host]]) -> anyhow::Result<()> {
        let mut want: Vec<Option<String>> = vec![None; self.hosts.len()];
        let mut seen = vec![false; self.hosts.len()];
        for (g, group) in groups.iter().enumerate() {
            let bridge = ifname(&self.tag, "g", Some(g))?;
            for host in *group {
                self.check_mine(host)?;
                ensure!(
                    !seen[host.index],
                    "host {} is in more than one partition group",
                    host.name
                );
                seen[host.index] = true;
                want[host.index] = Some(bridge.clone());
            }
        }
        self.attach(&want)?;
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|h| h.name()).collect())
            .collect();
        tracing::info!(?names, "partitioned");
        Ok(())
    }

    /// Undoes [`partition`](Self::partition): every host is on the shared network again.
    pub fn heal_partition(&self) -> anyhow::Result<()> {
        self.attach(&vec![Some(self.bridge.clone()); self.hosts.len()])?;
        tracing::info!("partition healed");
        Ok(())
    }

    /// Attaches each host's switch port to the given bridge (created on first use), or to
    /// none.
    fn attach(&self, want: &[Option<String>]) -> anyhow::Result<()> {
        let mut state = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        let sw = self.switch_ns.as_str();
        for (host, target) in self.hosts.iter().zip(want) {
            if state.masters[host.index] == *target {
                continue;
            }
            let port = host.port.as_str();
            match target {
                Some(bridge) => {
                    if !state.bridges.contains(bridge) {
                        cmd::ip(&["-n", sw, "link", "add", bridge, "type", "bridge"])?;
                        cmd::ip(&["-n", sw, "link", "set", bridge, "up"])?;
                        state.bridges.push(bridge.clone());
                    }
                    cmd::ip(&["-n", sw, "link", "set", port, "master", bridge])?;
                }
                None => {
                    cmd::ip(&["-n", sw, "link", "set", port, "nomaster"])?;
                }
            }
            state.masters[host.index] = target.clone();
        }
        Ok(())
    }

    fn check_mine(&self, host: &Host) -> anyhow::Result<()> {
        ensure!(
            host.tag == self.tag,
            "host {} belongs to net {}, not {}",
            host.name,
            host.tag,
            self.tag
        );
        Ok(())
    }

    /// Tears the net down now and reports any failure (dropping does the same but can only
    /// log). Kills the processes it started and anything else in its namespaces, then deletes
    /// the namespaces.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        if self.namespaces.is_empty() {
            return Ok(());
        }
        let signalled = self.shared.registry.kill_all();
        let stray = netns::kill_all_in(&self.namespaces, Duration::from_secs(5));
        let mut errors = Vec::new();
        if let Err(e) = &stray {
            errors.push(format!("{e:#}"));
        }
        for name in self.namespaces.drain(..).rev() {
            if let Err(e) = delete_netns(&name) {
                errors.push(format!("{e:#}"));
            }
        }
        tracing::info!(
            tag = self.tag,
            signalled,
            stray = ?stray.unwrap_or_default(),
            "test net down"
        );
        if !errors.is_empty() {
            bail!("tearing down test net {}: {}", self.tag, errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            // Drop may run while unwinding; report loudly but never panic here.
            tracing::error!("{e:#}");
            eprintln!("berth-tests: {e:#}");
        }
    }
}

/// Fails with a clear message unless the effective user is root.
pub fn require_root() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "berth-tests needs root (network namespaces, veths, bridges): run the tests as root; \
         they fail rather than skip"
    );
    Ok(())
}

/// Removes the namespaces of test nets whose creating process is gone (crashed or killed
/// runs), after SIGKILLing anything still running inside them. Returns the names removed.
/// Safe to run concurrently with other test processes.
pub fn sweep_leftovers() -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(netns::NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listing /run/netns"),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let name = entry.context("listing /run/netns")?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(pid) = owner_pid(name)
            && !pid_alive(pid)
        {
            stale.push(name.to_owned());
        }
    }
    if stale.is_empty() {
        return Ok(stale);
    }
    netns::kill_all_in(&stale, Duration::from_secs(5))?;
    let mut removed = Vec::new();
    for name in stale {
        match delete_netns(&name) {
            Ok(()) => removed.push(name),
            // Another process swept it first.
            Err(_) if !netns::path(&name).exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

fn delete_netns(name: &str) -> anyhow::Result<()> {
    cmd::ip(&["netns", "del", name]).map(drop)
}

/// The creating pid encoded in a harness namespace name, `bt<pid36>-<n36>-(sw|h<i>)`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?;
    let counter = parts.next()?;
    let role = parts.next()?;
    let is_b36 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    };
    let role_ok = role == "sw"
        || role
            .strip_prefix('h')
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    if !(is_b36(pid) && is_b36(counter) && role_ok) {
        return None;
    }
    u32::from_str_radix(pid, 36).ok()
}

/// True if a process with this pid exists (zombies included).
fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        kill(Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("base36 digits are ASCII")
}

/// Interface name `<tag><kind>[<i>]`, checked against the kernel's limit.
fn ifname(tag: &str, kind: &str, i: Option<usize>) -> anyhow::Result<String> {
    let name = match i {
        Some(i) => format!("{tag}{kind}{i}"),
        None => format!("{tag}{kind}"),
    };
    ensure!(
        name.len() <= IFNAME_MAX,
        "interface name {name:?} is longer than {IFNAME_MAX} characters"
    );
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_round_trips() {
        for n in [0u64, 1, 35, 36, 32768, 4_194_304] {
            assert_eq!(u64::from_str_radix(&base36(n), 36).unwrap(), n);
        }
        assert_eq!(base36(4_194_304).len(), 5, "largest pid fits in 5 digits");
    }

    #[test]
    fn owner_pid_parses_only_harness_names() {
        let tag = format!("{PREFIX}{}-{}", base36(4321), base36(7));
        assert_eq!(owner_pid(&format!("{tag}-sw")), Some(4321));
        assert_eq!(owner_pid(&format!("{tag}-h12")), Some(4321));
        for other in [
            "btree", "bt-1-sw", "bt12-3-x", "bt12-3-h", "bt12--sw", "bT1-2-sw", "x",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }

    #[test]
    fn interface_names_fit_for_the_largest_tag() {
        let tag = format!("{PREFIX}{}-{}", base36(4_194_304), base36(1295));
        assert!(ifname(&tag, "h", Some(MAX_HOSTS - 1)).is_ok());
        assert!(ifname(&tag, "br", None).is_ok());
        assert!(ifname(&tag, "hhhhhh", Some(1)).is_err());
    }
}
