//! The ingress's HTTPS listener in the real daemon: the control domain's API and
//! registry over TLS, services over HTTP/2 and HTTP/1.1 with their forwarding
//! headers, the ingress's own statuses over TLS, and WebSockets to a container.
//! (Redirects, the rapid-reset guard and the upstream deadline's edges are tested
//! in-process: `src/ingress/proxy.rs`, `src/http/serve.rs`.)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::deployments::{busybox_layer, deploy, layer, node, project_id, push, service, settle};
use crate::harness::{ADMIN_PASSWORD, Berth, TempDir, get_as, require_tool};

/// What curl got.
pub struct Got {
    pub status: u16,
    /// `1.1` or `2`.
    pub version: String,
    /// The response head as received.
    pub head: String,
    pub body: Vec<u8>,
    pub took: Duration,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// curl with `args`, trusting any certificate (-k): the listener's own is the
/// self-signed fallback.
/// [`curl`] over HTTP/2, with the `--resolve` entry `resolve` (`host:port:127.0.0.1`).
fn h2(resolve: &str, args: &[&str]) -> Got {
    curl(&[&["--http2", "--resolve", resolve], args].concat())
}

pub fn curl(args: &[&str]) -> Got {
    let dir = TempDir::new("curl");
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "60", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("run curl");
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = said.split_once(' ').unwrap_or(("0", ""));
    Got {
        status: status
            .parse()
            .unwrap_or_else(|_| panic!("curl {args:?}: {said} {}", String::from_utf8_lossy(&out.stderr))),
        version: version.to_string(),
        head: std::fs::read_to_string(&head).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        took,
    }
}

/// `--resolve` for `host` to the loopback HTTPS listener at `port`.
fn resolve(host: &str, port: u16) -> String {
    format!("{host}:{port}:127.0.0.1")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn the_control_domain_serves_the_api_and_the_registry_over_tls() {
    if !require_tool("curl", &["--version"]) {
        return;
    }
    // Any free port: the registry's token realm names the one the listener got.
    let b = Berth::start("[ingress]\ncontrol_domain = \"berth.test\"\nhttps_listen = \"127.0.0.1:0\"\n");
    let port = b.https_addr().port();
    assert_ne!(port, 0);
    let res = resolve("berth.test", port);
    let base = format!("https://berth.test:{port}");
    let json_body = |v: Value| v.to_string();

    // First user, over TLS, with the bootstrap token.
    let boot = format!("Authorization: Bearer {}", b.bootstrap_token());
    let r = curl(&[
        "--resolve",
        &res,
        "-X",
        "POST",
        "-H",
        &boot,
        "-H",
        "Content-Type: application/json",
        "-d",
        &json_body(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        &format!("{base}/v1/bootstrap"),
    ]);
    assert_eq!(r.status, 201, "bootstrap over TLS: {}", r.text());
    // Login over HTTP/2.
    let r = h2(
        &res,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &json_body(json!({"username": "admin", "password": ADMIN_PASSWORD})),
            &format!("{base}/v1/auth/login"),
        ],
    );
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{}", r.text());
    let token: Value = serde_json::from_slice(&r.body).unwrap();
    let auth = format!("Authorization: Bearer {}", token["token"].as_str().unwrap());
    assert!(r.header("x-request-id").is_some_and(|id| id.starts_with("req_")), "{}", r.head);
    let r = curl(&["--resolve", &res, "-H", &auth, &format!("{base}/v1/me")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = curl(&[
        "--resolve",
        &res,
        "-X",
        "POST",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        &json_body(json!({"name": "alpha"})),
        &format!("{base}/v1/projects"),
    ]);
    assert_eq!(r.status, 201, "{}", r.text());
    let create_id = r.header("x-request-id").expect("a request id");

    // A push and a pull through the control domain give back the same bytes.
    let dir = TempDir::new("ctl");
    let blob = crate::registry::random(3 * 1024 * 1024 + 17, 11);
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    for bytes in [&blob, &config] {
        let file = write(dir.path(), "blob", bytes);
        let digest = crate::registry::digest(bytes);
        let r = h2(
            &res,
            &[
                "-X",
                "POST",
                "-H",
                &auth,
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{file}"),
                &format!("{base}/v2/alpha/app/blobs/uploads/?digest={digest}"),
            ],
        );
        assert_eq!(r.status, 201, "blob push over TLS: {}", r.text());
    }
    let manifest = crate::registry::image_manifest(&config, &[&blob]);
    let file = write(dir.path(), "manifest", &manifest);
    let r = curl(&[
        "--resolve",
        &res,
        "-X",
        "PUT",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{file}"),
        &format!("{base}/v2/alpha/app/manifests/v1"),
    ]);
    assert_eq!(r.status, 201, "manifest push over TLS: {}", r.text());
    let r = h2(
        &res,
        &[
            "-H",
            &auth,
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("{base}/v2/alpha/app/manifests/v1"),
        ],
    );
    assert_eq!((r.status, r.body == manifest), (200, true), "manifest pull: {}", r.text());
    let r = h2(&res, &["-H", &auth, &format!("{base}/v2/alpha/app/blobs/{}", crate::registry::digest(&blob))]);
    assert_eq!(r.status, 200);
    assert!(r.body == blob, "the blob pulled over HTTP/2 differs ({} bytes)", r.body.len());
    // The registry's token realm points at the control domain on the HTTPS port.
    let r = curl(&["--resolve", &res, &format!("{base}/v2/")]);
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(&format!("realm=\"https://berth.test:{port}/v2/token\"")), "{challenge}");

    // Without a certificate of its own the domain is not redirected: plain HTTP on
    // the ingress reaches the API too.
    let plain = get_as(b.ingress_addr(), "berth.test", "/healthz").unwrap();
    assert_eq!((plain.status, plain.text().contains("ok")), (200, true), "{}", plain.text());
    // Other hosts on the ingress are not the API.
    let other = resolve("other.test", port);
    let r = curl(&["--resolve", &other, &format!("https://other.test:{port}/healthz")]);
    assert_eq!(r.status, 404);
    assert!(r.header("x-request-id").is_some(), "{}", r.head);
    // The audit saw the caller's address and the ingress's request id.
    let admin = b.admin_session();
    let audit = admin.get("/v1/audit?limit=100").json();
    let created = audit["data"].as_array().unwrap().iter().find(|e| e["action"] == "POST /v1/projects");
    let created = created.unwrap_or_else(|| panic!("no audit entry for the project: {audit}"));
    assert_eq!(created["source_addr"], "127.0.0.1", "{created}");
    assert_eq!(created["request_id"].as_str(), Some(create_id.as_str()), "{created}");
}

/// A busybox httpd image: a page, `/health`, a CGI printing its environment (the
/// request's headers among it) and one that never answers.
fn push_site(c: &crate::harness::Client) -> String {
    let env = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv\n";
    let hang = b"#!/bin/sh\nsleep 600\n";
    let files: Vec<(&str, &[u8], u32)> = vec![
        ("www/index.html", b"over tls\n", 0o644),
        ("www/health", b"ok\n", 0o644),
        ("www/cgi-bin/env", env, 0o755),
        ("www/cgi-bin/hang", hang, 0o755),
    ];
    push(c, "alpha/site", "v1", &[busybox_layer(), layer(&files)], crate::deployments::HTTPD)
}

#[test]
fn services_answer_over_https_and_http2_with_the_ingress_statuses() {
    if !crate::runtime::can_run() || !require_tool("curl", &["--version"]) {
        return;
    }
    let (node, admin) = node("[ingress]\nupstream_timeout_seconds = 3\n");
    let project = project_id(&admin, "alpha");
    push_site(&admin);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep = deploy(&admin, &svc, "alpha/site", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");
    let port = node.b.https_addr().port();
    let host = "web.alpha.localhost";
    let res = resolve(host, port);
    let url = |path: &str| format!("https://{host}:{port}{path}");

    // HTTP/2 by ALPN, and HTTP/1.1 when the client asks for it.
    let r = h2(&res, &[&url("/")]);
    assert_eq!((r.status, r.version.as_str(), r.text().as_str()), (200, "2", "over tls\n"), "{}", r.head);
    assert!(r.head.starts_with("HTTP/2 200"), "{}", r.head);
    let r = curl(&["--http1.1", "--resolve", &res, &url("/")]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"));

    // The replica sees who asked, how, and the request's id, whatever the client claimed.
    let r = h2(
        &res,
        &[
            "-H",
            "X-Forwarded-For: 203.0.113.7",
            "-H",
            "X-Forwarded-Proto: http",
            "-H",
            "X-Request-Id: mine",
            &url("/cgi-bin/env"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let env = r.text();
    let id = r.header("x-request-id").expect("the response carries the request id");
    for line in [
        "HTTP_X_FORWARDED_PROTO=https".to_string(),
        "HTTP_X_FORWARDED_FOR=127.0.0.1".to_string(),
        format!("HTTP_X_FORWARDED_HOST={host}:{port}"),
        format!("HTTP_X_REQUEST_ID={id}"),
    ] {
        assert!(env.lines().any(|l| l.eq_ignore_ascii_case(&line)), "{line} not in:\n{env}");
    }
    assert_ne!(id, "mine");
    // Plain HTTP says so (no certificate of its own: no redirect).
    let plain = get_as(node.b.ingress_addr(), host, "/cgi-bin/env").unwrap();
    assert_eq!(plain.status, 200);
    assert!(plain.text().lines().any(|l| l == "HTTP_X_FORWARDED_PROTO=http"), "{}", plain.text());

    // The ingress's own statuses hold over TLS.
    let other = resolve("nothing.alpha.localhost", port);
    let r = h2(&other, &[&format!("https://nothing.alpha.localhost:{port}/")]);
    assert_eq!((r.status, r.version.as_str()), (404, "2"));
    let big = format!("X-Big: {}", "a".repeat(70 * 1024));
    let r = curl(&["--http1.1", "--resolve", &res, "-H", &big, &url("/")]);
    assert_eq!(r.status, 431, "oversized head over HTTP/1.1 and TLS");
    // (Over HTTP/2 the same limit is announced in SETTINGS_MAX_HEADER_LIST_SIZE, and
    // curl then refuses to send such a head at all; a client that sends it anyway gets
    // 431: `http::serve::tests::an_http2_head_over_the_cap_gets_431_and_the_connection_goes_on`.)
    // A replica that accepts and never answers: 504 once the timeout has passed.
    let r = h2(&res, &[&url("/cgi-bin/hang")]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.took >= Duration::from_secs(3) && r.took < Duration::from_secs(15), "504 after {:?}", r.took);
    eprintln!("hanging upstream: 504 after {:?} (upstream_timeout_seconds = 3)", r.took);
    // Meanwhile and after, the service answers.
    assert_eq!(h2(&res, &[&url("/")]).status, 200);
    // No replica: 503.
    let r = admin.put(&format!("/v1/services/{svc}"), &json!({"replicas": 0}));
    assert_eq!(r.status, 200, "{}", r.text());
    crate::deployments::until(60, "the replica is gone", || (h2(&res, &[&url("/")]).status == 503).then_some(()));
    let r = curl(&["--http1.1", "--resolve", &res, &url("/")]);
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some(), "{}", r.head);
}

/// The environment variable that makes the test binary a WebSocket echo server.
const WS_PORT_ENV: &str = "WS_ECHO_PORT";

/// Not a test: the role the test binary plays inside the container of
/// [`websockets_reach_a_container_through_http_and_https`], a WebSocket echo server
/// on the port `WS_ECHO_PORT` names (its command runs exactly this function).
#[test]
#[ignore = "a role the test binary plays inside a container; does nothing without WS_ECHO_PORT"]
fn role_websocket_echo_server() {
    use futures_util::{SinkExt, StreamExt};
    let Ok(port) = std::env::var(WS_PORT_ENV) else {
        eprintln!("{WS_PORT_ENV} is not set: not the echo server's container, nothing to do");
        return;
    };
    let port: u16 = port.parse().expect("a port number");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await.unwrap();
        eprintln!("websocket echo server on port {port}");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                // Health probes connect and leave: not a handshake, nothing to do.
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// An image whose only program is this test binary (debug info stripped) with the
/// shared libraries `ldd` lists for it, run as [`role_websocket_echo_server`].
fn push_echo_image(c: &crate::harness::Client) -> String {
    let me = std::env::current_exe().unwrap();
    let work = TempDir::new("ws-img");
    let stripped = work.path().join("it");
    let ok = Command::new("objcopy").arg("--strip-debug").arg(&me).arg(&stripped).status().unwrap().success();
    assert!(ok, "objcopy --strip-debug {}", me.display());
    let ldd = Command::new("ldd").arg(&me).output().unwrap();
    let libs: Vec<String> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(path.to_string()),
                [path, ..] if path.starts_with('/') => Some(path.to_string()),
                _ => None,
            }
        })
        .collect();
    assert!(libs.iter().any(|l| l.contains("ld-linux")), "no loader in ldd's list: {libs:?}");
    let binary = std::fs::read(&stripped).unwrap();
    let contents: Vec<(String, Vec<u8>)> = libs
        .iter()
        .map(|l| (l.trim_start_matches('/').to_string(), std::fs::read(std::fs::canonicalize(l).unwrap()).unwrap()))
        .collect();
    let mut files: Vec<(&str, &[u8], u32)> = vec![("it", &binary, 0o755), ("tmp/.keep", b"", 0o644)];
    files.extend(contents.iter().map(|(p, b)| (p.as_str(), b.as_slice(), 0o755)));
    let cmd = ["/it", "--ignored", "--exact", "tls::role_websocket_echo_server", "--nocapture"];
    push(c, "alpha/echo", "v1", &[layer(&files)], &cmd)
}

/// Accepts whatever certificate the server shows: the listener's is the
/// self-signed fallback, made when the daemon started.
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection offering only http/1.1 (WebSockets upgrade HTTP/1.1).
async fn tls_to(addr: std::net::SocketAddr, host: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    #[expect(deprecated, reason = "ring, as the daemon uses (adr/019)")]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// Text and binary messages echoed over `ws`, then a clean close.
async fn echo_round<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, label: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let messages = [
        Message::text(format!("hello over {label}")),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big),
        Message::text("é ☃ 🚢".to_string()),
    ];
    for m in messages {
        ws.send(m.clone()).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap_or_else(|_| panic!("{label}: no echo"))
            .expect("the socket ended")
            .unwrap();
        assert_eq!(back, m, "{label}: the echo differs");
    }
    ws.close(None).await.unwrap();
    // The server's close frame, then the end.
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut closed = false;
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(_)) => closed = true,
                Ok(other) => panic!("{label}: {other:?} after close"),
                Err(_) => break,
            }
        }
        closed
    })
    .await
    .unwrap_or_else(|_| panic!("{label}: the close was not answered"));
    assert!(rest, "{label}: no close frame came back");
}

#[test]
fn websockets_reach_a_container_through_http_and_https() {
    if !crate::runtime::can_run() || !require_tool("objcopy", &["--version"]) || !require_tool("ldd", &["--version"]) {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_echo_image(&admin);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "ws", "port": 8080, "env": [{"key": WS_PORT_ENV, "value": "8080"}]}),
    );
    let dep = deploy(&admin, &svc, "alpha/echo", "v1");
    let d = settle(&admin, &dep, 120);
    assert_eq!(d["status"], "live", "{d}");
    let host = "ws.alpha.localhost";
    let (http, https) = (node.b.ingress_addr(), node.b.https_addr());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        let url = format!("ws://{host}:{}/echo", http.port());
        let (ws, resp) = tokio_tungstenite::client_async(url.as_str(), tcp).await.expect("ws:// handshake");
        assert_eq!(resp.status(), 101);
        assert!(resp.headers().contains_key("x-request-id"), "{resp:?}");
        echo_round(ws, "ws://").await;

        let tls = tls_to(https, host).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let url = format!("wss://{host}:{}/echo", https.port());
        let (ws, resp) = tokio_tungstenite::client_async(url.as_str(), tls).await.expect("wss:// handshake");
        assert_eq!(resp.status(), 101);
        echo_round(ws, "wss://").await;
    });
    let seen = admin.get(&format!("/v1/services/{svc}/requests?limit=10")).json();
    let upgrades = seen["data"].as_array().unwrap().iter().filter(|e| e["status"] == 101).count();
    assert_eq!(upgrades, 2, "{seen}");
    // The echo was the container's: its log has the role's line.
    let logs = admin.get(&format!("/v1/services/{svc}/logs?tail=50")).text();
    assert!(logs.contains("websocket echo server on port 8080"), "{logs}");
}
