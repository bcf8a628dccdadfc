//! Entry point of the single-threaded setup helper.
//!
//! Any binary that links `berth-agent` becomes the helper when its `main` calls
//! [`maybe_run_init`] before doing anything else (before creating threads or an async
//! runtime): `berthd`, `berth-runtime` and the test binaries' helper all do. The runtime
//! starts the helper from a sealed memfd copy with [`INIT_ENV`](super::helper::INIT_ENV) set
//! and a socket as stdin; `maybe_run_init` then never returns. Without the variable it
//! returns immediately (one `getenv`).
//!
//! Helper steps: refuse to run multi-threaded, become non-dumpable, close every fd ≥ 3,
//! read the request, then
//! - `create`: fork the supervisor (which `setsid`s and outlives us) and exit, so the
//!   daemon reaps this process right away and never becomes the container's parent;
//! - `exec`: join the container and run the process (see `exec`).

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use super::helper::{HelperReply, HelperRequest, INIT_ENV, recv, send};
use super::sys;

/// Runs the helper if this process was started as one; returns otherwise.
pub fn maybe_run_init() {
    let Some(mode) = std::env::var_os(INIT_ENV) else {
        return;
    };
    let code = run(mode.to_string_lossy().as_ref());
    std::process::exit(code);
}

fn run(mode: &str) -> i32 {
    match sys::thread_count() {
        Ok(1) => {}
        _ => {
            eprintln!("berth-init: the helper must be entered before any thread is created");
            return 70;
        }
    }
    // SAFETY: single-threaded (checked above), so no other thread reads the environment.
    unsafe { std::env::remove_var(INIT_ENV) };
    // comm would otherwise be the memfd's fd number ("4")
    let _ = sys::set_name(c"berth-init");
    if let Err(e) = sys::set_non_dumpable() {
        eprintln!("berth-init: PR_SET_DUMPABLE: {e}");
        return 70;
    }
    if let Err(e) = sys::close_fds_from(3) {
        eprintln!("berth-init: close_range: {e}");
        return 70;
    }
    // SAFETY: the runtime passes the request socket as stdin (fd 0); we take ownership of it.
    let mut sock = unsafe { UnixStream::from_raw_fd(0) };
    let req: HelperRequest = match recv(&mut sock) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth-init: reading request: {e}");
            return 70;
        }
    };
    match (mode, req) {
        ("create", HelperRequest::Create(req)) => {
            // SAFETY: single-threaded, so the child may run arbitrary code after fork.
            match unsafe { nix::unistd::fork() } {
                Ok(nix::unistd::ForkResult::Child) => {
                    let _ = nix::unistd::setsid();
                    super::supervisor::run(*req, sock)
                }
                Ok(nix::unistd::ForkResult::Parent { .. }) => 0,
                Err(e) => {
                    let _ = send(
                        &mut sock,
                        &HelperReply::Error {
                            message: format!("fork supervisor: {e}"),
                        },
                    );
                    1
                }
            }
        }
        ("exec", HelperRequest::Exec(req)) => super::exec::run(*req, sock),
        (m, _) => {
            let _ = send(
                &mut sock,
                &HelperReply::Error {
                    message: format!("unexpected request for helper mode {m:?}"),
                },
            );
            70
        }
    }
}
