//! Deterministic test images: a busybox image (and variations) written as an OCI image layout
//! directory, a tar of that layout, or a `docker save` archive.
//!
//! Invariant: building the same [`TestImage`] twice gives byte-identical outputs — tar headers
//! carry fixed mtimes, numeric owners and no user names, entries are sorted, gzip headers have
//! mtime 0 and OS byte 255, JSON is serialized from ordered maps, and `created` is a constant.
//! The only host input is the busybox binary (default `/bin/busybox`, Debian busybox-static).
//!
//! Layers of [`TestImage::busybox`] (base first):
//! 1. `/bin/busybox` and a symlink `/bin/<applet> -> busybox` for every applet of
//!    `busybox --list`; `/etc/passwd`, `/etc/group` (root 0, berth 1000, nobody 65534); `/tmp`
//!    (1777), `/root` (0700), `/home/berth` (1000:1000), empty `/dev`, `/proc`, `/sys`, `/usr/bin`,
//!    `/usr/sbin`, `/sbin`, `/var`;
//! 2. `/etc/berth-release`, `/srv/www/index.html`, `/etc/to-be-deleted`, `/srv/old/stale.txt`,
//!    `/srv/old/sub/deep.txt`;
//! 3. the whiteout `etc/.wh.to-be-deleted`, the opaque marker `srv/old/.wh..wh..opq` and
//!    `/srv/old/fresh.txt` — after applying, `/etc/to-be-deleted` and `/srv/old/stale.txt` are
//!    gone and `/srv/old` holds only `fresh.txt`.
//!
//! Config: `Env` = [`DEFAULT_PATH`] and `BERTH_TEST=1`, `Cmd ["sh"]`, `WorkingDir "/"`,
//! linux/amd64. [`hostile`] builds the malformed and malicious images.

mod built;
pub mod hostile;
mod layer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub use built::{BuiltImage, BuiltLayer, OutputFormat, chain_ids, split_reference};
pub use layer::{
    CREATED, Compression, Entry, EntryKind, LAYER_MTIME, Layer, OPAQUE_MARKER, WHITEOUT_PREFIX,
    hex, sha256_digest, sha256_hex,
};

/// Reference of the default test image.
pub const DEFAULT_REF: &str = "berth-test/busybox:latest";

/// The busybox binary used by default (from Debian's busybox-static).
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";

/// The `PATH` entry of the busybox image's `Env`.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `/etc/passwd` of the busybox image.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
berth:x:1000:1000:berth:/home/berth:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

/// `/etc/group` of the busybox image.
pub const GROUP: &str = "root:x:0:\nberth:x:1000:\nnobody:x:65534:\n";

/// Contents of `/etc/berth-release` in the busybox image.
pub const RELEASE: &str = "BERTH_TEST_IMAGE=busybox\n";

/// Contents of `/srv/www/index.html` in the busybox image.
pub const INDEX_HTML: &str = "<html><body>berth test image</body></html>\n";

/// Docker's `config.Healthcheck`: durations are written as integer nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", argv…]` or `["CMD-SHELL", "command"]`.
    pub test: Vec<String>,
    /// Time between checks.
    pub interval: Option<Duration>,
    /// Time one check may take.
    pub timeout: Option<Duration>,
    /// Grace period after start during which failures do not count.
    pub start_period: Option<Duration>,
    /// Time between checks during the start period.
    pub start_interval: Option<Duration>,
    /// Consecutive failures before unhealthy.
    pub retries: Option<u32>,
}

impl Healthcheck {
    fn with_test(test: Vec<String>) -> Healthcheck {
        Healthcheck {
            test,
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        }
    }

    /// `["CMD", argv…]`: exec `argv` directly.
    pub fn cmd<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Healthcheck {
        let mut test = vec!["CMD".to_string()];
        test.extend(argv.into_iter().map(Into::into));
        Healthcheck::with_test(test)
    }

    /// `["CMD-SHELL", command]`: run `command` with `/bin/sh -c`.
    pub fn shell(command: impl Into<String>) -> Healthcheck {
        Healthcheck::with_test(vec!["CMD-SHELL".to_string(), command.into()])
    }

    /// `["NONE"]`: disables a healthcheck inherited from a base image.
    pub fn none() -> Healthcheck {
        Healthcheck::with_test(vec!["NONE".to_string()])
    }

    /// Sets `Interval`.
    pub fn interval(mut self, d: Duration) -> Healthcheck {
        self.interval = Some(d);
        self
    }

    /// Sets `Timeout`.
    pub fn timeout(mut self, d: Duration) -> Healthcheck {
        self.timeout = Some(d);
        self
    }

    /// Sets `StartPeriod`.
    pub fn start_period(mut self, d: Duration) -> Healthcheck {
        self.start_period = Some(d);
        self
    }

    /// Sets `StartInterval`.
    pub fn start_interval(mut self, d: Duration) -> Healthcheck {
        self.start_interval = Some(d);
        self
    }

    /// Sets `Retries`.
    pub fn retries(mut self, n: u32) -> Healthcheck {
        self.retries = Some(n);
        self
    }

    /// The JSON object Docker stores under `config.Healthcheck`.
    pub fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("Test".into(), json!(self.test));
        let durations = [
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
        ];
        for (key, d) in durations {
            if let Some(d) = d {
                obj.insert(
                    key.into(),
                    json!(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                );
            }
        }
        if let Some(n) = self.retries {
            obj.insert("Retries".into(), json!(n));
        }
        Value::Object(obj)
    }
}

/// Builder of a deterministic test image. Nothing touches the disk until [`TestImage::build`].
#[derive(Clone, Debug)]
pub struct TestImage {
    reference: String,
    busybox: Option<PathBuf>,
    layers: Vec<Layer>,
    env: Vec<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    workdir: Option<String>,
    user: Option<String>,
    healthcheck: Option<Healthcheck>,
    labels: BTreeMap<String, String>,
    exposed_ports: BTreeSet<String>,
    stop_signal: Option<String>,
    pad_to: Option<usize>,
    compression: Compression,
    layer_compression: BTreeMap<usize, Compression>,
    architecture: String,
    os: String,
}

impl TestImage {
    /// The default three-layer busybox image (see the module docs) built from `/bin/busybox`.
    pub fn busybox(reference: impl Into<String>) -> TestImage {
        TestImage::busybox_from(DEFAULT_BUSYBOX, reference)
    }

    /// Like [`TestImage::busybox`] with another static busybox binary.
    pub fn busybox_from(binary: impl Into<PathBuf>, reference: impl Into<String>) -> TestImage {
        let mut image = TestImage::scratch(reference);
        image.busybox = Some(binary.into());
        image.layers = vec![files_layer(), whiteout_layer()];
        image.env = vec![DEFAULT_PATH.to_string(), "BERTH_TEST=1".to_string()];
        image.cmd = Some(vec!["sh".to_string()]);
        image.workdir = Some("/".to_string());
        image
    }

    /// An image with no layers and an empty config (add layers with [`TestImage::layer`]).
    pub fn scratch(reference: impl Into<String>) -> TestImage {
        TestImage {
            reference: reference.into(),
            busybox: None,
            layers: Vec::new(),
            env: Vec::new(),
            cmd: None,
            entrypoint: None,
            workdir: None,
            user: None,
            healthcheck: None,
            labels: BTreeMap::new(),
            exposed_ports: BTreeSet::new(),
            stop_signal: None,
            pad_to: None,
            compression: Compression::Gzip,
            layer_compression: BTreeMap::new(),
            architecture: "amd64".to_string(),
            os: "linux".to_string(),
        }
    }

    /// The image reference (`name:tag`).
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Appends a layer.
    pub fn layer(mut self, layer: Layer) -> TestImage {
        self.layers.push(layer);
        self
    }

    /// Appends a well-formed layer holding `entries` (see [`Layer::new`]).
    pub fn extra_layer(self, entries: impl IntoIterator<Item = Entry>) -> TestImage {
        self.layer(Layer::new(entries).created_by("berth-test-image: extra layer"))
    }

    /// Appends a layer written verbatim (see [`Layer::raw`]).
    pub fn raw_layer(self, entries: impl IntoIterator<Item = Entry>) -> TestImage {
        self.layer(Layer::raw(entries))
    }

    /// Sets `KEY=VALUE` in `Env`, replacing an existing entry for `KEY`.
    pub fn env(mut self, key: &str, value: &str) -> TestImage {
        let prefix = format!("{key}=");
        let kv = format!("{key}={value}");
        match self.env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(existing) => *existing = kv,
            None => self.env.push(kv),
        }
        self
    }

    /// Removes every `Env` entry.
    pub fn clear_env(mut self) -> TestImage {
        self.env.clear();
        self
    }

    /// Sets `Cmd`.
    pub fn cmd<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> TestImage {
        self.cmd = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Removes `Cmd`.
    pub fn no_cmd(mut self) -> TestImage {
        self.cmd = None;
        self
    }

    /// Sets `Entrypoint`.
    pub fn entrypoint<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> TestImage {
        self.entrypoint = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `WorkingDir`.
    pub fn workdir(mut self, dir: impl Into<String>) -> TestImage {
        self.workdir = Some(dir.into());
        self
    }

    /// Sets `User` (`uid`, `uid:gid`, `name` or `name:group`).
    pub fn user(mut self, user: impl Into<String>) -> TestImage {
        self.user = Some(user.into());
        self
    }

    /// Sets Docker's `Healthcheck`.
    pub fn healthcheck(mut self, healthcheck: Healthcheck) -> TestImage {
        self.healthcheck = Some(healthcheck);
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> TestImage {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an `ExposedPorts` entry such as `8080/tcp`.
    pub fn expose(mut self, port: impl Into<String>) -> TestImage {
        self.exposed_ports.insert(port.into());
        self
    }

    /// Sets `StopSignal`.
    pub fn stop_signal(mut self, signal: impl Into<String>) -> TestImage {
        self.stop_signal = Some(signal.into());
        self
    }

    /// Pads the image with small distinct layers (`/pad/<i>`) until it has exactly `n` layers;
    /// [`TestImage::build`] fails if it already has more.
    pub fn layers(mut self, n: usize) -> TestImage {
        self.pad_to = Some(n);
        self
    }

    /// Compression of every layer that has no explicit choice (default gzip).
    pub fn compression(mut self, compression: Compression) -> TestImage {
        self.compression = compression;
        self
    }

    /// Compression of layer `index` (0 = base), overriding the layer's and the default.
    pub fn layer_compression(mut self, index: usize, compression: Compression) -> TestImage {
        self.layer_compression.insert(index, compression);
        self
    }

    /// Sets the config's `architecture`.
    pub fn architecture(mut self, arch: impl Into<String>) -> TestImage {
        self.architecture = arch.into();
        self
    }

    /// All layers, base first, with padding — reads the busybox binary.
    pub fn all_layers(&self) -> anyhow::Result<Vec<Layer>> {
        let mut layers = Vec::new();
        if let Some(binary) = &self.busybox {
            layers.push(busybox_base_layer(binary)?);
        }
        layers.extend(self.layers.iter().cloned());
        if let Some(n) = self.pad_to {
            if layers.len() > n {
                bail!("image has {} layers, more than layers({n})", layers.len());
            }
            for i in layers.len()..n {
                layers.push(
                    Layer::new([Entry::file(format!("pad/{i}"), format!("pad layer {i}\n"))])
                        .created_by(format!("berth-test-image: pad layer {i}")),
                );
            }
        }
        Ok(layers)
    }

    /// Builds the image in memory.
    pub fn build(&self) -> anyhow::Result<BuiltImage> {
        let layers = self.all_layers()?;
        let mut built = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let compression = self
                .layer_compression
                .get(&i)
                .copied()
                .or(layer.compression)
                .unwrap_or(self.compression);
            built.push(
                BuiltLayer::from_layer(layer, compression)
                    .with_context(|| format!("building layer {i}"))?,
            );
        }
        let history: Vec<Value> = layers
            .iter()
            .map(|l| json!({"created": CREATED, "created_by": l.created_by}))
            .collect();
        let diff_ids: Vec<&str> = built.iter().map(|l| l.diff_id.as_str()).collect();
        let config = json!({
            "architecture": self.architecture,
            "os": self.os,
            "created": CREATED,
            "config": self.container_config(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        Ok(BuiltImage {
            reference: self.reference.clone(),
            config,
            layers: built,
            missing_blobs: BTreeSet::new(),
        })
    }

    /// Builds and writes an OCI image layout directory at `dir` (created; must be empty).
    pub fn write_oci_dir(&self, dir: &Path) -> anyhow::Result<BuiltImage> {
        let built = self.build()?;
        built.write_oci_dir(dir)?;
        Ok(built)
    }

    /// Builds and writes a tar of the OCI image layout to `path`.
    pub fn write_oci_tar(&self, path: &Path) -> anyhow::Result<BuiltImage> {
        let built = self.build()?;
        built.write_oci_tar(path)?;
        Ok(built)
    }

    /// Builds and writes a `docker save` archive to `path`.
    pub fn write_docker_archive(&self, path: &Path) -> anyhow::Result<BuiltImage> {
        let built = self.build()?;
        built.write_docker_archive(path)?;
        Ok(built)
    }

    /// The `config` object of the image config (Docker's container config field names).
    fn container_config(&self) -> Value {
        let mut c = serde_json::Map::new();
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if let Some(cmd) = &self.cmd {
            c.insert("Cmd".into(), json!(cmd));
        }
        if let Some(ep) = &self.entrypoint {
            c.insert("Entrypoint".into(), json!(ep));
        }
        if let Some(wd) = &self.workdir {
            c.insert("WorkingDir".into(), json!(wd));
        }
        if let Some(user) = &self.user {
            c.insert("User".into(), json!(user));
        }
        if let Some(hc) = &self.healthcheck {
            c.insert("Healthcheck".into(), hc.to_json());
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), json!(self.labels));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            c.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if let Some(sig) = &self.stop_signal {
            c.insert("StopSignal".into(), json!(sig));
        }
        Value::Object(c)
    }
}

/// Layer 1 of the busybox image: the binary, its applet links, users and the base directories.
fn busybox_base_layer(binary: &Path) -> anyhow::Result<Layer> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {binary:?}"))?;
    let out = std::process::Command::new(binary)
        .arg("--list")
        .output()
        .with_context(|| format!("running {binary:?} --list"))?;
    if !out.status.success() {
        bail!("{binary:?} --list failed: {}", out.status);
    }
    let list = String::from_utf8(out.stdout).context("busybox --list is not UTF-8")?;
    let applets: BTreeSet<&str> = list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .collect();
    if !applets.contains("sh") {
        bail!("{binary:?} has no sh applet");
    }
    let mut entries = vec![Entry::executable("bin/busybox", bytes)];
    entries.extend(
        applets
            .iter()
            .map(|a| Entry::symlink(format!("bin/{a}"), "busybox")),
    );
    for dir in [
        "bin", "dev", "etc", "home", "proc", "sbin", "srv", "sys", "usr", "usr/bin", "usr/sbin",
        "var",
    ] {
        entries.push(Entry::dir(dir));
    }
    entries.push(Entry::dir("tmp").mode(0o1777));
    entries.push(Entry::dir("root").mode(0o700));
    entries.push(Entry::dir("home/berth").owner(1000, 1000));
    entries.push(Entry::file("etc/passwd", PASSWD));
    entries.push(Entry::file("etc/group", GROUP));
    Ok(Layer::new(entries).created_by("berth-test-image: busybox base"))
}

/// Layer 2 of the busybox image: files that later layers read, delete or hide.
fn files_layer() -> Layer {
    Layer::new([
        Entry::file("etc/berth-release", RELEASE),
        Entry::file("etc/to-be-deleted", "this file is deleted by a whiteout\n"),
        Entry::file("srv/www/index.html", INDEX_HTML),
        Entry::file("srv/old/stale.txt", "hidden by the opaque marker\n"),
        Entry::file("srv/old/sub/deep.txt", "also hidden by the opaque marker\n"),
    ])
    .created_by("berth-test-image: add files")
}

/// Layer 3 of the busybox image: a whiteout and an opaque directory.
fn whiteout_layer() -> Layer {
    Layer::new([
        Entry::whiteout("etc/to-be-deleted"),
        Entry::opaque("srv/old"),
        Entry::file("srv/old/fresh.txt", "the only file left in /srv/old\n"),
    ])
    .created_by("berth-test-image: whiteout and opaque dir")
}
