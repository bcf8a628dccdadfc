//! Proves the multi-host harness itself: hosts talk over the private switch, `cut`, `heal` and
//! `partition` really break and repair connectivity, processes run inside their host and are
//! killed precisely, and nothing is left behind — not after a normal drop, not after a panic,
//! not from a crashed earlier run.
//!
//! Needs root; every test builds its own nets, so they run in parallel.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use berth_tests::hosts::{Host, PREFIX, TestNet, sweep_leftovers};
use berth_tests::wait::{init_test_logging, wait_until};
use nix::sys::signal::Signal;

const ECHO_PORT: u16 = 7000;

/// A TCP echo server whose socket lives in one host's namespace.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl EchoServer {
    /// Binds in `host` (the socket is created on a thread inside its namespace), then serves
    /// from a plain thread: a socket stays in the namespace it was created in.
    fn start(host: &Host, port: u16) -> anyhow::Result<EchoServer> {
        let addr = host.socket_addr(port);
        let listener = host.run(|| Ok(TcpListener::bind(addr)?))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false)?;
                        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut buf = Vec::new();
                        if conn.read_to_end(&mut buf).is_ok() {
                            let _ = conn.write_all(&buf);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        });
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `from` to `to` (socket created inside `from`), sends a line and returns what
/// came back.
fn echo(from: &Host, to: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let msg = format!("hello from {}", from.name());
    from.run(|| {
        let mut s = TcpStream::connect_timeout(&to, timeout)
            .with_context(|| format!("connecting {} -> {to}", from.name()))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(msg.as_bytes())?;
        s.shutdown(Shutdown::Write)?;
        let mut back = String::new();
        s.read_to_string(&mut back)?;
        ensure!(back == msg, "echo returned {back:?}, sent {msg:?}");
        Ok(back)
    })
}

/// Fails if any namespace of `tag` or any harness interface in the root namespace is left.
fn assert_nothing_left(tag: &str) -> anyhow::Result<()> {
    let ns = run("ip", &["netns", "list"])?;
    let own = format!("{tag}-");
    let left: Vec<&str> = ns.lines().filter(|l| l.starts_with(&own)).collect();
    ensure!(left.is_empty(), "namespaces of {tag} left: {left:?}");
    // The harness never creates anything in the root namespace, so no interface there may
    // carry its prefix at all (names are `<PREFIX><pid36>-…`).
    let links = run("ip", &["-o", "link", "show"])?;
    let bad: Vec<&str> = links
        .lines()
        .filter(|l| {
            l.split(": ")
                .nth(1)
                .is_some_and(|name| name.starts_with(PREFIX) && name.contains('-'))
        })
        .collect();
    ensure!(
        bad.is_empty(),
        "harness interfaces in the root namespace: {bad:?}"
    );
    Ok(())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output()?;
    ensure!(out.status.success(), "{program} {args:?}: {out:?}");
    Ok(String::from_utf8(out.stdout)?)
}

fn netns_identity(path: &Path) -> anyhow::Result<(u64, u64)> {
    let m = std::fs::metadata(path).with_context(|| format!("stat {path:?}"))?;
    Ok((m.dev(), m.ino()))
}

#[test]
fn three_hosts_talk_and_cut_heal_isolates_and_restores() -> anyhow::Result<()> {
    init_test_logging();
    let net = TestNet::new(3)?;
    let tag = net.tag().to_owned();
    let (a, b, c) = (net.host(0), net.host(1), net.host(2));
    tracing::info!(tag, subnet = %net.subnet(), "phase: echo across the switch");
    let octets = net.subnet().octets();
    assert_eq!((octets[0], octets[3]), (10, 0));
    assert!(
        (200..=207).contains(&octets[1]),
        "subnet {} in 10.200.0.0/13",
        net.subnet()
    );
    assert_eq!(b.addr().octets()[3], 11);

    let server = EchoServer::start(a, ECHO_PORT)?;
    let target = a.socket_addr(ECHO_PORT);
    echo(b, target, Duration::from_secs(2))?;
    echo(c, target, Duration::from_secs(2))?;

    tracing::info!("phase: cut A");
    net.cut(a)?;
    let start = Instant::now();
    let err = echo(b, target, Duration::from_secs(1)).expect_err("A answered B while cut");
    tracing::info!(after = ?start.elapsed(), "B -> A failed as expected: {err:#}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        echo(c, target, Duration::from_secs(1)).is_err(),
        "A answered C while cut"
    );
    // The rest of the switch keeps working.
    let c_server = EchoServer::start(c, ECHO_PORT)?;
    echo(b, c.socket_addr(ECHO_PORT), Duration::from_secs(2))?;

    tracing::info!("phase: heal A");
    net.heal(a)?;
    let took = wait_until(Duration::from_secs(5), "A to answer B after heal", || {
        Ok(echo(b, target, Duration::from_millis(500)).is_ok())
    })?;
    tracing::info!(?took, "A answers again");
    echo(c, target, Duration::from_secs(2))?;

    drop((server, c_server));
    let namespaces = net.namespaces().to_vec();
    assert_eq!(namespaces.len(), 4, "switch + 3 hosts: {namespaces:?}");
    net.close()?;
    for ns in &namespaces {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} still exists"
        );
    }
    assert_nothing_left(&tag)
}

#[test]
fn partition_splits_the_switch_and_heals() -> anyhow::Result<()> {
    init_test_logging();
    let net = TestNet::new(3)?;
    let (a, b, c) = (net.host(0), net.host(1), net.host(2));
    let _server = EchoServer::start(a, ECHO_PORT)?;
    let target = a.socket_addr(ECHO_PORT);
    echo(c, target, Duration::from_secs(2))?;

    net.partition(&[&[a, b], &[c]])?;
    echo(b, target, Duration::from_secs(2)).context("same group must still talk")?;
    assert!(
        echo(c, target, Duration::from_secs(1)).is_err(),
        "C reached A across the partition"
    );

    // Hosts left out of every group are isolated alone.
    net.partition(&[&[b, c]])?;
    assert!(
        echo(b, target, Duration::from_secs(1)).is_err(),
        "isolated A answered B"
    );

    net.heal_partition()?;
    wait_until(Duration::from_secs(5), "C to reach A after healing", || {
        Ok(echo(c, target, Duration::from_millis(500)).is_ok())
    })?;
    echo(b, target, Duration::from_secs(2))?;
    Ok(())
}

#[test]
fn panic_in_a_test_body_still_cleans_up() -> anyhow::Result<()> {
    init_test_logging();
    let mut seen: Option<(String, u32)> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = TestNet::new(2).expect("building the net");
        let sleeper = net
            .host(1)
            .spawn("sleeper", "sleep", ["1000"])
            .expect("spawning sleep");
        seen = Some((net.tag().to_owned(), sleeper.pid()));
        panic!("deliberate panic with net {} alive", net.tag());
    }));
    assert!(outcome.is_err(), "the closure panicked");
    let (tag, pid) = seen.context("the closure got as far as spawning")?;
    assert_nothing_left(&tag)?;
    // Reaped by its guard during unwinding: the pid is gone (or, improbably, reused by
    // something that is not our sleep in a test namespace).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_ne!(comm.trim(), "sleep", "sleep {pid} outlived the panic");
    Ok(())
}

#[test]
fn parallel_nets_get_distinct_subnets_and_both_work() -> anyhow::Result<()> {
    init_test_logging();
    let barrier = Arc::new(Barrier::new(2));
    let builders: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                TestNet::new(2)
            })
        })
        .collect();
    let nets = builders
        .into_iter()
        .map(|t| t.join().expect("builder thread panicked"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (n1, n2) = (&nets[0], &nets[1]);
    assert_ne!(n1.subnet(), n2.subnet());
    assert_ne!(n1.tag(), n2.tag());

    let s1 = EchoServer::start(n1.host(0), ECHO_PORT)?;
    let s2 = EchoServer::start(n2.host(0), ECHO_PORT)?;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let t1 = s.spawn(|| {
            echo(
                n1.host(1),
                n1.host(0).socket_addr(ECHO_PORT),
                Duration::from_secs(2),
            )
        });
        let t2 = s.spawn(|| {
            echo(
                n2.host(1),
                n2.host(0).socket_addr(ECHO_PORT),
                Duration::from_secs(2),
            )
        });
        t1.join().expect("echo thread panicked")?;
        t2.join().expect("echo thread panicked")?;
        Ok(())
    })?;
    // The nets are isolated: no route from one subnet to the other.
    let cross = echo(
        n1.host(1),
        n2.host(0).socket_addr(ECHO_PORT),
        Duration::from_secs(1),
    );
    assert!(cross.is_err(), "net 1 reached net 2: {cross:?}");

    drop((s1, s2));
    let tags: Vec<String> = nets.iter().map(|n| n.tag().to_owned()).collect();
    drop(nets);
    for tag in &tags {
        assert_nothing_left(tag)?;
    }
    Ok(())
}

#[test]
fn host_processes_run_inside_their_host_and_are_killed_precisely() -> anyhow::Result<()> {
    init_test_logging();
    let net = TestNet::new(2)?;
    let (h0, h1) = (net.host(0), net.host(1));

    // A command sees the host's network: its own address, not the other host's.
    let out = h1
        .command("ip")?
        .args(["-o", "-4", "addr", "show"])
        .output()?;
    let addrs = String::from_utf8(out.stdout)?;
    assert!(addrs.contains(&format!("{}/24", h1.addr())), "{addrs}");
    assert!(!addrs.contains(&h0.addr().to_string()), "{addrs}");

    // The pid is the program itself, inside h0's namespace.
    let mut sleeper = h0.spawn("sleeper", "sleep", ["1000"])?;
    let pid = sleeper.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    assert_eq!(comm.trim(), "sleep");
    assert_eq!(
        netns_identity(Path::new(&format!("/proc/{pid}/ns/net")))?,
        netns_identity(&h0.netns_path())?
    );

    sleeper.kill(Signal::SIGTERM)?;
    let status = sleeper
        .wait_timeout(Duration::from_secs(5))?
        .context("sleep ignored SIGTERM")?;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(
        sleeper.kill(Signal::SIGTERM).is_err(),
        "signalling a reaped process"
    );

    sleeper.restart()?;
    assert_eq!(sleeper.starts(), 2);
    assert_ne!(sleeper.pid(), pid);
    assert!(sleeper.is_running()?);
    assert_eq!(sleeper.wait_timeout(Duration::from_millis(100))?, None);
    let status = sleeper.kill9()?;
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    // stop: SIGTERM when it is honoured, SIGKILL after the grace period when it is not.
    let mut polite = h0.spawn("polite", "sleep", ["1000"])?;
    let status = polite.stop(Duration::from_secs(5))?;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    let mut stubborn = h0.spawn("stubborn", "sh", ["-c", "trap '' TERM; exec sleep 1000"])?;
    wait_until(Duration::from_secs(5), "stubborn to exec sleep", || {
        Ok(std::fs::read_to_string(format!("/proc/{}/comm", stubborn.pid()))?.trim() == "sleep")
    })?;
    let start = Instant::now();
    let status = stubborn.stop(Duration::from_millis(300))?;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );

    // Output lands in the process log.
    let mut talker = h1.spawn("talker", "sh", ["-c", "echo hello-log; exec sleep 1000"])?;
    wait_until(Duration::from_secs(5), "talker's line in its log", || {
        Ok(talker.log().contains("hello-log"))
    })?;
    assert!(talker.log_path().starts_with(net.dir()));

    // Closing the net kills what it started and strays nobody registered.
    let mut stray = h1.command("sleep")?.arg("1000").spawn()?;
    net.close()?;
    let status = stray.wait()?;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "stray survived the net"
    );
    let status = talker
        .wait_timeout(Duration::from_secs(5))?
        .context("talker survived the net")?;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    drop(talker);
    Ok(())
}

#[test]
fn sweep_removes_namespaces_of_dead_runs_and_their_processes() -> anyhow::Result<()> {
    init_test_logging();
    // A pid above pid_max can never be alive: a run that "crashed" with it.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()?;
    let dead = pid_max + 1;
    // Our pid as the counter keeps the name unique among concurrent test processes.
    let name = format!(
        "{PREFIX}{}-{}-sw",
        base36(dead),
        base36(std::process::id().into())
    );
    // The orphan is inside its namespace before the name exists, so a concurrent sweep by
    // another test process can only ever see both together.
    let mut orphan = Command::new("unshare")
        .args(["--net", "sleep", "1000"])
        .spawn()?;
    let root_ns = netns_identity(Path::new("/proc/self/ns/net"))?;
    let orphan_ns = format!("/proc/{}/ns/net", orphan.id());
    wait_until(Duration::from_secs(5), "the orphan to unshare", || {
        Ok(netns_identity(Path::new(&orphan_ns))? != root_ns)
    })?;
    run("ip", &["netns", "attach", &name, &orphan.id().to_string()])?;

    let swept = sweep_leftovers()?;
    tracing::info!(?swept, "swept");
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "{name} survived the sweep"
    );
    let status = orphan.wait()?;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the orphan survived the sweep"
    );

    // A live owner's namespaces are left alone.
    let net = TestNet::new(1)?;
    sweep_leftovers()?;
    assert!(net.host(0).netns_path().exists());
    Ok(())
}

fn base36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}
