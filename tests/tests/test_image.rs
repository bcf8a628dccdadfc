//! Tests of the deterministic test-image builder (`berth_tests::image`): byte-identical rebuilds,
//! digests and diff_ids that match the bytes, a consistent `docker save` archive, the whiteout
//! layer's markers, hostile images that are broken in exactly the named way, the CLI — and a
//! naive reference applier (a test oracle, not product code) proving the layers stack into a
//! root filesystem whose busybox runs.

// Test code, helpers included: a panic with its location is the failure report (STYLE allows
// unwrap in tests; clippy's allow-unwrap-in-tests does not reach helper functions).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_tests::image::hostile::{self, HostileEntries};
use berth_tests::image::{
    BuiltImage, Compression, DEFAULT_REF, Entry, Healthcheck, TestImage, sha256_digest,
};
use serde_json::{Value, json};

/// Every file under `dir`, relative path → bytes.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Regular files of a tar archive, path → bytes.
fn tar_files(tar: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(tar);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
    }
    out
}

/// Entry names of a tar archive, in order.
fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let c = match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
        other => panic!("unexpected layer media type {other}"),
    };
    c.decompress(blob).unwrap()
}

/// An image exercising every builder option and all three compressions.
fn full_image() -> TestImage {
    TestImage::busybox("berth-test/full:v1")
        .extra_layer([
            Entry::executable("/usr/local/bin/hello", "#!/bin/sh\necho hello\n"),
            Entry::file("opt/app/data", vec![7u8; 5000]),
        ])
        .env("BERTH_EXTRA", "yes")
        .env("BERTH_TEST", "2")
        .entrypoint(["/bin/sh", "-c"])
        .cmd(["echo hi"])
        .workdir("/srv/www")
        .user("1000:1000")
        .healthcheck(
            Healthcheck::shell("wget -q -O- http://127.0.0.1/ || exit 1")
                .interval(Duration::from_secs(2))
                .timeout(Duration::from_millis(500))
                .start_period(Duration::from_secs(1))
                .start_interval(Duration::from_millis(100))
                .retries(3),
        )
        .label("berth.test", "full")
        .expose("8080/tcp")
        .stop_signal("SIGUSR1")
        .layer_compression(0, Compression::Zstd)
        .layer_compression(1, Compression::None)
        .layers(8)
}

/// Manifest and config of an OCI layout dir, following index.json.
fn read_layout(dir: &Path) -> (Value, Value, Value) {
    let blob = |digest: &str| -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
    };
    let index: Value = serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let desc = &index["manifests"][0];
    let manifest_bytes = blob(desc["digest"].as_str().unwrap());
    assert_eq!(desc["size"].as_u64().unwrap(), manifest_bytes.len() as u64);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    (index, manifest, config)
}

#[test]
fn builds_are_byte_identical_in_all_formats() {
    let makers: [fn() -> TestImage; 2] = [|| TestImage::busybox(DEFAULT_REF), full_image];
    for make in makers {
        let tmp = tempfile::tempdir().unwrap();
        let mut trees = Vec::new();
        let mut oci_tars = Vec::new();
        let mut docker = Vec::new();
        for round in 0..2 {
            let dir = tmp.path().join(format!("oci-{round}"));
            let built = make().write_oci_dir(&dir).unwrap();
            trees.push(read_tree(&dir));
            let oci_tar = tmp.path().join(format!("oci-{round}.tar"));
            make().write_oci_tar(&oci_tar).unwrap();
            oci_tars.push(fs::read(&oci_tar).unwrap());
            let archive = tmp.path().join(format!("docker-{round}.tar"));
            built.write_docker_archive(&archive).unwrap();
            docker.push(fs::read(&archive).unwrap());
        }
        assert_eq!(trees[0], trees[1], "OCI layout dirs differ");
        assert_eq!(oci_tars[0], oci_tars[1], "OCI layout tars differ");
        assert_eq!(docker[0], docker[1], "docker archives differ");
        // The layout tar carries exactly the files of the layout dir.
        assert_eq!(tar_files(&oci_tars[0]), trees[0]);
    }
}

#[test]
fn different_inputs_give_different_images() {
    let a = TestImage::busybox(DEFAULT_REF).build().unwrap();
    let b = TestImage::busybox(DEFAULT_REF)
        .env("X", "1")
        .build()
        .unwrap();
    assert_ne!(a.config_digest().unwrap(), b.config_digest().unwrap());
    assert_eq!(a.layers, b.layers, "config changes must not touch layers");
}

#[test]
fn manifest_digests_match_blobs_and_diff_ids_match_uncompressed_tars() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    full_image().write_oci_dir(&dir).unwrap();

    assert_eq!(
        fs::read_to_string(dir.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let (index, manifest, config) = read_layout(&dir);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "berth-test/full:v1"
    );
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );

    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), 8);
    assert_eq!(diff_ids.len(), 8);
    assert_eq!(config["history"].as_array().unwrap().len(), 8);
    assert_eq!(config["rootfs"]["type"], "layers");
    let mut media_types = Vec::new();
    for (desc, diff_id) in layers.iter().zip(diff_ids) {
        let digest = desc["digest"].as_str().unwrap();
        let blob = fs::read(
            dir.join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap();
        assert_eq!(sha256_digest(&blob), digest, "blob digest");
        assert_eq!(
            desc["size"].as_u64().unwrap(),
            blob.len() as u64,
            "blob size"
        );
        let media_type = desc["mediaType"].as_str().unwrap();
        let tar = decompress(media_type, &blob);
        assert_eq!(sha256_digest(&tar), diff_id.as_str().unwrap(), "diff_id");
        assert_ne!(
            media_type == "application/vnd.oci.image.layer.v1.tar",
            sha256_digest(&tar) != digest,
            "a compressed layer's digest differs from its diff_id, a plain one's does not"
        );
        media_types.push(media_type.rsplit('.').next().unwrap().to_string());
    }
    assert_eq!(
        media_types,
        [
            "tar+zstd", "tar", "tar+gzip", "tar+gzip", "tar+gzip", "tar+gzip", "tar+gzip",
            "tar+gzip"
        ]
    );

    let c = &config["config"];
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        c["Env"],
        json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "BERTH_TEST=2",
            "BERTH_EXTRA=yes"
        ])
    );
    assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], json!(["echo hi"]));
    assert_eq!(c["WorkingDir"], "/srv/www");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(
        c["Healthcheck"],
        json!({
            "Test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1/ || exit 1"],
            "Interval": 2_000_000_000u64,
            "Timeout": 500_000_000u64,
            "StartPeriod": 1_000_000_000u64,
            "StartInterval": 100_000_000u64,
            "Retries": 3
        })
    );
    assert_eq!(c["Labels"], json!({"berth.test": "full"}));
    assert_eq!(c["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(c["StopSignal"], "SIGUSR1");
}

#[test]
fn default_busybox_config() {
    let built = TestImage::busybox(DEFAULT_REF).build().unwrap();
    assert_eq!(built.layers.len(), 3);
    let c = &built.config["config"];
    assert_eq!(
        c["Env"],
        json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "BERTH_TEST=1"
        ])
    );
    assert_eq!(c["Cmd"], json!(["sh"]));
    assert_eq!(c["WorkingDir"], "/");
    assert!(c.get("Entrypoint").is_none());
    for layer in &built.layers {
        assert_eq!(
            layer.media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(&layer.blob[..2], &[0x1f, 0x8b], "gzip magic");
        assert_eq!(&layer.blob[4..8], &[0, 0, 0, 0], "gzip mtime is zero");
    }
    let zstd = TestImage::busybox(DEFAULT_REF)
        .compression(Compression::Zstd)
        .build()
        .unwrap();
    assert_eq!(
        &zstd.layers[0].blob[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "zstd magic"
    );
    assert_eq!(zstd.layers[0].diff_id, built.layers[0].diff_id);
}

#[test]
fn base_layer_has_busybox_applets_users_and_dirs() {
    let built = TestImage::busybox(DEFAULT_REF).build().unwrap();
    let mut archive = tar::Archive::new(built.layers[0].tar.as_slice());
    let mut links = BTreeMap::new();
    let mut modes = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let h = entry.header();
        assert_eq!(
            h.mtime().unwrap(),
            berth_tests::image::LAYER_MTIME,
            "{path}"
        );
        if let Some(target) = entry.link_name_bytes() {
            links.insert(
                path.clone(),
                String::from_utf8(target.into_owned()).unwrap(),
            );
        }
        modes.insert(
            path,
            (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
        );
    }
    for applet in [
        "sh", "ls", "cat", "echo", "true", "false", "sleep", "wget", "httpd", "nc", "id",
        "hostname", "ps", "mount", "env", "head", "tail", "grep", "seq", "dd", "yes", "mkdir",
        "rm", "touch", "stat", "wc", "kill", "unshare",
    ] {
        assert_eq!(
            links.get(&format!("bin/{applet}")).map(String::as_str),
            Some("busybox")
        );
    }
    assert_eq!(modes["bin/busybox"], (0o755, 0, 0));
    assert_eq!(modes["tmp/"], (0o1777, 0, 0));
    assert_eq!(modes["root/"], (0o700, 0, 0));
    assert_eq!(modes["home/berth/"], (0o755, 1000, 1000));
    let files = tar_files(&built.layers[0].tar);
    let passwd = String::from_utf8(files["etc/passwd"].clone()).unwrap();
    assert!(passwd.starts_with("root:x:0:0:"));
    assert!(passwd.contains("nobody:x:65534:65534:"));
    let group = String::from_utf8(files["etc/group"].clone()).unwrap();
    assert!(group.contains("root:x:0:") && group.contains("nobody:x:65534:"));
    assert_eq!(files["bin/busybox"], fs::read("/bin/busybox").unwrap());
}

#[test]
fn docker_archive_manifest_lists_existing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("image.tar");
    let built = full_image().write_docker_archive(&path).unwrap();
    let files = tar_files(&fs::read(&path).unwrap());

    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let manifest = manifest.as_array().unwrap();
    assert_eq!(manifest.len(), 1);
    let m = &manifest[0];
    assert_eq!(m["RepoTags"], json!(["berth-test/full:v1"]));
    let config_name = m["Config"].as_str().unwrap();
    let config_bytes = &files[config_name];
    assert_eq!(
        format!(
            "{}.json",
            sha256_digest(config_bytes).trim_start_matches("sha256:")
        ),
        config_name
    );
    let config: Value = serde_json::from_slice(config_bytes).unwrap();
    assert_eq!(config, built.config);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = m["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let name = layer.as_str().unwrap();
        assert!(name.ends_with("/layer.tar"), "{name}");
        let tar = files.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(sha256_digest(tar), diff_id.as_str().unwrap());
    }
    let repositories: Value = serde_json::from_slice(&files["repositories"]).unwrap();
    let top = layers
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .trim_end_matches("/layer.tar");
    assert_eq!(repositories, json!({"berth-test/full": {"v1": top}}));
}

#[test]
fn whiteout_layer_contains_whiteout_and_opaque_marker() {
    let built = TestImage::busybox(DEFAULT_REF).build().unwrap();
    let names = tar_names(&built.layers[2].tar);
    assert!(
        names.contains(&"etc/.wh.to-be-deleted".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"srv/old/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    // The lower layer really has what the whiteout and the opaque marker hide.
    let lower = tar_names(&built.layers[1].tar);
    for path in [
        "etc/to-be-deleted",
        "srv/old/stale.txt",
        "srv/old/sub/deep.txt",
    ] {
        assert!(
            lower.contains(&path.to_string()),
            "{path} not in layer 1: {lower:?}"
        );
    }
}

/// Test oracle: a naive applier for trusted layers, base first, flattening into `root`.
/// Opaque markers clear the directory's lower contents before the layer's own entries land;
/// `.wh.<name>` removes `<name>`. It trusts the paths (asserts they are relative, no `..`).
fn reference_apply(root: &Path, layer_tars: &[Vec<u8>]) {
    for tar in layer_tars {
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries: Vec<(String, tar::Header, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, e.header().clone(), data)
            })
            .collect();
        for (path, _, _) in &entries {
            assert!(
                !path.starts_with('/') && !path.split('/').any(|c| c == ".."),
                "{path}"
            );
            if let Some(dir) = path.strip_suffix(".wh..wh..opq") {
                let dir = root.join(dir);
                if dir.is_dir() {
                    for child in fs::read_dir(&dir).unwrap() {
                        let child = child.unwrap().path();
                        if child.symlink_metadata().unwrap().is_dir() {
                            fs::remove_dir_all(&child).unwrap();
                        } else {
                            fs::remove_file(&child).unwrap();
                        }
                    }
                }
            }
        }
        for (path, header, data) in entries {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if name == ".wh..wh..opq" {
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let target = root.join(dir).join(hidden);
                match target.symlink_metadata() {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&target).unwrap(),
                    Ok(_) => fs::remove_file(&target).unwrap(),
                    Err(_) => {}
                }
                continue;
            }
            let dest = root.join(path.trim_end_matches('/'));
            if let Ok(m) = dest.symlink_metadata()
                && !(m.is_dir() && header.entry_type().is_dir())
            {
                if m.is_dir() {
                    fs::remove_dir_all(&dest).unwrap();
                } else {
                    fs::remove_file(&dest).unwrap();
                }
            }
            let mut one = tar::Builder::new(Vec::new());
            let mut header = header;
            one.append_data(&mut header, &path, data.as_slice())
                .unwrap();
            let bytes = one.into_inner().unwrap();
            let mut archive = tar::Archive::new(bytes.as_slice());
            archive.set_preserve_permissions(true);
            archive.unpack(root).unwrap();
        }
    }
}

#[test]
fn reference_applier_yields_a_runnable_busybox_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    fs::create_dir(&root).unwrap();
    let built = TestImage::busybox(DEFAULT_REF).build().unwrap();
    let tars: Vec<Vec<u8>> = built.layers.iter().map(|l| l.tar.clone()).collect();
    reference_apply(&root, &tars);

    assert!(
        !root.join("etc/to-be-deleted").exists(),
        "whiteout not applied"
    );
    assert!(
        !root.join("srv/old/stale.txt").exists(),
        "opaque dir kept stale.txt"
    );
    assert!(!root.join("srv/old/sub").exists(), "opaque dir kept sub/");
    assert_eq!(
        fs::read_dir(root.join("srv/old")).unwrap().count(),
        1,
        "only fresh.txt is left in /srv/old"
    );
    assert!(root.join("srv/old/fresh.txt").is_file());
    assert_eq!(
        fs::read_to_string(root.join("etc/berth-release")).unwrap(),
        berth_tests::image::RELEASE
    );
    assert!(!root.join("etc/.wh.to-be-deleted").exists());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        PathBuf::from("busybox")
    );

    let status = Command::new(root.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(status.success(), "busybox true: {status}");
    // Through the applet symlink, so argv[0] selects the applet.
    let status = Command::new(root.join("bin/sh"))
        .args(["-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let out = Command::new(root.join("bin/busybox"))
        .args(["cat", root.join("srv/www/index.html").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        berth_tests::image::INDEX_HTML
    );
}

#[test]
fn layers_pads_to_the_requested_count() {
    let built = TestImage::busybox(DEFAULT_REF).layers(120).build().unwrap();
    assert_eq!(built.layers.len(), 120);
    assert_eq!(
        built.config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        120
    );
    let mut diff_ids: Vec<&str> = built.layers.iter().map(|l| l.diff_id.as_str()).collect();
    diff_ids.sort();
    diff_ids.dedup();
    assert_eq!(diff_ids.len(), 120, "pad layers are distinct");
    assert!(TestImage::busybox(DEFAULT_REF).layers(2).build().is_err());
}

#[test]
fn hostile_entries_are_written_verbatim() {
    for kind in HostileEntries::ALL {
        let want = kind.entries();
        let built = hostile::raw_entries("berth-test/hostile:latest", want.clone()).unwrap();
        assert_eq!(built.layers.len(), 1);
        let mut archive = tar::Archive::new(built.layers[0].tar.as_slice());
        let got: Vec<(Vec<u8>, Option<Vec<u8>>, tar::EntryType)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path_bytes().into_owned(),
                    e.link_name_bytes().map(|l| l.into_owned()),
                    e.header().entry_type(),
                )
            })
            .collect();
        let names: Vec<Vec<u8>> = want.iter().map(|e| e.path.as_bytes().to_vec()).collect();
        assert_eq!(
            got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
            names,
            "{kind:?}"
        );
        // Its OCI layout is self-consistent: the lie is only in the tar entries.
        let tmp = tempfile::tempdir().unwrap();
        built.write_oci_dir(tmp.path()).unwrap();
        let (_, manifest, _) = read_layout(tmp.path());
        assert_eq!(
            manifest["layers"][0]["digest"],
            built.layers[0].digest.as_str()
        );
    }

    let entries = |kind: HostileEntries| {
        let built = hostile::raw_entries("h:1", kind.entries()).unwrap();
        let mut archive = tar::Archive::new(std::io::Cursor::new(built.layers[0].tar.clone()));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                    e.link_name_bytes()
                        .map(|l| String::from_utf8(l.into_owned()).unwrap()),
                    h.entry_type(),
                    h.device_major().unwrap(),
                    h.device_minor().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let sym = entries(HostileEntries::SymlinkEscape);
    assert_eq!(sym[0].0, "link");
    assert_eq!(sym[0].1.as_deref(), Some("../../.."));
    assert_eq!(sym[0].2, tar::EntryType::Symlink);
    assert_eq!(sym[1].0, "link/file");
    let hard = entries(HostileEntries::HardlinkEscape);
    assert_eq!(hard[0].1.as_deref(), Some("../../etc/passwd"));
    assert_eq!(hard[0].2, tar::EntryType::Link);
    let dev = entries(HostileEntries::CharDevice);
    assert_eq!(dev[1].0, "dev/evil");
    assert_eq!(dev[1].2, tar::EntryType::Char);
    assert_eq!(
        (dev[1].3, dev[1].4),
        (Some(1), Some(1)),
        "not a 0/0 whiteout"
    );
    assert_eq!(entries(HostileEntries::ParentDir)[0].0, "../x");
    assert_eq!(entries(HostileEntries::AbsolutePath)[0].0, "/etc/x");

    let on_busybox =
        hostile::busybox_with_raw_entries("h:2", HostileEntries::ParentDir.entries()).unwrap();
    assert_eq!(on_busybox.layers.len(), 4);
    assert_eq!(tar_names(&on_busybox.layers[3].tar), ["../x"]);
}

fn layer_blob(dir: &Path, digest: &str) -> Option<Vec<u8>> {
    fs::read(
        dir.join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
    .ok()
}

fn write_layout(image: &BuiltImage) -> (tempfile::TempDir, Value, Value) {
    let tmp = tempfile::tempdir().unwrap();
    image.write_oci_dir(tmp.path()).unwrap();
    let (_, manifest, config) = read_layout(tmp.path());
    (tmp, manifest, config)
}

#[test]
fn digest_mismatch_layer_is_valid_but_misnamed() {
    let (tmp, manifest, _) = write_layout(&hostile::digest_mismatch("h:dm").unwrap());
    let top = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let digest = top["digest"].as_str().unwrap();
    let blob = layer_blob(tmp.path(), digest).expect("blob present");
    assert_ne!(sha256_digest(&blob), digest);
    assert_eq!(
        top["size"].as_u64().unwrap(),
        blob.len() as u64,
        "only the digest lies"
    );
    assert!(!tar_names(&Compression::Gzip.decompress(&blob).unwrap()).is_empty());
}

#[test]
fn diff_id_mismatch_layer_matches_its_digest_only() {
    let (tmp, manifest, config) = write_layout(&hostile::diff_id_mismatch("h:di").unwrap());
    let top = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let digest = top["digest"].as_str().unwrap();
    let blob = layer_blob(tmp.path(), digest).unwrap();
    assert_eq!(sha256_digest(&blob), digest);
    let tar = Compression::Gzip.decompress(&blob).unwrap();
    let diff_id = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_ne!(sha256_digest(&tar), diff_id.as_str().unwrap());
}

#[test]
fn truncated_gzip_layer_matches_its_digest_but_does_not_decompress() {
    let (tmp, manifest, _) = write_layout(&hostile::truncated_gzip("h:tr").unwrap());
    let top = manifest["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let digest = top["digest"].as_str().unwrap();
    let blob = layer_blob(tmp.path(), digest).unwrap();
    assert_eq!(sha256_digest(&blob), digest);
    assert_eq!(&blob[..2], &[0x1f, 0x8b]);
    assert!(Compression::Gzip.decompress(&blob).is_err());
}

#[test]
fn missing_blob_is_listed_but_absent() {
    let image = hostile::missing_blob("h:mb").unwrap();
    let (tmp, manifest, _) = write_layout(&image);
    let layers = manifest["layers"].as_array().unwrap();
    let missing: Vec<&str> = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .filter(|d| layer_blob(tmp.path(), d).is_none())
        .collect();
    assert_eq!(
        missing,
        [layers.last().unwrap()["digest"].as_str().unwrap()]
    );
    let docker = tar_files(&image.docker_archive().unwrap());
    let m: Value = serde_json::from_slice(&docker["manifest.json"]).unwrap();
    let absent = m[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !docker.contains_key(l.as_str().unwrap()))
        .count();
    assert_eq!(absent, 1);
}

#[test]
fn absurd_layer_count_lists_ten_thousand_layers() {
    let image = hostile::absurd_layer_count("h:many", 10_000).unwrap();
    let (tmp, manifest, config) = write_layout(&image);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 10_000);
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        10_000
    );
    assert_eq!(config["history"].as_array().unwrap().len(), 10_000);
    // One tiny blob, shared: index.json, oci-layout, manifest, config, layer.
    assert_eq!(read_tree(tmp.path()).len(), 5);
}

#[test]
fn cli_writes_the_same_bytes_as_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_berth-test-image");
    let built = TestImage::busybox("berth-test/cli:1").build().unwrap();
    for (format, expected) in [
        ("oci-tar", built.oci_tar().unwrap()),
        ("docker-archive", built.docker_archive().unwrap()),
    ] {
        let out = tmp.path().join(format);
        let output = Command::new(exe)
            .args(["--format", format, "--out", out.to_str().unwrap()])
            .args(["--ref", "berth-test/cli:1"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8(output.stdout).unwrap().trim(),
            built.manifest_digest().unwrap()
        );
        assert!(fs::read(&out).unwrap() == expected, "{format} differs");
    }
    let dir = tmp.path().join("dir");
    let status = Command::new(exe)
        .args(["--format", "oci-dir", "--out", dir.to_str().unwrap()])
        .args(["--ref", "berth-test/cli:1"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert_eq!(read_tree(&dir), built.oci_files().unwrap());

    let bad = Command::new(exe)
        .args(["--format", "zip", "--out", "x"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let missing = Command::new(exe)
        .args(["--format", "oci-tar"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}
