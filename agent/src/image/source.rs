//! Where an import reads from: a directory or a tar archive (optionally gzip/zstd
//! compressed), seen as one namespace of relative paths.
//!
//! Paths named by image documents are resolved inside that namespace only: `..` may not climb
//! above its root, absolute paths are refused, and symlinks (which `docker save` writes for
//! repeated layers) are followed lexically inside the namespace with a hop limit — a symlink
//! can never lead a read outside the source. A tar archive is indexed once (member name →
//! offset and size) and members are read in place with positional reads; a compressed archive
//! is first decompressed into an unlinked temporary file in the store's work area.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::ImageError;
use super::store::temp_name;
use super::unpack::{Compression, sniff};

const MAX_SYMLINK_HOPS: usize = 40;

/// A tar member: file data in place, or a link to another member.
#[derive(Clone, Debug)]
pub(crate) enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
    HardLink(String),
}

enum Kind {
    File,
    Dir,
    Symlink(String),
    /// A hard link: its target is a path from the namespace root.
    HardLink(String),
}

/// A reader of one file of a source.
pub(crate) type SourceReader<'a> = Box<dyn Read + 'a>;

/// An import source.
pub(crate) enum Source {
    /// A directory on the host.
    Dir { root: PathBuf },
    /// An indexed tar archive.
    Tar {
        file: File,
        members: HashMap<String, Member>,
        dirs: HashSet<String>,
        path: PathBuf,
    },
}

/// Splits a relative path into normal components. `..` is returned as a component for the
/// resolver to handle; absolute paths are refused.
fn split(path: &str, what: &str) -> Result<VecDeque<String>, ImageError> {
    if path.starts_with('/') {
        return Err(ImageError::invalid(what, format!("absolute path {path:?}")));
    }
    Ok(path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect())
}

impl Source {
    /// Opens a directory, or indexes a (possibly compressed) tar archive; `work` is a
    /// directory for the temporary decompressed copy.
    pub(crate) fn open(path: &Path, work: &Path) -> Result<Source, ImageError> {
        let meta =
            std::fs::metadata(path).map_err(|e| ImageError::io("opening image source", path, e))?;
        if meta.is_dir() {
            return Ok(Source::Dir {
                root: path.to_owned(),
            });
        }
        let mut file =
            File::open(path).map_err(|e| ImageError::io("opening image source", path, e))?;
        let mut magic = [0u8; 6];
        let n = file
            .read_at(&mut magic, 0)
            .map_err(|e| ImageError::io("reading", path, e))?;
        let compression = sniff(&magic[..n]).map_err(|_| ImageError::UnknownFormat {
            path: path.to_owned(),
        })?;
        if compression != Compression::None {
            file = decompress_to_temp(file, compression, work, path)?;
        }
        // Image archives are ustar/GNU/PAX tars: "ustar" at offset 257 of the first header.
        let mut header = [0u8; 263];
        let n = file
            .read_at(&mut header, 0)
            .map_err(|e| ImageError::io("reading", path, e))?;
        if n < header.len() || &header[257..262] != b"ustar" {
            return Err(ImageError::UnknownFormat {
                path: path.to_owned(),
            });
        }
        let (members, dirs) = index_tar(&file).map_err(|e| match e {
            IndexError::Io(source) => ImageError::io("reading archive", path, source),
            IndexError::Refused(reason) => ImageError::invalid(format!("archive {path:?}"), reason),
        })?;
        if members.is_empty() {
            return Err(ImageError::UnknownFormat {
                path: path.to_owned(),
            });
        }
        Ok(Source::Tar {
            file,
            members,
            dirs,
            path: path.to_owned(),
        })
    }

    /// The path of the source, for messages.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Source::Dir { root } => root,
            Source::Tar { path, .. } => path,
        }
    }

    fn kind(&self, rel: &str) -> Result<Option<Kind>, ImageError> {
        match self {
            Source::Dir { root } => {
                let p = root.join(rel);
                let meta = match std::fs::symlink_metadata(&p) {
                    Ok(m) => m,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        return Ok(None);
                    }
                    Err(e) => return Err(ImageError::io("inspecting", p, e)),
                };
                if meta.file_type().is_symlink() {
                    let t = std::fs::read_link(&p)
                        .map_err(|e| ImageError::io("reading link", &p, e))?;
                    let t = t.to_str().ok_or_else(|| {
                        ImageError::invalid(format!("symlink {p:?}"), "target is not UTF-8")
                    })?;
                    Ok(Some(Kind::Symlink(t.to_owned())))
                } else if meta.is_dir() {
                    Ok(Some(Kind::Dir))
                } else if meta.is_file() {
                    Ok(Some(Kind::File))
                } else {
                    Err(ImageError::invalid(
                        format!("{p:?}"),
                        "not a regular file, directory or symlink",
                    ))
                }
            }
            Source::Tar { members, dirs, .. } => Ok(match members.get(rel) {
                Some(Member::File { .. }) => Some(Kind::File),
                Some(Member::Symlink(t)) => Some(Kind::Symlink(t.clone())),
                Some(Member::HardLink(t)) => Some(Kind::HardLink(t.clone())),
                None if dirs.contains(rel) => Some(Kind::Dir),
                None => None,
            }),
        }
    }

    /// Resolves `path` to a regular file's canonical relative path inside the source;
    /// `None` if it does not exist.
    pub(crate) fn resolve(&self, path: &str, what: &str) -> Result<Option<String>, ImageError> {
        let mut todo = split(path, what)?;
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                if done.pop().is_none() {
                    return Err(ImageError::invalid(
                        what,
                        format!("path {path:?} leaves the image source"),
                    ));
                }
                continue;
            }
            done.push(c);
            let cur = done.join("/");
            let restart = |target: &str, hops: &mut usize, todo: &mut VecDeque<String>| {
                *hops += 1;
                if *hops > MAX_SYMLINK_HOPS {
                    return Err(ImageError::invalid(
                        what,
                        format!("too many symlinks resolving {path:?}"),
                    ));
                }
                let mut t = split(target, what)?;
                t.extend(todo.drain(..));
                *todo = t;
                Ok(())
            };
            match self.kind(&cur)? {
                None => return Ok(None),
                Some(Kind::Dir) => {}
                Some(Kind::File) if todo.is_empty() => {}
                Some(Kind::File) => return Ok(None),
                Some(Kind::Symlink(target)) => {
                    done.pop();
                    restart(&target, &mut hops, &mut todo)?;
                }
                Some(Kind::HardLink(target)) => {
                    done.clear();
                    restart(&target, &mut hops, &mut todo)?;
                }
            }
        }
        if done.is_empty() {
            return Ok(None);
        }
        let cur = done.join("/");
        Ok(match self.kind(&cur)? {
            Some(Kind::File) => Some(cur),
            _ => None,
        })
    }

    /// Opens the file at `path`; `None` if it does not exist.
    pub(crate) fn open_file(
        &self,
        path: &str,
        what: &str,
    ) -> Result<Option<(SourceReader<'_>, u64)>, ImageError> {
        let Some(rel) = self.resolve(path, what)? else {
            return Ok(None);
        };
        match self {
            Source::Dir { root } => {
                let p = root.join(&rel);
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|e| ImageError::io("opening", &p, e))?;
                let size = f
                    .metadata()
                    .map_err(|e| ImageError::io("inspecting", &p, e))?
                    .len();
                Ok(Some((Box::new(f), size)))
            }
            Source::Tar { file, members, .. } => match members.get(&rel) {
                Some(Member::File { offset, size }) => Ok(Some((
                    Box::new(MemberReader {
                        file,
                        pos: *offset,
                        end: offset + size,
                    }),
                    *size,
                ))),
                _ => Ok(None),
            },
        }
    }

    /// Whether `path` names a regular file.
    pub(crate) fn exists(&self, path: &str, what: &str) -> Result<bool, ImageError> {
        Ok(self.resolve(path, what)?.is_some())
    }

    /// Reads a small document whole; refuses one larger than `limit`.
    pub(crate) fn read_small(
        &self,
        path: &str,
        limit: u64,
        what: &str,
    ) -> Result<Option<Vec<u8>>, ImageError> {
        let Some((r, size)) = self.open_file(path, what)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(ImageError::TooLarge {
                what: what.to_owned(),
                limit,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        r.take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io("reading", self.path().join(path), e))?;
        if buf.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what: what.to_owned(),
                limit,
            });
        }
        Ok(Some(buf))
    }
}

/// Reads one tar member in place.
struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member is truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

enum IndexError {
    Io(io::Error),
    Refused(String),
}

/// Name → member, and the set of directories (explicit or implied by a member's path).
type TarIndex = (HashMap<String, Member>, HashSet<String>);

fn index_tar(mut file: &File) -> Result<TarIndex, IndexError> {
    file.seek(io::SeekFrom::Start(0)).map_err(IndexError::Io)?;
    let mut members = HashMap::new();
    let mut dirs = HashSet::new();
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries_with_seek().map_err(IndexError::Io)? {
        let entry = entry.map_err(IndexError::Io)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw)
            .map_err(|_| IndexError::Refused("member name is not UTF-8".into()))?;
        if name.starts_with('/') {
            return Err(IndexError::Refused(format!(
                "member {name:?} has an absolute path"
            )));
        }
        let comps: Vec<&str> = name
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if comps.contains(&"..") {
            return Err(IndexError::Refused(format!(
                "member {name:?} has a \"..\" component"
            )));
        }
        for i in 1..comps.len() {
            dirs.insert(comps[..i].join("/"));
        }
        let key = comps.join("/");
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .ok_or_else(|| IndexError::Refused(format!("link {name:?} has no target")))
        };
        let member = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Directory => {
                dirs.insert(key);
                continue;
            }
            tar::EntryType::Symlink => Member::Symlink(link()?),
            tar::EntryType::Link => Member::HardLink(link()?),
            _ => continue,
        };
        if !key.is_empty() {
            members.insert(key, member);
        }
    }
    Ok((members, dirs))
}

fn decompress_to_temp(
    file: File,
    compression: Compression,
    work: &Path,
    path: &Path,
) -> Result<File, ImageError> {
    let tmp = work.join(temp_name("archive"));
    let mut out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| ImageError::io("creating", &tmp, e))?;
    // Unlinked at once: the open file is all we need, and a crash leaves nothing behind.
    std::fs::remove_file(&tmp).map_err(|e| ImageError::io("removing", &tmp, e))?;
    let input = io::BufReader::new(file);
    let copied = match compression {
        Compression::Gzip => io::copy(&mut flate2::bufread::MultiGzDecoder::new(input), &mut out),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(input)
            .and_then(|mut d| io::copy(&mut d, &mut out)),
        Compression::None => io::copy(&mut { input }, &mut out),
    };
    copied.map_err(|e| ImageError::io("decompressing archive", path, e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn open_tar(bytes: &[u8]) -> (tempfile::TempDir, Source) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.tar");
        std::fs::write(&p, bytes).unwrap();
        let s = Source::open(&p, t.path()).unwrap();
        (t, s)
    }

    #[test]
    fn tar_members_resolve_through_relative_symlinks() {
        use tar::EntryType::*;
        let bytes = tar_with(&[
            ("a/layer.tar", Regular, b"layer-a", None),
            ("b/layer.tar", Symlink, b"", Some("../a/layer.tar")),
            ("c", Link, b"", Some("a/layer.tar")),
        ]);
        let (_t, s) = open_tar(&bytes);
        for p in ["a/layer.tar", "./a/layer.tar", "b/layer.tar", "c"] {
            let mut buf = String::new();
            s.open_file(p, "t")
                .unwrap()
                .unwrap()
                .0
                .read_to_string(&mut buf)
                .unwrap();
            assert_eq!(buf, "layer-a", "{p}");
        }
        assert!(s.open_file("missing", "t").unwrap().is_none());
        assert!(
            s.open_file("a", "t").unwrap().is_none(),
            "a directory is not a file"
        );
    }

    #[test]
    fn paths_cannot_leave_the_source() {
        use tar::EntryType::*;
        let bytes = tar_with(&[
            ("x", Regular, b"x", None),
            ("up", Symlink, b"", Some("../../etc/passwd")),
            ("abs", Symlink, b"", Some("/etc/passwd")),
        ]);
        let (_t, s) = open_tar(&bytes);
        assert!(s.open_file("../x", "t").is_err());
        assert!(s.open_file("/x", "t").is_err());
        assert!(s.open_file("up", "t").is_err());
        assert!(s.open_file("abs", "t").is_err());
    }

    #[test]
    fn symlink_loops_are_cut() {
        use tar::EntryType::*;
        let bytes = tar_with(&[
            ("a", Symlink, b"", Some("b")),
            ("b", Symlink, b"", Some("a")),
        ]);
        let (_t, s) = open_tar(&bytes);
        assert!(s.open_file("a", "t").is_err());
    }

    #[test]
    fn gzip_archives_are_read() {
        use std::io::Write;
        use tar::EntryType::*;
        let bytes = tar_with(&[("m.json", Regular, b"{}", None)]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        let (_t, s) = open_tar(&gz.finish().unwrap());
        assert_eq!(s.read_small("m.json", 10, "t").unwrap().unwrap(), b"{}");
        assert!(matches!(
            s.read_small("m.json", 1, "t"),
            Err(ImageError::TooLarge { .. })
        ));
    }

    #[test]
    fn directory_sources_refuse_escaping_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        let root = t.path().join("src");
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::write(root.join("blobs/a"), "a").unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("blobs/esc")).unwrap();
        std::os::unix::fs::symlink("a", root.join("blobs/ok")).unwrap();
        let s = Source::open(&root, t.path()).unwrap();
        assert_eq!(s.read_small("blobs/ok", 10, "t").unwrap().unwrap(), b"a");
        assert!(s.read_small("blobs/esc", 10, "t").is_err());
    }

    #[test]
    fn files_that_are_not_archives_are_unknown_formats() {
        let t = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("empty", &b""[..]),
            ("text", &b"hello, this is not a tar archive"[..]),
        ] {
            let p = t.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let err = Source::open(&p, t.path()).err().unwrap();
            assert!(
                matches!(err, ImageError::UnknownFormat { .. }),
                "{name}: {err:?}"
            );
        }
        let p = t.path().join("gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &[7u8; 4096]).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        assert!(matches!(
            Source::open(&p, t.path()),
            Err(ImageError::UnknownFormat { .. })
        ));
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            3,
            "no temp file left"
        );
    }
}
