//! The node's image store: content-addressed blobs, unpacked layers shared by every container,
//! and the name → image index.
//!
//! Owns everything under the store root passed to [`ImageStore::open`]:
//!
//! ```text
//! <root>/blobs/sha256/<hex>   blobs exactly as imported (manifests, configs, layer blobs)
//! <root>/layers/<chain-hex>/  one unpacked layer per ChainID, used as an overlay lowerdir
//! <root>/images/index.json    image records and the reference → image id map
//! <root>/tmp/                 work area; entries are named `<pid>-<n>-…` and swept on open
//! ```
//!
//! Invariants:
//! - A blob's file name is the sha256 of its content: it is written to `tmp/`, hashed while it
//!   streams, and renamed into `blobs/` only when the digest matches.
//! - A layer directory is complete or absent: it is unpacked into `tmp/`, its diff_id checked
//!   against the image config, synced, and only then renamed to `layers/<chain-hex>`. It is
//!   never written again, so every container of every image that shares it reads the same
//!   directory through overlayfs.
//! - Unpacking never writes outside the layer being built: every entry is created relative to
//!   directory file descriptors opened component by component with `O_NOFOLLOW`, so a symlink
//!   in the layer can never redirect a write (see [`unpack`]).
//! - `images/index.json` is replaced atomically (temp file, fsync, rename).
//! - An image is only removed when the caller's `in_use` says no container uses it; layers
//!   and blobs no remaining image references are deleted with it.
//!
//! One [`ImageStore`] owns a root at a time (it sweeps unreferenced files when it opens).
//! Every method does blocking file I/O: async callers use `spawn_blocking`. Unpacking needs
//! root (mknod for whiteouts, `trusted.*` xattrs, chown).

mod digest;
mod error;
mod fsops;
mod import;
mod oci;
pub mod pull;
mod reference;
mod source;
mod store;
#[cfg(test)]
mod testutil;
pub mod unpack;

pub use digest::{Digest, chain_ids};
pub use error::ImageError;
pub use oci::{Healthcheck, ImageConfig};
pub use reference::Reference;
pub use store::{
    DEFAULT_MAX_LAYERS, Image, ImageId, ImageStore, LayerInfo, RemoveReport, StoreOptions,
};
