//! Store tests, as root on the real file system, with in-memory fixtures in every format.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::image::testutil::{E, Fixture, L, gzip, sha};

struct Env {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    store_root: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        std::fs::create_dir_all(base.join("sentinel")).unwrap();
        std::fs::write(base.join("sentinel/keep"), "keep").unwrap();
        let store_root = base.join("store");
        Env {
            _tmp: tmp,
            base,
            store_root,
        }
    }

    fn store(&self) -> ImageStore {
        ImageStore::open(&self.store_root).unwrap()
    }

    /// Writes `files` as a directory (`dir`) or tar (anything else) next to the store.
    fn source(&self, name: &str, files: &BTreeMap<String, Vec<u8>>) -> PathBuf {
        let p = self.base.join(name);
        if name.ends_with(".tar") {
            Fixture::write_tar(files, &p);
        } else if name.ends_with(".tar.zst") {
            let plain = self.base.join(format!("{name}.plain"));
            Fixture::write_tar(files, &plain);
            std::fs::write(
                &p,
                crate::image::testutil::zstd(&std::fs::read(&plain).unwrap()),
            )
            .unwrap();
        } else if name.ends_with(".tar.gz") {
            let plain = self.base.join(format!("{name}.plain"));
            Fixture::write_tar(files, &plain);
            std::fs::write(&p, gzip(&std::fs::read(&plain).unwrap())).unwrap();
        } else {
            Fixture::write_dir(files, &p);
        }
        p
    }

    fn count(&self, sub: &str) -> usize {
        std::fs::read_dir(self.store_root.join(sub))
            .unwrap()
            .count()
    }

    fn sentinel_intact(&self) {
        assert_eq!(
            std::fs::read_to_string(self.base.join("sentinel/keep")).unwrap(),
            "keep"
        );
        assert_eq!(
            std::fs::read_dir(self.base.join("sentinel"))
                .unwrap()
                .count(),
            1
        );
    }
}

fn base_layer() -> L {
    L::gz(&[
        E::Dir("bin/"),
        E::File("bin/busybox", b"not really busybox"),
        E::Symlink("bin/sh", "busybox"),
        E::File("etc/to-be-deleted", b"bye"),
    ])
}

fn top_layer() -> L {
    L::zst(&[
        E::File("etc/.wh.to-be-deleted", b""),
        E::File("srv/.wh..wh..opq", b""),
        E::File("srv/new", b"n"),
    ])
}

fn two_layer(name: &str) -> Fixture {
    Fixture::new(name, vec![base_layer(), top_layer()])
}

#[test]
fn imports_every_format_and_lays_out_layers() {
    let env = Env::new();
    let store = env.store();
    let f = two_layer("example.com/app:1");
    let sources = [
        env.source("oci-dir", &f.oci_files()),
        env.source("oci.tar", &f.oci_files()),
        env.source("oci.tar.gz", &f.oci_files()),
        env.source("oci.tar.zst", &f.oci_files()),
        env.source("docker25.tar", &f.docker25_files()),
        env.source("docker.tar", &f.docker_files()),
        env.source("docker-dir", &f.docker_files()),
    ];
    let config_digest = sha(&f.config());
    for src in &sources {
        let imgs = store
            .import(src)
            .unwrap_or_else(|e| panic!("importing {src:?}: {e:?}"));
        assert_eq!(imgs.len(), 1);
        let img = &imgs[0];
        assert_eq!(img.id, config_digest, "{src:?}");
        assert_eq!(img.repo_tags, vec!["example.com/app:1"]);
        assert_eq!(img.layers.len(), 2);
        assert_eq!(img.layers[0].diff_id, sha(&base_layer().tar));
        assert_eq!(img.config.cmd, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(img.config.env, vec!["PATH=/bin"]);
        assert_eq!(img.created.as_deref(), Some("2026-01-01T00:00:00Z"));
        let lowers = store.lower_dirs(img);
        assert_eq!(
            lowers[0],
            env.store_root
                .join("layers")
                .join(img.layers[1].chain_id.hex()),
            "topmost first"
        );
        assert_eq!(
            std::fs::read(lowers[1].join("bin/busybox")).unwrap(),
            b"not really busybox"
        );
        let wh = std::fs::symlink_metadata(lowers[0].join("etc/to-be-deleted")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    }
    // Same layers every time: unpacked once per ChainID.
    assert_eq!(env.count("layers"), 2);
    assert_eq!(store.list().len(), 1);
    assert_eq!(env.count("tmp"), 0, "work area is clean after imports");
    env.sentinel_intact();
}

#[test]
fn shared_layers_are_unpacked_once() {
    let env = Env::new();
    let store = env.store();
    let a = two_layer("a:1");
    let mut b = Fixture::new(
        "b:1",
        vec![base_layer(), L::plain(&[E::File("b-only", b"b")])],
    );
    b.cmd = vec!["/bin/b"];
    store.import(&env.source("a", &a.oci_files())).unwrap();
    let base_dir = store.inspect("a:1").unwrap().layers[0].path.clone();
    let ino = std::fs::metadata(&base_dir).unwrap().ino();
    store
        .import(&env.source("b.tar", &b.docker_files()))
        .unwrap();
    let ia = store.inspect("a:1").unwrap();
    let ib = store.inspect("b:1").unwrap();
    assert_ne!(ia.id, ib.id);
    assert_eq!(ia.layers[0].chain_id, ib.layers[0].chain_id);
    assert_eq!(ib.layers[0].path, base_dir);
    assert_eq!(
        std::fs::metadata(&base_dir).unwrap().ino(),
        ino,
        "shared layer was not unpacked again"
    );
    assert_eq!(env.count("layers"), 3);
}

#[test]
fn inspect_by_name_id_and_short_id() {
    let env = Env::new();
    let store = env.store();
    let f = Fixture::new("docker.io/library/busybox", vec![base_layer()]);
    let img = store
        .import(&env.source("x", &f.oci_files()))
        .unwrap()
        .remove(0);
    assert_eq!(
        img.repo_tags,
        vec!["busybox:latest"],
        "names are normalised"
    );
    for q in [
        "busybox".to_owned(),
        "busybox:latest".to_owned(),
        "docker.io/library/busybox:latest".to_owned(),
        img.id.to_string(),
        img.id.hex().to_owned(),
        img.short_id().to_owned(),
        format!("sha256:{}", &img.id.hex()[..8]),
        format!("busybox@{}", img.manifest_digest),
    ] {
        assert_eq!(store.inspect(&q).unwrap().id, img.id, "{q}");
    }
    assert!(matches!(
        store.inspect("busybox:other"),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        store.inspect("nothing"),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn short_ids_must_be_unique() {
    let mut idx = Index::default();
    for hex in [
        format!("aaa1{}", "0".repeat(60)),
        format!("aaa2{}", "0".repeat(60)),
    ] {
        let id = Digest::from_hex(&hex).unwrap();
        idx.images.insert(
            id.clone(),
            Image {
                id: id.clone(),
                repo_tags: Vec::new(),
                manifest_digest: id,
                config: ImageConfig::default(),
                layers: Vec::new(),
                size: 0,
                created: None,
            },
        );
    }
    assert!(matches!(
        idx.resolve("aaa"),
        Err(ImageError::Ambiguous { .. })
    ));
    assert!(idx.resolve("aaa1").is_ok());
}

#[test]
fn import_as_adds_a_name() {
    let env = Env::new();
    let store = env.store();
    let f = Fixture::new("latest", vec![base_layer()]);
    let img = store
        .import_as(&env.source("x", &f.oci_files()), "localhost:5000/mine:v2")
        .unwrap()
        .remove(0);
    assert_eq!(
        img.repo_tags,
        vec!["localhost:5000/mine:v2"],
        "a bare ref.name tag names no repository"
    );
}

#[test]
fn remove_refuses_in_use_untags_then_collects_garbage() {
    let env = Env::new();
    let store = env.store();
    let a = two_layer("a:1");
    let b = Fixture::new("b:1", vec![base_layer()]);
    let ia = store
        .import(&env.source("a", &a.oci_files()))
        .unwrap()
        .remove(0);
    store.import(&env.source("b", &b.oci_files())).unwrap();
    store.tag("a:1", "a:2").unwrap();

    let err = store.remove(&ia.id.to_string(), &|_| false).unwrap_err();
    assert!(matches!(err, ImageError::MultipleNames { .. }), "{err:?}");

    let r = store.remove("a:2", &|_| true).unwrap();
    assert_eq!(r.untagged, vec!["a:2"]);
    assert_eq!(r.deleted, None, "another name remains: only untagged");

    let err = store.remove("a:1", &|id| id == &ia.id).unwrap_err();
    assert!(
        matches!(&err, ImageError::InUse { id, .. } if id == &ia.id),
        "{err:?}"
    );
    assert!(err.to_string().contains("in use"));
    assert!(store.inspect("a:1").is_ok());

    let r = store.remove("a:1", &|_| false).unwrap();
    assert_eq!(r.deleted.as_ref(), Some(&ia.id));
    assert_eq!(r.layers_removed, 1, "the shared base layer stays for b");
    assert!(store.inspect("a:1").is_err());
    assert!(ia.layers[0].path.is_dir());
    assert!(!ia.layers[1].path.exists());

    store.remove("b:1", &|_| false).unwrap();
    assert!(store.list().is_empty());
    assert_eq!(env.count("layers"), 0);
    assert_eq!(env.count("blobs/sha256"), 0);
    assert_eq!(env.count("tmp"), 0);
}

#[test]
fn index_survives_reopen_and_orphans_are_swept() {
    let env = Env::new();
    let id = {
        let store = env.store();
        store
            .import(&env.source("a", &two_layer("a:1").oci_files()))
            .unwrap()
            .remove(0)
            .id
    };
    let orphan = env.store_root.join("layers").join("f".repeat(64));
    std::fs::create_dir_all(orphan.join("half")).unwrap();
    std::fs::write(
        env.store_root.join("blobs/sha256").join("e".repeat(64)),
        "orphan",
    )
    .unwrap();
    std::fs::create_dir_all(env.store_root.join("tmp/999999999-0-layer/x")).unwrap();
    let store = env.store();
    let img = store.inspect("a:1").unwrap();
    assert_eq!(img.id, id);
    assert!(img.layers.iter().all(|l| l.path.is_dir()));
    assert!(!orphan.exists(), "layer dir no image references is swept");
    assert_eq!(
        env.count("blobs/sha256"),
        4,
        "manifest, config and two layer blobs remain"
    );
    assert_eq!(env.count("tmp"), 0, "a dead process's work files are swept");
}

/// Imports a hostile fixture; asserts the error and that the store holds nothing new.
fn refused(f: &Fixture, oci: bool, check: impl Fn(&ImageError) -> bool) {
    let env = Env::new();
    let store = env.store();
    let files = if oci { f.oci_files() } else { f.docker_files() };
    let err = store
        .import(&env.source(if oci { "src" } else { "src.tar" }, &files))
        .unwrap_err();
    assert!(check(&err), "unexpected error: {err:?}");
    assert!(store.list().is_empty());
    assert_eq!(env.count("layers"), 0, "no layer is left behind: {err:?}");
    assert_eq!(env.count("tmp"), 0, "no work file is left behind: {err:?}");
    env.sentinel_intact();
}

#[test]
fn digest_mismatch_is_refused() {
    let mut f = two_layer("bad:1");
    f.layer_digests = Some(vec![sha(&base_layer().blob), sha(b"something else")]);
    refused(
        &f,
        true,
        |e| matches!(e, ImageError::DigestMismatch { expected, .. } if expected == &sha(b"something else")),
    );
}

#[test]
fn diff_id_mismatch_is_refused() {
    let mut f = two_layer("bad:1");
    f.diff_ids = Some(vec![sha(&base_layer().tar), sha(b"not the tar")]);
    for oci in [true, false] {
        refused(&f, oci, |e| {
            matches!(e.root_cause(), ImageError::DiffIdMismatch { index: 1, .. })
        });
    }
}

#[test]
fn missing_blob_is_refused_before_any_work() {
    let mut f = two_layer("bad:1");
    f.omit = vec![sha(&top_layer().blob)];
    for oci in [true, false] {
        let env = Env::new();
        let store = env.store();
        let files = if oci { f.oci_files() } else { f.docker_files() };
        let err = store
            .import(&env.source(if oci { "src" } else { "src.tar" }, &files))
            .unwrap_err();
        assert!(matches!(err, ImageError::MissingBlob { .. }), "{err:?}");
        assert_eq!(env.count("blobs/sha256"), 0, "nothing was copied");
    }
}

#[test]
fn absurd_layer_count_is_refused_before_any_work() {
    let layer = L::gz(&[E::File("layer", b"one of many")]);
    let f = Fixture::new("many:1", vec![layer; DEFAULT_MAX_LAYERS + 1]);
    for oci in [true, false] {
        let env = Env::new();
        let store = env.store();
        let files = if oci { f.oci_files() } else { f.docker_files() };
        let err = store
            .import(&env.source(if oci { "src" } else { "src.tar" }, &files))
            .unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyLayers { count, max: DEFAULT_MAX_LAYERS } if count == DEFAULT_MAX_LAYERS + 1),
            "{err:?}"
        );
        assert_eq!(env.count("blobs/sha256"), 0, "nothing was copied");
    }
    // The cap is a setting.
    let env = Env::new();
    let store = ImageStore::open_with(
        &env.store_root,
        StoreOptions {
            max_layers: 1,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let err = store
        .import(&env.source("src", &two_layer("x:1").oci_files()))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::TooManyLayers { count: 2, max: 1 }),
        "{err:?}"
    );
}

#[test]
fn hostile_layers_are_refused_with_the_entry_named() {
    let cases: Vec<(Vec<E>, &str)> = vec![
        (vec![E::File("../x", b"evil")], "\"../x\""),
        (vec![E::File("/etc/x", b"evil")], "\"/etc/x\""),
        (
            vec![
                E::Symlink("link", "../../.."),
                E::File("link/file", b"evil"),
            ],
            "\"link/file\"",
        ),
        (vec![E::Hardlink("evil", "../../sentinel/keep")], "\"evil\""),
        (vec![E::Char("dev/mem", 1, 1)], "\"dev/mem\""),
    ];
    for (entries, named) in cases {
        let f = Fixture::new("hostile:1", vec![base_layer(), L::gz(&entries)]);
        refused(&f, true, |e| {
            let msg = e.root_cause().to_string();
            matches!(e, ImageError::Layer { index: 1, .. }) && msg.contains(named)
        });
    }
}

#[test]
fn docker_archive_symlinked_layers_are_followed() {
    let env = Env::new();
    let store = env.store();
    let f = Fixture::new("dup:1", vec![base_layer(), top_layer()]);
    let files = f.docker_files();
    // Docker <25 writes a repeated layer as a symlink to the first copy; emulate it in a dir.
    let dir = env.source("dup-dir", &files);
    let second = format!("{:064x}/layer.tar", 1);
    std::fs::remove_file(dir.join(&second)).unwrap();
    std::fs::write(dir.join("real.tar"), &top_layer().blob).unwrap();
    std::os::unix::fs::symlink("../real.tar", dir.join(&second)).unwrap();
    let img = store.import(&dir).unwrap().remove(0);
    assert_eq!(img.layers.len(), 2);
    assert!(Path::new(&img.layers[1].path).join("srv/new").exists());
}

#[test]
fn the_store_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<ImageStore>();
}

#[test]
fn other_platforms_in_the_index_are_skipped() {
    let env = Env::new();
    let store = env.store();
    let f = two_layer("multi:1");
    let mut files = f.oci_files();
    let mut index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifests = index["manifests"].as_array_mut().unwrap();
    manifests[0]["platform"] =
        serde_json::json!({"os": "linux", "architecture": crate::image::oci::host_architecture()});
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "d".repeat(64)), "size": 1,
        "platform": {"os": "linux", "architecture": "s390x"},
        "annotations": {"org.opencontainers.image.ref.name": "multi:1"}
    }));
    files.insert("index.json".into(), serde_json::to_vec(&index).unwrap());
    let imgs = store.import(&env.source("multi", &files)).unwrap();
    assert_eq!(
        imgs.len(),
        1,
        "the s390x manifest (whose blob is absent) is not read"
    );
    assert_eq!(
        imgs[0].config.architecture,
        crate::image::oci::host_architecture()
    );

    let only_other = ImageStore::open_with(
        &env.base.join("other"),
        StoreOptions {
            architecture: "riscv64".into(),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let err = only_other
        .import(&env.source("multi2", &files))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
}

#[test]
fn docker25_archives_are_read_through_manifest_json() {
    let mut f = two_layer("docker.io/library/app:25");
    let env = Env::new();
    let store = env.store();
    let mut files = f.docker25_files();
    // RepoTags win over index.json annotations: make the annotation say something else.
    let mut index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    index["manifests"][0]["annotations"] =
        serde_json::json!({"org.opencontainers.image.ref.name": "other:1"});
    files.insert("index.json".into(), serde_json::to_vec(&index).unwrap());
    let img = store
        .import(&env.source("d25.tar", &files))
        .unwrap()
        .remove(0);
    assert_eq!(img.repo_tags, vec!["app:25"]);
    // A layer whose blobs/sha256/<hex> path does not match its content is refused.
    f.layer_digests = Some(vec![sha(&base_layer().blob), sha(b"impostor")]);
    let env = Env::new();
    let err = env
        .store()
        .import(&env.source("bad.tar", &f.docker25_files()))
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, .. } if expected == &sha(b"impostor")),
        "{err:?}"
    );
}
