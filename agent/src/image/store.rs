//! [`ImageStore`]: import, list, inspect and remove images; hand out overlay lower dirs.
//!
//! Mutating operations (import, tag, remove) are serialised by one lock, so garbage collection
//! never races an import that is about to reference a layer; readers (list, inspect) only take
//! the index lock, briefly. The on-disk index is saved after every blob and layer it names is
//! in place, and files are deleted only after the index that drops them is saved: a crash
//! leaves at worst unreferenced blobs and layers, which [`ImageStore::open`] sweeps.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, HashingReader, chain_ids};
use super::error::ImageError;
use super::fsops::{self, Dir};
use super::import::{self, ImportPlan, PlanOptions, StoredLayer};
use super::oci::{ImageConfig, host_architecture};
use super::reference::Reference;
use super::source::Source;
use super::unpack;

/// Default maximum number of layers an image may have. Docker's overlay2 driver caps images at
/// 128 layers because it mounts with the legacy one-page option string; the runtime mounts
/// with the new mount API (`lowerdir+`, one layer per call), where overlayfs itself allows 500
/// lowers. 256 leaves room for the upper layer and keeps unpack work for a hostile manifest
/// bounded.
pub const DEFAULT_MAX_LAYERS: usize = 256;

/// An image's id: the digest of its config blob (what `docker images` shows).
pub type ImageId = Digest;

const INDEX_VERSION: u32 = 1;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name in the store's work area unique in this process: `<pid>-<n>-<kind>`.
pub(crate) fn temp_name(kind: &str) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{kind}", std::process::id())
}

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Images with more layers are refused before any work.
    pub max_layers: usize,
    /// OS picked from multi-platform indexes.
    pub os: String,
    /// Architecture picked from multi-platform indexes.
    pub architecture: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_layers: DEFAULT_MAX_LAYERS,
            os: "linux".to_owned(),
            architecture: host_architecture().to_owned(),
        }
    }
}

/// One layer of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// sha256 of the uncompressed layer tar.
    pub diff_id: Digest,
    /// ChainID of this layer and those below it; names the unpacked directory.
    pub chain_id: Digest,
    /// Digest of the layer blob as stored.
    pub blob_digest: Digest,
    /// Size of the layer blob.
    pub blob_size: u64,
    /// Bytes of regular file content in the layer.
    pub size: u64,
    /// The unpacked layer directory (an overlay lowerdir; never written after unpack).
    #[serde(skip)]
    pub path: PathBuf,
}

/// An image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The config digest.
    pub id: ImageId,
    /// Names pointing at this image (`busybox:latest`), sorted; empty for a dangling image.
    #[serde(skip)]
    pub repo_tags: Vec<String>,
    /// Digest of the image manifest (the one imported, or synthesised for docker archives).
    pub manifest_digest: Digest,
    /// Execution parameters from the config.
    pub config: ImageConfig,
    /// Layers, base first.
    pub layers: Vec<LayerInfo>,
    /// Sum of the layers' sizes.
    pub size: u64,
    /// Creation time from the config (RFC 3339), if set.
    pub created: Option<String>,
}

impl Image {
    /// The first 12 hex characters of the id, as `docker images` shows it.
    pub fn short_id(&self) -> &str {
        &self.id.hex()[..12]
    }
}

/// What [`ImageStore::remove`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Names removed.
    pub untagged: Vec<String>,
    /// Image deleted (`None` when only a name was removed).
    pub deleted: Option<ImageId>,
    /// Unpacked layer directories deleted.
    pub layers_removed: usize,
    /// Blobs deleted.
    pub blobs_removed: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LayerRecord {
    diff_id: Digest,
    size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Index {
    version: u32,
    /// Image id → image.
    images: BTreeMap<Digest, Image>,
    /// Familiar reference → image id.
    names: BTreeMap<String, ImageId>,
    /// ChainID hex → unpacked layer.
    layers: BTreeMap<String, LayerRecord>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            version: INDEX_VERSION,
            images: BTreeMap::new(),
            names: BTreeMap::new(),
            layers: BTreeMap::new(),
        }
    }
}

impl Index {
    fn resolve(&self, s: &str) -> Result<ImageId, ImageError> {
        if let Ok(r) = Reference::parse(s) {
            if let Some(d) = r.digest() {
                if let Some(img) = self
                    .images
                    .values()
                    .find(|i| &i.manifest_digest == d || &i.id == d)
                {
                    return Ok(img.id.clone());
                }
            } else if let Some(id) = self.names.get(&r.to_string()) {
                return Ok(id.clone());
            }
        }
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if !hex.is_empty()
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let mut found = self.images.keys().filter(|id| id.hex().starts_with(hex));
            if let Some(id) = found.next() {
                if found.next().is_some() {
                    return Err(ImageError::Ambiguous {
                        prefix: s.to_owned(),
                    });
                }
                return Ok(id.clone());
            }
        }
        Err(ImageError::NotFound {
            reference: s.to_owned(),
        })
    }

    fn names_of(&self, id: &ImageId) -> Vec<String> {
        self.names
            .iter()
            .filter(|(_, v)| *v == id)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The node's image store. See the module docs of [`crate::image`] for the layout.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    opts: StoreOptions,
    ops: Mutex<()>,
    index: RwLock<Index>,
}

fn create_dir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(|e| ImageError::io("creating directory", path, e))
}

fn is_live_pid(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` with default options.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        ImageStore::open_with(root, StoreOptions::default())
    }

    /// Opens (creating if needed) the store at `root`. Sweeps what a crashed process left:
    /// work files of dead processes, and layers and blobs no image references.
    pub fn open_with(root: &Path, opts: StoreOptions) -> Result<ImageStore, ImageError> {
        for d in ["blobs/sha256", "layers", "images", "tmp"] {
            create_dir(&root.join(d))?;
        }
        let index_path = root.join("images/index.json");
        let mut index: Index = match fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                what: format!("{index_path:?}"),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(ImageError::io("reading", &index_path, e)),
        };
        if index.version != INDEX_VERSION {
            return Err(ImageError::invalid(
                format!("{index_path:?}"),
                format!("unknown version {}", index.version),
            ));
        }
        for img in index.images.values_mut() {
            for l in &mut img.layers {
                l.path = root.join("layers").join(l.chain_id.hex());
            }
        }
        let store = ImageStore {
            root: root.to_owned(),
            opts,
            ops: Mutex::new(()),
            index: RwLock::new(index),
        };
        store.sweep_tmp()?;
        {
            let idx = store.index.read().unwrap_or_else(|p| p.into_inner());
            store.collect_garbage(&idx)?;
        }
        Ok(store)
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory a layer with this ChainID is (or would be) unpacked in.
    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("layers").join(chain_id.hex())
    }

    /// The path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn sweep_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.tmp_dir();
        let entries = fs::read_dir(&tmp).map_err(|e| ImageError::io("reading", &tmp, e))?;
        for e in entries {
            let e = e.map_err(|e| ImageError::io("reading", &tmp, e))?;
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(is_live_pid) {
                continue;
            }
            remove_path(&e.path())?;
        }
        Ok(())
    }

    /// Deletes layer directories and blobs that no image in `idx` references.
    fn collect_garbage(&self, idx: &Index) -> Result<(usize, usize), ImageError> {
        let mut chains = BTreeSet::new();
        let mut blobs = BTreeSet::new();
        for img in idx.images.values() {
            blobs.insert(img.id.hex().to_owned());
            blobs.insert(img.manifest_digest.hex().to_owned());
            for l in &img.layers {
                chains.insert(l.chain_id.hex().to_owned());
                blobs.insert(l.blob_digest.hex().to_owned());
            }
        }
        let mut layers_removed = 0;
        let layers = self.root.join("layers");
        for e in fs::read_dir(&layers).map_err(|e| ImageError::io("reading", &layers, e))? {
            let e = e.map_err(|e| ImageError::io("reading", &layers, e))?;
            if e.file_name().to_str().is_some_and(|n| chains.contains(n)) {
                continue;
            }
            // Moved out first, so `layers/` never holds a half-deleted layer.
            let grave = self.tmp_dir().join(temp_name("gc"));
            fs::rename(e.path(), &grave)
                .map_err(|err| ImageError::io("moving out", e.path(), err))?;
            remove_path(&grave)?;
            layers_removed += 1;
        }
        let mut blobs_removed = 0;
        let blob_dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blob_dir).map_err(|e| ImageError::io("reading", &blob_dir, e))? {
            let e = e.map_err(|e| ImageError::io("reading", &blob_dir, e))?;
            if e.file_name().to_str().is_some_and(|n| blobs.contains(n)) {
                continue;
            }
            remove_path(&e.path())?;
            blobs_removed += 1;
        }
        Ok((layers_removed, blobs_removed))
    }

    fn save_index(&self, idx: &Index) -> Result<(), ImageError> {
        let dir = self.root.join("images");
        let path = dir.join("index.json");
        let tmp = dir.join(format!(".index.json.{}", temp_name("tmp")));
        let bytes = serde_json::to_vec_pretty(idx).map_err(|source| ImageError::Json {
            what: "image index".into(),
            source,
        })?;
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fsops::sync_dir(&dir)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            ImageError::io("writing", &path, e)
        })
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, idx: Index) -> Result<(), ImageError> {
        self.save_index(&idx)?;
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = idx;
        Ok(())
    }

    fn to_image(idx: &Index, img: &Image) -> Image {
        let mut out = img.clone();
        out.repo_tags = idx.names_of(&img.id);
        out
    }

    /// Every image, ordered by id.
    pub fn list(&self) -> Vec<Image> {
        let idx = self.read_index();
        idx.images
            .values()
            .map(|i| Self::to_image(&idx, i))
            .collect()
    }

    /// The image named by a reference (`busybox`, `busybox:1`, `name@sha256:<manifest>`),
    /// a full id (`sha256:<hex>` or `<hex>`) or a unique id prefix.
    pub fn inspect(&self, reference_or_id: &str) -> Result<Image, ImageError> {
        let idx = self.read_index();
        let id = idx.resolve(reference_or_id)?;
        let img = idx.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: reference_or_id.to_owned(),
        })?;
        Ok(Self::to_image(&idx, img))
    }

    /// Overlay lower directories of an image, topmost first (the order of `lowerdir=`).
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_dir(&l.chain_id))
            .collect()
    }

    /// Imports every image in an OCI image layout (directory or tar, optionally gzip or zstd
    /// compressed) or a `docker save` archive, under the names the source gives.
    pub fn import(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        self.import_inner(path, None)
    }

    /// Like [`ImageStore::import`], and also names the image `reference`; the source must hold
    /// exactly one image.
    pub fn import_as(&self, path: &Path, reference: &str) -> Result<Vec<Image>, ImageError> {
        let r = Reference::parse(reference)?;
        self.import_inner(path, Some(r))
    }

    fn import_inner(
        &self,
        path: &Path,
        extra: Option<Reference>,
    ) -> Result<Vec<Image>, ImageError> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.import_locked(path, extra);
        if result.is_err() {
            // Blobs and layers this failed import wrote are referenced by no saved image.
            let idx = self.read_index();
            let _ = self.collect_garbage(&idx);
        }
        result
    }

    fn import_locked(
        &self,
        path: &Path,
        extra: Option<Reference>,
    ) -> Result<Vec<Image>, ImageError> {
        let source = Source::open(path, &self.tmp_dir())?;
        let opts = PlanOptions {
            max_layers: self.opts.max_layers,
            os: &self.opts.os,
            arch: &self.opts.architecture,
        };
        let mut plans = import::plan(&source, &opts)?;
        if let Some(r) = extra {
            if plans.len() != 1 {
                return Err(ImageError::invalid(
                    format!("{path:?}"),
                    format!(
                        "holds {} images; a name can only be given to one",
                        plans.len()
                    ),
                ));
            }
            plans[0].names.push(r);
        }
        let mut idx = self.read_index().clone();
        let mut imported = Vec::new();
        for plan in plans {
            let names = plan.names.clone();
            let img = self.import_one(&source, plan, &mut idx)?;
            for n in names {
                idx.names.insert(n.to_string(), img.id.clone());
            }
            idx.images.insert(img.id.clone(), img.clone());
            imported.push(img.id);
        }
        for d in ["blobs/sha256", "layers"] {
            let p = self.root.join(d);
            fsops::sync_dir(&p).map_err(|e| ImageError::io("syncing", p, e))?;
        }
        let out = imported
            .iter()
            .filter_map(|id| idx.images.get(id))
            .map(|i| Self::to_image(&idx, i))
            .collect();
        self.publish(idx)?;
        Ok(out)
    }

    /// Copies blobs and unpacks layers of one image; records new layers in `idx.layers`.
    fn import_one(
        &self,
        source: &Source,
        plan: ImportPlan,
        idx: &mut Index,
    ) -> Result<Image, ImageError> {
        let chains = chain_ids(&plan.config.rootfs.diff_ids);
        let mut layers = Vec::with_capacity(plan.layers.len());
        let mut stored = Vec::with_capacity(plan.layers.len());
        for (i, (layer, chain)) in plan.layers.iter().zip(&chains).enumerate() {
            let what = format!("layer {i} blob");
            let (reader, _) =
                source
                    .open_file(&layer.path, &what)?
                    .ok_or_else(|| ImageError::MissingBlob {
                        what: what.clone(),
                        path: layer.path.clone(),
                    })?;
            let (blob_digest, blob_size) = self.write_blob(reader, layer.digest.as_ref(), &what)?;
            let size = match idx.layers.get(chain.hex()) {
                Some(rec) if self.layer_dir(chain).is_dir() => rec.size,
                _ => {
                    let size = self
                        .unpack_layer(&blob_digest, &layer.diff_id, chain, i)
                        .map_err(|e| ImageError::Layer {
                            index: i,
                            blob: blob_digest.clone(),
                            source: Box::new(e),
                        })?;
                    idx.layers.insert(
                        chain.hex().to_owned(),
                        LayerRecord {
                            diff_id: layer.diff_id.clone(),
                            size,
                        },
                    );
                    size
                }
            };
            stored.push(StoredLayer {
                digest: blob_digest.clone(),
                size: blob_size,
                media_type: layer.media_type.clone(),
            });
            layers.push(LayerInfo {
                diff_id: layer.diff_id.clone(),
                chain_id: chain.clone(),
                blob_digest,
                blob_size,
                size,
                path: self.layer_dir(chain),
            });
        }
        let (config_digest, _) =
            self.write_blob(&plan.config_bytes[..], Some(&plan.config_digest), "config")?;
        let manifest_bytes = match plan.manifest {
            Some((_, bytes)) => bytes,
            None => import::synthesize_manifest(&config_digest, plan.config_bytes.len(), &stored)?,
        };
        let (manifest_digest, _) = self.write_blob(&manifest_bytes[..], None, "manifest")?;
        Ok(Image {
            id: config_digest,
            repo_tags: Vec::new(),
            manifest_digest,
            config: plan.config.image_config(),
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            created: plan.config.created.clone(),
        })
    }

    /// Streams `reader` into `blobs/`, verifying `expected` while it streams.
    fn write_blob(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(d) = expected {
            let path = self.blob_path(d);
            if let Ok(meta) = fs::metadata(&path) {
                return Ok((d.clone(), meta.len()));
            }
        }
        let tmp = self.tmp_dir().join(temp_name("blob"));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| ImageError::io("creating", &tmp, e))?;
            let mut hashed = HashingReader::new(reader);
            io::copy(&mut hashed, &mut file)
                .map_err(|e| ImageError::io("writing blob", &tmp, e))?;
            file.sync_all()
                .map_err(|e| ImageError::io("syncing", &tmp, e))?;
            let (digest, size) = hashed
                .drain_and_finish()
                .map_err(|e| ImageError::io("reading blob for", &tmp, e))?;
            if let Some(exp) = expected
                && exp != &digest
            {
                return Err(ImageError::DigestMismatch {
                    what: what.to_owned(),
                    expected: exp.clone(),
                    actual: digest,
                });
            }
            let dest = self.blob_path(&digest);
            if dest.exists() {
                fs::remove_file(&tmp).map_err(|e| ImageError::io("removing", &tmp, e))?;
            } else {
                fs::rename(&tmp, &dest).map_err(|e| ImageError::io("storing blob", &dest, e))?;
            }
            Ok((digest, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Unpacks a stored blob into `layers/<chain>` via a work directory; returns its size.
    fn unpack_layer(
        &self,
        blob: &Digest,
        diff_id: &Digest,
        chain: &Digest,
        index: usize,
    ) -> Result<u64, ImageError> {
        let work = self.tmp_dir().join(temp_name("layer"));
        let result = (|| {
            fs::create_dir(&work).map_err(|e| ImageError::io("creating", &work, e))?;
            let path = self.blob_path(blob);
            let file = File::open(&path).map_err(|e| ImageError::io("opening", &path, e))?;
            let got = unpack::unpack_layer(file, &work)?;
            if &got.diff_id != diff_id {
                return Err(ImageError::DiffIdMismatch {
                    index,
                    blob: blob.clone(),
                    expected: diff_id.clone(),
                    actual: got.diff_id,
                });
            }
            if &got.blob_digest != blob {
                return Err(ImageError::DigestMismatch {
                    what: format!("stored blob {path:?}"),
                    expected: blob.clone(),
                    actual: got.blob_digest,
                });
            }
            let dir = Dir::open(&work).map_err(|e| ImageError::io("opening", &work, e))?;
            dir.syncfs()
                .map_err(|e| ImageError::io("syncing", &work, e))?;
            let dest = self.layer_dir(chain);
            if dest.exists() {
                // Left by a crash after unpack but before the index named it.
                remove_path(&dest)?;
            }
            fs::rename(&work, &dest).map_err(|e| ImageError::io("storing layer", &dest, e))?;
            Ok(got.unpacked_bytes)
        })();
        if result.is_err() {
            let _ = remove_path(&work);
        }
        result
    }

    /// Adds the name `target` to the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let r = Reference::parse(target)?;
        if r.digest().is_some() {
            return Err(ImageError::InvalidReference {
                reference: target.to_owned(),
                reason: "cannot tag with a digest".into(),
            });
        }
        let mut idx = self.read_index().clone();
        let id = idx.resolve(source)?;
        idx.names.insert(r.to_string(), id);
        self.publish(idx)
    }

    /// Removes a name, or the image when its last name (or its id) is given. An image that
    /// `in_use` says a container uses is refused. Layers and blobs no remaining image
    /// references are deleted with it. Removing by id an image that has several names is
    /// refused (remove the names instead), as Docker does without `--force`.
    pub fn remove(
        &self,
        reference_or_id: &str,
        in_use: &dyn Fn(&ImageId) -> bool,
    ) -> Result<RemoveReport, ImageError> {
        let _op = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let mut idx = self.read_index().clone();
        let id = idx.resolve(reference_or_id)?;
        let names = idx.names_of(&id);
        let by_name = Reference::parse(reference_or_id)
            .ok()
            .map(|r| r.to_string())
            .filter(|n| idx.names.get(n) == Some(&id));
        let mut report = RemoveReport::default();
        match by_name {
            Some(name) if names.len() > 1 => {
                idx.names.remove(&name);
                report.untagged.push(name);
                self.publish(idx)?;
                return Ok(report);
            }
            Some(_) => {}
            None if names.len() > 1 => return Err(ImageError::MultipleNames { id, names }),
            None => {}
        }
        if in_use(&id) {
            return Err(ImageError::InUse {
                reference: reference_or_id.to_owned(),
                id,
            });
        }
        for n in names {
            idx.names.remove(&n);
            report.untagged.push(n);
        }
        idx.images.remove(&id);
        let live: BTreeSet<String> = idx
            .images
            .values()
            .flat_map(|i| i.layers.iter().map(|l| l.chain_id.hex().to_owned()))
            .collect();
        idx.layers.retain(|k, _| live.contains(k));
        self.publish(idx)?;
        let idx = self.read_index();
        let (layers_removed, blobs_removed) = self.collect_garbage(&idx)?;
        report.deleted = Some(id);
        report.layers_removed = layers_removed;
        report.blobs_removed = blobs_removed;
        Ok(report)
    }
}

/// Removes a file, symlink or directory tree (never following symlinks).
fn remove_path(path: &Path) -> Result<(), ImageError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::io("inspecting", path, e)),
    };
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| ImageError::io("removing", path, e))
}

#[cfg(test)]
mod tests;
