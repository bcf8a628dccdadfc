//! Turns an import source into import plans: which images it holds, under which names, with
//! which verified manifest and config, and where each layer blob is.
//!
//! Formats: an OCI image layout (`oci-layout` + `index.json` + `blobs/sha256/…`, nested
//! indexes resolved to this node's platform) and a `docker save` archive (`manifest.json` +
//! config + layer tars, `<id>/layer.tar` or `blobs/sha256/<hex>` — always the paths listed in
//! `manifest.json`). An archive with both (Docker ≥ 25) is read through `manifest.json`.
//!
//! Planning does no writes: every document is read, size-limited, digest-checked and parsed,
//! the layer count is checked against the store's maximum, and every layer blob is checked to
//! exist, before the store copies or unpacks anything.

use std::collections::BTreeMap;

use super::digest::Digest;
use super::error::ImageError;
use super::oci::{
    ANN_CONTAINERD_NAME, ANN_REF_NAME, ConfigFile, Descriptor, DockerArchiveEntry, Index,
    MT_OCI_CONFIG, MT_OCI_LAYER_TAR, MT_OCI_MANIFEST, Manifest,
};
use super::reference::Reference;
use super::source::Source;

/// Largest manifest, index or config read into memory.
pub(crate) const MAX_DOCUMENT: u64 = 8 << 20;
/// Deepest chain of nested indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

/// Where a layer blob comes from and what it must hash to.
#[derive(Clone, Debug)]
pub(crate) struct PlannedLayer {
    /// Path inside the source.
    pub path: String,
    /// Digest the blob must have, when the format names one.
    pub digest: Option<Digest>,
    /// diff_id from the config.
    pub diff_id: Digest,
    /// Media type for the manifest the store keeps.
    pub media_type: String,
}

/// One image to import.
#[derive(Clone, Debug)]
pub(crate) struct ImportPlan {
    /// Names to point at the image.
    pub names: Vec<Reference>,
    /// The manifest (from the source, or synthesised for docker archives once layer digests
    /// are known: `None`).
    pub manifest: Option<(Digest, Vec<u8>)>,
    /// The config blob.
    pub config_digest: Digest,
    /// Its bytes.
    pub config_bytes: Vec<u8>,
    /// Parsed config.
    pub config: ConfigFile,
    /// Layers, base first.
    pub layers: Vec<PlannedLayer>,
}

/// Limits and the platform wanted.
pub(crate) struct PlanOptions<'a> {
    pub max_layers: usize,
    pub os: &'a str,
    pub arch: &'a str,
}

/// Reads `path` from the source as a small document and checks its digest.
fn read_blob(source: &Source, digest: &Digest, what: &str) -> Result<Vec<u8>, ImageError> {
    let path = format!("blobs/sha256/{}", digest.hex());
    let bytes = source
        .read_small(&path, MAX_DOCUMENT, what)?
        .ok_or_else(|| ImageError::MissingBlob {
            what: what.to_owned(),
            path: digest.to_string(),
        })?;
    let actual = Digest::of_bytes(&bytes);
    if &actual != digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_owned(),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Plans the import of every image in `source`.
pub(crate) fn plan(source: &Source, opts: &PlanOptions<'_>) -> Result<Vec<ImportPlan>, ImageError> {
    if source.exists("manifest.json", "docker archive")? {
        plan_docker(source, opts)
    } else if source.exists("oci-layout", "OCI layout")?
        && source.exists("index.json", "OCI layout")?
    {
        plan_oci(source, opts)
    } else {
        Err(ImageError::UnknownFormat {
            path: source.path().to_owned(),
        })
    }
}

fn check_rootfs(config: &ConfigFile, what: &str) -> Result<(), ImageError> {
    if config.rootfs.kind != "layers" {
        return Err(ImageError::invalid(
            what,
            format!("rootfs type {:?} (want \"layers\")", config.rootfs.kind),
        ));
    }
    Ok(())
}

fn check_layer_count(
    count: usize,
    diff_ids: usize,
    opts: &PlanOptions<'_>,
) -> Result<(), ImageError> {
    if count > opts.max_layers {
        return Err(ImageError::TooManyLayers {
            count,
            max: opts.max_layers,
        });
    }
    if count != diff_ids {
        return Err(ImageError::invalid(
            "image",
            format!("manifest lists {count} layers but the config lists {diff_ids} diff_ids"),
        ));
    }
    Ok(())
}

/// Names from an OCI index descriptor's annotations.
fn names_from_annotations(d: &Descriptor) -> Vec<Reference> {
    if let Some(name) = d.annotation(ANN_CONTAINERD_NAME)
        && let Ok(r) = Reference::parse(name)
    {
        return vec![r];
    }
    // ref.name is either a full reference or only a tag; a bare tag names no repository.
    match d.annotation(ANN_REF_NAME) {
        Some(name) if name.contains(':') || name.contains('/') => {
            Reference::parse(name).ok().into_iter().collect()
        }
        _ => Vec::new(),
    }
}

fn plan_oci(source: &Source, opts: &PlanOptions<'_>) -> Result<Vec<ImportPlan>, ImageError> {
    let layout = source
        .read_small("oci-layout", MAX_DOCUMENT, "oci-layout")?
        .ok_or_else(|| ImageError::UnknownFormat {
            path: source.path().to_owned(),
        })?;
    let layout: serde_json::Value = parse(&layout, "oci-layout")?;
    if layout
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(ImageError::invalid("oci-layout", "no imageLayoutVersion"));
    }
    let index = source
        .read_small("index.json", MAX_DOCUMENT, "index.json")?
        .ok_or_else(|| ImageError::UnknownFormat {
            path: source.path().to_owned(),
        })?;
    let index: Index = parse(&index, "index.json")?;
    if index.manifests.is_empty() {
        return Err(ImageError::invalid("index.json", "lists no manifests"));
    }
    // A top-level entry for another platform is not this node's image.
    let wanted: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_none_or(|p| p.os == opts.os && p.architecture == opts.arch)
        })
        .collect();
    if wanted.is_empty() {
        return Err(ImageError::NoMatchingPlatform {
            what: "index.json".to_owned(),
            os: opts.os.to_owned(),
            arch: opts.arch.to_owned(),
        });
    }
    let mut plans = Vec::new();
    for d in wanted {
        let names = names_from_annotations(d);
        let manifest_desc = resolve_platform(source, d, opts, 0)?;
        let what = format!("manifest {}", manifest_desc.digest);
        let bytes = read_blob(source, &manifest_desc.digest, &what)?;
        let manifest: Manifest = parse(&bytes, &what)?;
        if manifest.schema_version != 2 {
            return Err(ImageError::invalid(
                &what,
                format!("schemaVersion {}", manifest.schema_version),
            ));
        }
        if manifest.layers.len() > opts.max_layers {
            return Err(ImageError::TooManyLayers {
                count: manifest.layers.len(),
                max: opts.max_layers,
            });
        }
        let config_what = format!("config {}", manifest.config.digest);
        let config_bytes = read_blob(source, &manifest.config.digest, &config_what)?;
        let config = ConfigFile::parse(&config_bytes, &config_what)?;
        check_rootfs(&config, &config_what)?;
        check_layer_count(manifest.layers.len(), config.rootfs.diff_ids.len(), opts)?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, (l, diff_id)) in manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .enumerate()
        {
            let path = format!("blobs/sha256/{}", l.digest.hex());
            let lwhat = format!("manifest {} layer {i}", manifest_desc.digest);
            if !source.exists(&path, &lwhat)? {
                return Err(ImageError::MissingBlob {
                    what: lwhat,
                    path: l.digest.to_string(),
                });
            }
            layers.push(PlannedLayer {
                path,
                digest: Some(l.digest.clone()),
                diff_id: diff_id.clone(),
                media_type: l.media_type.clone(),
            });
        }
        plans.push(ImportPlan {
            names,
            manifest: Some((manifest_desc.digest.clone(), bytes)),
            config_digest: manifest.config.digest.clone(),
            config_bytes,
            config,
            layers,
        });
    }
    Ok(plans)
}

/// Follows nested indexes down to the manifest for this platform.
fn resolve_platform(
    source: &Source,
    d: &Descriptor,
    opts: &PlanOptions<'_>,
    depth: usize,
) -> Result<Descriptor, ImageError> {
    if !d.is_index() {
        return Ok(d.clone());
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(ImageError::invalid(
            format!("index {}", d.digest),
            "nested too deep",
        ));
    }
    let what = format!("index {}", d.digest);
    let bytes = read_blob(source, &d.digest, &what)?;
    let index: Index = parse(&bytes, &what)?;
    let matches = |m: &&Descriptor| {
        m.platform
            .as_ref()
            .is_none_or(|p| p.os == opts.os && p.architecture == opts.arch)
    };
    let chosen = index
        .manifests
        .iter()
        .find(|m| m.platform.is_some() && matches(m))
        .or_else(|| index.manifests.iter().find(matches))
        .ok_or_else(|| ImageError::NoMatchingPlatform {
            what,
            os: opts.os.to_owned(),
            arch: opts.arch.to_owned(),
        })?;
    resolve_platform(source, chosen, opts, depth + 1)
}

fn plan_docker(source: &Source, opts: &PlanOptions<'_>) -> Result<Vec<ImportPlan>, ImageError> {
    let bytes = source
        .read_small("manifest.json", MAX_DOCUMENT, "manifest.json")?
        .ok_or_else(|| ImageError::UnknownFormat {
            path: source.path().to_owned(),
        })?;
    let entries: Vec<DockerArchiveEntry> = parse(&bytes, "manifest.json")?;
    if entries.is_empty() {
        return Err(ImageError::invalid("manifest.json", "lists no images"));
    }
    let mut plans = Vec::new();
    for (n, e) in entries.iter().enumerate() {
        if e.layers.len() > opts.max_layers {
            return Err(ImageError::TooManyLayers {
                count: e.layers.len(),
                max: opts.max_layers,
            });
        }
        let config_what = format!("manifest.json image {n} config {:?}", e.config);
        let config_bytes = source
            .read_small(&e.config, MAX_DOCUMENT, &config_what)?
            .ok_or_else(|| ImageError::MissingBlob {
                what: config_what.clone(),
                path: e.config.clone(),
            })?;
        let config_digest = Digest::of_bytes(&config_bytes);
        // Docker names the config by its digest (`<hex>.json` or `blobs/sha256/<hex>`).
        if let Some(expected) = digest_in_name(&e.config)
            && expected != config_digest
        {
            return Err(ImageError::DigestMismatch {
                what: config_what,
                expected,
                actual: config_digest,
            });
        }
        let config = ConfigFile::parse(&config_bytes, &config_what)?;
        check_rootfs(&config, &config_what)?;
        check_layer_count(e.layers.len(), config.rootfs.diff_ids.len(), opts)?;
        let mut layers = Vec::with_capacity(e.layers.len());
        for (i, (path, diff_id)) in e.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            let lwhat = format!("manifest.json image {n} layer {i}");
            if !source.exists(path, &lwhat)? {
                return Err(ImageError::MissingBlob {
                    what: lwhat,
                    path: path.clone(),
                });
            }
            layers.push(PlannedLayer {
                path: path.clone(),
                digest: path
                    .strip_prefix("blobs/sha256/")
                    .and_then(|h| Digest::from_hex(h).ok()),
                diff_id: diff_id.clone(),
                media_type: MT_OCI_LAYER_TAR.to_owned(),
            });
        }
        let mut names = Vec::new();
        for t in e.repo_tags.iter().flatten() {
            names.push(Reference::parse(t)?);
        }
        plans.push(ImportPlan {
            names,
            manifest: None,
            config_digest,
            config_bytes,
            config,
            layers,
        });
    }
    Ok(plans)
}

/// The digest a docker-archive file name carries, if it carries one.
fn digest_in_name(path: &str) -> Option<Digest> {
    let name = path.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    Digest::from_hex(hex).ok()
}

/// Layer blob as stored: digest, size and media type (after the store has read it).
pub(crate) struct StoredLayer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// An OCI manifest for an image that came without one (docker archives).
pub(crate) fn synthesize_manifest(
    config_digest: &Digest,
    config_size: usize,
    layers: &[StoredLayer],
) -> Result<Vec<u8>, ImageError> {
    let mut config = BTreeMap::new();
    config.insert("mediaType", serde_json::Value::from(MT_OCI_CONFIG));
    config.insert("digest", serde_json::Value::from(config_digest.to_string()));
    config.insert("size", serde_json::Value::from(config_size));
    let layers: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size})
        })
        .collect();
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config,
        "layers": layers,
    });
    serde_json::to_vec(&doc).map_err(|source| ImageError::Json {
        what: "synthesised manifest".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_in_name_reads_docker_config_names() {
        let hex = "b".repeat(64);
        assert_eq!(digest_in_name(&format!("{hex}.json")).unwrap().hex(), hex);
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex
        );
        assert!(digest_in_name("config.json").is_none());
    }

    #[test]
    fn names_come_from_annotations() {
        let d: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": MT_OCI_MANIFEST, "digest": format!("sha256:{}", "c".repeat(64)), "size": 1,
            "annotations": {"org.opencontainers.image.ref.name": "latest"}
        }))
        .unwrap();
        assert!(
            names_from_annotations(&d).is_empty(),
            "a bare tag names no repository"
        );
        let d: Descriptor = serde_json::from_value(serde_json::json!({
            "digest": format!("sha256:{}", "c".repeat(64)),
            "annotations": {"org.opencontainers.image.ref.name": "x/y:1"}
        }))
        .unwrap();
        assert_eq!(names_from_annotations(&d)[0].to_string(), "x/y:1");
    }
}
