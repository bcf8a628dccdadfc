//! The image documents the store reads — OCI/Docker index, manifest and config, and the
//! `docker save` `manifest.json` — as lenient serde types, and the normalised
//! [`ImageConfig`] that the runtime consumes.
//!
//! Parsing is deliberately lenient about fields the store does not use (unknown fields are
//! ignored, media types are advisory), and strict about what it relies on: digests must be
//! valid sha256 digests, and the config must list one diff_id per layer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::ImageError;

/// OCI image index media type.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Docker manifest list media type.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Annotation carrying the tag (or full name) of a manifest in an OCI layout's index.
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and Docker ≥25 put the full image name in.
pub const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type (advisory).
    #[serde(default)]
    pub media_type: String,
    /// Digest of the blob.
    pub digest: Digest,
    /// Size in bytes.
    #[serde(default)]
    pub size: i64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform, in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// The value of an annotation, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// Whether the descriptor names an index (manifest list) rather than a manifest.
    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

/// A platform in an index descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// Architecture, e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// Variant, e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// The manifests (or nested indexes).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI or Docker v2 image manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// One image in a `docker save` archive's `manifest.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct DockerArchiveEntry {
    /// Path of the config file inside the archive.
    #[serde(rename = "Config")]
    pub config: String,
    /// Names of the image.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars inside the archive, base first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// The image config blob, as far as the store reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct ConfigFile {
    /// Creation time (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// Architecture, e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// OS, e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// Execution parameters.
    #[serde(default)]
    pub config: Option<RawContainerConfig>,
    /// The layer diff_ids.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Clone, Debug, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// sha256 of each uncompressed layer tar, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// `config` of an image config, with Docker's capitalised field names.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RawContainerConfig {
    pub user: Option<String>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub env: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub working_dir: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<RawHealthcheck>,
    pub shell: Option<Vec<String>>,
}

/// Docker's `Healthcheck` extension, durations in nanoseconds.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(missing_docs)]
pub struct RawHealthcheck {
    pub test: Option<Vec<String>>,
    pub interval: Option<i64>,
    pub timeout: Option<i64>,
    pub start_period: Option<i64>,
    pub start_interval: Option<i64>,
    pub retries: Option<i64>,
}

/// The execution parameters of an image, normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` environment, in image order.
    pub env: Vec<String>,
    /// Entrypoint argv, if the image sets one.
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments, if the image sets them.
    pub cmd: Option<Vec<String>>,
    /// Working directory, if set (non-empty).
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, if set (non-empty).
    pub user: Option<String>,
    /// Exposed ports such as `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// Volume mount points, sorted.
    pub volumes: Vec<String>,
    /// Stop signal name or number, if set.
    pub stop_signal: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Health check, if the image defines one.
    pub healthcheck: Option<Healthcheck>,
    /// Shell for shell-form commands, if set.
    pub shell: Option<Vec<String>>,
    /// OS the image is built for.
    pub os: String,
    /// Architecture the image is built for.
    pub architecture: String,
}

/// An image's health check (Docker extension).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", argv…]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// Interval between probes, ns (0 = default).
    pub interval_ns: i64,
    /// Probe timeout, ns (0 = default).
    pub timeout_ns: i64,
    /// Start period, ns (0 = default).
    pub start_period_ns: i64,
    /// Probe interval during the start period, ns (0 = default).
    pub start_interval_ns: i64,
    /// Consecutive failures before unhealthy (0 = default).
    pub retries: i64,
}

impl ConfigFile {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ConfigFile, ImageError> {
        serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
            what: what.to_owned(),
            source,
        })
    }

    /// The normalised execution parameters.
    pub fn image_config(&self) -> ImageConfig {
        let raw = self.config.clone().unwrap_or_default();
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            env: raw.env.unwrap_or_default(),
            entrypoint: raw.entrypoint,
            cmd: raw.cmd,
            working_dir: non_empty(raw.working_dir),
            user: non_empty(raw.user),
            exposed_ports: raw
                .exposed_ports
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            volumes: raw
                .volumes
                .map(|m| m.into_keys().collect())
                .unwrap_or_default(),
            stop_signal: non_empty(raw.stop_signal),
            labels: raw.labels.unwrap_or_default(),
            healthcheck: raw.healthcheck.map(|h| Healthcheck {
                test: h.test.unwrap_or_default(),
                interval_ns: h.interval.unwrap_or(0),
                timeout_ns: h.timeout.unwrap_or(0),
                start_period_ns: h.start_period.unwrap_or(0),
                start_interval_ns: h.start_interval.unwrap_or(0),
                retries: h.retries.unwrap_or(0),
            }),
            shell: raw.shell,
            os: self.os.clone(),
            architecture: self.architecture.clone(),
        }
    }
}

/// The architecture name OCI uses for this build's target.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_normalised() {
        let json = br#"{
            "created": "2026-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
            "config": {"User":"1000:1000","ExposedPorts":{"8080/tcp":{},"53/udp":{}},
                "Env":["FOO=bar"],"Entrypoint":["/bin/sh"],"Cmd":["-c","echo hi"],
                "WorkingDir":"/tmp","Labels":{"a":"b"},"StopSignal":"SIGQUIT",
                "Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":3},
                "Volumes":{"/data":{}}},
            "rootfs": {"type":"layers","diff_ids":[]}
        }"#;
        let c = ConfigFile::parse(json, "config").unwrap().image_config();
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.exposed_ports, vec!["53/udp", "8080/tcp"]);
        assert_eq!(c.env, vec!["FOO=bar"]);
        assert_eq!(c.entrypoint, Some(vec!["/bin/sh".to_owned()]));
        assert_eq!(c.cmd, Some(vec!["-c".to_owned(), "echo hi".to_owned()]));
        assert_eq!(c.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(c.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(c.volumes, vec!["/data"]);
        let h = c.healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "true"]);
        assert_eq!(h.interval_ns, 1_000_000_000);
        assert_eq!(h.retries, 3);
    }

    #[test]
    fn null_fields_are_absent() {
        let json = br#"{"config":{"Entrypoint":null,"Cmd":null,"WorkingDir":"","User":""},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ConfigFile::parse(json, "config").unwrap().image_config();
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.cmd, None);
        assert_eq!(c.working_dir, None);
        assert_eq!(c.user, None);
    }

    #[test]
    fn bad_diff_id_is_refused() {
        let json = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:../../etc"]}}"#;
        assert!(ConfigFile::parse(json, "config").is_err());
    }
}
