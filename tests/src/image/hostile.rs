//! Hostile and malformed images for the runtime's rejection tests.
//!
//! Each helper returns a [`BuiltImage`] (write it with [`BuiltImage::write_oci_dir`] or any other
//! encoding). Every image is broken in exactly the one way its name says: a digest-mismatch blob
//! still decompresses, a truncated-gzip blob still matches its digest, so a runtime test proves
//! the specific check, not an earlier accidental one.

use serde_json::{Value, json};

use super::layer::{CREATED, Compression, Entry, Layer, sha256_digest};
use super::{BuiltImage, BuiltLayer, TestImage};

/// Canned sets of malicious tar entries; each is written verbatim by [`raw_entries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostileEntries {
    /// `../x`: a parent-directory escape.
    ParentDir,
    /// `a/../../x`: an escape hidden after a normal component.
    NestedParentDir,
    /// `/etc/x`: an absolute path.
    AbsolutePath,
    /// `link -> ../../..`, then `link/file`: writing through a symlink that leaves the root.
    SymlinkEscape,
    /// `link -> /etc`, then `link/x`: writing through an absolute symlink.
    AbsoluteSymlinkEscape,
    /// `evil` hard-linked to `../../etc/passwd`.
    HardlinkEscape,
    /// `evil` hard-linked to `/etc/passwd`.
    AbsoluteHardlink,
    /// `dev/evil`: character device 1:1 (`/dev/mem`), not a 0/0 overlay whiteout.
    CharDevice,
    /// `dev/sda-evil`: block device 8:0.
    BlockDevice,
    /// `link -> /etc`, then `link/.wh.passwd`: a whiteout that deletes through a symlink.
    WhiteoutThroughSymlink,
    /// `.wh...`: a whiteout whose target is `..`.
    WhiteoutOfParent,
}

impl HostileEntries {
    /// Every variant.
    pub const ALL: [HostileEntries; 11] = [
        HostileEntries::ParentDir,
        HostileEntries::NestedParentDir,
        HostileEntries::AbsolutePath,
        HostileEntries::SymlinkEscape,
        HostileEntries::AbsoluteSymlinkEscape,
        HostileEntries::HardlinkEscape,
        HostileEntries::AbsoluteHardlink,
        HostileEntries::CharDevice,
        HostileEntries::BlockDevice,
        HostileEntries::WhiteoutThroughSymlink,
        HostileEntries::WhiteoutOfParent,
    ];

    /// The entries, in the order they are written.
    pub fn entries(self) -> Vec<Entry> {
        const PAYLOAD: &str = "written by a hostile image\n";
        match self {
            HostileEntries::ParentDir => vec![Entry::file("../x", PAYLOAD)],
            HostileEntries::NestedParentDir => {
                vec![Entry::dir("a/"), Entry::file("a/../../x", PAYLOAD)]
            }
            HostileEntries::AbsolutePath => vec![Entry::file("/etc/x", PAYLOAD)],
            HostileEntries::SymlinkEscape => vec![
                Entry::symlink("link", "../../.."),
                Entry::file("link/file", PAYLOAD),
            ],
            HostileEntries::AbsoluteSymlinkEscape => vec![
                Entry::symlink("link", "/etc"),
                Entry::file("link/x", PAYLOAD),
            ],
            HostileEntries::HardlinkEscape => vec![Entry::hardlink("evil", "../../etc/passwd")],
            HostileEntries::AbsoluteHardlink => vec![Entry::hardlink("evil", "/etc/passwd")],
            HostileEntries::CharDevice => {
                vec![Entry::dir("dev/"), Entry::char_device("dev/evil", 1, 1)]
            }
            HostileEntries::BlockDevice => {
                vec![
                    Entry::dir("dev/"),
                    Entry::block_device("dev/sda-evil", 8, 0),
                ]
            }
            HostileEntries::WhiteoutThroughSymlink => vec![
                Entry::symlink("link", "/etc"),
                Entry::file("link/.wh.passwd", Vec::new()),
            ],
            HostileEntries::WhiteoutOfParent => vec![Entry::file(".wh...", Vec::new())],
        }
    }
}

/// A single-layer image whose layer holds exactly `entries`, in order, names verbatim.
pub fn raw_entries(
    reference: &str,
    entries: impl IntoIterator<Item = Entry>,
) -> anyhow::Result<BuiltImage> {
    TestImage::scratch(reference)
        .cmd(["/bin/true"])
        .raw_layer(entries)
        .build()
}

/// The busybox image on top of which a raw layer holding `entries` is added: the hostile layer
/// meets a real lower filesystem.
pub fn busybox_with_raw_entries(
    reference: &str,
    entries: impl IntoIterator<Item = Entry>,
) -> anyhow::Result<BuiltImage> {
    TestImage::busybox(reference).raw_layer(entries).build()
}

/// The busybox image whose top layer blob is a different, valid gzip tar than its descriptor
/// digest names (the descriptor size is the real blob size, so only the digest check fails).
pub fn digest_mismatch(reference: &str) -> anyhow::Result<BuiltImage> {
    let mut image = TestImage::busybox(reference).build()?;
    let impostor = Layer::new([Entry::file("etc/impostor", "not the layer you asked for\n")])
        .tar()
        .and_then(|tar| Compression::Gzip.compress(&tar))?;
    let top = last_layer(&mut image)?;
    top.blob = impostor;
    Ok(image)
}

/// The busybox image whose top layer blob matches its digest but whose config `diff_id` for it
/// is wrong (the uncompressed tar does not hash to it).
pub fn diff_id_mismatch(reference: &str) -> anyhow::Result<BuiltImage> {
    let mut image = TestImage::busybox(reference).build()?;
    let wrong = sha256_digest(b"not the uncompressed layer");
    last_layer(&mut image)?.diff_id = wrong;
    refresh_diff_ids(&mut image);
    Ok(image)
}

/// The busybox image whose top layer is a gzip stream cut in half; the descriptor's digest and
/// size describe the truncated bytes, so the digest check passes and decompression fails.
pub fn truncated_gzip(reference: &str) -> anyhow::Result<BuiltImage> {
    let mut image = TestImage::busybox(reference)
        .compression(Compression::Gzip)
        .build()?;
    let top = last_layer(&mut image)?;
    top.blob.truncate(top.blob.len() / 2);
    top.digest = sha256_digest(&top.blob);
    Ok(image)
}

/// The busybox image whose manifest lists a layer blob that is absent from the output.
pub fn missing_blob(reference: &str) -> anyhow::Result<BuiltImage> {
    let mut image = TestImage::busybox(reference).build()?;
    let digest = last_layer(&mut image)?.digest.clone();
    image.missing_blobs.insert(digest);
    Ok(image)
}

/// An image whose manifest and config list `count` layers (all the same tiny, valid blob).
pub fn absurd_layer_count(reference: &str, count: usize) -> anyhow::Result<BuiltImage> {
    let layer = BuiltLayer::from_layer(
        &Layer::new([Entry::file("layer", "one of very many\n")]),
        Compression::Gzip,
    )?;
    let mut image = TestImage::scratch(reference).cmd(["/bin/true"]).build()?;
    image.layers = vec![layer; count];
    refresh_diff_ids(&mut image);
    let history: Vec<Value> = (0..count)
        .map(|i| json!({"created": CREATED, "created_by": format!("absurd layer {i}")}))
        .collect();
    image.config["history"] = Value::Array(history);
    Ok(image)
}

fn last_layer(image: &mut BuiltImage) -> anyhow::Result<&mut BuiltLayer> {
    image
        .layers
        .last_mut()
        .ok_or_else(|| anyhow::anyhow!("image has no layers"))
}

/// Rewrites `config.rootfs.diff_ids` from the layers.
fn refresh_diff_ids(image: &mut BuiltImage) {
    let diff_ids: Vec<Value> = image
        .layers
        .iter()
        .map(|l| Value::String(l.diff_id.clone()))
        .collect();
    image.config["rootfs"]["diff_ids"] = Value::Array(diff_ids);
}
