//! The image store's error type: every way importing, unpacking or looking up an image fails,
//! with the entry, digest or path it concerns.

use std::io;
use std::path::PathBuf;

use super::digest::Digest;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file system operation on the store or on an import source failed.
    #[error("{what} {path:?}")]
    Io {
        /// What was being done, e.g. "creating directory".
        what: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A string is not a `sha256:<64 lowercase hex>` digest.
    #[error("invalid digest {value:?}: {reason}")]
    InvalidDigest {
        /// The offending value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was verified, e.g. "layer blob" or "config".
        what: String,
        /// The digest the manifest or file name promised.
        expected: Digest,
        /// The digest of the bytes actually read.
        actual: Digest,
    },
    /// The uncompressed layer did not hash to the diff_id listed in the image config.
    #[error(
        "diff_id mismatch for layer {index} (blob {blob}): config says {expected}, layer is {actual}"
    )]
    DiffIdMismatch {
        /// Index of the layer in the manifest (0 = base).
        index: usize,
        /// The layer blob's digest.
        blob: Digest,
        /// diff_id from the config.
        expected: Digest,
        /// sha256 of the uncompressed stream.
        actual: Digest,
    },
    /// A manifest, index or config refers to a blob or file the source does not contain.
    #[error("{what} refers to {path:?}, which the image source does not contain")]
    MissingBlob {
        /// What refers to it, e.g. "manifest layer 2".
        what: String,
        /// The missing blob path or digest.
        path: String,
    },
    /// The import source is none of the formats the store understands.
    #[error("{path:?} is not an OCI image layout (directory or tar) nor a docker save archive")]
    UnknownFormat {
        /// The source path.
        path: PathBuf,
    },
    /// A JSON document of the image could not be parsed.
    #[error("parsing {what}")]
    Json {
        /// Which document, e.g. "manifest sha256:…".
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An image document is well-formed JSON but not a valid image description.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which document or field.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More layers than the store accepts; refused before any work.
    #[error("image has {count} layers, more than the maximum of {max}")]
    TooManyLayers {
        /// Layers in the manifest.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A document is larger than the store reads into memory.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// Which document.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// No manifest of an index matches this node's platform.
    #[error("no manifest in {what} for platform {os}/{arch}")]
    NoMatchingPlatform {
        /// The index concerned.
        what: String,
        /// Wanted OS.
        os: String,
        /// Wanted architecture.
        arch: String,
    },
    /// A layer entry has an absolute path.
    #[error("layer entry {entry:?} has an absolute path")]
    AbsolutePath {
        /// The entry's path as stored in the tar.
        entry: String,
    },
    /// A layer entry's path contains a `..` component.
    #[error("layer entry {entry:?} has a \"..\" component")]
    ParentComponent {
        /// The entry's path as stored in the tar.
        entry: String,
    },
    /// A layer entry would be created through a symlink.
    #[error("layer entry {entry:?} goes through symlink {component:?}")]
    SymlinkInPath {
        /// The entry's path as stored in the tar.
        entry: String,
        /// The path prefix that is a symlink.
        component: String,
    },
    /// A parent of a layer entry exists and is not a directory.
    #[error("layer entry {entry:?}: parent {component:?} is not a directory")]
    NotADirectory {
        /// The entry's path as stored in the tar.
        entry: String,
        /// The path prefix that is not a directory.
        component: String,
    },
    /// A hardlink entry's target is refused.
    #[error("hardlink {entry:?} to {target:?} refused: {reason}")]
    HardlinkTarget {
        /// The link's path.
        entry: String,
        /// Its target as stored in the tar.
        target: String,
        /// Why it is refused.
        reason: String,
    },
    /// A device node that is not a 0/0 whiteout.
    #[error(
        "layer entry {entry:?} is a {kind} device {major}:{minor}; device nodes are not allowed in images"
    )]
    DeviceNode {
        /// The entry's path.
        entry: String,
        /// "character" or "block".
        kind: &'static str,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A tar entry type the store does not unpack.
    #[error("layer entry {entry:?} has unsupported type {kind}")]
    UnsupportedEntry {
        /// The entry's path.
        entry: String,
        /// The tar type flag, described.
        kind: String,
    },
    /// Creating or updating one layer entry failed.
    #[error("{what} layer entry {entry:?}")]
    Entry {
        /// What was being done.
        what: &'static str,
        /// The entry's path.
        entry: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The layer stream could not be read: corrupt or truncated compression or tar data.
    #[error("reading the layer stream: corrupt or truncated data")]
    LayerStream {
        /// The decoder's or tar reader's error.
        #[source]
        source: io::Error,
    },
    /// The layer uses a compression the store does not read.
    #[error("unsupported layer compression {kind}")]
    UnsupportedCompression {
        /// What the magic bytes say.
        kind: &'static str,
    },
    /// Unpacking one layer failed; the source says why.
    #[error("unpacking layer {index} (blob {blob})")]
    Layer {
        /// Index of the layer in the manifest (0 = base).
        index: usize,
        /// The layer blob's digest.
        blob: Digest,
        /// The reason.
        #[source]
        source: Box<ImageError>,
    },
    /// A reference string is not a valid image reference.
    #[error("invalid reference {reference:?}: {reason}")]
    InvalidReference {
        /// The string given.
        reference: String,
        /// Why it is refused.
        reason: String,
    },
    /// No image matches the name or id.
    #[error("no such image: {reference}")]
    NotFound {
        /// The name or id looked up.
        reference: String,
    },
    /// A short id matches more than one image.
    #[error("short id {prefix:?} matches more than one image")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
    },
    /// The image is used by a container and cannot be removed.
    #[error("image {reference} ({id}) is in use by a container")]
    InUse {
        /// The name or id given.
        reference: String,
        /// The image id.
        id: Digest,
    },
    /// Removal by id of an image that still has several names.
    #[error("image {id} is referenced by {names:?}; remove it by name")]
    MultipleNames {
        /// The image id.
        id: Digest,
        /// Its names.
        names: Vec<String>,
    },
}

impl ImageError {
    /// Shorthand for [`ImageError::Io`].
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`ImageError::Invalid`].
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The innermost store error, looking through [`ImageError::Layer`] wrappers.
    pub fn root_cause(&self) -> &ImageError {
        match self {
            ImageError::Layer { source, .. } => source.root_cause(),
            other => other,
        }
    }
}
