//! Image references (`[registry/]repository[:tag][@digest]`), parsed and normalised like
//! Docker: `busybox` is `busybox:latest`, `docker.io/library/busybox` is `busybox:latest`,
//! and a registry host (`localhost:5000/app:1`) is kept as given.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;
use super::error::ImageError;

/// Docker Hub's registry name; references to it are shown without it.
pub const DOCKER_HUB: &str = "docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: Option<String>,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference; a reference with neither tag nor digest gets
    /// the tag `latest`.
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let bad = |reason: &str| ImageError::InvalidReference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((name, d)) => (
                name,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("repository name longer than 255 characters"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first), path)
            }
            _ => (None, name),
        };
        if let Some(r) = registry {
            validate_registry(r).map_err(|r| bad(&r))?;
        }
        for comp in path.split('/') {
            validate_path_component(comp).map_err(|r| bad(&r))?;
        }
        let registry = match registry {
            Some(r) if r == DOCKER_HUB || r == "index.docker.io" => None,
            other => other.map(str::to_owned),
        };
        let repository = if registry.is_none() && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (with port); `None` for Docker Hub.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The registry host to contact (`docker.io` when none is named).
    pub fn registry_or_default(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// The repository path inside its registry (`library/busybox` for `busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (always present unless a digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The familiar repository name: `busybox`, `user/app`, `localhost:5000/app`.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self
                .repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned(),
        }
    }

    /// The fully qualified form: `docker.io/library/busybox:latest`.
    pub fn full(&self) -> String {
        let mut s = format!("{}/{}", self.registry_or_default(), self.repository);
        self.push_suffix(&mut s);
        s
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ImageError> {
        validate_tag(tag).map_err(|reason| ImageError::InvalidReference {
            reference: format!("{}:{tag}", self.name()),
            reason,
        })?;
        Ok(Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        })
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
    }
}

impl fmt::Display for Reference {
    /// The familiar form Docker prints: `busybox:latest`, `localhost:5000/app:1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl FromStr for Reference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Reference, ImageError> {
        Reference::parse(s)
    }
}

fn validate_tag(t: &str) -> Result<(), String> {
    let ok_first = t
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let ok_rest = t
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if t.is_empty() || t.len() > MAX_TAG_LEN || !ok_first || !ok_rest {
        return Err(format!("invalid tag {t:?}"));
    }
    Ok(())
}

fn validate_registry(r: &str) -> Result<(), String> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5)
    {
        return Err(format!("invalid registry port in {r:?}"));
    }
    let ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !ok {
        return Err(format!("invalid registry host {r:?}"));
    }
    Ok(())
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`, the distribution grammar's path component.
fn validate_path_component(c: &str) -> Result<(), String> {
    let err = || {
        format!(
            "invalid repository name component {c:?} (lowercase letters, digits and separators . _ __ - only)"
        )
    };
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(err());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let valid = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !valid {
            return Err(err());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("busybox"), "busybox:latest");
        assert_eq!(norm("busybox:1.36"), "busybox:1.36");
        assert_eq!(norm("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(norm("index.docker.io/library/busybox:x"), "busybox:x");
        assert_eq!(norm("user/app"), "user/app:latest");
        assert_eq!(norm("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(norm("localhost/app:v2"), "localhost/app:v2");
        assert_eq!(
            norm("registry.example.com/a/b/c:t"),
            "registry.example.com/a/b/c:t"
        );
        let d = "a".repeat(64);
        assert_eq!(
            norm(&format!("busybox@sha256:{d}")),
            format!("busybox@sha256:{d}")
        );
    }

    #[test]
    fn full_form_names_docker_hub() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.full(), "docker.io/library/busybox:latest");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.registry(), None);
        let r = Reference::parse("127.0.0.1:5000/x/y:1").unwrap();
        assert_eq!(r.registry(), Some("127.0.0.1:5000"));
        assert_eq!(r.repository(), "x/y");
        assert_eq!(r.tag(), Some("1"));
    }

    #[test]
    fn refuses_invalid_references() {
        for bad in [
            "",
            "Busybox",
            "a//b",
            "a:",
            "a:-x",
            "-a",
            "a_",
            "a@sha256:zz",
            "a/../b",
            "a b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn with_tag_replaces_tag() {
        let r = Reference::parse("localhost:5000/app:1").unwrap();
        assert_eq!(r.with_tag("2").unwrap().to_string(), "localhost:5000/app:2");
        assert!(r.with_tag("bad tag").is_err());
    }
}
