//! The HTTP(S) client of the pull: one HTTP/1.1 connection per request (hyper over a tokio
//! TCP stream, rustls with the ring provider for HTTPS), redirects followed, every wait
//! bounded by a timeout.
//!
//! Trust: HTTPS registries are verified against the system bundle
//! (`/etc/ssl/certs/ca-certificates.crt`) plus every `*.crt` in `<certs_dir>/<host:port>/`
//! (Docker's `certs.d` layout; `ca.crt` by convention). Authorization headers are dropped
//! when a redirect leaves the origin (blob storage behind a registry gets a signed URL, not
//! our token).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::PullError;

/// Where Debian (and most distributions) keep the system trust bundle.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Redirects followed per request.
const MAX_REDIRECTS: usize = 5;

/// A bidirectional byte stream (TCP, or TLS over TCP).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An HTTP client for registry requests; TLS settings are built once per registry host
/// (one transport serves one pull).
#[derive(Debug)]
pub(crate) struct Transport {
    certs_dir: PathBuf,
    connect_timeout: Duration,
    /// Longest wait for a response head or the next piece of a body.
    pub(crate) io_timeout: Duration,
    tls: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
}

/// A response whose body is still to be read.
pub(crate) struct Fetched {
    /// Status, headers and body.
    pub response: Response<Incoming>,
    /// The URL that answered (after redirects).
    pub url: String,
}

impl Transport {
    /// A client trusting the system bundle plus `certs_dir/<host:port>/*.crt`.
    pub(crate) fn new(certs_dir: &Path) -> Transport {
        Transport {
            certs_dir: certs_dir.to_owned(),
            connect_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(60),
            tls: Mutex::new(HashMap::new()),
        }
    }

    fn tls_config(&self, authority: &str) -> Result<Arc<rustls::ClientConfig>, PullError> {
        let mut cache = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(authority) {
            return Ok(Arc::clone(c));
        }
        let err = |reason: String| PullError::TlsConfig {
            registry: authority.to_owned(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in system_roots() {
            // A system certificate rustls cannot use is skipped, as every TLS client does.
            let _ = roots.add(cert.clone());
        }
        let dir = self.certs_dir.join(authority);
        for path in extra_ca_files(&dir).map_err(|e| err(format!("reading {dir:?}: {e}")))? {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| err(format!("reading {path:?}: {e}")))?;
            if certs.is_empty() {
                return Err(err(format!("{path:?} holds no PEM certificate")));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| err(format!("certificate in {path:?}: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        cache.insert(authority.to_owned(), Arc::clone(&config));
        Ok(config)
    }

    async fn connect(&self, uri: &Uri) -> Result<Box<dyn Io>, PullError> {
        let url = uri.to_string();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(PullError::Url {
                    url,
                    reason: "scheme must be http or https".into(),
                });
            }
        };
        let authority = uri.authority().ok_or_else(|| PullError::Url {
            url: url.clone(),
            reason: "no host".into(),
        })?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let registry = authority.as_str().to_owned();
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| PullError::Timeout {
                what: "connecting to",
                url: url.clone(),
            })?
            .map_err(|source| PullError::Connect {
                registry: registry.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Box::new(tcp));
        }
        let config = self.tls_config(&registry)?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| PullError::Url {
            url: url.clone(),
            reason: format!("host is not a valid TLS server name: {e}"),
        })?;
        let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let tls = tokio::time::timeout(self.io_timeout, handshake)
            .await
            .map_err(|_| PullError::Timeout {
                what: "TLS handshake with",
                url: url.clone(),
            })?
            .map_err(|e| tls_error(&registry, &self.certs_dir, &e))?;
        Ok(Box::new(tls))
    }

    /// Sends one GET, without following redirects.
    async fn send(
        &self,
        uri: &Uri,
        headers: &[(header::HeaderName, String)],
    ) -> Result<Response<Incoming>, PullError> {
        let url = uri.to_string();
        let io = self.connect(uri).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| PullError::Http {
                url: url.clone(),
                source,
            })?;
        // The connection task ends when the response body is read or dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "registry connection ended with an error");
            }
        });
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::get(path).header(header::HOST, authority).header(
            header::USER_AGENT,
            concat!("berth/", env!("CARGO_PKG_VERSION")),
        );
        for (k, v) in headers {
            let v = HeaderValue::from_str(v).map_err(|_| PullError::Url {
                url: url.clone(),
                reason: format!("header {k} has an invalid value"),
            })?;
            req = req.header(k, v);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| PullError::Url {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        tokio::time::timeout(self.io_timeout, sender.send_request(req))
            .await
            .map_err(|_| PullError::Timeout {
                what: "waiting for an answer from",
                url: url.clone(),
            })?
            .map_err(|source| PullError::Http { url, source })
    }

    /// GETs `url`, following redirects; `auth` (an `Authorization` value) is only sent to
    /// the origin of `url`.
    pub(crate) async fn get(
        &self,
        url: &str,
        auth: Option<&str>,
        accept: &[&str],
    ) -> Result<Fetched, PullError> {
        let mut uri = parse_url(url)?;
        let origin = origin_of(&uri);
        for _ in 0..=MAX_REDIRECTS {
            let mut headers = Vec::new();
            if !accept.is_empty() {
                headers.push((header::ACCEPT, accept.join(", ")));
            }
            if let Some(a) = auth
                && origin_of(&uri) == origin
            {
                headers.push((header::AUTHORIZATION, a.to_owned()));
            }
            let response = self.send(&uri, &headers).await?;
            let redirect = matches!(
                response.status(),
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            );
            if !redirect {
                return Ok(Fetched {
                    response,
                    url: uri.to_string(),
                });
            }
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| PullError::Url {
                    url: uri.to_string(),
                    reason: "redirect without a Location".into(),
                })?;
            uri = resolve(&uri, location)?;
        }
        Err(PullError::TooManyRedirects {
            url: url.to_owned(),
        })
    }

    /// Reads a whole body of at most `limit` bytes.
    pub(crate) async fn read_limited(
        &self,
        fetched: Fetched,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, PullError> {
        let too_large = || PullError::TooLarge {
            what: what.to_owned(),
            limit,
        };
        if content_length(&fetched.response).is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = fetched.response.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut body, &fetched.url).await? {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The next piece of data of a body; `None` at its end.
    pub(crate) async fn next_chunk(
        &self,
        body: &mut Incoming,
        url: &str,
    ) -> Result<Option<Bytes>, PullError> {
        loop {
            let frame = tokio::time::timeout(self.io_timeout, body.frame())
                .await
                .map_err(|_| PullError::Timeout {
                    what: "reading",
                    url: url.to_owned(),
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(PullError::Http {
                        url: url.to_owned(),
                        source,
                    });
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// The Content-Length of a response, if it states one.
pub(crate) fn content_length(r: &Response<Incoming>) -> Option<u64> {
    r.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The user's error for a failed handshake, with what to do about the usual causes.
fn tls_error(registry: &str, certs_dir: &Path, e: &std::io::Error) -> PullError {
    let reason = e
        .get_ref()
        .map_or_else(|| e.to_string(), |inner| inner.to_string());
    let hint = if reason.contains("UnknownIssuer") || reason.contains("unknown issuer") {
        format!(
            " (trust the registry's CA by putting it in {})",
            certs_dir.join(registry).join("ca.crt").display()
        )
    } else if reason.contains("InvalidContentType") || reason.contains("corrupt message") {
        " (the registry may speak plain HTTP: pull with --insecure-registry)".to_owned()
    } else {
        String::new()
    };
    PullError::Tls {
        registry: registry.to_owned(),
        reason,
        hint,
    }
}

fn parse_url(url: &str) -> Result<Uri, PullError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| PullError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(PullError::Url {
            url: url.to_owned(),
            reason: "not an absolute http(s) URL".into(),
        });
    }
    Ok(uri)
}

fn origin_of(uri: &Uri) -> (Option<String>, Option<String>) {
    (
        uri.scheme_str().map(str::to_ascii_lowercase),
        uri.authority().map(|a| a.as_str().to_ascii_lowercase()),
    )
}

/// Resolves a `Location` against the URL that sent it (absolute, or absolute-path).
fn resolve(base: &Uri, location: &str) -> Result<Uri, PullError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return parse_url(location);
    }
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.scheme_str().unwrap_or("https");
        return parse_url(&format!("{scheme}://{rest}"));
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    if location.starts_with('/') {
        return parse_url(&format!("{scheme}://{authority}{location}"));
    }
    let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
    parse_url(&format!("{scheme}://{authority}{dir}/{location}"))
}

/// The system trust bundle, read once per process (empty if there is none).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        CertificateDer::pem_file_iter(SYSTEM_BUNDLE)
            .map(|it| it.filter_map(Result::ok).collect())
            .unwrap_or_default()
    })
}

/// `*.crt` files of a registry's certs.d directory, sorted; none if it does not exist.
fn extra_ca_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for e in entries {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "crt") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_sender() {
        let base: Uri = "https://reg:5000/v2/a/blobs/sha256:x".parse().unwrap();
        assert_eq!(
            resolve(&base, "/storage/x?sig=1").unwrap().to_string(),
            "https://reg:5000/storage/x?sig=1"
        );
        assert_eq!(
            resolve(&base, "http://cdn.example/x").unwrap().to_string(),
            "http://cdn.example/x"
        );
        assert_eq!(
            resolve(&base, "//cdn.example/y").unwrap().to_string(),
            "https://cdn.example/y"
        );
        assert_eq!(
            resolve(&base, "other").unwrap().to_string(),
            "https://reg:5000/v2/a/blobs/other"
        );
    }

    #[test]
    fn origins_compare_scheme_and_authority() {
        let a: Uri = "https://Reg:5000/a".parse().unwrap();
        let b: Uri = "https://reg:5000/b".parse().unwrap();
        let c: Uri = "http://reg:5000/a".parse().unwrap();
        assert_eq!(origin_of(&a), origin_of(&b));
        assert_ne!(origin_of(&a), origin_of(&c));
    }

    #[test]
    fn relative_urls_are_refused() {
        assert!(parse_url("/v2/").is_err());
        assert!(parse_url("reg:5000/v2/").is_err());
    }

    #[test]
    fn certs_d_lists_crt_files_only() {
        let t = tempfile::tempdir().unwrap();
        assert!(extra_ca_files(&t.path().join("absent")).unwrap().is_empty());
        for f in ["ca.crt", "b.crt", "client.key", "client.cert"] {
            std::fs::write(t.path().join(f), "x").unwrap();
        }
        let names: Vec<String> = extra_ca_files(t.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["b.crt", "ca.crt"]);
    }

    #[test]
    fn a_bad_ca_file_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("reg:1")).unwrap();
        std::fs::write(t.path().join("reg:1/ca.crt"), "not pem").unwrap();
        let tr = Transport::new(t.path());
        let e = tr.tls_config("reg:1").unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        assert!(tr.tls_config("reg:2").is_ok());
    }
}
