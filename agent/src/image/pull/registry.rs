//! One repository on one registry, as the distribution API serves it: authentication
//! (`GET /v2/` for the challenge, then a bearer token or basic credentials), manifests by
//! tag or digest, and blobs streamed to a file while their digest and size are checked.

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::auth::{self, Challenge, Credentials};
use super::error::PullError;
use super::http::{Fetched, Transport, content_length};
use crate::image::digest::Digest;

/// The distribution API endpoint Docker Hub's `docker.io` names.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A manifest or index as fetched.
pub(crate) struct RawManifest {
    /// The bytes (digest-verified when a digest was known).
    pub bytes: Vec<u8>,
    /// `Content-Type` of the answer (may be empty).
    pub content_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

/// An authenticated view of one repository.
pub(crate) struct Session<'a> {
    transport: &'a Transport,
    /// `https://host:port` (no trailing slash).
    base: String,
    /// `host:port` as the reference names it (`docker.io` for the Hub).
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    /// `Authorization` value to send, once known.
    authorization: Option<String>,
}

impl<'a> Session<'a> {
    /// A session for `repository` on `registry` (`None` = Docker Hub), over plain HTTP when
    /// `insecure`.
    pub(crate) fn new(
        transport: &'a Transport,
        registry: Option<&str>,
        repository: &str,
        insecure: bool,
        credentials: Option<Credentials>,
    ) -> Session<'a> {
        let host = registry.unwrap_or(DOCKER_HUB_API);
        let scheme = if insecure { "http" } else { "https" };
        Session {
            transport,
            base: format!("{scheme}://{host}"),
            registry: registry
                .unwrap_or(crate::image::reference::DOCKER_HUB)
                .to_owned(),
            repository: repository.to_owned(),
            credentials,
            authorization: None,
        }
    }

    /// The registry as the user named it.
    pub(crate) fn registry(&self) -> &str {
        &self.registry
    }

    fn scope(&self) -> String {
        format!("repository:{}:pull", self.repository)
    }

    /// Asks `/v2/` how to authenticate and gets ready to (a token, or basic credentials).
    pub(crate) async fn authenticate(&mut self) -> Result<(), PullError> {
        let url = format!("{}/v2/", self.base);
        let fetched = self.transport.get(&url, None, &[]).await?;
        let status = fetched.response.status();
        if status.is_success() {
            return Ok(());
        }
        if status == hyper::StatusCode::UNAUTHORIZED {
            let challenge = challenge_of(&fetched)?;
            return self.answer(challenge).await;
        }
        let reason = error_text(self.transport, fetched).await;
        Err(PullError::Status {
            what: format!("{url} (is this a registry?)"),
            status: status.as_u16(),
            reason,
        })
    }

    async fn answer(&mut self, challenge: Challenge) -> Result<(), PullError> {
        match challenge {
            Challenge::Basic => {
                let c = self
                    .credentials
                    .as_ref()
                    .ok_or_else(|| PullError::Unauthorized {
                        reason: format!(
                            "{} requires credentials (basic authentication)",
                            self.registry
                        ),
                    })?;
                self.authorization = Some(c.basic_header());
                Ok(())
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                // Ask for our repository's pull scope unless the registry named the one it
                // wants (it does after a 401 on a request).
                let scope = scope.unwrap_or_else(|| self.scope());
                let token = self.token(&realm, service.as_deref(), &scope).await?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, PullError> {
        let url = auth::token_url(realm, service, scope);
        let basic = self.credentials.as_ref().map(Credentials::basic_header);
        let err = |reason: String| PullError::Token {
            realm: realm.to_owned(),
            reason,
        };
        let fetched = self.transport.get(&url, basic.as_deref(), &[]).await?;
        let status = fetched.response.status();
        if status == hyper::StatusCode::UNAUTHORIZED || status == hyper::StatusCode::FORBIDDEN {
            let why = error_text(self.transport, fetched).await;
            let who = if self.credentials.is_some() {
                "the credentials were refused"
            } else {
                "anonymous access was refused; give credentials"
            };
            return Err(PullError::Unauthorized {
                reason: format!("{who} by {realm}: {why}"),
            });
        }
        if !status.is_success() {
            let why = error_text(self.transport, fetched).await;
            return Err(err(format!("answered {status}: {why}")));
        }
        let bytes = self
            .transport
            .read_limited(fetched, 1 << 20, "token answer")
            .await?;
        auth::token_from_json(&bytes).map_err(err)
    }

    /// GETs a path of this repository with the session's authorization; a 401 (token
    /// expired, or a wider scope wanted) is answered once and the request repeated.
    async fn get(&mut self, path: &str, accept: &[&str]) -> Result<Fetched, PullError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let mut retried = false;
        loop {
            let fetched = self
                .transport
                .get(&url, self.authorization.as_deref(), accept)
                .await?;
            let status = fetched.response.status();
            if status == hyper::StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                let challenge = challenge_of(&fetched);
                let had_basic = self
                    .authorization
                    .as_deref()
                    .is_some_and(|a| a.starts_with("Basic "));
                match challenge {
                    Ok(Challenge::Basic) if had_basic => {
                        let why = error_text(self.transport, fetched).await;
                        return Err(PullError::Unauthorized {
                            reason: format!("{} refused the credentials: {why}", self.registry),
                        });
                    }
                    Ok(c) => {
                        self.answer(c).await?;
                        continue;
                    }
                    Err(_) => {}
                }
            }
            return Ok(fetched);
        }
    }

    /// Maps a failed answer to the user's error.
    async fn failure(&self, fetched: Fetched, what: &str, reference: &str) -> PullError {
        let status = fetched.response.status();
        let reason = error_text(self.transport, fetched).await;
        match status {
            hyper::StatusCode::UNAUTHORIZED => PullError::Unauthorized {
                reason: if reason.is_empty() {
                    "authentication required".into()
                } else {
                    reason
                },
            },
            hyper::StatusCode::FORBIDDEN => PullError::Denied { reason },
            hyper::StatusCode::NOT_FOUND if what == "manifest" => PullError::ManifestNotFound {
                reference: reference.to_owned(),
                reason,
            },
            s => PullError::Status {
                what: format!("{what} of {reference}"),
                status: s.as_u16(),
                reason,
            },
        }
    }

    /// Fetches a manifest or index by tag or digest; checks its digest against `expected`
    /// and against the registry's `Docker-Content-Digest` when it sends one.
    pub(crate) async fn manifest(
        &mut self,
        tag_or_digest: &str,
        expected: Option<&Digest>,
        accept: &[&str],
        limit: u64,
        reference: &str,
    ) -> Result<RawManifest, PullError> {
        let fetched = self
            .get(&format!("manifests/{tag_or_digest}"), accept)
            .await?;
        if !fetched.response.status().is_success() {
            return Err(self.failure(fetched, "manifest", reference).await);
        }
        let header = |name: &str| {
            fetched
                .response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        let announced = header("docker-content-digest");
        let what = format!("manifest {tag_or_digest} of {reference}");
        let bytes = self.transport.read_limited(fetched, limit, &what).await?;
        let digest = Digest::of_bytes(&bytes);
        let mut wanted: Vec<Digest> = expected.cloned().into_iter().collect();
        if let Some(a) = announced
            && let Ok(d) = a.parse::<Digest>()
        {
            wanted.push(d);
        }
        for w in wanted {
            if w != digest {
                return Err(PullError::DigestMismatch {
                    what,
                    expected: w,
                    actual: digest,
                });
            }
        }
        Ok(RawManifest {
            bytes,
            content_type,
            digest,
        })
    }

    /// Streams a blob into `dest` (created), checking its size and digest as it arrives;
    /// `progress(done)` is called as bytes come in. `dest` is removed on failure.
    pub(crate) async fn blob_to_file(
        &mut self,
        digest: &Digest,
        size: Option<u64>,
        dest: &std::path::Path,
        what: &str,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, PullError> {
        let result = self.blob_inner(digest, size, dest, what, progress).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }

    async fn blob_inner(
        &mut self,
        digest: &Digest,
        size: Option<u64>,
        dest: &std::path::Path,
        what: &str,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, PullError> {
        let fetched = self.get(&format!("blobs/{digest}"), &[]).await?;
        if !fetched.response.status().is_success() {
            let reference = format!("{}/{}", self.registry, self.repository);
            return Err(self.failure(fetched, what, &reference).await);
        }
        let mismatch = |actual: u64, expected: u64| PullError::SizeMismatch {
            what: what.to_owned(),
            expected,
            actual,
        };
        if let (Some(want), Some(len)) = (size, content_length(&fetched.response))
            && want != len
        {
            return Err(mismatch(len, want));
        }
        let url = fetched.url.clone();
        let mut body = fetched.response.into_body();
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(|e| PullError::io("creating", dest, e))?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        while let Some(chunk) = self.transport.next_chunk(&mut body, &url).await? {
            done += chunk.len() as u64;
            if let Some(want) = size
                && done > want
            {
                return Err(mismatch(done, want));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| PullError::io("writing", dest, e))?;
            progress(done);
        }
        if let Some(want) = size
            && done != want
        {
            return Err(mismatch(done, want));
        }
        file.sync_all()
            .await
            .map_err(|e| PullError::io("syncing", dest, e))?;
        let actual = Digest::from_hex(&hex(&hasher.finalize()))?;
        if &actual != digest {
            return Err(PullError::DigestMismatch {
                what: what.to_owned(),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(done)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn challenge_of(fetched: &Fetched) -> Result<Challenge, PullError> {
    let header = fetched
        .response
        .headers()
        .get(hyper::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| PullError::Unauthorized {
            reason: format!("{} answered 401 without a challenge", fetched.url),
        })?;
    auth::parse_challenge(header)
}

/// The message of an error answer: the distribution API's `{"errors":[{"code","message"}]}`
/// as `message`, else the (short) body text, else the status.
async fn error_text(transport: &Transport, fetched: Fetched) -> String {
    let status = fetched.response.status();
    let body = transport
        .read_limited(fetched, 64 << 10, "error answer")
        .await
        .unwrap_or_default();
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(errors) = doc.get("errors").and_then(|e| e.as_array())
    {
        let parts: Vec<String> = errors
            .iter()
            .map(|e| {
                let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
                let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
                match (code, msg) {
                    ("", m) => m.to_owned(),
                    (c, "") => c.to_ascii_lowercase(),
                    (_, m) => m.to_owned(),
                }
            })
            .filter(|p| !p.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    if text.is_empty() || text.len() > 200 {
        status.to_string()
    } else {
        text
    }
}
