//! Layer contents ([`Entry`], [`Layer`]) and their deterministic tar encoding.
//!
//! Invariant: the tar bytes depend only on the entries — every header carries the fixed
//! [`LAYER_MTIME`], the entry's own numeric uid/gid and mode, empty user/group names, and no
//! host-dependent field. [`Layer::new`] normalizes paths, adds missing parent directories and
//! sorts entries by path; [`Layer::raw`] writes the entries exactly as given (names are copied
//! byte for byte into the header, so `../x` and `/etc/x` survive), which is what the hostile
//! images need.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// Modification time written into every tar header: 2023-11-14T22:13:20Z.
///
/// Not 0, so that a runtime which drops mtimes is noticeable in tests.
pub const LAYER_MTIME: u64 = 1_700_000_000;

/// [`LAYER_MTIME`] as an RFC 3339 timestamp, used for the config's `created` fields.
pub const CREATED: &str = "2023-11-14T22:13:20Z";

/// Name of the opaque-directory marker inside a directory.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Prefix of a whiteout file name.
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// Length of the name and linkname fields of a tar header.
const NAME_FIELD_LEN: usize = 100;

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar, `application/vnd.oci.image.layer.v1.tar`.
    None,
    /// gzip (fixed header: mtime 0, OS byte 255, level 6), `…tar+gzip`.
    Gzip,
    /// zstd (level 3, single-threaded), `…tar+zstd`.
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Parses `none`/`tar`, `gzip`/`gz` or `zstd`/`zst`.
    pub fn parse(name: &str) -> Option<Compression> {
        match name {
            "none" | "tar" => Some(Compression::None),
            "gzip" | "gz" => Some(Compression::Gzip),
            "zstd" | "zst" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Compresses `data` deterministically.
    pub fn compress(self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(Vec::new(), flate2::Compression::new(6));
                enc.write_all(data).context("gzip-compressing a layer")?;
                enc.finish().context("finishing a gzip stream")
            }
            Compression::Zstd => {
                zstd::stream::encode_all(data, 3).context("zstd-compressing a layer")
            }
        }
    }

    /// Decompresses `data` that was compressed with this compression.
    pub fn decompress(self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut out = Vec::new();
                std::io::copy(&mut flate2::read::GzDecoder::new(data), &mut out)
                    .context("gunzipping a layer")?;
                Ok(out)
            }
            Compression::Zstd => zstd::stream::decode_all(data).context("un-zstd-ing a layer"),
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Lower-case hex sha256 of `bytes` (sha2 0.11's output has no `LowerHex`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// What a tar entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with these contents.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link to this target (written verbatim).
    Symlink(String),
    /// A hard link to this path in the archive (written verbatim).
    Hardlink(String),
    /// A character device.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// One tar entry of a layer: a path, what it is, its mode and numeric owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the layer. [`Layer::new`] normalizes it; [`Layer::raw`] writes it as is.
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits, including setuid/setgid/sticky.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
}

impl Entry {
    fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    /// A regular file, mode 0644, owned by 0:0.
    pub fn file(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, EntryKind::File(data.into()), 0o644)
    }

    /// An executable regular file, mode 0755.
    pub fn executable(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, EntryKind::File(data.into()), 0o755)
    }

    /// A directory, mode 0755.
    pub fn dir(path: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Dir, 0o755)
    }

    /// A symbolic link `path -> target`, mode 0777.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// A hard link `path` to the archive member `target`, mode 0644.
    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.into()), 0o644)
    }

    /// A character device, mode 0666.
    pub fn char_device(path: impl Into<String>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    /// A block device, mode 0660.
    pub fn block_device(path: impl Into<String>, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::BlockDevice { major, minor }, 0o660)
    }

    /// A named pipe, mode 0644.
    pub fn fifo(path: impl Into<String>) -> Entry {
        Entry::new(path, EntryKind::Fifo, 0o644)
    }

    /// A whiteout deleting `path` of a lower layer: the empty file `<dir>/.wh.<name>`.
    pub fn whiteout(path: &str) -> Entry {
        let trimmed = path.trim_end_matches('/');
        let (dir, name) = match trimmed.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), trimmed),
        };
        Entry::file(format!("{dir}{WHITEOUT_PREFIX}{name}"), Vec::new())
    }

    /// The opaque marker `<dir>/.wh..wh..opq`: hides everything lower layers put in `dir`.
    pub fn opaque(dir: &str) -> Entry {
        let dir = dir.trim_end_matches('/');
        Entry::file(format!("{dir}/{OPAQUE_MARKER}"), Vec::new())
    }

    /// Replaces the permission bits.
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    /// Replaces the numeric owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// The contents of one layer plus its compression and history line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    entries: Vec<Entry>,
    raw: bool,
    /// Compression of this layer's blob; `None` means the image's default.
    pub compression: Option<Compression>,
    /// The `created_by` line of this layer's history entry.
    pub created_by: String,
}

impl Layer {
    /// A well-formed layer: paths lose a leading `/` or `./` and a trailing `/`, missing parent
    /// directories are added (0755, 0:0), a later entry for the same path replaces an earlier
    /// one, and entries are written sorted by path (so a parent always precedes its children).
    /// A path with a `..` component makes [`Layer::tar`] fail: use [`Layer::raw`] for that.
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> Layer {
        let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
        for mut entry in entries {
            entry.path = normalize(&entry.path);
            if entry.path.is_empty() {
                continue;
            }
            by_path.insert(entry.path.clone(), entry);
        }
        let parents: Vec<String> = by_path
            .keys()
            .flat_map(|p| {
                p.match_indices('/')
                    .map(|(i, _)| p[..i].to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for parent in parents {
            by_path
                .entry(parent.clone())
                .or_insert_with(|| Entry::dir(parent));
        }
        Layer {
            entries: by_path.into_values().collect(),
            raw: false,
            compression: None,
            created_by: "berth-test-image: layer".to_string(),
        }
    }

    /// A layer written exactly as given: same order, names and link targets copied byte for
    /// byte (no normalization, no parents added, `..` and absolute paths allowed).
    pub fn raw(entries: impl IntoIterator<Item = Entry>) -> Layer {
        Layer {
            entries: entries.into_iter().collect(),
            raw: true,
            compression: None,
            created_by: "berth-test-image: raw layer".to_string(),
        }
    }

    /// Sets this layer's compression.
    pub fn compression(mut self, compression: Compression) -> Layer {
        self.compression = Some(compression);
        self
    }

    /// Sets this layer's history `created_by` line.
    pub fn created_by(mut self, created_by: impl Into<String>) -> Layer {
        self.created_by = created_by.into();
        self
    }

    /// The entries in the order they are written.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether this layer was made with [`Layer::raw`].
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// The uncompressed tar of this layer (ends with the two zero blocks).
    pub fn tar(&self) -> anyhow::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            let mut name = entry.path.clone();
            if !self.raw {
                if entry.path.split('/').any(|c| c == ".." || c == ".") {
                    bail!(
                        "layer path {:?} has a `.`/`..` component; use Layer::raw for hostile paths",
                        entry.path
                    );
                }
                if entry.kind == EntryKind::Dir {
                    name.push('/');
                }
            }
            append_entry(&mut builder, entry, name.as_bytes())
                .with_context(|| format!("writing tar entry {:?}", entry.path))?;
        }
        builder.into_inner().context("finishing a layer tar")
    }
}

/// Strips leading `/` and `./` and trailing `/`.
fn normalize(path: &str) -> String {
    let mut p = path;
    loop {
        if let Some(rest) = p.strip_prefix('/') {
            p = rest;
        } else if let Some(rest) = p.strip_prefix("./") {
            p = rest;
        } else {
            break;
        }
    }
    let p = p.trim_end_matches('/');
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

/// Writes one entry with a hand-filled GNU header; `name` goes into the header verbatim (a GNU
/// `L`/`K` record precedes the header when the name or link target exceeds 100 bytes).
fn append_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    entry: &Entry,
    name: &[u8],
) -> std::io::Result<()> {
    let mut header = Header::new_gnu();
    let (entry_type, data, link): (EntryType, &[u8], Option<&[u8]>) = match &entry.kind {
        EntryKind::File(data) => (EntryType::Regular, data, None),
        EntryKind::Dir => (EntryType::Directory, &[], None),
        EntryKind::Symlink(target) => (EntryType::Symlink, &[], Some(target.as_bytes())),
        EntryKind::Hardlink(target) => (EntryType::Link, &[], Some(target.as_bytes())),
        EntryKind::CharDevice { .. } => (EntryType::Char, &[], None),
        EntryKind::BlockDevice { .. } => (EntryType::Block, &[], None),
        EntryKind::Fifo => (EntryType::Fifo, &[], None),
    };
    if name.len() > NAME_FIELD_LEN {
        append_long(builder, EntryType::GNULongName, name)?;
    }
    copy_truncated(&mut header.as_old_mut().name, name);
    if let Some(link) = link {
        if link.len() > NAME_FIELD_LEN {
            append_long(builder, EntryType::GNULongLink, link)?;
        }
        copy_truncated(&mut header.as_old_mut().linkname, link);
    }
    header.set_entry_type(entry_type);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(LAYER_MTIME);
    header.set_size(data.len() as u64);
    // Device numbers are written for every entry (0:0 unless a device), so a reader that parses
    // them unconditionally does not trip over empty fields.
    let (major, minor) = match entry.kind {
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            (major, minor)
        }
        _ => (0, 0),
    };
    header.set_device_major(major)?;
    header.set_device_minor(minor)?;
    header.set_cksum();
    builder.append(&header, data)
}

/// Writes a GNU long-name (`L`) or long-link (`K`) record carrying `value` plus a NUL.
fn append_long(
    builder: &mut tar::Builder<Vec<u8>>,
    kind: EntryType,
    value: &[u8],
) -> std::io::Result<()> {
    let mut header = Header::new_gnu();
    copy_truncated(&mut header.as_old_mut().name, b"././@LongLink");
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let mut data = value.to_vec();
    data.push(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data.as_slice())
}

fn copy_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<(Vec<u8>, EntryType)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path_bytes().into_owned(), e.header().entry_type())
            })
            .collect()
    }

    #[test]
    fn new_normalizes_sorts_and_adds_parents() {
        let layer = Layer::new([
            Entry::file("/srv/www/index.html", "x"),
            Entry::file("./etc/a", "a"),
            Entry::dir("etc/"),
        ]);
        let got = names(&layer.tar().unwrap());
        let want: Vec<(Vec<u8>, EntryType)> = vec![
            (b"etc/".to_vec(), EntryType::Directory),
            (b"etc/a".to_vec(), EntryType::Regular),
            (b"srv/".to_vec(), EntryType::Directory),
            (b"srv/www/".to_vec(), EntryType::Directory),
            (b"srv/www/index.html".to_vec(), EntryType::Regular),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn new_rejects_dotdot_but_raw_keeps_it() {
        assert!(Layer::new([Entry::file("a/../x", "")]).tar().is_err());
        let tar = Layer::raw([Entry::file("../x", ""), Entry::file("/etc/x", "")])
            .tar()
            .unwrap();
        let got: Vec<Vec<u8>> = names(&tar).into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, vec![b"../x".to_vec(), b"/etc/x".to_vec()]);
    }

    #[test]
    fn long_names_and_links_round_trip() {
        let long = format!("d/{}", "n".repeat(150));
        let target = format!("/{}", "t".repeat(120));
        let tar = Layer::raw([Entry::symlink(long.clone(), target.clone())])
            .tar()
            .unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path_bytes().as_ref(), long.as_bytes());
        assert_eq!(entry.link_name_bytes().unwrap().as_ref(), target.as_bytes());
    }

    #[test]
    fn whiteout_and_opaque_names() {
        assert_eq!(
            Entry::whiteout("etc/to-be-deleted").path,
            "etc/.wh.to-be-deleted"
        );
        assert_eq!(Entry::whiteout("top").path, ".wh.top");
        assert_eq!(Entry::opaque("srv/old/").path, "srv/old/.wh..wh..opq");
    }

    #[test]
    fn compression_round_trips() {
        let data = b"hello hello hello".repeat(100);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let packed = c.compress(&data).unwrap();
            assert_eq!(c.decompress(&packed).unwrap(), data, "{c:?}");
        }
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
