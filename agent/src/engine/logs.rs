//! Reads a container's JSON log (written by its supervisor) as a stream of wire messages:
//! the rotated files oldest first, then the live file, then — with `follow` — what is
//! appended to it until the container has exited.
//!
//! Invariant: the follower ends only after it has read the file *after* observing the exit.
//! The supervisor flushes the log before it records the exit, so nothing written by the
//! container is lost at the end of `berth run` or `berth logs -f`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::v1::{ContainerLogsMessage, LogStream};
use prost_types::Timestamp;
use tokio::fs::File;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::convert::parse_rfc3339;
use crate::runtime::ExitInfo;
use crate::runtime::logs::LogRecord;

/// How often a follower looks for new output when nothing else wakes it.
const POLL: Duration = Duration::from_millis(20);

/// What to read.
pub struct LogQuery {
    /// The live log file.
    pub path: PathBuf,
    /// Files kept by rotation, the live one included.
    pub max_files: u32,
    /// Keep streaming until the container exits.
    pub follow: bool,
    /// Only the last N records of what is already written.
    pub tail: Option<usize>,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
}

type Sink = mpsc::Sender<Result<ContainerLogsMessage, tonic::Status>>;

fn message(rec: LogRecord) -> ContainerLogsMessage {
    let stream = match rec.stream.as_str() {
        "stdout" => LogStream::Stdout,
        "stderr" => LogStream::Stderr,
        _ => LogStream::Unknown,
    };
    ContainerLogsMessage {
        timestamp: parse_rfc3339(&rec.time),
        stream: stream as i32,
        data: rec.log.into_bytes(),
    }
}

/// Splits complete lines off `buf` and parses them; malformed lines are skipped.
fn parse_lines(buf: &mut Vec<u8>, out: &mut Vec<LogRecord>) {
    let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return;
    };
    for line in buf[..last_nl].split(|b| *b == b'\n') {
        if let Ok(rec) = serde_json::from_slice::<LogRecord>(line) {
            out.push(rec);
        }
    }
    buf.drain(..=last_nl);
}

/// The live log file as the follower sees it: an open handle, its inode, a partial line.
struct Live {
    file: Option<(File, u64)>,
    partial: Vec<u8>,
}

impl Live {
    /// Reads whatever is new; follows a rotation (the path now names another inode) after
    /// draining the old file.
    async fn read_new(&mut self, path: &Path, out: &mut Vec<LogRecord>) -> io::Result<()> {
        loop {
            if let Some((f, _)) = self.file.as_mut() {
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    self.partial.extend_from_slice(&chunk[..n]);
                    parse_lines(&mut self.partial, out);
                }
            }
            let current = match tokio::fs::metadata(path).await {
                Ok(m) => Some(m.ino()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let ours = self.file.as_ref().map(|(_, ino)| *ino);
            match current {
                Some(ino) if Some(ino) != ours => {
                    let f = match File::open(path).await {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    let ino = f.metadata().await?.ino();
                    self.file = Some((f, ino));
                    self.partial.clear();
                }
                _ => return Ok(()),
            }
        }
    }
}

async fn read_whole(path: &Path, out: &mut Vec<LogRecord>) -> io::Result<()> {
    let mut data = match tokio::fs::read(path).await {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    data.push(b'\n');
    parse_lines(&mut data, out);
    Ok(())
}

fn is_before(ts: &Option<Timestamp>, since: &Timestamp) -> bool {
    ts.as_ref()
        .is_some_and(|t| (t.seconds, t.nanos) < (since.seconds, since.nanos))
}

async fn send_all(sink: &Sink, records: Vec<LogRecord>, since: &Option<Timestamp>) -> bool {
    for rec in records {
        let msg = message(rec);
        if let Some(s) = since
            && is_before(&msg.timestamp, s)
        {
            continue;
        }
        if sink.send(Ok(msg)).await.is_err() {
            return false;
        }
    }
    true
}

/// Streams the log into `sink` as `query` asks; `exit` turns `Some` when the container has
/// exited. Returns when done or when the receiver is gone.
pub async fn stream(query: LogQuery, mut exit: watch::Receiver<Option<ExitInfo>>, sink: Sink) {
    if let Err(e) = stream_inner(&query, &mut exit, &sink).await {
        let _ = sink
            .send(Err(tonic::Status::internal(format!(
                "reading {:?}: {e}",
                query.path
            ))))
            .await;
    }
}

async fn stream_inner(
    query: &LogQuery,
    exit: &mut watch::Receiver<Option<ExitInfo>>,
    sink: &Sink,
) -> io::Result<()> {
    let mut records = Vec::new();
    for i in (1..query.max_files.max(1)).rev() {
        read_whole(
            Path::new(&format!("{}.{i}", query.path.display())),
            &mut records,
        )
        .await?;
    }
    let mut live = Live {
        file: None,
        partial: Vec::new(),
    };
    // the exit is checked before reading, so a snapshot taken after it is complete
    let mut exited = exit.borrow().is_some();
    live.read_new(&query.path, &mut records).await?;
    if let Some(n) = query.tail {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    if !send_all(sink, records, &query.since).await || !query.follow {
        return Ok(());
    }
    let mut exit_gone = false;
    while !exited {
        tokio::select! {
            changed = exit.changed(), if !exit_gone => {
                if changed.is_err() {
                    exit_gone = true;
                }
            }
            () = tokio::time::sleep(POLL) => {}
            () = sink.closed() => return Ok(()),
        }
        exited = exit_gone || exit.borrow().is_some();
        let mut batch = Vec::new();
        live.read_new(&query.path, &mut batch).await?;
        if !send_all(sink, batch, &query.since).await {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logs::{LogWriter, Stream};

    fn collect(rx: &mut mpsc::Receiver<Result<ContainerLogsMessage, tonic::Status>>) -> String {
        let mut s = String::new();
        while let Ok(m) = rx.try_recv() {
            s.push_str(&String::from_utf8(m.unwrap().data).unwrap());
        }
        s
    }

    #[tokio::test]
    async fn tail_and_rotated_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c-json.log");
        let mut w = LogWriter::open(&p, 120, 3).unwrap();
        for i in 0..6 {
            w.write(Stream::Stdout, format!("l{i}\n").as_bytes())
                .unwrap();
        }
        w.flush().unwrap();
        let (_tx, exit) = watch::channel(None);
        let (sink, mut rx) = mpsc::channel(100);
        let q = LogQuery {
            path: p.clone(),
            max_files: 3,
            follow: false,
            tail: Some(2),
            since: None,
        };
        stream(q, exit.clone(), sink).await;
        assert_eq!(collect(&mut rx), "l4\nl5\n");
        assert!(tmp.path().join("c-json.log.2").exists(), "rotated");
        let (sink, mut rx) = mpsc::channel(100);
        let q = LogQuery {
            path: p.clone(),
            max_files: 3,
            follow: false,
            tail: None,
            since: None,
        };
        stream(q, exit.clone(), sink).await;
        assert_eq!(collect(&mut rx), "l3\nl4\nl5\n", "oldest file first");
    }

    #[tokio::test]
    async fn follow_ends_after_exit_with_everything_written() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c-json.log");
        let (exit_tx, exit) = watch::channel(None);
        let (sink, mut rx) = mpsc::channel(100);
        let q = LogQuery {
            path: p.clone(),
            max_files: 2,
            follow: true,
            tail: None,
            since: None,
        };
        let task = tokio::spawn(stream(q, exit, sink));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut w = LogWriter::open(&p, 1 << 20, 2).unwrap();
        w.write(Stream::Stdout, b"one\n").unwrap();
        w.write(Stream::Stderr, b"two\n").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.write(Stream::Stdout, b"last\n").unwrap();
        w.flush().unwrap();
        exit_tx.send_replace(Some(ExitInfo {
            exit_code: 0,
            signal: None,
            oom_killed: false,
            finished: String::new(),
            error: None,
        }));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(collect(&mut rx), "one\ntwo\nlast\n");
    }
}
