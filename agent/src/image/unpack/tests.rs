//! Unpack tests, as root on the real file system: formats, attributes, whiteouts, and every
//! hostile entry (each also proving nothing outside the layer directory changed).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::image::testutil::{E, gzip, sha, tar_of, zstd};

/// A layer directory nested inside a tree with a sentinel, so escapes have somewhere to land.
struct Scene {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    dest: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        std::fs::create_dir_all(base.join("sentinel/etc")).unwrap();
        std::fs::write(
            base.join("sentinel/etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(base.join("sentinel/keep"), "keep").unwrap();
        let dest = base.join("deep/er/layer");
        std::fs::create_dir_all(&dest).unwrap();
        Scene {
            _tmp: tmp,
            base,
            dest,
        }
    }

    /// Every path under the base except the layer dir, with size, mode and mtime.
    fn outside(&self) -> BTreeMap<PathBuf, (u64, u32, i64)> {
        let mut out = BTreeMap::new();
        let mut todo = vec![self.base.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p == self.dest {
                    continue;
                }
                let m = std::fs::symlink_metadata(&p).unwrap();
                out.insert(p.clone(), (m.len(), m.mode(), m.mtime()));
                if m.is_dir() {
                    todo.push(p);
                }
            }
        }
        out
    }

    fn unpack(&self, blob: &[u8]) -> Result<UnpackedLayer, ImageError> {
        unpack_layer(blob, &self.dest)
    }
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: p and k are NUL-terminated; buf is writable for buf.len() bytes.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn basic_entries() -> Vec<E> {
    vec![
        E::Dir("bin/"),
        E::File("bin/tool", b"#!/bin/sh\necho hi\n"),
        E::File("etc/deep/nested/file", b"implicit parents"),
        E::Symlink("bin/sh", "/bin/tool"),
    ]
}

#[test]
fn plain_gzip_and_zstd_layers_unpack_with_both_digests() {
    let tar = tar_of(&basic_entries());
    for (blob, kind) in [
        (tar.clone(), Compression::None),
        (gzip(&tar), Compression::Gzip),
        (zstd(&tar), Compression::Zstd),
    ] {
        let s = Scene::new();
        let got = s.unpack(&blob).unwrap();
        assert_eq!(got.compression, kind);
        assert_eq!(
            got.diff_id,
            sha(&tar),
            "diff_id is the uncompressed tar's digest"
        );
        assert_eq!(got.blob_digest, sha(&blob));
        assert_eq!(got.blob_size, blob.len() as u64);
        assert_eq!(
            std::fs::read(s.dest.join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(s.dest.join("etc/deep/nested/file")).unwrap(),
            b"implicit parents"
        );
        assert_eq!(
            std::fs::read_link(s.dest.join("bin/sh")).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(got.unpacked_bytes, 18 + 16);
    }
}

#[test]
fn owner_mode_setuid_mtime_and_xattrs_are_preserved() {
    let s = Scene::new();
    let blob = tar_of(&[
        E::DirMode("opt/", 0o750, 1_600_000_000),
        E::FileAttrs {
            path: "opt/suid",
            data: b"x",
            mode: 0o4755,
            uid: 1000,
            gid: 1001,
            mtime: 1_500_000_000,
        },
        E::FileXattr("opt/caps", b"y", "user.berth", b"value"),
        E::FileXattr("opt/sneaky", b"z", "trusted.overlay.redirect", b"/etc"),
        E::Fifo("opt/pipe"),
    ]);
    s.unpack(&blob).unwrap();
    let m = std::fs::metadata(s.dest.join("opt/suid")).unwrap();
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o4755,
        "setuid survives chown"
    );
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(m.mtime(), 1_500_000_000);
    let d = std::fs::metadata(s.dest.join("opt")).unwrap();
    assert_eq!(d.permissions().mode() & 0o7777, 0o750);
    assert_eq!(
        d.mtime(),
        1_600_000_000,
        "directory mtime set after its children"
    );
    assert_eq!(
        xattr(&s.dest.join("opt/caps"), "user.berth").as_deref(),
        Some(&b"value"[..])
    );
    assert_eq!(
        xattr(&s.dest.join("opt/sneaky"), "trusted.overlay.redirect"),
        None,
        "overlay xattrs are not taken from layers"
    );
    let p = std::fs::symlink_metadata(s.dest.join("opt/pipe")).unwrap();
    assert!(p.file_type().is_fifo());
    assert_eq!(p.permissions().mode() & 0o7777, 0o640);
}

#[test]
fn whiteouts_become_overlay_devices_and_opaque_xattrs() {
    let s = Scene::new();
    let blob = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/.wh.gone", b""),
        E::File("srv/old/.wh..wh..opq", b""),
        E::File("srv/old/fresh", b"new"),
        E::File("x/.wh..wh.plnk", b""),
    ]);
    s.unpack(&blob).unwrap();
    let w = std::fs::symlink_metadata(s.dest.join("etc/gone")).unwrap();
    assert!(
        w.file_type().is_char_device(),
        "whiteout is a character device"
    );
    assert_eq!(w.rdev(), 0, "whiteout is device 0/0");
    assert!(
        !s.dest.join("etc/.wh.gone").exists(),
        "the .wh. file itself is not materialised"
    );
    assert_eq!(
        xattr(&s.dest.join("srv/old"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!s.dest.join("srv/old/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(s.dest.join("srv/old/fresh")).unwrap(), b"new");
    assert!(
        !s.dest.join("x/.wh..wh.plnk").exists(),
        "aufs bookkeeping is skipped"
    );
}

#[test]
fn hardlinks_inside_the_layer_share_the_inode() {
    let s = Scene::new();
    s.unpack(&tar_of(&[
        E::File("a/orig", b"data"),
        E::Hardlink("b/link", "a/orig"),
        E::Hardlink("c", "./a/orig"),
    ]))
    .unwrap();
    let a = std::fs::metadata(s.dest.join("a/orig")).unwrap();
    assert_eq!(
        std::fs::metadata(s.dest.join("b/link")).unwrap().ino(),
        a.ino()
    );
    assert_eq!(std::fs::metadata(s.dest.join("c")).unwrap().ino(), a.ino());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let s = Scene::new();
    s.unpack(&tar_of(&[
        E::File("f", b"one"),
        E::File("f", b"two"),
        E::Dir("d/"),
        E::File("d/child", b"c"),
        E::Dir("d/"),
        E::Symlink("s", "/nowhere"),
        E::File("s", b"file now"),
        E::File("x", b"file"),
        E::Dir("x/"),
    ]))
    .unwrap();
    assert_eq!(std::fs::read(s.dest.join("f")).unwrap(), b"two");
    assert!(
        s.dest.join("d/child").exists(),
        "dir over dir keeps children"
    );
    assert_eq!(
        std::fs::read(s.dest.join("s")).unwrap(),
        b"file now",
        "the symlink was replaced, not followed"
    );
    assert!(
        std::fs::symlink_metadata(s.dest.join("x"))
            .unwrap()
            .is_dir()
    );
}

/// Unpacks a hostile layer; asserts it fails with `check` and nothing outside changed.
fn refused(entries: &[E], check: impl Fn(&ImageError) -> bool) {
    let s = Scene::new();
    let before = s.outside();
    let err = s
        .unpack(&tar_of(entries))
        .expect_err("hostile layer must be refused");
    assert!(check(&err), "unexpected error for {entries:?}: {err:?}");
    assert!(!err.to_string().is_empty());
    assert_eq!(
        s.outside(),
        before,
        "nothing outside the layer directory may change ({entries:?})"
    );
}

#[test]
fn parent_dir_components_are_refused() {
    refused(
        &[E::File("../x", b"evil")],
        |e| matches!(e, ImageError::ParentComponent { entry } if entry == "../x"),
    );
    refused(&[E::Dir("a/"), E::File("a/../../x", b"evil")], |e| {
        matches!(e, ImageError::ParentComponent { .. })
    });
    refused(
        &[
            E::Symlink("ok", "x"),
            E::Hardlink("h", "../../../sentinel/keep"),
        ],
        |e| matches!(e, ImageError::HardlinkTarget { reason, .. } if reason.contains("..")),
    );
}

#[test]
fn absolute_paths_are_refused() {
    refused(
        &[E::File("/etc/x", b"evil")],
        |e| matches!(e, ImageError::AbsolutePath { entry } if entry == "/etc/x"),
    );
    refused(
        &[E::Hardlink("evil", "/etc/passwd")],
        |e| matches!(e, ImageError::HardlinkTarget { reason, .. } if reason.contains("absolute")),
    );
}

#[test]
fn writes_through_symlinks_are_refused() {
    refused(
        &[
            E::Symlink("link", "../../.."),
            E::File("link/file", b"evil"),
        ],
        |e| matches!(e, ImageError::SymlinkInPath { entry, component } if entry == "link/file" && component == "link"),
    );
    refused(
        &[E::Symlink("link", "/etc"), E::File("link/x", b"evil")],
        |e| matches!(e, ImageError::SymlinkInPath { .. }),
    );
    refused(
        &[
            E::Dir("a/"),
            E::Symlink("a/b", "../../../sentinel"),
            E::Dir("a/b/c/"),
            E::File("a/b/c/d", b"x"),
        ],
        |e| matches!(e, ImageError::SymlinkInPath { component, .. } if component == "a/b"),
    );
    // A whiteout that would delete through a symlink.
    refused(
        &[
            E::Symlink("link", "../../../sentinel"),
            E::File("link/.wh.keep", b""),
        ],
        |e| matches!(e, ImageError::SymlinkInPath { .. }),
    );
    // An opaque marker that would set an xattr through a symlink.
    refused(
        &[
            E::Symlink("link", "../../../sentinel"),
            E::File("link/.wh..wh..opq", b""),
        ],
        |e| matches!(e, ImageError::SymlinkInPath { .. }),
    );
}

#[test]
fn hardlinks_through_symlinks_or_to_missing_targets_are_refused() {
    refused(
        &[
            E::Symlink("link", "../../../sentinel"),
            E::Hardlink("evil", "link/keep"),
        ],
        |e| matches!(e, ImageError::HardlinkTarget { reason, .. } if reason.contains("symlink")),
    );
    refused(
        &[E::Hardlink("evil", "missing")],
        |e| matches!(e, ImageError::HardlinkTarget { reason, .. } if reason.contains("does not exist")),
    );
    refused(
        &[E::Dir("d/"), E::Hardlink("evil", "d")],
        |e| matches!(e, ImageError::HardlinkTarget { reason, .. } if reason.contains("directory")),
    );
}

#[test]
fn device_nodes_are_refused_but_0_0_is_a_whiteout() {
    refused(
        &[E::Dir("dev/"), E::Char("dev/mem", 1, 1)],
        |e| matches!(e, ImageError::DeviceNode { entry, kind: "character", major: 1, minor: 1 } if entry == "dev/mem"),
    );
    refused(&[E::Block("dev/sda", 8, 0)], |e| {
        matches!(e, ImageError::DeviceNode { kind: "block", .. })
    });
    let s = Scene::new();
    s.unpack(&tar_of(&[E::Char("gone", 0, 0)])).unwrap();
    let m = std::fs::symlink_metadata(s.dest.join("gone")).unwrap();
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
}

#[test]
fn whiteout_of_parent_is_refused() {
    refused(&[E::File(".wh...", b"")], |e| {
        matches!(e, ImageError::Invalid { .. })
    });
}

#[test]
fn truncated_gzip_is_a_stream_error() {
    let s = Scene::new();
    let blob = gzip(&tar_of(&basic_entries()));
    let err = s.unpack(&blob[..blob.len() / 2]).unwrap_err();
    assert!(matches!(err, ImageError::LayerStream { .. }), "{err:?}");
    // Cut just before the trailer: all data present, CRC and size missing.
    let s = Scene::new();
    let err = s.unpack(&blob[..blob.len() - 4]).unwrap_err();
    assert!(matches!(err, ImageError::LayerStream { .. }), "{err:?}");
}

#[test]
fn corrupt_zstd_is_a_stream_error() {
    let s = Scene::new();
    let mut blob = zstd(&tar_of(&basic_entries()));
    let mid = blob.len() / 2;
    for b in &mut blob[mid..mid + 8] {
        *b ^= 0xa5;
    }
    let err = s.unpack(&blob).unwrap_err();
    assert!(matches!(err, ImageError::LayerStream { .. }), "{err:?}");
    let s = Scene::new();
    let blob = zstd(&tar_of(&basic_entries()));
    let err = s.unpack(&blob[..blob.len() - 3]).unwrap_err();
    assert!(
        matches!(err, ImageError::LayerStream { .. }),
        "truncated zstd: {err:?}"
    );
}

#[test]
fn unsupported_compressions_are_named() {
    let s = Scene::new();
    let err = s.unpack(b"BZh91AY&SY").unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedCompression { kind: "bzip2" }),
        "{err:?}"
    );
}
