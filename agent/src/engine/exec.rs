//! Streams the output of a process started with `Runtime::exec`, then its exit code.
//!
//! The exec helper is our child; its stdout/stderr pipes are read asynchronously and its
//! exit is awaited on a blocking thread. If the client goes away the process is killed
//! (through a pidfd, so a recycled pid is never signalled).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use berth_proto::v1::{ContainerExecMessage, ExecOutput, LogStream, container_exec_message};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::runtime::{ExecProcess, sys};

type Sink = mpsc::Sender<Result<ContainerExecMessage, tonic::Status>>;

/// How long output is still collected after the process exited (a background child may
/// keep the pipes open forever).
const DRAIN: Duration = Duration::from_secs(1);

async fn forward(fd: Option<OwnedFd>, stream: LogStream, sink: Sink) {
    let Some(fd) = fd else { return };
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let msg = ContainerExecMessage {
                    kind: Some(container_exec_message::Kind::Output(ExecOutput {
                        stream: stream as i32,
                        data: buf[..n].to_vec(),
                    })),
                };
                if sink.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Streams `process` into `sink` until it exits; the last message is its exit code.
pub async fn stream(process: ExecProcess, sink: Sink) {
    let mut child = process.child;
    let pidfd = sys::pidfd_open(child.id() as i32).ok();
    let out = child.stdout.take().map(OwnedFd::from);
    let err = child.stderr.take().map(OwnedFd::from);
    let readers = {
        let (a, b) = (sink.clone(), sink.clone());
        async move {
            tokio::join!(
                forward(out, LogStream::Stdout, a),
                forward(err, LogStream::Stderr, b)
            );
        }
    };
    let mut readers = Box::pin(readers);
    let mut waiter = tokio::task::spawn_blocking(move || child.wait());
    let status = tokio::select! {
        status = &mut waiter => {
            let _ = tokio::time::timeout(DRAIN, &mut readers).await;
            status
        }
        () = &mut readers => (&mut waiter).await,
        () = sink.closed() => {
            if let Some(fd) = &pidfd {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
            let _ = waiter.await;
            return;
        }
    };
    let code = match status {
        Ok(Ok(s)) => match (s.code(), s.signal()) {
            (Some(c), _) => c,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 255,
        },
        Ok(Err(e)) => {
            let _ = sink
                .send(Err(tonic::Status::internal(format!(
                    "waiting for the exec process: {e}"
                ))))
                .await;
            return;
        }
        Err(e) => {
            let _ = sink
                .send(Err(tonic::Status::internal(format!(
                    "exec waiter failed: {e}"
                ))))
                .await;
            return;
        }
    };
    let _ = sink
        .send(Ok(ContainerExecMessage {
            kind: Some(container_exec_message::Kind::ExitCode(code)),
        }))
        .await;
}
