//! `berth image pull` against real registries, as root: Debian's `docker-registry` (the
//! distribution project's registry 2.8) started by each test on `127.0.0.1:<free port>` with
//! its own config and storage directory, and a private `berthd` driven by the real `berth`.
//!
//! Images get into the registry by a minimal push written here (blob upload: POST, then a
//! monolithic PUT; then PUT of the manifest) to a second, unauthenticated plain-HTTP
//! registry process serving the same storage directory — so the registry under test can
//! require TLS or authentication without the push having to speak it.
//!
//! Proves: plain HTTP only with `--insecure-registry` (and a clear error without it); an OCI
//! index narrowed to linux/amd64 (`--platform linux/arm64` picks the other one); Docker v2
//! manifests and manifest lists; HTTPS verified against a CA in `BERTH_CERTS_DIR/<host:port>/`
//! (refused without it); basic auth (htpasswd) with credentials from the environment and from
//! a Docker-format file; bearer-token auth against a token server written here that the
//! registry trusts (it checks our ES256 JWTs against the certificate we configured); a
//! tampered blob is refused and nothing is stored; the pulled image runs with `berth run`;
//! the worker pulls a task's missing image.

// Test code: a panic with its location is the failure report.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use berth_tests::image::{BuiltImage, RELEASE, TestImage, sha256_digest};
use berth_tests::{bins, wait};
use serde_json::{Value, json};

static N: AtomicU32 = AtomicU32::new(0);

const REPO: &str = "berth/busybox";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// cgroup hierarchies the runtime uses on this machine.
const CGROUP_ROOTS: [&str; 10] = [
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/cpuacct",
    "/sys/fs/cgroup/pids",
    "/sys/fs/cgroup/cpuset",
    "/sys/fs/cgroup/blkio",
    "/sys/fs/cgroup/freezer",
    "/sys/fs/cgroup/devices",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
];

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

// ---- a minimal blocking HTTP/1.1 client (push, probes) ---------------------------------

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `Connection: close`; the body of the answer is read and dropped.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("answer has no header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse { status, headers })
}

/// Uploads a blob (POST for a session, then one monolithic PUT) unless the registry has it.
fn push_blob(addr: &str, repo: &str, bytes: &[u8]) -> anyhow::Result<String> {
    let digest = sha256_digest(bytes);
    let r = http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    )?;
    ensure!(r.status == 202, "starting an upload: {}", r.status);
    let location = r.header("location").context("upload without Location")?;
    let path = match location.find("/v2/") {
        Some(i) => &location[i..],
        None => bail!("odd upload location {location:?}"),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    let r = http(
        addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )?;
    ensure!(
        r.status == 201,
        "finishing the upload of {digest}: {}",
        r.status
    );
    Ok(digest)
}

fn push_manifest(
    addr: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
) -> anyhow::Result<String> {
    let r = http(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        bytes,
    )?;
    ensure!(
        r.status == 201,
        "pushing manifest {reference}: {} (registry log has the reason)",
        r.status
    );
    Ok(sha256_digest(bytes))
}

/// Pushes an image's config and layers; returns the OCI manifest's digest (pushed by digest).
fn push_oci(addr: &str, repo: &str, image: &BuiltImage) -> anyhow::Result<String> {
    push_blob(addr, repo, &image.config_bytes()?)?;
    for l in &image.layers {
        push_blob(addr, repo, &l.blob)?;
    }
    let manifest = image.manifest_bytes()?;
    let digest = sha256_digest(&manifest);
    push_manifest(addr, repo, &digest, OCI_MANIFEST, &manifest)
}

/// The image's manifest with Docker v2 media types (gzip layers).
fn docker_manifest(image: &BuiltImage) -> anyhow::Result<Vec<u8>> {
    let config = image.config_bytes()?;
    let layers: Vec<Value> = image
        .layers
        .iter()
        .map(|l| json!({"mediaType": DOCKER_LAYER, "size": l.blob.len(), "digest": l.digest}))
        .collect();
    Ok(serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.len(), "digest": sha256_digest(&config)},
        "layers": layers,
    }))?)
}

fn index_of(media_type: &str, entries: &[(&str, &[u8], &str)]) -> anyhow::Result<Vec<u8>> {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(mt, bytes, arch)| {
            json!({"mediaType": mt, "size": bytes.len(), "digest": sha256_digest(bytes),
                   "platform": {"architecture": arch, "os": "linux"}})
        })
        .collect();
    Ok(serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
    )?)
}

// ---- registries -------------------------------------------------------------------------

enum Auth {
    None,
    Htpasswd(PathBuf),
    Token { realm: String, bundle: PathBuf },
}

const TOKEN_SERVICE: &str = "berth-test-registry";
const TOKEN_ISSUER: &str = "berth-test-issuer";

/// One `docker-registry serve` process; killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Registry {
    fn start(
        dir: &Path,
        storage: &Path,
        tls: Option<(&Path, &Path)>,
        auth: &Auth,
    ) -> anyhow::Result<Registry> {
        let name = unique("registry");
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: {name}\n",
                storage.display()
            );
            if let Some((cert, key)) = tls {
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ));
            }
            match auth {
                Auth::None => {}
                Auth::Htpasswd(file) => config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    file.display()
                )),
                Auth::Token { realm, bundle } => config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    bundle.display()
                )),
            }
            let cfg = dir.join(format!("{name}-{port}.yml"));
            fs::write(&cfg, config)?;
            let log = dir.join(format!("{name}-{port}.log"));
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::from(fs::File::create(&log)?))
                .stderr(Stdio::from(fs::File::create(&log)?))
                .spawn()
                .context("starting docker-registry (apt-get install docker-registry)")?;
            let mut reg = Registry { child, port, log };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(reg);
                }
                if reg.child.try_wait()?.is_some() {
                    last = fs::read_to_string(&reg.log).unwrap_or_default();
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "registry did not listen: {}",
                    fs::read_to_string(&reg.log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last.contains("address already in use") {
                bail!("registry exited: {last}");
            }
        }
        bail!("no free port for the registry: {last}")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 it signed (PEM).
struct Pki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> anyhow::Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["localhost".to_string()])?;
    p.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = p.signed_by(&key, &issuer)?;
    let pki = Pki {
        ca_pem: ca_cert.pem(),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    fs::write(&pki.cert, cert.pem())?;
    fs::write(&pki.key, key.serialize_pem())?;
    Ok(pki)
}

// ---- a token server the registry trusts ---------------------------------------------------

/// What the token server was asked.
#[derive(Clone, Debug)]
struct TokenRequest {
    query: String,
    user: Option<String>,
}

/// Hands out ES256 JWTs (x5c = our certificate, which the registry's `rootcertbundle` holds)
/// to callers presenting `user:password` with basic auth; refuses everyone else.
struct TokenServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<TokenRequest>>>,
    bundle: PathBuf,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// ECDSA ASN.1 DER `SEQUENCE { r INTEGER, s INTEGER }` → JOSE's fixed 64-byte `r || s`.
fn der_to_jose(der: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(der.len() > 8 && der[0] == 0x30, "not a DER sequence");
    let mut i = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        ensure!(der[i] == 0x02, "not a DER integer");
        let len = der[i + 1] as usize;
        let mut int = &der[i + 2..i + 2 + len];
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        ensure!(int.len() <= 32, "integer too long");
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    Ok(out)
}

impl TokenServer {
    fn start(dir: &Path, user: &'static str, password: &'static str) -> anyhow::Result<Self> {
        use rcgen::{CertificateParams, DnType, KeyPair, SigningKey};
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name
            .push(DnType::CommonName, "berth test token issuer");
        let cert = p.self_signed(&key)?;
        let bundle = dir.join(format!("{}.pem", unique("token-issuer")));
        fs::write(&bundle, cert.pem())?;
        let x5c = STANDARD.encode(cert.der().as_ref());
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop2, seen2) = (Arc::clone(&stop), Arc::clone(&seen));
        let expected = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let mut stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let query = target
                    .split_once('?')
                    .map(|(_, q)| q)
                    .unwrap_or("")
                    .to_string();
                let auth = head.lines().find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_string())
                });
                let ok = auth.as_deref() == Some(expected.as_str());
                seen2.lock().unwrap().push(TokenRequest {
                    query: percent_decode(&query),
                    user: ok.then(|| user.to_string()),
                });
                let (status, body) = if ok {
                    let scope = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("scope="))
                        .map(percent_decode)
                        .unwrap_or_default();
                    let mut access = Vec::new();
                    let parts: Vec<&str> = scope.splitn(3, ':').collect();
                    if parts.len() == 3 && parts[0] == "repository" {
                        access.push(json!({"type": "repository", "name": parts[1],
                                           "actions": ["pull"]}));
                    }
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
                    let claims = json!({"iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE,
                        "exp": now + 300, "nbf": now - 10, "iat": now,
                        "jti": unique("jti"), "access": access});
                    let signing_input = format!(
                        "{}.{}",
                        URL_SAFE_NO_PAD.encode(header.to_string()),
                        URL_SAFE_NO_PAD.encode(claims.to_string())
                    );
                    let sig = der_to_jose(&key.sign(signing_input.as_bytes()).unwrap()).unwrap();
                    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig));
                    (
                        "200 OK",
                        json!({"token": token, "expires_in": 300}).to_string(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
                            .to_string(),
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(TokenServer {
            port,
            stop,
            thread: Some(thread),
            seen,
            bundle,
        })
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- a private berthd ---------------------------------------------------------------------

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A berthd with its own data directory, socket, cgroup parent and pull settings
/// (`BERTH_CERTS_DIR=<tmp>/certs.d`, `BERTH_REGISTRY_AUTH_FILE=<tmp>/auth.json`); `berth`
/// runs with `BERTH_CONFIG=<tmp>/client` and no credentials in its environment.
struct Node {
    tmp: tempfile::TempDir,
    daemon: Option<Child>,
    parent: String,
}

impl Node {
    fn start() -> Node {
        wait::init_test_logging();
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "registry tests run containers and need root"
        );
        let tmp = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(tmp.path().join("certs.d")).unwrap();
        fs::create_dir_all(tmp.path().join("client")).unwrap();
        let mut node = Node {
            tmp,
            daemon: None,
            parent: unique("berth-test"),
        };
        let log = fs::File::create(node.tmp.path().join("berthd.log")).unwrap();
        let child = Command::new(bins::berthd().unwrap())
            .arg("--data-dir")
            .arg(node.data_dir())
            .arg("--socket")
            .arg(node.socket())
            .args(["--cgroup-parent", &node.parent])
            .env("BERTH_CERTS_DIR", node.certs_dir())
            .env(
                "BERTH_REGISTRY_AUTH_FILE",
                node.tmp.path().join("auth.json"),
            )
            .env_remove("BERTH_INSECURE_REGISTRIES")
            .env_remove("BERTH_ALLOW_DOCKER_HUB")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        node.daemon = Some(child);
        wait::wait_until(Duration::from_secs(20), "berthd answers", || {
            Ok(node.berth(&["info"]).code == 0)
        })
        .unwrap();
        node
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.tmp.path().join("run/berthd.sock")
    }

    fn certs_dir(&self) -> PathBuf {
        self.tmp.path().join("certs.d")
    }

    fn berth_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(bins::berth().unwrap());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("BERTH_CONFIG", self.tmp.path().join("client"))
            .env_remove("BERTH_REGISTRY_USER")
            .env_remove("BERTH_REGISTRY_PASSWORD")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap().into()
    }

    fn berth(&self, args: &[&str]) -> Run {
        self.berth_env(args, &[])
    }

    fn ok_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let r = self.berth_env(args, env);
        assert_eq!(
            r.code,
            0,
            "berth {args:?} failed: {}{}\ndaemon log:\n{}",
            r.stdout,
            r.stderr,
            fs::read_to_string(self.tmp.path().join("berthd.log")).unwrap_or_default()
        );
        r.stdout
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_env(args, &[])
    }

    /// `berth args` must fail; returns stderr.
    fn err(&self, args: &[&str]) -> String {
        let r = self.berth(args);
        assert_ne!(r.code, 0, "berth {args:?} should fail: {}", r.stdout);
        r.stderr
    }

    /// Nothing of a pull is left in the store's work area.
    fn assert_no_pull_leftovers(&self) {
        let tmp = self.data_dir().join("images/tmp");
        let left: Vec<_> = fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in the store's work area: {left:?}");
    }

    fn image_count(&self) -> usize {
        self.ok(&["image", "ls", "-q"]).lines().count()
    }

    /// Removes containers, proves nothing is left (containers, mounts, pull work files),
    /// stops the daemon.
    fn finish(mut self) {
        for id in self.ok(&["ps", "-aq"]).lines() {
            self.ok(&["rm", "-f", id]);
        }
        assert_eq!(self.ok(&["ps", "-aq"]), "");
        let root = self.tmp.path().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&root), "mount left under {root}");
        self.assert_no_pull_leftovers();
        self.stop_daemon();
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for id in self.berth(&["ps", "-aq"]).stdout.lines() {
                let _ = self.berth(&["rm", "-f", id]);
            }
            self.stop_daemon();
        }
        for root in CGROUP_ROOTS {
            let _ = fs::remove_dir(Path::new(root).join(&self.parent));
        }
    }
}

/// The short ids `berth image pull` prints for an image's layers, base first.
fn short_layers(image: &BuiltImage) -> Vec<String> {
    image
        .layers
        .iter()
        .map(|l| l.digest["sha256:".len()..][..12].to_string())
        .collect()
}

fn busybox(arch: &str) -> BuiltImage {
    TestImage::busybox(format!("{REPO}:{arch}"))
        .architecture(arch)
        .build()
        .unwrap()
}

/// A writer registry (plain HTTP, open) on `storage`, for pushing.
fn writer(node: &Node, storage: &Path) -> Registry {
    Registry::start(node.dir(), storage, None, &Auth::None).unwrap()
}

// ---- tests --------------------------------------------------------------------------------

#[test]
fn plain_http_needs_insecure_registry_and_an_oci_index_is_narrowed_to_amd64() {
    let node = Node::start();
    let storage = node.dir().join("storage");
    let reg = writer(&node, &storage);
    let addr = reg.addr();

    tracing::info!("push an amd64 and an arm64 image and an OCI index of both");
    let amd = busybox("amd64");
    let arm = busybox("arm64");
    let amd_manifest = push_oci(&addr, REPO, &amd).unwrap();
    push_oci(&addr, REPO, &arm).unwrap();
    let index = index_of(
        OCI_INDEX,
        &[
            (OCI_MANIFEST, &arm.manifest_bytes().unwrap(), "arm64"),
            (OCI_MANIFEST, &amd.manifest_bytes().unwrap(), "amd64"),
        ],
    )
    .unwrap();
    let index_digest = push_manifest(&addr, REPO, "multi", OCI_INDEX, &index).unwrap();
    push_manifest(
        &addr,
        REPO,
        "1",
        OCI_MANIFEST,
        &amd.manifest_bytes().unwrap(),
    )
    .unwrap();
    let reference = format!("{addr}/{REPO}:multi");

    tracing::info!("HTTPS is the default: a plain-HTTP registry is a clear error");
    let err = node.err(&["image", "pull", &reference]);
    assert!(err.contains("TLS handshake with"), "{err}");
    assert!(err.contains("--insecure-registry"), "{err}");
    assert_eq!(node.image_count(), 0);

    tracing::info!("with --insecure-registry the index resolves to the amd64 manifest");
    let out = node.ok(&["image", "pull", "--insecure-registry", &reference]);
    let mut want = vec![format!("multi: Pulling from {REPO}")];
    want.extend(
        short_layers(&amd)
            .iter()
            .map(|s| format!("{s}: Pull complete")),
    );
    want.push(format!("Digest: {index_digest}"));
    want.push(format!("Status: Downloaded newer image for {reference}"));
    want.push(reference.clone());
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    let id = node.ok(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    assert_eq!(id.trim(), amd.config_digest().unwrap());
    let arch = node.ok(&["image", "inspect", "-f", "{{.Architecture}}", &reference]);
    assert_eq!(arch.trim(), "amd64");

    tracing::info!("the pulled image runs");
    let out = node.ok(&["run", "--rm", &reference, "cat", "/etc/berth-release"]);
    assert_eq!(out, RELEASE);

    tracing::info!("pulling again: up to date; another tag of the same image: layers exist");
    let again = node.ok(&["image", "pull", "--insecure-registry", &reference]);
    assert!(
        again.contains(&format!("Status: Image is up to date for {reference}")),
        "{again}"
    );
    let one = format!("{addr}/{REPO}:1");
    let out = node.ok(&["image", "pull", "--insecure-registry", &one]);
    for s in short_layers(&amd) {
        assert!(out.contains(&format!("{s}: Already exists")), "{out}");
    }
    assert!(out.contains(&format!("Digest: {amd_manifest}")), "{out}");
    let by_digest = format!("{addr}/{REPO}@{amd_manifest}");
    node.ok(&["image", "pull", "--insecure-registry", &by_digest]);
    assert_eq!(node.image_count(), 1, "one image under three names");

    tracing::info!("--platform linux/arm64 picks the other manifest of the index");
    node.ok(&[
        "image",
        "pull",
        "--insecure-registry",
        "--platform",
        "linux/arm64",
        &reference,
    ]);
    let id = node.ok(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    assert_eq!(id.trim(), arm.config_digest().unwrap());

    tracing::info!("a tag the registry lacks is the registry's message");
    let err = node.err(&[
        "image",
        "pull",
        "--insecure-registry",
        &format!("{addr}/{REPO}:nope"),
    ]);
    assert_eq!(
        err,
        format!("Error: manifest for {addr}/{REPO}:nope not found: manifest unknown\n")
    );
    node.finish();
    drop(reg);
}

#[test]
fn https_with_a_custom_ca_serves_docker_v2_manifest_lists() {
    let node = Node::start();
    let storage = node.dir().join("storage");
    let w = writer(&node, &storage);
    let pki = make_pki(node.dir(), "reg").unwrap();
    let reg = Registry::start(
        node.dir(),
        &storage,
        Some((&pki.cert, &pki.key)),
        &Auth::None,
    )
    .unwrap();
    let addr = reg.addr();

    tracing::info!("push Docker v2 manifests and a manifest list");
    let amd = busybox("amd64");
    let arm = busybox("arm64");
    let mut entries = Vec::new();
    for img in [&arm, &amd] {
        push_blob(&w.addr(), REPO, &img.config_bytes().unwrap()).unwrap();
        for l in &img.layers {
            push_blob(&w.addr(), REPO, &l.blob).unwrap();
        }
        let m = docker_manifest(img).unwrap();
        push_manifest(&w.addr(), REPO, &sha256_digest(&m), DOCKER_MANIFEST, &m).unwrap();
        entries.push(m);
    }
    let list = index_of(
        DOCKER_LIST,
        &[
            (DOCKER_MANIFEST, &entries[0], "arm64"),
            (DOCKER_MANIFEST, &entries[1], "amd64"),
        ],
    )
    .unwrap();
    let list_digest = push_manifest(&w.addr(), REPO, "v2", DOCKER_LIST, &list).unwrap();
    let reference = format!("{addr}/{REPO}:v2");

    tracing::info!("without the CA the certificate is refused, with a pointer to certs.d");
    let err = node.err(&["image", "pull", &reference]);
    let ca_path = node.certs_dir().join(&addr).join("ca.crt");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains(&ca_path.display().to_string()), "{err}");
    assert_eq!(node.image_count(), 0);

    tracing::info!("with the CA in certs.d/<host:port>/ca.crt the pull works");
    fs::create_dir_all(ca_path.parent().unwrap()).unwrap();
    fs::write(&ca_path, &pki.ca_pem).unwrap();
    let out = node.ok(&["image", "pull", &reference]);
    assert!(out.contains(&format!("Digest: {list_digest}")), "{out}");
    let id = node.ok(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    assert_eq!(id.trim(), amd.config_digest().unwrap());
    let out = node.ok(&["run", "--rm", &reference, "cat", "/etc/berth-release"]);
    assert_eq!(out, RELEASE);

    tracing::info!("--insecure-registry speaks HTTP, which a TLS registry refuses");
    let err = node.err(&["image", "pull", "--insecure-registry", &reference]);
    assert!(err.contains("answered 400"), "{err}");
    node.finish();
    drop((reg, w));
}

#[test]
fn basic_auth_takes_credentials_from_the_environment_or_a_credentials_file() {
    let node = Node::start();
    let storage = node.dir().join("storage");
    let w = writer(&node, &storage);
    let pki = make_pki(node.dir(), "basic").unwrap();
    let htpasswd = node.dir().join("htpasswd");
    let made = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["alice", "s3cret"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(made.status.success(), "{made:?}");
    let reg = Registry::start(
        node.dir(),
        &storage,
        Some((&pki.cert, &pki.key)),
        &Auth::Htpasswd(htpasswd),
    )
    .unwrap();
    let addr = reg.addr();
    let ca_path = node.certs_dir().join(&addr).join("ca.crt");
    fs::create_dir_all(ca_path.parent().unwrap()).unwrap();
    fs::write(&ca_path, &pki.ca_pem).unwrap();
    let amd = busybox("amd64");
    push_oci(&w.addr(), REPO, &amd).unwrap();
    push_manifest(
        &w.addr(),
        REPO,
        "1",
        OCI_MANIFEST,
        &amd.manifest_bytes().unwrap(),
    )
    .unwrap();
    let reference = format!("{addr}/{REPO}:1");

    tracing::info!("anonymous and wrong credentials are refused");
    let err = node.err(&["image", "pull", &reference]);
    assert!(err.contains("unauthorized"), "{err}");
    assert!(err.contains("requires credentials"), "{err}");
    let bad = node.berth_env(
        &["image", "pull", &reference],
        &[
            ("BERTH_REGISTRY_USER", "alice"),
            ("BERTH_REGISTRY_PASSWORD", "wrong"),
        ],
    );
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("unauthorized"), "{}", bad.stderr);
    assert_eq!(node.image_count(), 0);

    tracing::info!("credentials from BERTH_REGISTRY_USER/PASSWORD");
    node.ok_env(
        &["image", "pull", &reference],
        &[
            ("BERTH_REGISTRY_USER", "alice"),
            ("BERTH_REGISTRY_PASSWORD", "s3cret"),
        ],
    );
    assert_eq!(node.image_count(), 1);
    node.ok(&["image", "rm", &reference]);
    assert_eq!(node.image_count(), 0);

    tracing::info!("credentials from $BERTH_CONFIG/config.json (docker login's format)");
    let config = json!({"auths": {addr.clone(): {"auth": STANDARD.encode("alice:s3cret")}}});
    fs::write(node.dir().join("client/config.json"), config.to_string()).unwrap();
    node.ok(&["image", "pull", &reference]);
    let out = node.ok(&["run", "--rm", &reference, "cat", "/etc/berth-release"]);
    assert_eq!(out, RELEASE);
    node.finish();
    drop((reg, w));
}

#[test]
fn token_auth_gets_a_bearer_token_the_registry_verifies() {
    let node = Node::start();
    let storage = node.dir().join("storage");
    let w = writer(&node, &storage);
    let tokens = TokenServer::start(node.dir(), "bob", "hunter2").unwrap();
    let reg = Registry::start(
        node.dir(),
        &storage,
        None,
        &Auth::Token {
            realm: tokens.realm(),
            bundle: tokens.bundle.clone(),
        },
    )
    .unwrap();
    let addr = reg.addr();
    let amd = busybox("amd64");
    push_oci(&w.addr(), REPO, &amd).unwrap();
    push_manifest(
        &w.addr(),
        REPO,
        "1",
        OCI_MANIFEST,
        &amd.manifest_bytes().unwrap(),
    )
    .unwrap();
    let reference = format!("{addr}/{REPO}:1");

    tracing::info!("the registry really demands a token");
    let r = http(&addr, "GET", &format!("/v2/{REPO}/manifests/1"), &[], b"").unwrap();
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    let forged = format!(
        "Bearer {}.{}.{}",
        URL_SAFE_NO_PAD.encode("{\"alg\":\"ES256\"}"),
        URL_SAFE_NO_PAD.encode("{}"),
        URL_SAFE_NO_PAD.encode("x")
    );
    let r = http(
        &addr,
        "GET",
        &format!("/v2/{REPO}/manifests/1"),
        &[("Authorization", &forged)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 401, "a forged token must be refused");

    tracing::info!("anonymous: the token server refuses, and the pull says so");
    let err = node.err(&["image", "pull", "--insecure-registry", &reference]);
    assert!(err.contains("anonymous access was refused"), "{err}");

    tracing::info!("with credentials: a token for repository:{REPO}:pull, then the pull");
    node.ok_env(
        &["image", "pull", "--insecure-registry", &reference],
        &[
            ("BERTH_REGISTRY_USER", "bob"),
            ("BERTH_REGISTRY_PASSWORD", "hunter2"),
        ],
    );
    let granted: Vec<TokenRequest> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.user.is_some())
        .collect();
    assert!(!granted.is_empty(), "{:?}", tokens.requests());
    for r in &granted {
        assert!(
            r.query.contains(&format!("service={TOKEN_SERVICE}")),
            "{r:?}"
        );
        assert!(
            r.query.contains(&format!("scope=repository:{REPO}:pull")),
            "{r:?}"
        );
    }
    let id = node.ok(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    assert_eq!(id.trim(), amd.config_digest().unwrap());
    node.finish();
    drop((reg, w, tokens));
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_stored() {
    let node = Node::start();
    let storage = node.dir().join("storage");
    let reg = writer(&node, &storage);
    let addr = reg.addr();
    let amd = busybox("amd64");
    push_oci(&addr, REPO, &amd).unwrap();
    push_manifest(
        &addr,
        REPO,
        "1",
        OCI_MANIFEST,
        &amd.manifest_bytes().unwrap(),
    )
    .unwrap();

    tracing::info!("flip one byte of the top layer's blob in the registry's storage");
    let top = amd.layers.last().unwrap();
    let hex = &top.digest["sha256:".len()..];
    let data = storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, &bytes).unwrap();

    let err = node.err(&[
        "image",
        "pull",
        "--insecure-registry",
        &format!("{addr}/{REPO}:1"),
    ]);
    assert!(
        err.contains(&format!("digest mismatch for layer 2 blob {}", top.digest)),
        "{err}"
    );
    assert_eq!(node.image_count(), 0);
    let blobs = node.data_dir().join("images/blobs/sha256");
    for l in &amd.layers {
        assert!(
            !blobs.join(&l.digest["sha256:".len()..]).exists(),
            "blob {} was kept",
            l.digest
        );
    }
    node.finish();
    drop(reg);
}

/// The worker's controller pulls a task's missing image from the registry it names.
#[test]
fn the_worker_pulls_a_missing_image() {
    use berth_agent::engine::{Engine, EngineConfig};
    use berth_agent::runtime::HelperBinary;
    use berth_agent::worker::{Dependencies, EngineExecutor, ExecError, Executor};
    use berth_proto::v1::{Annotations, ContainerSpec, Task, TaskSpec};

    wait::init_test_logging();
    assert!(nix::unistd::Uid::effective().is_root(), "needs root");
    let tmp = tempfile::Builder::new()
        .prefix("berth-registry-worker-")
        .tempdir()
        .unwrap();
    let parent = unique("berth-test");
    let storage = tmp.path().join("storage");
    let reg = Registry::start(tmp.path(), &storage, None, &Auth::None).unwrap();
    let addr = reg.addr();
    let amd = busybox("amd64");
    push_oci(&addr, REPO, &amd).unwrap();
    push_manifest(
        &addr,
        REPO,
        "w",
        OCI_MANIFEST,
        &amd.manifest_bytes().unwrap(),
    )
    .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let mut cfg = EngineConfig::new(tmp.path().join("data"), parent.clone());
        cfg.helper = HelperBinary::Path(bins::binary("berth-runtime")?);
        cfg.pull.certs_dir = tmp.path().join("certs.d");
        cfg.pull.auth_file = None;
        cfg.pull.insecure_registries = vec![addr.clone()];
        cfg.pull.docker_hub = false;
        let engine = Engine::open_with(cfg).await?;
        let executor = EngineExecutor::new(engine.clone());
        let task = |id: &str, image: String| Task {
            id: id.into(),
            service_id: "svc".into(),
            node_id: "n1".into(),
            slot: 1,
            service_annotations: Some(Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            spec: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image,
                    args: vec!["true".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };

        tracing::info!("an image on the registry: pulled, then the task runs to exit 0");
        let image = format!("{addr}/{REPO}:w");
        let c = executor.controller(&task("t1", image.clone()), Dependencies::default())?;
        c.prepare().await?;
        let info = engine
            .image_inspect(berth_proto::v1::ImageInspectRequest { image })
            .await?;
        ensure!(
            info.image.unwrap_or_default().id == amd.config_digest()?,
            "pulled image has the wrong id"
        );
        c.start().await?;
        let exit = c.wait().await?;
        ensure!(exit.code == 0, "exit {exit:?}");
        c.remove().await?;

        tracing::info!("a tag the registry lacks: rejected with the pull's reason");
        let c = executor.controller(
            &task("t2", format!("{addr}/{REPO}:gone")),
            Dependencies::default(),
        )?;
        match c.prepare().await {
            Err(ExecError::Failed(msg)) => ensure!(
                msg.starts_with(&format!(
                    "No such image: {addr}/{REPO}:gone: pulling it failed: manifest for"
                )),
                "{msg}"
            ),
            other => bail!("expected a failed pull, got {other:?}"),
        }

        tracing::info!("a Docker Hub name on a node without Hub access: not pullable");
        let c = executor.controller(
            &task("t3", "nope/missing:1".into()),
            Dependencies::default(),
        )?;
        match c.prepare().await {
            Err(ExecError::ImageNotFound { image }) => ensure!(image == "nope/missing:1"),
            other => bail!("expected ImageNotFound, got {other:?}"),
        }
        let left = fs::read_dir(tmp.path().join("data/images/tmp"))?.count();
        ensure!(left == 0, "{left} work files left");
        anyhow::Ok(())
    });
    for root in CGROUP_ROOTS {
        let _ = fs::remove_dir(Path::new(root).join(&parent));
    }
    if let Err(e) = result {
        panic!("{e:#}\nregistry log:\n{}", reg.log());
    }
}
