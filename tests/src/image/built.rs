//! A built image ([`BuiltImage`]) and its three encodings: OCI image layout directory, tar of
//! that layout, and `docker save` archive (Docker <25 style, uncompressed `<id>/layer.tar`).
//!
//! Invariant: every encoding is rendered from the fields alone (sorted maps, fixed tar headers),
//! so equal [`BuiltImage`]s give equal bytes. Hostile helpers edit the pub fields (a blob that
//! does not match its digest, a digest listed in `missing_blobs`) and the encodings carry the
//! lie faithfully: manifest and config are rendered from the fields, never recomputed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::layer::{Compression, Entry, Layer, sha256_digest, sha256_hex};

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// One built layer: its uncompressed tar, its blob and their digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltLayer {
    /// The uncompressed tar (what `docker save` stores, what `diff_id` hashes).
    pub tar: Vec<u8>,
    /// The blob as stored in the OCI layout (compressed per `compression`).
    pub blob: Vec<u8>,
    /// The descriptor digest (`sha256:` of `blob`, unless a hostile helper lied).
    pub digest: String,
    /// The config's `rootfs.diff_ids` entry (`sha256:` of `tar`).
    pub diff_id: String,
    /// How `blob` is compressed.
    pub compression: Compression,
    /// The descriptor's media type.
    pub media_type: String,
}

impl BuiltLayer {
    /// Encodes `layer` and compresses it.
    pub fn from_layer(layer: &Layer, compression: Compression) -> anyhow::Result<BuiltLayer> {
        let tar = layer.tar()?;
        let blob = compression.compress(&tar)?;
        Ok(BuiltLayer {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            media_type: compression.media_type().to_string(),
            compression,
            tar,
            blob,
        })
    }
}

/// Output encodings of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// OCI image layout directory.
    OciDir,
    /// Tar of the OCI image layout (entries at the archive root).
    OciTar,
    /// `docker save` archive.
    DockerArchive,
}

impl FromStr for OutputFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<OutputFormat> {
        match s {
            "oci-dir" => Ok(OutputFormat::OciDir),
            "oci-tar" => Ok(OutputFormat::OciTar),
            "docker-archive" => Ok(OutputFormat::DockerArchive),
            _ => bail!("unknown format {s:?} (want oci-dir, oci-tar or docker-archive)"),
        }
    }
}

/// Splits `repo:tag` at the last `:` after the last `/`; no tag means `latest`.
pub fn split_reference(reference: &str) -> (&str, &str) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (&reference[..slash + i], &reference[slash + i + 1..]),
        None => (reference, "latest"),
    }
}

/// ChainIDs of a stack of diff_ids: `chain(0) = diff_id0`,
/// `chain(n) = sha256(chain(n-1) + " " + diff_idn)`.
pub fn chain_ids<S: AsRef<str>>(diff_ids: &[S]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.as_ref().to_string(),
            Some(prev) => sha256_digest(format!("{prev} {}", d.as_ref()).as_bytes()),
        };
        out.push(next);
    }
    out
}

/// An image held in memory, ready to be written in any [`OutputFormat`].
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltImage {
    /// `name:tag`, written as the OCI `org.opencontainers.image.ref.name` annotation and the
    /// docker archive's `RepoTags`.
    pub reference: String,
    /// The image config JSON (rendered verbatim).
    pub config: Value,
    /// Layers, base first.
    pub layers: Vec<BuiltLayer>,
    /// Digests whose blobs (or docker `layer.tar`) are left out of every output.
    pub missing_blobs: BTreeSet<String>,
}

fn to_json(v: &Value) -> anyhow::Result<Vec<u8>> {
    serde_json::to_vec(v).context("serializing image JSON")
}

fn hex_of(digest: &str) -> anyhow::Result<&str> {
    digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest:?} is not sha256"))
}

impl BuiltImage {
    /// The config blob bytes.
    pub fn config_bytes(&self) -> anyhow::Result<Vec<u8>> {
        to_json(&self.config)
    }

    /// The config blob digest.
    pub fn config_digest(&self) -> anyhow::Result<String> {
        Ok(sha256_digest(&self.config_bytes()?))
    }

    /// The OCI image manifest bytes.
    pub fn manifest_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let config = self.config_bytes()?;
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()}))
            .collect();
        to_json(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": layers,
        }))
    }

    /// The manifest digest.
    pub fn manifest_digest(&self) -> anyhow::Result<String> {
        Ok(sha256_digest(&self.manifest_bytes()?))
    }

    /// The layout's `index.json` bytes: one manifest descriptor annotated with the reference.
    pub fn index_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let manifest = self.manifest_bytes()?;
        let arch = self
            .config
            .get("architecture")
            .cloned()
            .unwrap_or(Value::Null);
        let os = self.config.get("os").cloned().unwrap_or(Value::Null);
        to_json(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [{
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": sha256_digest(&manifest),
                "size": manifest.len(),
                "platform": {"architecture": arch, "os": os},
                "annotations": {
                    "io.containerd.image.name": self.reference,
                    "org.opencontainers.image.ref.name": self.reference,
                },
            }],
        }))
    }

    /// Every file of the OCI image layout: relative path → bytes.
    pub fn oci_files(&self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let mut files = BTreeMap::new();
        files.insert(
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        files.insert("index.json".to_string(), self.index_bytes()?);
        let mut blob = |digest: &str, bytes: Vec<u8>| -> anyhow::Result<()> {
            if !self.missing_blobs.contains(digest) {
                files.insert(format!("blobs/sha256/{}", hex_of(digest)?), bytes);
            }
            Ok(())
        };
        let manifest = self.manifest_bytes()?;
        blob(&sha256_digest(&manifest), manifest)?;
        let config = self.config_bytes()?;
        blob(&sha256_digest(&config), config)?;
        for layer in &self.layers {
            blob(&layer.digest, layer.blob.clone())?;
        }
        Ok(files)
    }

    /// Writes the OCI image layout into `dir` (created if missing; must be empty).
    pub fn write_oci_dir(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
        if std::fs::read_dir(dir)
            .with_context(|| format!("reading {dir:?}"))?
            .next()
            .is_some()
        {
            bail!("{dir:?} is not empty");
        }
        for (rel, bytes) in self.oci_files()? {
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {parent:?}"))?;
            }
            std::fs::write(&path, bytes).with_context(|| format!("writing {path:?}"))?;
        }
        Ok(())
    }

    /// A tar of the OCI image layout (`oci-layout`, `index.json`, `blobs/` at the root).
    pub fn oci_tar(&self) -> anyhow::Result<Vec<u8>> {
        archive(self.oci_files()?)
    }

    /// Writes [`BuiltImage::oci_tar`] to `path`.
    pub fn write_oci_tar(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.oci_tar()?).with_context(|| format!("writing {path:?}"))
    }

    /// Every file of the `docker save` archive: relative path → bytes.
    ///
    /// `manifest.json` = `[{"Config":"<hex>.json","RepoTags":[ref],"Layers":["<id>/layer.tar",…]}]`,
    /// `repositories` = `{"<repo>":{"<tag>":"<top id>"}}`; `<id>` is the hex of the layer's
    /// ChainID, and each `<id>/` also holds `VERSION` and a v1 `json`.
    pub fn docker_files(&self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let mut files = BTreeMap::new();
        let config = self.config_bytes()?;
        let config_name = format!("{}.json", sha256_hex(&config));
        files.insert(config_name.clone(), config);
        let diff_ids: Vec<&str> = self.layers.iter().map(|l| l.diff_id.as_str()).collect();
        let mut layer_paths = Vec::new();
        let mut parent: Option<String> = None;
        for (layer, chain) in self.layers.iter().zip(chain_ids(&diff_ids)) {
            let id = hex_of(&chain)?.to_string();
            let mut v1 = serde_json::Map::new();
            v1.insert("id".into(), json!(id));
            if let Some(p) = &parent {
                v1.insert("parent".into(), json!(p));
            }
            files.insert(format!("{id}/VERSION"), b"1.0".to_vec());
            files.insert(format!("{id}/json"), to_json(&Value::Object(v1))?);
            let path = format!("{id}/layer.tar");
            if !self.missing_blobs.contains(&layer.digest) {
                files.insert(path.clone(), layer.tar.clone());
            }
            layer_paths.push(path);
            parent = Some(id);
        }
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": [self.reference],
            "Layers": layer_paths,
        }]);
        files.insert("manifest.json".to_string(), to_json(&manifest)?);
        let (repo, tag) = split_reference(&self.reference);
        let top = parent.unwrap_or_default();
        files.insert(
            "repositories".to_string(),
            to_json(&json!({ repo: { tag: top } }))?,
        );
        Ok(files)
    }

    /// The `docker save` archive bytes.
    pub fn docker_archive(&self) -> anyhow::Result<Vec<u8>> {
        archive(self.docker_files()?)
    }

    /// Writes [`BuiltImage::docker_archive`] to `path`.
    pub fn write_docker_archive(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.docker_archive()?).with_context(|| format!("writing {path:?}"))
    }

    /// Writes the image at `path` in `format`.
    pub fn write(&self, format: OutputFormat, path: &Path) -> anyhow::Result<()> {
        match format {
            OutputFormat::OciDir => self.write_oci_dir(path),
            OutputFormat::OciTar => self.write_oci_tar(path),
            OutputFormat::DockerArchive => self.write_docker_archive(path),
        }
    }
}

/// A deterministic tar of `files` (directories added, entries sorted).
fn archive(files: BTreeMap<String, Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    Layer::new(files.into_iter().map(|(p, b)| Entry::file(p, b))).tar()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reference_cases() {
        assert_eq!(
            split_reference("berth-test/busybox:latest"),
            ("berth-test/busybox", "latest")
        );
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_reference("localhost:5000/a/b:v1"),
            ("localhost:5000/a/b", "v1")
        );
        assert_eq!(
            split_reference("localhost:5000/a"),
            ("localhost:5000/a", "latest")
        );
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = "sha256:aa";
        let b = "sha256:bb";
        let chain = chain_ids(&[a, b]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_digest(b"sha256:aa sha256:bb"));
    }

    #[test]
    fn output_format_parses() {
        assert_eq!(
            "oci-dir".parse::<OutputFormat>().unwrap(),
            OutputFormat::OciDir
        );
        assert!("zip".parse::<OutputFormat>().is_err());
    }
}
