//! The agent's image store against the test-image builder, as root on the real kernel:
//! the busybox image imported in all three formats, layers shared by ChainID, overlay-native
//! whiteouts that a real overlay mount honours (and whose busybox runs by chroot), a 120-layer
//! image, and every hostile image refused without a write outside the store.

// Test code, helpers included: a panic with its location is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_agent::image::{Image, ImageError, ImageStore};
use berth_tests::image::hostile::{self, HostileEntries};
use berth_tests::image::{
    BuiltImage, DEFAULT_PATH, DEFAULT_REF, Entry, OutputFormat, RELEASE, TestImage,
};

const FORMATS: [OutputFormat; 3] = [
    OutputFormat::OciDir,
    OutputFormat::OciTar,
    OutputFormat::DockerArchive,
];

/// A temp dir holding a store (`store/`), import sources, and a sentinel tree that must never
/// change.
struct Scene {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::Builder::new()
            .prefix("berth-image-store-")
            .tempdir()
            .unwrap();
        let base = tmp.path().to_owned();
        std::fs::create_dir_all(base.join("sentinel/etc")).unwrap();
        std::fs::write(
            base.join("sentinel/etc/passwd"),
            "root:x:0:0::/root:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(base.join("sentinel/keep"), "keep\n").unwrap();
        let root = base.join("store");
        Scene {
            _tmp: tmp,
            base,
            root,
        }
    }

    fn store(&self) -> ImageStore {
        ImageStore::open(&self.root).unwrap()
    }

    /// Writes `image` in `format` under the scene's sources.
    fn write(&self, image: &BuiltImage, format: OutputFormat, name: &str) -> PathBuf {
        let srcs = self.base.join("sources");
        std::fs::create_dir_all(&srcs).unwrap();
        let path = srcs.join(format!("{name}-{format:?}"));
        image.write(format, &path).unwrap();
        path
    }

    fn count(&self, sub: &str) -> usize {
        std::fs::read_dir(self.root.join(sub)).unwrap().count()
    }

    /// Every path under the base except the store and the sources: (size, mode, mtime).
    fn outside(&self) -> BTreeMap<PathBuf, (u64, u32, i64)> {
        let mut out = BTreeMap::new();
        let mut todo = vec![self.base.clone()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p == self.root || p == self.base.join("sources") {
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
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: p and k are NUL-terminated; buf is writable for buf.len() bytes.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(usize::try_from(n).unwrap());
    Some(buf)
}

/// The checks every import of the default busybox image must pass.
fn check_busybox(store: &ImageStore, img: &Image, built: &BuiltImage) {
    assert_eq!(img.id.to_string(), built.config_digest().unwrap());
    assert_eq!(img.repo_tags, vec![DEFAULT_REF.to_string()]);
    assert_eq!(img.layers.len(), 3);
    for (l, b) in img.layers.iter().zip(&built.layers) {
        assert_eq!(l.diff_id.to_string(), b.diff_id);
    }
    assert!(img.config.env.contains(&DEFAULT_PATH.to_string()));
    assert!(img.config.env.contains(&"BERTH_TEST=1".to_string()));
    assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(img.config.working_dir.as_deref(), Some("/"));
    assert_eq!(img.config.architecture, "amd64");

    let lowers = store.lower_dirs(img);
    assert_eq!(lowers.len(), 3);
    let (top, files, base) = (&lowers[0], &lowers[1], &lowers[2]);
    let bb = std::fs::metadata(base.join("bin/busybox")).unwrap();
    assert!(
        bb.permissions().mode() & 0o111 != 0,
        "busybox is executable"
    );
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let tmp = std::fs::metadata(base.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    let home = std::fs::metadata(base.join("home/berth")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert!(files.join("etc/to-be-deleted").is_file());
    let wh = std::fs::symlink_metadata(top.join("etc/to-be-deleted")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(wh.rdev(), 0, "whiteout is 0/0");
    assert_eq!(
        xattr(&top.join("srv/old"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..]),
        "opaque marker became the overlay xattr"
    );
    assert!(!top.join("srv/old/.wh..wh..opq").exists());
    assert!(!top.join("etc/.wh.to-be-deleted").exists());
}

#[test]
fn busybox_imports_in_all_three_formats() {
    let scene = Scene::new();
    let built = TestImage::busybox(DEFAULT_REF).build().unwrap();
    let shared = scene.store();
    for format in FORMATS {
        let src = scene.write(&built, format, "busybox");
        // A fresh store per format, and one store that gets all three.
        let own = ImageStore::open(&scene.base.join(format!("own-{format:?}"))).unwrap();
        for store in [&own, &shared] {
            let imgs = store
                .import(&src)
                .unwrap_or_else(|e| panic!("importing {format:?}: {e:?}"));
            assert_eq!(imgs.len(), 1);
            check_busybox(store, &imgs[0], &built);
            assert_eq!(store.inspect(DEFAULT_REF).unwrap().id, imgs[0].id);
        }
    }
    assert_eq!(shared.list().len(), 1, "three formats, one image");
    assert_eq!(scene.count("layers"), 3, "each layer unpacked once");
    assert_eq!(scene.count("tmp"), 0);
}

#[test]
fn layers_shared_by_two_images_are_unpacked_once() {
    let scene = Scene::new();
    let store = scene.store();
    let a = TestImage::busybox("berth-test/a:1").build().unwrap();
    let b = TestImage::busybox("berth-test/b:1")
        .extra_layer([Entry::file("etc/b-only", "b\n")])
        .build()
        .unwrap();
    store
        .import(&scene.write(&a, OutputFormat::OciDir, "a"))
        .unwrap();
    let base = store.inspect("berth-test/a:1").unwrap().layers[0]
        .path
        .clone();
    let ino = std::fs::metadata(&base).unwrap().ino();
    store
        .import(&scene.write(&b, OutputFormat::DockerArchive, "b"))
        .unwrap();
    let (ia, ib) = (
        store.inspect("berth-test/a:1").unwrap(),
        store.inspect("berth-test/b:1").unwrap(),
    );
    assert_ne!(ia.id, ib.id);
    for i in 0..3 {
        assert_eq!(ia.layers[i].chain_id, ib.layers[i].chain_id);
        assert_eq!(ia.layers[i].path, ib.layers[i].path);
    }
    assert_eq!(scene.count("layers"), 4, "3 shared + 1 of b");
    assert_eq!(
        std::fs::metadata(&base).unwrap().ino(),
        ino,
        "not unpacked again"
    );

    // Removing one keeps what the other uses.
    let r = store.remove("berth-test/b:1", &|_| false).unwrap();
    assert_eq!(r.layers_removed, 1);
    assert_eq!(scene.count("layers"), 3);
    let err = store
        .remove("berth-test/a:1", &|id| id == &ia.id)
        .unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err:?}");
    store.remove("berth-test/a:1", &|_| false).unwrap();
    assert_eq!(scene.count("layers"), 0);
    assert_eq!(scene.count("blobs/sha256"), 0);
}

#[test]
fn overlay_of_the_lower_dirs_is_the_image_filesystem() {
    let scene = Scene::new();
    let store = scene.store();
    let built = TestImage::busybox(DEFAULT_REF).build().unwrap();
    let img = store
        .import(&scene.write(&built, OutputFormat::OciTar, "busybox"))
        .unwrap()
        .remove(0);
    let lowers: Vec<String> = store
        .lower_dirs(&img)
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    let mnt = scene.base.join("mnt");
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(mnt.join(d)).unwrap();
    }
    let merged = mnt.join("merged");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        mnt.join("upper").display(),
        mnt.join("work").display()
    );
    // A private mount namespace: the mount dies with the child, nothing leaks to the host.
    let script = r#"set -e
m="$1"
mount -t overlay overlay -o "$2" "$m"
test ! -e "$m/etc/to-be-deleted" || { echo "whiteout ignored"; exit 10; }
test "$(ls -A "$m/srv/old")" = "fresh.txt" || { echo "opaque ignored: $(ls -A "$m/srv/old")"; exit 11; }
test -f "$m/srv/www/index.html" || { echo "lower file missing"; exit 12; }
chroot "$m" /bin/busybox cat /etc/berth-release
chroot "$m" /bin/sh -c 'echo "uid=$(id -u) sh works"'
"#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&merged)
        .arg(&opts)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "overlay check failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, format!("{RELEASE}uid=0 sh works\n"));
    assert!(
        std::fs::read_dir(&merged).unwrap().next().is_none(),
        "the mount stayed in the child's namespace"
    );
    // The image layers were not written through the overlay.
    assert!(
        std::fs::read_dir(mnt.join("upper"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn a_120_layer_image_imports() {
    let scene = Scene::new();
    let store = scene.store();
    let built = TestImage::busybox("berth-test/tall:120")
        .layers(120)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let img = store
        .import(&scene.write(&built, OutputFormat::OciDir, "tall"))
        .unwrap()
        .remove(0);
    eprintln!("imported 120 layers in {:?}", started.elapsed());
    assert_eq!(img.layers.len(), 120);
    let lowers = store.lower_dirs(&img);
    assert_eq!(lowers.len(), 120);
    assert!(lowers[0].join("pad/119").is_file(), "topmost first");
    assert!(lowers[119].join("bin/busybox").is_file());
    assert_eq!(scene.count("layers"), 120);
}

/// Imports `image` in `format`; asserts `check` on the error, and that neither the store nor
/// anything outside it kept a trace.
fn refused(image: &BuiltImage, format: OutputFormat, check: impl Fn(&ImageError) -> bool) {
    for host_path in ["/etc/x", "/x", "/etc/impostor"] {
        assert!(
            !Path::new(host_path).exists(),
            "{host_path} exists before the test"
        );
    }
    let scene = Scene::new();
    let store = scene.store();
    let before = scene.outside();
    let src = scene.write(image, format, "hostile");
    let err = store.import(&src).unwrap_err();
    assert!(
        check(&err),
        "unexpected error importing {} as {format:?}: {err:?}",
        image.reference
    );
    assert!(!err.to_string().is_empty());
    assert!(store.list().is_empty());
    assert_eq!(scene.count("layers"), 0, "no layer left behind: {err:?}");
    assert_eq!(scene.count("tmp"), 0, "no work file left behind: {err:?}");
    assert_eq!(scene.outside(), before, "nothing outside the store changed");
    for host_path in ["/etc/x", "/x", "/etc/impostor"] {
        assert!(!Path::new(host_path).exists(), "{host_path} was written");
    }
}

#[test]
fn hostile_entries_are_refused_in_every_format() {
    for which in HostileEntries::ALL {
        let expect = |e: &ImageError| {
            let e = e.root_cause();
            match which {
                HostileEntries::ParentDir | HostileEntries::NestedParentDir => {
                    matches!(e, ImageError::ParentComponent { .. })
                }
                HostileEntries::AbsolutePath => matches!(e, ImageError::AbsolutePath { .. }),
                HostileEntries::SymlinkEscape
                | HostileEntries::AbsoluteSymlinkEscape
                | HostileEntries::WhiteoutThroughSymlink => {
                    matches!(e, ImageError::SymlinkInPath { component, .. } if component == "link")
                }
                HostileEntries::HardlinkEscape | HostileEntries::AbsoluteHardlink => {
                    matches!(e, ImageError::HardlinkTarget { entry, .. } if entry == "evil")
                }
                HostileEntries::CharDevice | HostileEntries::BlockDevice => {
                    matches!(e, ImageError::DeviceNode { .. })
                }
                HostileEntries::WhiteoutOfParent => matches!(e, ImageError::Invalid { .. }),
            }
        };
        let alone = hostile::raw_entries("berth-test/hostile:1", which.entries()).unwrap();
        let on_busybox =
            hostile::busybox_with_raw_entries("berth-test/hostile:2", which.entries()).unwrap();
        for format in FORMATS {
            refused(&alone, format, |e| expect(e));
            refused(&on_busybox, format, |e| {
                matches!(e, ImageError::Layer { index: 3, .. }) && expect(e)
            });
        }
    }
}

#[test]
fn hostile_blobs_are_refused() {
    let oci = [OutputFormat::OciDir, OutputFormat::OciTar];
    let mismatch = hostile::digest_mismatch("berth-test/bad:digest").unwrap();
    let diff_id = hostile::diff_id_mismatch("berth-test/bad:diffid").unwrap();
    let truncated = hostile::truncated_gzip("berth-test/bad:truncated").unwrap();
    for format in oci {
        refused(&mismatch, format, |e| {
            matches!(e, ImageError::DigestMismatch { .. })
        });
        refused(&truncated, format, |e| {
            matches!(e, ImageError::Layer { index: 2, .. })
                && matches!(e.root_cause(), ImageError::LayerStream { .. })
        });
    }
    for format in FORMATS {
        refused(&diff_id, format, |e| {
            matches!(e.root_cause(), ImageError::DiffIdMismatch { index: 2, .. })
        });
    }
}

#[test]
fn missing_blobs_and_absurd_layer_counts_are_refused_before_any_work() {
    let missing = hostile::missing_blob("berth-test/bad:missing").unwrap();
    let absurd = hostile::absurd_layer_count("berth-test/bad:absurd", 1000).unwrap();
    for format in FORMATS {
        refused(&missing, format, |e| {
            matches!(e, ImageError::MissingBlob { .. })
        });
        refused(&absurd, format, |e| {
            matches!(e, ImageError::TooManyLayers { count: 1000, .. })
        });
    }
    // "Before any work": not one blob was copied.
    let scene = Scene::new();
    let store = scene.store();
    for (image, name) in [(&missing, "missing"), (&absurd, "absurd")] {
        let src = scene.write(image, OutputFormat::OciDir, name);
        assert!(store.import(&src).is_err());
        assert_eq!(scene.count("blobs/sha256"), 0, "{name}: nothing copied");
    }
}
