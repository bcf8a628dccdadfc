//! Applies one layer (a tar stream, plain, gzip or zstd) to an empty directory, producing an
//! overlay-native lower directory.
//!
//! - Compression is sniffed from the magic bytes (gzip `1f 8b`, zstd `28 b5 2f fd`), never
//!   taken from a media type. The blob digest (of the bytes as stored) and the diff_id (of the
//!   uncompressed tar) are both computed while the stream is applied.
//! - Whiteouts become what overlayfs reads: `.wh.NAME` → a character device 0/0 named `NAME`;
//!   `.wh..wh..opq` in `D` → xattr `trusted.overlay.opaque=y` on `D`. Other `.wh..wh.*`
//!   (aufs bookkeeping) entries are skipped.
//! - Path safety: absolute paths and `..` components are refused; every entry is created
//!   relative to its parent directory's fd, and parents are opened one component at a time
//!   with `O_NOFOLLOW`, so an entry whose parent path goes through a symlink is refused and
//!   nothing is ever written outside the layer directory. Symlinks themselves are created
//!   verbatim (their targets are only resolved later, inside the container root). Hardlink
//!   targets must name an existing non-directory inside the same layer, reached without
//!   symlinks.
//! - Device nodes other than 0/0 are refused; FIFOs are allowed. Numeric owner, mode (with
//!   set-id bits), mtime and `SCHILY.xattr.*` extended attributes are preserved, except
//!   `trusted.overlay.*` / `user.overlay.*`, which only the store itself writes.
//!
//! Needs CAP_MKNOD, CAP_CHOWN, CAP_FOWNER and CAP_SYS_ADMIN (for `trusted.*`): the agent runs
//! as root.

use std::ffi::{CStr, CString};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::rc::Rc;

use tar::EntryType;

use super::digest::{Digest, HashingReader};
use super::error::ImageError;
use super::fsops::{self, Dir, Kind, component};

const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

/// The compression of a layer blob, as sniffed from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// An uncompressed tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd (possibly several frames).
    Zstd,
}

/// What unpacking a layer measured.
#[derive(Clone, Debug)]
pub struct UnpackedLayer {
    /// sha256 of the uncompressed tar stream (compare with the config's diff_id).
    pub diff_id: Digest,
    /// sha256 of the blob as read (compare with the manifest's layer digest).
    pub blob_digest: Digest,
    /// Size of the blob as read.
    pub blob_size: u64,
    /// Sum of the sizes of the regular files written.
    pub unpacked_bytes: u64,
    /// The compression that was detected.
    pub compression: Compression,
}

/// Sniffs the compression from a blob's first bytes.
pub fn sniff(magic: &[u8]) -> Result<Compression, ImageError> {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if magic.starts_with(b"BZh") {
        Err(ImageError::UnsupportedCompression { kind: "bzip2" })
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(ImageError::UnsupportedCompression { kind: "xz" })
    } else {
        Ok(Compression::None)
    }
}

fn stream(source: io::Error) -> ImageError {
    ImageError::LayerStream { source }
}

/// Reads up to `buf.len()` bytes, stopping early only at end of stream.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Unpacks the layer blob read from `blob` into `dest`, an existing (normally empty)
/// directory that is not a symlink. On error `dest` holds a partial layer; the caller
/// discards it.
pub fn unpack_layer<R: Read>(blob: R, dest: &Path) -> Result<UnpackedLayer, ImageError> {
    let root = Dir::open(dest).map_err(|e| ImageError::io("opening layer directory", dest, e))?;
    let mut hashed = HashingReader::new(blob);
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut hashed, &mut magic).map_err(stream)?;
    let compression = sniff(&magic[..n])?;
    let mut input = BufReader::with_capacity(
        128 * 1024,
        io::Cursor::new(magic[..n].to_vec()).chain(&mut hashed),
    );
    let (diff_id, unpacked_bytes) = {
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut input),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut input)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(&mut input).map_err(stream)?)
            }
        };
        let mut diff = HashingReader::new(decoded);
        let mut unpacker = Unpacker::new(root);
        {
            let mut archive = tar::Archive::new(&mut diff);
            for entry in archive.entries().map_err(stream)? {
                let mut entry = entry.map_err(stream)?;
                unpacker.apply(&mut entry)?;
            }
        }
        unpacker.finish()?;
        // The tar reader stops at the end-of-archive marker; the diff_id covers every byte.
        let (diff_id, _) = diff.drain_and_finish().map_err(stream)?;
        (diff_id, unpacker.bytes)
    };
    io::copy(&mut input, &mut io::sink()).map_err(stream)?;
    drop(input);
    let (blob_digest, blob_size) = hashed.drain_and_finish().map_err(stream)?;
    Ok(UnpackedLayer {
        diff_id,
        blob_digest,
        blob_size,
        unpacked_bytes,
        compression,
    })
}

/// Splits a tar path into components, dropping empty and `.` ones; refuses absolute paths
/// and `..`.
fn split_path(raw: &[u8], entry: &str) -> Result<Vec<Vec<u8>>, ImageError> {
    if raw.starts_with(b"/") {
        return Err(ImageError::AbsolutePath {
            entry: entry.to_owned(),
        });
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(ImageError::ParentComponent {
                    entry: entry.to_owned(),
                });
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(comps: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

/// Why a directory path could not be opened.
enum ResolveError {
    Symlink(String),
    NotDir(String),
    Missing(String),
    Io(io::Error),
}

/// The owner, mode, mtime and xattrs an entry asks for.
struct Attrs {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

struct Unpacker {
    root: Rc<Dir>,
    /// The parent directory opened last, reused while entries stay in one directory.
    cache: Option<(Vec<Vec<u8>>, Rc<Dir>)>,
    /// Directory mtimes, applied at the end (creating children changes them).
    dir_mtimes: Vec<(Vec<Vec<u8>>, i64)>,
    bytes: u64,
    buf: Vec<u8>,
}

impl Unpacker {
    fn new(root: Dir) -> Unpacker {
        Unpacker {
            root: Rc::new(root),
            cache: None,
            dir_mtimes: Vec::new(),
            bytes: 0,
            buf: vec![0; 64 * 1024],
        }
    }

    fn resolve(&mut self, comps: &[Vec<u8>], create: bool) -> Result<Rc<Dir>, ResolveError> {
        if comps.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((path, dir)) = &self.cache
            && path.as_slice() == comps
        {
            return Ok(dir.clone());
        }
        let mut cur = self.root.clone();
        for (i, c) in comps.iter().enumerate() {
            let name = component(c).map_err(ResolveError::Io)?;
            let opened = match cur.open_dir(&name) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    match cur.mkdir(&name, 0o755) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(ResolveError::Io(e)),
                    }
                    cur.open_dir(&name)
                }
                other => other,
            };
            match opened {
                Ok(d) => cur = Rc::new(d),
                Err(e) => {
                    let prefix = join(&comps[..=i]);
                    return Err(match cur.stat(&name) {
                        Ok(Some(st)) if st.kind == Kind::Symlink => ResolveError::Symlink(prefix),
                        Ok(Some(st)) if st.kind != Kind::Dir => ResolveError::NotDir(prefix),
                        Ok(None) => ResolveError::Missing(prefix),
                        _ => ResolveError::Io(e),
                    });
                }
            }
        }
        self.cache = Some((comps.to_vec(), cur.clone()));
        Ok(cur)
    }

    fn parent(&mut self, comps: &[Vec<u8>], entry: &str) -> Result<Rc<Dir>, ImageError> {
        self.resolve(comps, true).map_err(|e| match e {
            ResolveError::Symlink(component) => ImageError::SymlinkInPath {
                entry: entry.to_owned(),
                component,
            },
            ResolveError::NotDir(component) => ImageError::NotADirectory {
                entry: entry.to_owned(),
                component,
            },
            ResolveError::Missing(_) => ImageError::Entry {
                what: "creating parents of",
                entry: entry.to_owned(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
            ResolveError::Io(source) => ImageError::Entry {
                what: "opening parents of",
                entry: entry.to_owned(),
                source,
            },
        })
    }

    /// Removes whatever exists at `name` (unless `keep_dir` and it is a directory).
    /// Returns whether a directory was kept.
    fn clear_slot(
        &mut self,
        dir: &Dir,
        name: &CStr,
        entry: &str,
        keep_dir: bool,
    ) -> Result<bool, ImageError> {
        let err = |what, source| ImageError::Entry {
            what,
            entry: entry.to_owned(),
            source,
        };
        match dir.stat(name).map_err(|e| err("inspecting", e))? {
            None => Ok(false),
            Some(st) if keep_dir && st.kind == Kind::Dir => Ok(true),
            Some(st) => {
                // Any cached directory fd may now point into what is removed.
                self.cache = None;
                dir.remove_all(name, st.kind)
                    .map_err(|e| err("replacing", e))?;
                Ok(false)
            }
        }
    }

    fn attrs<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Attrs, ImageError> {
        let h = entry.header();
        let invalid = |field: &str, e: io::Error| {
            ImageError::invalid(format!("{field} of layer entry {name:?}"), e.to_string())
        };
        let uid = h.uid().map_err(|e| invalid("uid", e))?;
        let gid = h.gid().map_err(|e| invalid("gid", e))?;
        let mode = h.mode().map_err(|e| invalid("mode", e))? & 0o7777;
        let mtime = h.mtime().map_err(|e| invalid("mtime", e))?;
        let uid = u32::try_from(uid).map_err(|_| {
            ImageError::invalid(format!("uid of layer entry {name:?}"), "out of range")
        })?;
        let gid = u32::try_from(gid).map_err(|_| {
            ImageError::invalid(format!("gid of layer entry {name:?}"), "out of range")
        })?;
        let mtime = i64::try_from(mtime).unwrap_or(i64::MAX);
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(stream)? {
            for ext in exts {
                let ext = ext.map_err(stream)?;
                let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                if key.starts_with(b"trusted.overlay.") || key.starts_with(b"user.overlay.") {
                    continue;
                }
                let key = CString::new(key).map_err(|_| {
                    ImageError::invalid(format!("xattr of layer entry {name:?}"), "NUL in name")
                })?;
                xattrs.push((key, ext.value_bytes().to_vec()));
            }
        }
        Ok(Attrs {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = split_path(&raw, &name)?;
        let Some((last, parents)) = comps.split_last() else {
            // "./": the layer root itself.
            if kind.is_dir() {
                let a = Self::attrs(entry, &name)?;
                let err = |source| ImageError::Entry {
                    what: "setting attributes of",
                    entry: name.clone(),
                    source,
                };
                self.root.set_own_attrs(a.uid, a.gid, a.mode).map_err(err)?;
                for (k, v) in &a.xattrs {
                    self.root.set_own_xattr(k, v).map_err(err)?;
                }
                self.dir_mtimes.push((Vec::new(), a.mtime));
                return Ok(());
            }
            return Err(ImageError::invalid(
                format!("layer entry {name:?}"),
                "empty path for a non-directory",
            ));
        };
        let err = |what: &'static str| {
            let entry = name.clone();
            move |source| ImageError::Entry {
                what,
                entry,
                source,
            }
        };

        // Whiteouts.
        if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
            let dir = self.parent(parents, &name)?;
            if last.as_slice() == OPAQUE_MARKER {
                return dir
                    .set_own_xattr(OPAQUE_XATTR, b"y")
                    .map_err(err("marking opaque"));
            }
            if hidden.starts_with(WHITEOUT_PREFIX) {
                return Ok(()); // aufs metadata (.wh..wh.plnk and the like)
            }
            let target = component(hidden)
                .map_err(|_| ImageError::invalid(format!("whiteout {name:?}"), "names no file"))?;
            self.clear_slot(&dir, &target, &name, false)?;
            return dir
                .mknod(&target, libc::S_IFCHR, 0, 0)
                .map_err(err("creating whiteout for"));
        }

        let file_name = component(last).map_err(err("naming"))?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let a = Self::attrs(entry, &name)?;
                let dir = self.parent(parents, &name)?;
                self.clear_slot(&dir, &file_name, &name, false)?;
                let mut file = dir.create_file(&file_name).map_err(err("creating"))?;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(stream(e)),
                    };
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.buf[..n]).map_err(err("writing"))?;
                    self.bytes += n as u64;
                }
                fsops::set_fd_owner_mode(file.as_fd(), a.uid, a.gid, a.mode)
                    .map_err(err("setting owner and mode of"))?;
                for (k, v) in &a.xattrs {
                    fsops::fset_xattr(file.as_fd(), k, v).map_err(err("setting xattrs of"))?;
                }
                fsops::set_fd_mtime(file.as_fd(), a.mtime).map_err(err("setting mtime of"))?;
            }
            EntryType::Directory => {
                let a = Self::attrs(entry, &name)?;
                let dir = self.parent(parents, &name)?;
                if !self.clear_slot(&dir, &file_name, &name, true)? {
                    dir.mkdir(&file_name, 0o700).map_err(err("creating"))?;
                }
                dir.chown(&file_name, a.uid, a.gid)
                    .map_err(err("setting owner of"))?;
                dir.chmod(&file_name, a.mode)
                    .map_err(err("setting mode of"))?;
                for (k, v) in &a.xattrs {
                    dir.set_xattr(&file_name, k, v)
                        .map_err(err("setting xattrs of"))?;
                }
                self.dir_mtimes.push((comps.clone(), a.mtime));
            }
            EntryType::Symlink => {
                let a = Self::attrs(entry, &name)?;
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ImageError::invalid(format!("symlink {name:?}"), "no target"))?
                    .into_owned();
                let target = CString::new(target).map_err(|_| {
                    ImageError::invalid(format!("symlink {name:?}"), "NUL in target")
                })?;
                let dir = self.parent(parents, &name)?;
                self.clear_slot(&dir, &file_name, &name, false)?;
                dir.symlink(&target, &file_name).map_err(err("creating"))?;
                dir.chown(&file_name, a.uid, a.gid)
                    .map_err(err("setting owner of"))?;
                for (k, v) in &a.xattrs {
                    dir.set_xattr(&file_name, k, v)
                        .map_err(err("setting xattrs of"))?;
                }
                dir.set_mtime(&file_name, a.mtime)
                    .map_err(err("setting mtime of"))?;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_name = String::from_utf8_lossy(&raw_target).into_owned();
                let refuse = |reason: String| ImageError::HardlinkTarget {
                    entry: name.clone(),
                    target: target_name.clone(),
                    reason,
                };
                let tcomps = match split_path(&raw_target, &target_name) {
                    Ok(c) => c,
                    Err(ImageError::AbsolutePath { .. }) => {
                        return Err(refuse("absolute target".into()));
                    }
                    Err(ImageError::ParentComponent { .. }) => {
                        return Err(refuse("target has a \"..\" component".into()));
                    }
                    Err(e) => return Err(e),
                };
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Err(refuse("target is the layer root".into()));
                };
                let tdir = match self.resolve(tparents, false) {
                    Ok(d) => d,
                    Err(ResolveError::Symlink(c)) => {
                        return Err(refuse(format!("target goes through symlink {c:?}")));
                    }
                    Err(ResolveError::NotDir(c)) => {
                        return Err(refuse(format!("{c:?} is not a directory")));
                    }
                    Err(ResolveError::Missing(c)) => {
                        return Err(refuse(format!("{c:?} does not exist in this layer")));
                    }
                    Err(ResolveError::Io(e)) => return Err(refuse(e.to_string())),
                };
                let tname = component(tlast).map_err(|e| refuse(e.to_string()))?;
                match tdir.stat(&tname).map_err(err("inspecting target of"))? {
                    None => return Err(refuse("target does not exist in this layer".into())),
                    Some(st) if st.kind == Kind::Dir => {
                        return Err(refuse("target is a directory".into()));
                    }
                    Some(_) => {}
                }
                if tcomps == comps {
                    return Ok(()); // a link to itself: already there
                }
                let dir = self.parent(parents, &name)?;
                self.clear_slot(&dir, &file_name, &name, false)?;
                dir.hardlink(&tdir, &tname, &file_name)
                    .map_err(err("creating hardlink"))?;
            }
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if kind == EntryType::Char && major == 0 && minor == 0 {
                    // Already an overlay whiteout (e.g. exported from an overlay upper dir).
                    let dir = self.parent(parents, &name)?;
                    self.clear_slot(&dir, &file_name, &name, false)?;
                    return dir
                        .mknod(&file_name, libc::S_IFCHR, 0, 0)
                        .map_err(err("creating whiteout"));
                }
                let kind = if kind == EntryType::Char {
                    "character"
                } else {
                    "block"
                };
                return Err(ImageError::DeviceNode {
                    entry: name,
                    kind,
                    major,
                    minor,
                });
            }
            EntryType::Fifo => {
                let a = Self::attrs(entry, &name)?;
                let dir = self.parent(parents, &name)?;
                self.clear_slot(&dir, &file_name, &name, false)?;
                dir.mknod(&file_name, libc::S_IFIFO | 0o600, 0, 0)
                    .map_err(err("creating"))?;
                dir.chown(&file_name, a.uid, a.gid)
                    .map_err(err("setting owner of"))?;
                dir.chmod(&file_name, a.mode)
                    .map_err(err("setting mode of"))?;
                for (k, v) in &a.xattrs {
                    dir.set_xattr(&file_name, k, v)
                        .map_err(err("setting xattrs of"))?;
                }
                dir.set_mtime(&file_name, a.mtime)
                    .map_err(err("setting mtime of"))?;
            }
            other => {
                return Err(ImageError::UnsupportedEntry {
                    entry: name,
                    kind: format!("{other:?}"),
                });
            }
        }
        Ok(())
    }

    /// Sets directory mtimes, now that nothing more is created in them.
    fn finish(&mut self) -> Result<(), ImageError> {
        self.cache = None;
        for (comps, mtime) in std::mem::take(&mut self.dir_mtimes) {
            let name = join(&comps);
            let err = |source| ImageError::Entry {
                what: "setting mtime of",
                entry: name.clone(),
                source,
            };
            match comps.split_last() {
                None => self.root.set_own_mtime(mtime).map_err(err)?,
                Some((last, parents)) => {
                    // A directory replaced by a later entry is simply no longer there.
                    let Ok(dir) = self.resolve(parents, false) else {
                        continue;
                    };
                    let Ok(n) = component(last) else { continue };
                    if matches!(dir.stat(&n), Ok(Some(st)) if st.kind == Kind::Dir) {
                        dir.set_mtime(&n, mtime).map_err(err)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
