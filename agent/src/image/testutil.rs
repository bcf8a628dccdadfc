//! In-memory fixtures for the image store's unit tests: raw tar layers (names written verbatim,
//! so hostile names survive), compression, and OCI layout / docker archive writers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::digest::Digest;

/// One tar entry, written verbatim.
#[derive(Clone, Debug)]
pub(crate) enum E {
    File(&'static str, &'static [u8]),
    FileAttrs {
        path: &'static str,
        data: &'static [u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    },
    FileXattr(&'static str, &'static [u8], &'static str, &'static [u8]),
    Dir(&'static str),
    DirMode(&'static str, u32, u64),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Char(&'static str, u32, u32),
    Block(&'static str, u32, u32),
    Fifo(&'static str),
}

fn raw_header(kind: tar::EntryType, path: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    let gnu = h.as_gnu_mut().expect("new_gnu header is GNU");
    assert!(path.len() < 100, "fixture names fit the 100-byte field");
    gnu.name = [0; 100];
    gnu.name[..path.len()].copy_from_slice(path.as_bytes());
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let gnu = h.as_gnu_mut().expect("new_gnu header is GNU");
    gnu.linkname = [0; 100];
    gnu.linkname[..target.len()].copy_from_slice(target.as_bytes());
}

/// An uncompressed tar of `entries`, in order, names verbatim.
pub(crate) fn tar_of(entries: &[E]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (tar::Header, &[u8]) = match e {
            E::File(p, d) => (raw_header(T::Regular, p, d.len() as u64, 0o644), d),
            E::FileAttrs {
                path,
                data,
                mode,
                uid,
                gid,
                mtime,
            } => {
                let mut h = raw_header(T::Regular, path, data.len() as u64, *mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_mtime(*mtime);
                (h, data)
            }
            E::FileXattr(p, d, k, v) => {
                let key = format!("SCHILY.xattr.{k}");
                b.append_pax_extensions([(key.as_str(), *v)])
                    .expect("pax header");
                (raw_header(T::Regular, p, d.len() as u64, 0o644), d)
            }
            E::Dir(p) => (raw_header(T::Directory, p, 0, 0o755), b""),
            E::DirMode(p, mode, mtime) => {
                let mut h = raw_header(T::Directory, p, 0, *mode);
                h.set_mtime(*mtime);
                (h, b"")
            }
            E::Symlink(p, t) => {
                let mut h = raw_header(T::Symlink, p, 0, 0o777);
                set_link(&mut h, t);
                (h, b"")
            }
            E::Hardlink(p, t) => {
                let mut h = raw_header(T::Link, p, 0, 0o644);
                set_link(&mut h, t);
                (h, b"")
            }
            E::Char(p, ma, mi) | E::Block(p, ma, mi) => {
                let kind = if matches!(e, E::Char(..)) {
                    T::Char
                } else {
                    T::Block
                };
                let mut h = raw_header(kind, p, 0, 0o600);
                h.set_device_major(*ma).expect("device major");
                h.set_device_minor(*mi).expect("device minor");
                (h, b"")
            }
            E::Fifo(p) => (raw_header(T::Fifo, p, 0, 0o640), b""),
        };
        h.set_cksum();
        b.append(&h, data).expect("append to in-memory tar");
    }
    b.into_inner().expect("finish in-memory tar")
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).expect("zstd in memory")
}

pub(crate) fn sha(data: &[u8]) -> Digest {
    Digest::of_bytes(data)
}

/// A layer: its blob as stored and its uncompressed tar.
#[derive(Clone, Debug)]
pub(crate) struct L {
    pub blob: Vec<u8>,
    pub tar: Vec<u8>,
}

impl L {
    pub(crate) fn plain(entries: &[E]) -> L {
        let tar = tar_of(entries);
        L {
            blob: tar.clone(),
            tar,
        }
    }
    pub(crate) fn gz(entries: &[E]) -> L {
        let tar = tar_of(entries);
        L {
            blob: gzip(&tar),
            tar,
        }
    }
    pub(crate) fn zst(entries: &[E]) -> L {
        let tar = tar_of(entries);
        L {
            blob: zstd(&tar),
            tar,
        }
    }
}

/// An image fixture written as an OCI layout or a docker archive.
#[derive(Clone, Debug)]
pub(crate) struct Fixture {
    pub name: String,
    pub layers: Vec<L>,
    /// Overrides the config's diff_ids (for mismatch tests).
    pub diff_ids: Option<Vec<Digest>>,
    /// Overrides the manifest's layer digests (for mismatch tests).
    pub layer_digests: Option<Vec<Digest>>,
    /// Blob digests left out of the output.
    pub omit: Vec<Digest>,
    pub cmd: Vec<&'static str>,
}

impl Fixture {
    pub(crate) fn new(name: &str, layers: Vec<L>) -> Fixture {
        Fixture {
            name: name.to_owned(),
            layers,
            diff_ids: None,
            layer_digests: None,
            omit: Vec::new(),
            cmd: vec!["/bin/sh"],
        }
    }

    pub(crate) fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = match &self.diff_ids {
            Some(d) => d.iter().map(|d| d.to_string()).collect(),
            None => self
                .layers
                .iter()
                .map(|l| sha(&l.tar).to_string())
                .collect(),
        };
        serde_json::to_vec(&json!({
            "architecture": super::oci::host_architecture(), "os": "linux",
            "created": "2026-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/bin"], "Cmd": self.cmd, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config JSON")
    }

    fn layer_digests(&self) -> Vec<Digest> {
        self.layer_digests
            .clone()
            .unwrap_or_else(|| self.layers.iter().map(|l| sha(&l.blob)).collect())
    }

    pub(crate) fn manifest(&self) -> Vec<u8> {
        let config = self.config();
        let layers: Vec<_> = self
            .layers
            .iter()
            .zip(self.layer_digests())
            .map(|(l, d)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": l.blob.len()}))
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(&config).to_string(), "size": config.len()},
            "layers": layers,
        }))
        .expect("manifest JSON")
    }

    /// Files of the OCI layout.
    pub(crate) fn oci_files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let manifest = self.manifest();
        files.insert(
            "oci-layout".to_owned(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        files.insert(
            "index.json".to_owned(),
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": sha(&manifest).to_string(), "size": manifest.len(),
                    "annotations": {"org.opencontainers.image.ref.name": self.name}}],
            }))
            .expect("index JSON"),
        );
        let mut blob = |d: Digest, bytes: Vec<u8>| {
            if !self.omit.contains(&d) {
                files.insert(format!("blobs/sha256/{}", d.hex()), bytes);
            }
        };
        blob(sha(&manifest), manifest.clone());
        let config = self.config();
        blob(sha(&config), config);
        for (l, d) in self.layers.iter().zip(self.layer_digests()) {
            blob(d, l.blob.clone());
        }
        files
    }

    /// Files of a Docker <25 `docker save` archive (`<n>/layer.tar`, uncompressed unless the
    /// fixture's blobs are compressed; docker load sniffs too).
    pub(crate) fn docker_files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let config = self.config();
        files.insert(format!("{}.json", sha(&config).hex()), config.clone());
        let mut paths = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("{i:064x}/layer.tar");
            if !self.omit.contains(&sha(&l.blob)) {
                files.insert(p.clone(), l.blob.clone());
            }
            paths.push(p);
        }
        files.insert(
            "manifest.json".to_owned(),
            serde_json::to_vec(&json!([{"Config": format!("{}.json", sha(&config).hex()), "RepoTags": [self.name], "Layers": paths}]))
                .expect("manifest.json"),
        );
        files
    }

    /// Files of a Docker >= 25 `docker save` archive: an OCI layout plus a `manifest.json`
    /// whose paths point into `blobs/sha256/`.
    pub(crate) fn docker25_files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = self.oci_files();
        let config = self.config();
        let layers: Vec<String> = self
            .layer_digests()
            .iter()
            .map(|d| format!("blobs/sha256/{}", d.hex()))
            .collect();
        files.insert(
            "manifest.json".to_owned(),
            serde_json::to_vec(&json!([{
                "Config": format!("blobs/sha256/{}", sha(&config).hex()),
                "RepoTags": [self.name],
                "Layers": layers,
            }]))
            .expect("manifest.json"),
        );
        files
    }

    pub(crate) fn write_dir(files: &BTreeMap<String, Vec<u8>>, dir: &Path) {
        for (rel, bytes) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().expect("file has a parent")).expect("mkdir fixture");
            std::fs::write(&p, bytes).expect("write fixture");
        }
    }

    pub(crate) fn write_tar(files: &BTreeMap<String, Vec<u8>>, path: &Path) {
        let mut b = tar::Builder::new(Vec::new());
        for (rel, bytes) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, rel, &bytes[..])
                .expect("append fixture");
        }
        std::fs::write(path, b.into_inner().expect("finish fixture tar"))
            .expect("write fixture tar");
    }
}
