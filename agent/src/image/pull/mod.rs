//! Pulls images from OCI distribution registries (`berth image pull`, and the worker when a
//! task's image is missing) into the [`ImageStore`].
//!
//! A pull has two steps:
//! 1. [`Puller::fetch`] (async, network): resolve the reference to a manifest — an OCI
//!    index or Docker manifest list is narrowed to this node's platform (linux/amd64 here),
//!    OCI and Docker v2 manifests are both accepted — then download the config and every
//!    layer blob. Each download is streamed to a file in the store's work area
//!    (`<store>/tmp/<pid>-<n>-pull/`, laid out as an OCI image layout) while its sha256 and
//!    size are checked against the descriptor; a blob that does not match is refused before
//!    the store sees it. A layer blob the store already holds is hard-linked, not downloaded.
//! 2. [`FetchedImage::import`] (blocking): the store imports that layout through its usual
//!    import path, which verifies every digest and diff_id again while it copies blobs and
//!    unpacks layers, and names the image. The work directory is removed afterwards, also
//!    on failure (and swept by [`ImageStore::open`] after a crash).
//!
//! Transport and trust ([`PullConfig`], read from the environment of `berthd`):
//! - HTTPS by default, verified against the system bundle plus every `*.crt` in
//!   `$BERTH_CERTS_DIR/<host:port>/` (default `/etc/berth/certs.d`, Docker's `certs.d`
//!   layout: `/etc/berth/certs.d/myreg:5000/ca.crt`);
//! - plain HTTP for a registry pulled with `--insecure-registry` or listed in
//!   `$BERTH_INSECURE_REGISTRIES` (comma-separated `host:port`); such a registry is never
//!   tried over HTTPS, nor is an HTTPS registry ever retried over HTTP;
//! - Docker Hub (references without a registry host) only when `$BERTH_ALLOW_DOCKER_HUB=1`:
//!   a node does not reach the internet unless told to.
//!
//! Authentication: the registry's `WWW-Authenticate` challenge on `GET /v2/` decides. Bearer
//! challenges get a token from the realm (anonymously, or with basic credentials) for
//! `repository:<repo>:pull`; basic challenges get the credentials. Credentials come with the
//! request (`user:password`, which the CLI reads from its environment or credentials file),
//! else from the daemon's Docker-format file `$BERTH_REGISTRY_AUTH_FILE` (default
//! `/etc/berth/auth.json`; the format `docker login` writes to `~/.docker/config.json`).
//!
//! Not supported: schema 1 manifests, foreign (non-distributable) layers, TLS client
//! certificates, parallel layer downloads, resuming a partial download.

mod auth;
mod error;
mod http;
mod registry;

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

pub use auth::{Credentials, credentials_from_file};
pub use error::PullError;

use self::http::Transport;
use self::registry::{RawManifest, Session};
use super::digest::Digest;
use super::import::MAX_DOCUMENT;
use super::oci::{Descriptor, Index, MT_DOCKER_LIST, MT_OCI_INDEX, MT_OCI_MANIFEST, Manifest};
use super::reference::Reference;
use super::store::{DEFAULT_MAX_LAYERS, Image, ImageStore, temp_name};

/// Docker v2 image manifest media type.
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 manifest media types (refused).
const MT_DOCKER_V1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
/// What we accept for a manifest request, most wanted first.
const ACCEPT: [&str; 4] = [
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
];
/// Deepest chain of nested indexes followed.
const MAX_INDEX_DEPTH: usize = 4;
/// Downloading progress is reported at most once per this many bytes.
const PROGRESS_STEP: u64 = 512 << 10;

/// Default directory of per-registry CA certificates.
pub const DEFAULT_CERTS_DIR: &str = "/etc/berth/certs.d";
/// Default daemon-side credentials file.
pub const DEFAULT_AUTH_FILE: &str = "/etc/berth/auth.json";

/// Where a node's pulls find trust, credentials and which registries speak plain HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullConfig {
    /// `<dir>/<host:port>/*.crt` are trusted CAs for that registry.
    pub certs_dir: PathBuf,
    /// Docker-format credentials file used when a request carries none.
    pub auth_file: Option<PathBuf>,
    /// Registries (`host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Whether references without a registry host may be pulled from Docker Hub.
    pub docker_hub: bool,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            certs_dir: PathBuf::from(DEFAULT_CERTS_DIR),
            auth_file: Some(PathBuf::from(DEFAULT_AUTH_FILE)),
            insecure_registries: Vec::new(),
            docker_hub: false,
        }
    }
}

impl PullConfig {
    /// The defaults, overridden by `BERTH_CERTS_DIR`, `BERTH_REGISTRY_AUTH_FILE`,
    /// `BERTH_INSECURE_REGISTRIES` (comma-separated) and `BERTH_ALLOW_DOCKER_HUB=1`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut cfg = PullConfig::default();
        if let Some(d) = var("BERTH_CERTS_DIR") {
            cfg.certs_dir = PathBuf::from(d);
        }
        if let Some(f) = var("BERTH_REGISTRY_AUTH_FILE") {
            cfg.auth_file = Some(PathBuf::from(f));
        }
        if let Some(list) = var("BERTH_INSECURE_REGISTRIES") {
            cfg.insecure_registries = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        cfg.docker_hub = var("BERTH_ALLOW_DOCKER_HUB").is_some_and(|v| v == "1" || v == "true");
        cfg
    }
}

/// Per-pull choices.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Reach the registry over plain HTTP (`--insecure-registry`).
    pub insecure: bool,
    /// Credentials; `None` = the daemon's credentials file, else anonymous.
    pub credentials: Option<Credentials>,
    /// OS to pick from an index (`None` = linux).
    pub os: Option<String>,
    /// Architecture to pick from an index (`None` = this node's).
    pub architecture: Option<String>,
}

/// What is happening to one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerStatus {
    /// Not started.
    Waiting,
    /// Bytes are arriving.
    Downloading,
    /// Downloaded and verified.
    DownloadComplete,
    /// The store already has the blob.
    AlreadyExists,
    /// Downloaded and imported ([`FetchedImage::import`] done; reported by its caller).
    PullComplete,
}

impl LayerStatus {
    /// Docker's wording.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerStatus::Waiting => "Waiting",
            LayerStatus::Downloading => "Downloading",
            LayerStatus::DownloadComplete => "Download complete",
            LayerStatus::AlreadyExists => "Already exists",
            LayerStatus::PullComplete => "Pull complete",
        }
    }
}

/// A progress report about one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullProgress {
    /// The layer blob.
    pub digest: Digest,
    /// Its state.
    pub status: LayerStatus,
    /// Bytes done.
    pub current: u64,
    /// Bytes in all (0 if unknown).
    pub total: u64,
}

/// Pulls images with a node's [`PullConfig`]. TLS settings are built per pull, so a CA put
/// into the certs directory counts from the next pull on.
#[derive(Debug)]
pub struct Puller {
    cfg: PullConfig,
}

/// The work directory of one pull, removed when dropped.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An image downloaded into the store's work area, ready to import.
#[derive(Debug)]
pub struct FetchedImage {
    work: WorkDir,
    name: Option<Reference>,
    digest: Digest,
    layers: Vec<Digest>,
    downloaded: Vec<Digest>,
}

impl FetchedImage {
    /// The digest the reference resolved to (the index's, for a multi-platform image), as
    /// Docker prints it after a pull.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The layer blobs, base first.
    pub fn layers(&self) -> &[Digest] {
        &self.layers
    }

    /// The layer blobs that were downloaded (not already in the store).
    pub fn downloaded(&self) -> &[Digest] {
        &self.downloaded
    }

    /// Imports the image into `store` and names it (a pull by digest names nothing).
    /// Blocking: call from `spawn_blocking`.
    pub fn import(self, store: &ImageStore) -> Result<Image, PullError> {
        let images = match &self.name {
            Some(n) => store.import_as(&self.work.0, &n.to_string())?,
            None => store.import(&self.work.0)?,
        };
        let mut images = images.into_iter();
        match (images.next(), images.next()) {
            (Some(img), None) => Ok(img),
            _ => Err(PullError::invalid(
                "pulled image",
                "the work layout did not hold exactly one image",
            )),
        }
    }
}

/// A parsed manifest document.
enum Document {
    Index(Index),
    Manifest(Manifest),
}

fn parse_document(raw: &RawManifest, what: &str) -> Result<Document, PullError> {
    let doc: serde_json::Value = serde_json::from_slice(&raw.bytes)
        .map_err(|e| PullError::invalid(what, format!("not JSON: {e}")))?;
    let schema = doc.get("schemaVersion").and_then(|v| v.as_u64());
    let body_type = doc.get("mediaType").and_then(|v| v.as_str()).unwrap_or("");
    if schema == Some(1) || MT_DOCKER_V1.contains(&raw.content_type.as_str()) {
        return Err(PullError::Unsupported {
            what: what.to_owned(),
            reason: "Docker schema 1 manifests are not supported; push the image again with \
                     a current client"
                .into(),
        });
    }
    if schema != Some(2) {
        return Err(PullError::invalid(
            what,
            format!("schemaVersion {schema:?} (want 2)"),
        ));
    }
    let is_index = [raw.content_type.as_str(), body_type]
        .iter()
        .any(|t| *t == MT_OCI_INDEX || *t == MT_DOCKER_LIST)
        || (body_type.is_empty() && doc.get("manifests").is_some() && doc.get("config").is_none());
    let bad = |e: serde_json::Error| PullError::invalid(what, e.to_string());
    if is_index {
        Ok(Document::Index(serde_json::from_value(doc).map_err(bad)?))
    } else {
        Ok(Document::Manifest(
            serde_json::from_value(doc).map_err(bad)?,
        ))
    }
}

/// The manifest of `index` for `os`/`arch`: an exact platform match first, then an entry
/// without a platform.
fn choose_platform<'a>(index: &'a Index, os: &str, arch: &str) -> Option<&'a Descriptor> {
    let matches = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    };
    index
        .manifests
        .iter()
        .find(matches)
        .or_else(|| index.manifests.iter().find(|d| d.platform.is_none()))
}

fn size_of(d: &Descriptor) -> Option<u64> {
    u64::try_from(d.size).ok().filter(|s| *s > 0)
}

impl Puller {
    /// A puller with this node's settings.
    pub fn new(cfg: PullConfig) -> Puller {
        Puller { cfg }
    }

    /// The settings.
    pub fn config(&self) -> &PullConfig {
        &self.cfg
    }

    /// Downloads `reference` into `store`'s work area (see the module docs); `progress`
    /// hears about every layer.
    pub async fn fetch(
        &self,
        store: &ImageStore,
        reference: &Reference,
        opts: &PullOptions,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<FetchedImage, PullError> {
        let registry = reference.registry();
        if registry.is_none() && !self.cfg.docker_hub {
            return Err(PullError::HubDisabled {
                reference: reference.to_string(),
            });
        }
        let credentials = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => match &self.cfg.auth_file {
                Some(f) => credentials_from_file(f, registry)?,
                None => None,
            },
        };
        let insecure = opts.insecure
            || registry.is_some_and(|r| self.cfg.insecure_registries.iter().any(|i| i == r));
        let transport = Transport::new(&self.cfg.certs_dir);
        let mut session = Session::new(
            &transport,
            registry,
            reference.repository(),
            insecure,
            credentials,
        );
        session.authenticate().await?;
        let shown = reference.to_string();
        let os = opts.os.as_deref().unwrap_or("linux");
        let arch = opts
            .architecture
            .as_deref()
            .unwrap_or(super::oci::host_architecture());

        // Resolve the reference to one image manifest.
        let top_ref = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let mut raw = session
            .manifest(&top_ref, reference.digest(), &ACCEPT, MAX_DOCUMENT, &shown)
            .await?;
        let top_digest = raw.digest.clone();
        let mut depth = 0;
        let (manifest, manifest_raw, media_type) = loop {
            let what = format!("manifest {} of {shown}", raw.digest);
            match parse_document(&raw, &what)? {
                Document::Manifest(m) => {
                    let mt = m
                        .media_type
                        .clone()
                        .filter(|t| !t.is_empty())
                        .or_else(|| {
                            (!raw.content_type.is_empty()).then(|| raw.content_type.clone())
                        })
                        .unwrap_or_else(|| MT_OCI_MANIFEST.to_owned());
                    break (m, raw, mt);
                }
                Document::Index(index) => {
                    depth += 1;
                    if depth > MAX_INDEX_DEPTH {
                        return Err(PullError::invalid(what, "indexes nested too deep"));
                    }
                    let chosen = choose_platform(&index, os, arch).ok_or_else(|| {
                        PullError::NoMatchingPlatform {
                            reference: shown.clone(),
                            os: os.to_owned(),
                            arch: arch.to_owned(),
                        }
                    })?;
                    let d = chosen.digest.clone();
                    raw = session
                        .manifest(&d.to_string(), Some(&d), &ACCEPT, MAX_DOCUMENT, &shown)
                        .await?;
                }
            }
        };
        let what = format!("manifest {} of {shown}", manifest_raw.digest);
        if manifest.layers.len() > DEFAULT_MAX_LAYERS {
            return Err(super::error::ImageError::TooManyLayers {
                count: manifest.layers.len(),
                max: DEFAULT_MAX_LAYERS,
            }
            .into());
        }
        for (i, l) in manifest.layers.iter().enumerate() {
            if l.media_type.contains("foreign") {
                return Err(PullError::Unsupported {
                    what: format!("{what} layer {i}"),
                    reason: format!("foreign layer ({})", l.media_type),
                });
            }
        }
        let config_size = size_of(&manifest.config)
            .ok_or_else(|| PullError::invalid(&what, "the config descriptor has no size"))?;
        if config_size > MAX_DOCUMENT {
            return Err(PullError::TooLarge {
                what: format!("config of {shown}"),
                limit: MAX_DOCUMENT,
            });
        }

        // Download into an OCI layout in the store's work area.
        let dir = store.root().join("tmp").join(temp_name("pull"));
        let blobs = dir.join("blobs/sha256");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(|e| PullError::io("creating", &blobs, e))?;
        let work = WorkDir(dir);
        let blob_path = |d: &Digest| blobs.join(d.hex());
        write_file(&blob_path(&manifest_raw.digest), &manifest_raw.bytes).await?;
        let config_what = format!("config {} of {shown}", manifest.config.digest);
        session
            .blob_to_file(
                &manifest.config.digest,
                Some(config_size),
                &blob_path(&manifest.config.digest),
                &config_what,
                &mut |_| {},
            )
            .await?;
        for l in &manifest.layers {
            progress(PullProgress {
                digest: l.digest.clone(),
                status: LayerStatus::Waiting,
                current: 0,
                total: size_of(l).unwrap_or(0),
            });
        }
        let mut downloaded = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            let dest = blob_path(&l.digest);
            let total = size_of(l).unwrap_or(0);
            if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
                continue; // the same blob twice in one manifest
            }
            if tokio::fs::hard_link(store.blob_path(&l.digest), &dest)
                .await
                .is_ok()
            {
                progress(PullProgress {
                    digest: l.digest.clone(),
                    status: LayerStatus::AlreadyExists,
                    current: total,
                    total,
                });
                continue;
            }
            let mut last = 0u64;
            let mut report = |done: u64| {
                if done - last >= PROGRESS_STEP {
                    last = done;
                    progress(PullProgress {
                        digest: l.digest.clone(),
                        status: LayerStatus::Downloading,
                        current: done,
                        total,
                    });
                }
            };
            let lwhat = format!("layer {i} blob {} of {shown}", l.digest);
            let got = session
                .blob_to_file(&l.digest, size_of(l), &dest, &lwhat, &mut report)
                .await?;
            downloaded.push(l.digest.clone());
            progress(PullProgress {
                digest: l.digest.clone(),
                status: LayerStatus::DownloadComplete,
                current: got,
                total: got,
            });
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [{
                "mediaType": media_type,
                "digest": manifest_raw.digest.to_string(),
                "size": manifest_raw.bytes.len(),
            }],
        });
        let index =
            serde_json::to_vec(&index).map_err(|e| PullError::invalid("index", e.to_string()))?;
        write_file(&work.0.join("index.json"), &index).await?;
        write_file(
            &work.0.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .await?;
        tracing::debug!(reference = %shown, registry = session.registry(), digest = %top_digest, "pulled");
        Ok(FetchedImage {
            work,
            name: reference.digest().is_none().then(|| reference.clone()),
            digest: top_digest,
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            downloaded,
        })
    }
}

async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(|e| PullError::io("creating", path, e))?;
    f.write_all(bytes)
        .await
        .map_err(|e| PullError::io("writing", path, e))?;
    f.flush()
        .await
        .map_err(|e| PullError::io("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str, content_type: &str) -> RawManifest {
        RawManifest {
            bytes: json.as_bytes().to_vec(),
            content_type: content_type.into(),
            digest: Digest::of_bytes(json.as_bytes()),
        }
    }

    fn desc(arch: Option<&str>, n: char) -> serde_json::Value {
        let mut d = serde_json::json!({
            "mediaType": MT_OCI_MANIFEST,
            "digest": format!("sha256:{}", n.to_string().repeat(64)),
            "size": 10,
        });
        if let Some(a) = arch {
            d["platform"] = serde_json::json!({"os": "linux", "architecture": a});
        }
        d
    }

    #[test]
    fn documents_are_told_apart_by_type_or_shape() {
        let index =
            serde_json::json!({"schemaVersion": 2, "manifests": [desc(Some("amd64"), 'a')]})
                .to_string();
        assert!(matches!(
            parse_document(&raw(&index, ""), "t").unwrap(),
            Document::Index(_)
        ));
        assert!(matches!(
            parse_document(&raw(&index, MT_DOCKER_LIST), "t").unwrap(),
            Document::Index(_)
        ));
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": MT_DOCKER_MANIFEST,
            "config": desc(None, 'c'), "layers": [desc(None, 'd')],
        })
        .to_string();
        match parse_document(&raw(&manifest, MT_DOCKER_MANIFEST), "t").unwrap() {
            Document::Manifest(m) => assert_eq!(m.layers.len(), 1),
            Document::Index(_) => panic!("a manifest parsed as an index"),
        }
    }

    #[test]
    fn schema_one_and_garbage_are_refused() {
        let v1 = r#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#;
        let e = parse_document(&raw(v1, MT_DOCKER_V1[1]), "t")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("schema 1"), "{e}");
        assert!(parse_document(&raw("{", ""), "t").is_err());
        assert!(parse_document(&raw(r#"{"schemaVersion": 3}"#, ""), "t").is_err());
        let no_config = r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}"#;
        assert!(parse_document(&raw(no_config, ""), "t").is_err());
    }

    #[test]
    fn the_platform_is_picked_from_an_index() {
        let index: Index = serde_json::from_value(serde_json::json!({
            "manifests": [desc(Some("arm64"), 'a'), desc(None, 'b'), desc(Some("amd64"), 'c')]
        }))
        .unwrap();
        let d = choose_platform(&index, "linux", "amd64").unwrap();
        assert_eq!(d.digest.hex(), "c".repeat(64));
        let d = choose_platform(&index, "linux", "s390x").unwrap();
        assert_eq!(
            d.digest.hex(),
            "b".repeat(64),
            "an entry without platform fits any"
        );
        let only_arm: Index = serde_json::from_value(serde_json::json!({
            "manifests": [desc(Some("arm64"), 'a')]
        }))
        .unwrap();
        assert!(choose_platform(&only_arm, "linux", "amd64").is_none());
    }

    #[test]
    fn defaults_trust_certs_d_and_stay_off_the_internet() {
        let cfg = PullConfig::default();
        assert_eq!(cfg.certs_dir, PathBuf::from(DEFAULT_CERTS_DIR));
        assert!(!cfg.docker_hub);
        assert!(cfg.insecure_registries.is_empty());
    }

    #[tokio::test]
    async fn docker_hub_references_are_refused_unless_allowed() {
        let t = tempfile::tempdir().unwrap();
        let store = ImageStore::open(t.path()).unwrap();
        let puller = Puller::new(PullConfig::default());
        let r = Reference::parse("busybox").unwrap();
        let e = puller
            .fetch(&store, &r, &PullOptions::default(), &|_| {})
            .await
            .unwrap_err();
        assert!(e.is_not_pullable(), "{e}");
        assert!(e.to_string().contains("BERTH_ALLOW_DOCKER_HUB"), "{e}");
    }
}
