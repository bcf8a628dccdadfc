//! Registry credentials and authentication challenges.
//!
//! Credentials are a user name and password, given with the request (`user:password`) or read
//! from a Docker-format credentials file (`{"auths": {"host:port": {"auth": base64("user:pass")}}}`,
//! or `"username"`/`"password"` fields), the format `docker login` writes.
//!
//! A registry says how it wants to be authenticated in `WWW-Authenticate` on a 401:
//! `Basic realm="…"` (send the credentials) or `Bearer realm="…",service="…",scope="…"` (get a
//! token from `realm`, with the credentials if we have any, and send the token).

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::PullError;
use crate::image::reference::DOCKER_HUB;

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Parses `user:password` (the password may contain `:`); `None` for an empty string.
    pub fn parse(s: &str) -> Option<Credentials> {
        let (u, p) = s.split_once(':')?;
        if u.is_empty() {
            return None;
        }
        Some(Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }

    /// `user:password`, as the ImagePull request carries it.
    pub fn to_pair(&self) -> String {
        format!("{}:{}", self.username, self.password)
    }

    /// The value of an `Authorization: Basic` header.
    pub(crate) fn basic_header(&self) -> String {
        format!("Basic {}", STANDARD.encode(self.to_pair()))
    }
}

/// Names a Docker-format credentials file may use for `registry` (`host:port`, or `None` for
/// Docker Hub).
fn config_keys(registry: Option<&str>) -> Vec<String> {
    match registry {
        None => vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            DOCKER_HUB.into(),
            "registry-1.docker.io".into(),
        ],
        Some(r) => vec![r.to_owned()],
    }
}

/// `https://host:5000/v1/` → `host:5000`.
fn normalise_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Reads the credentials for `registry` (`host:port`; `None` = Docker Hub) from a
/// Docker-format credentials file. A missing file holds no credentials.
pub fn credentials_from_file(
    path: &Path,
    registry: Option<&str>,
) -> Result<Option<Credentials>, PullError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PullError::io("reading", path, e)),
    };
    credentials_from_json(&bytes, registry).map_err(|reason| PullError::Credentials {
        path: path.to_owned(),
        reason,
    })
}

fn credentials_from_json(
    bytes: &[u8],
    registry: Option<&str>,
) -> Result<Option<Credentials>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let wanted = config_keys(registry);
    let entry = auths.iter().find(|(k, _)| {
        wanted
            .iter()
            .any(|w| w == *k || normalise_key(k) == normalise_key(w))
    });
    let Some((key, entry)) = entry else {
        return Ok(None);
    };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str())
        && !auth.is_empty()
    {
        let raw = STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("\"auth\" of {key:?} is not base64: {e}"))?;
        let pair =
            String::from_utf8(raw).map_err(|_| format!("\"auth\" of {key:?} is not UTF-8 text"))?;
        return Credentials::parse(&pair)
            .map(Some)
            .ok_or_else(|| format!("\"auth\" of {key:?} is not base64(\"user:password\")"));
    }
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("");
    match (field("username"), field("password")) {
        ("", _) => Ok(None),
        (u, p) => Ok(Some(Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })),
    }
}

/// One authentication challenge from `WWW-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter to pass on.
        service: Option<String>,
        /// `scope` the registry asked for, if it named one.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value: `Scheme k="v", k2=v2` (RFC 7235 auth-params, quoted
/// strings with `\` escapes). Several challenges in one header are not split (registries
/// send one).
pub(crate) fn parse_challenge(header: &str) -> Result<Challenge, PullError> {
    let bad = || PullError::Challenge {
        challenge: header.to_owned(),
    };
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest).ok_or_else(bad)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Ok(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Challenge::Bearer {
            realm: get("realm").filter(|r| !r.is_empty()).ok_or_else(bad)?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        Err(bad())
    }
}

fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || name.is_empty() {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name, value));
    }
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token endpoint URL for a bearer challenge: `realm?service=…&scope=…`.
pub(crate) fn token_url(realm: &str, service: Option<&str>, scope: &str) -> String {
    let mut url = realm.to_owned();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    if let Some(s) = service {
        url.push(sep);
        url.push_str("service=");
        url.push_str(&query_escape(s));
        sep = '&';
    }
    url.push(sep);
    url.push_str("scope=");
    url.push_str(&query_escape(scope));
    url
}

/// The token in a token endpoint's JSON answer (`token`, or OAuth2's `access_token`).
pub(crate) fn token_from_json(bytes: &[u8]) -> Result<String, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    ["token", "access_token"]
        .iter()
        .filter_map(|k| doc.get(k).and_then(|v| v.as_str()))
        .find(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| "answer holds no token".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }
        );
        let c = parse_challenge(r#"bearer realm = "http://a/t?x=1" , service=svc"#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "http://a/t?x=1".into(),
                service: Some("svc".into()),
                scope: None,
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry \"x\"""#).unwrap(),
            Challenge::Basic
        );
    }

    #[test]
    fn bad_challenges_are_refused() {
        for bad in [
            "Digest realm=\"x\"",
            "Bearer service=\"x\"",
            "Bearer realm=\"unterminated",
            "Bearer =x",
        ] {
            assert!(parse_challenge(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_urls_escape_the_scope() {
        assert_eq!(
            token_url("https://a/token", Some("reg svc"), "repository:x/y:pull"),
            "https://a/token?service=reg%20svc&scope=repository%3Ax%2Fy%3Apull"
        );
        assert_eq!(
            token_url("https://a/token?v=2", None, "s"),
            "https://a/token?v=2&scope=s"
        );
    }

    #[test]
    fn tokens_come_from_token_or_access_token() {
        assert_eq!(token_from_json(br#"{"token":"a"}"#).unwrap(), "a");
        assert_eq!(
            token_from_json(br#"{"token":"","access_token":"b"}"#).unwrap(),
            "b"
        );
        assert!(token_from_json(br#"{"expires_in":3}"#).is_err());
    }

    #[test]
    fn docker_config_files_give_credentials() {
        let auth = STANDARD.encode("alice:s3:cret");
        let json = format!(
            r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}},
                "https://reg.example:443/v2/": {{"auth": ""}}}}}}"#
        );
        let c = credentials_from_json(json.as_bytes(), Some("127.0.0.1:5000"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3:cret")
        );
        let c = credentials_from_json(json.as_bytes(), None)
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(
            credentials_from_json(json.as_bytes(), Some("reg.example:443")).unwrap(),
            None
        );
        assert_eq!(
            credentials_from_json(json.as_bytes(), Some("other:1")).unwrap(),
            None
        );
        assert!(credentials_from_json(br#"{"auths":{"h":{"auth":"!!"}}}"#, Some("h")).is_err());
        assert!(credentials_from_json(b"nope", Some("h")).is_err());
    }

    #[test]
    fn credentials_parse_and_hide_the_password() {
        let c = Credentials::parse("u:p:q").unwrap();
        assert_eq!(c.password, "p:q");
        assert_eq!(
            c.basic_header(),
            format!("Basic {}", STANDARD.encode("u:p:q"))
        );
        assert!(!format!("{c:?}").contains("p:q"));
        assert!(Credentials::parse("").is_none());
        assert!(Credentials::parse(":x").is_none());
    }
}
