//! Container log files in Docker's `json-file` format, written by the supervisor.
//!
//! One JSON object per line: `{"log":"<text>\n","stream":"stdout","time":"<RFC 3339 UTC, ns>"}`.
//! Output is split at newlines; a line longer than `MAX_LINE` is written in pieces without the
//! trailing newline (Docker's 16 KiB partial messages). The live file is rotated to `<path>.1`
//! (older ones shift up, the oldest is dropped) before a write would exceed `max_size`.
//!
//! This module has no dependencies beyond std so the supervisor stays small.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest piece of a line written as one record.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Formats a Unix time as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil-from-days (proleptic Gregorian), Howard Hinnant's algorithm
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Appends `s` to `out` as the body of a JSON string (without quotes).
pub fn json_escape(s: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(s);
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// Writes framed, rotated log records for one container.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) or creates the log at `path`.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<LogWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            size,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files > 1 {
            let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
            let _ = fs::remove_file(name(self.max_files - 1));
            for i in (1..self.max_files - 1).rev() {
                let _ = fs::rename(name(i), name(i + 1));
            }
            fs::rename(&self.path, name(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        } else {
            self.file.set_len(0)?;
        }
        self.size = 0;
        Ok(())
    }

    fn record(&mut self, stream: Stream, text: &[u8]) -> io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 80);
        line.extend_from_slice(b"{\"log\":\"");
        json_escape(text, &mut line);
        line.extend_from_slice(b"\",\"stream\":\"");
        line.extend_from_slice(stream.name().as_bytes());
        line.extend_from_slice(b"\",\"time\":\"");
        line.extend_from_slice(rfc3339_nanos(SystemTime::now()).as_bytes());
        line.extend_from_slice(b"\"}\n");
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Feeds raw output of `stream`; complete lines become records.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut self.pending[idx]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos + 1;
            let mut piece_start = start;
            while end - piece_start > MAX_LINE + 1 {
                self.record(stream, &buf[piece_start..piece_start + MAX_LINE])?;
                piece_start += MAX_LINE;
            }
            self.record(stream, &buf[piece_start..end])?;
            start = end;
        }
        while buf.len() - start >= MAX_LINE {
            self.record(stream, &buf[start..start + MAX_LINE])?;
            start += MAX_LINE;
        }
        buf.drain(..start);
        self.pending[idx] = buf;
        Ok(())
    }

    /// Writes any unterminated output as final records.
    pub fn flush(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buf = std::mem::take(&mut self.pending[stream as usize]);
            if !buf.is_empty() {
                self.record(stream, &buf)?;
            }
        }
        self.file.flush()
    }
}

/// One parsed log record (for readers: `berth logs`, tests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct LogRecord {
    /// Text, including its trailing newline when complete.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 timestamp.
    pub time: String,
}

/// Reads every record of a log, rotated files first (oldest to newest).
pub fn read_all(path: &Path, max_files: u32) -> io::Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = (1..max_files.max(1))
        .rev()
        .map(|i| PathBuf::from(format!("{}.{i}", path.display())))
        .collect();
    files.push(path.to_path_buf());
    for f in files {
        let text = match fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines() {
            out.push(
                serde_json::from_str(line)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 5);
        assert_eq!(rfc3339_nanos(t), "2024-02-29T12:34:56.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339_nanos(t).starts_with("2000-02-29T00:00:00"));
    }

    #[test]
    fn escaping() {
        let mut out = Vec::new();
        json_escape(b"a\"b\\c\n\t\x01\xff", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a\\\"b\\\\c\\n\\t\\u0001\u{fffd}"
        );
    }

    #[test]
    fn lines_streams_and_partials() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("c-json.log");
        let mut w = LogWriter::open(&p, 1 << 20, 3).unwrap();
        w.write(Stream::Stdout, b"hel").unwrap();
        w.write(Stream::Stderr, b"oops\n").unwrap();
        w.write(Stream::Stdout, b"lo\nworld\nta").unwrap();
        w.write(Stream::Stdout, b"il").unwrap();
        w.flush().unwrap();
        let recs = read_all(&p, 3).unwrap();
        let got: Vec<(&str, &str)> = recs
            .iter()
            .map(|r| (r.stream.as_str(), r.log.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stderr", "oops\n"),
                ("stdout", "hello\n"),
                ("stdout", "world\n"),
                ("stdout", "tail")
            ]
        );
        assert!(recs[0].time.ends_with('Z') && recs[0].time.len() == 30);
    }

    #[test]
    fn long_lines_are_split() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("l.log");
        let mut w = LogWriter::open(&p, 1 << 30, 1).unwrap();
        let mut big = vec![b'x'; MAX_LINE * 2 + 10];
        big.push(b'\n');
        w.write(Stream::Stdout, &big).unwrap();
        w.flush().unwrap();
        let recs = read_all(&p, 1).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].log.len(), MAX_LINE);
        assert_eq!(recs[2].log, format!("{}\n", "x".repeat(10)));
    }

    #[test]
    fn rotation_keeps_max_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("r.log");
        let mut w = LogWriter::open(&p, 200, 3).unwrap();
        for i in 0..20 {
            w.write(Stream::Stdout, format!("line {i}\n").as_bytes())
                .unwrap();
        }
        w.flush().unwrap();
        assert!(p.exists());
        assert!(tmp.path().join("r.log.1").exists());
        assert!(tmp.path().join("r.log.2").exists());
        assert!(!tmp.path().join("r.log.3").exists());
        for f in ["r.log", "r.log.1", "r.log.2"] {
            assert!(fs::metadata(tmp.path().join(f)).unwrap().len() <= 200);
        }
        let recs = read_all(&p, 3).unwrap();
        assert_eq!(recs.last().unwrap().log, "line 19\n");
        // ordering across files is preserved
        let nums: Vec<u32> = recs
            .iter()
            .map(|r| r.log.trim().trim_start_matches("line ").parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(nums.len() < 20, "oldest records were dropped");
    }
}
