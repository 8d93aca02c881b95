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
    // A port of its own in the config: the registry's token realm names it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let b = Berth::start(&format!("[ingress]\ncontrol_domain = \"berth.test\"\nhttps_listen = \"127.0.0.1:{port}\"\n"));
    assert_eq!(b.https_addr().port(), port);
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
    let r = curl(&[
        "--http2",
        "--resolve",
        &res,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &json_body(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        &format!("{base}/v1/auth/login"),
    ]);
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
        let r = curl(&[
            "--http2",
            "--resolve",
            &res,
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{file}"),
            &format!("{base}/v2/alpha/app/blobs/uploads/?digest={digest}"),
        ]);
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
    let r = curl(&[
        "--http2",
        "--resolve",
        &res,
        "-H",
        &auth,
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("{base}/v2/alpha/app/manifests/v1"),
    ]);
    assert_eq!((r.status, r.body == manifest), (200, true), "manifest pull: {}", r.text());
    let r = curl(&[
        "--http2",
        "--resolve",
        &res,
        "-H",
        &auth,
        &format!("{base}/v2/alpha/app/blobs/{}", crate::registry::digest(&blob)),
    ]);
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
    let r = curl(&["--http2", "--resolve", &res, &url("/")]);
    assert_eq!((r.status, r.version.as_str(), r.text().as_str()), (200, "2", "over tls\n"), "{}", r.head);
    assert!(r.head.starts_with("HTTP/2 200"), "{}", r.head);
    let r = curl(&["--http1.1", "--resolve", &res, &url("/")]);
    assert_eq!((r.status, r.version.as_str()), (200, "1.1"));

    // The replica sees who asked, how, and the request's id, whatever the client claimed.
    let r = curl(&[
        "--http2",
        "--resolve",
        &res,
        "-H",
        "X-Forwarded-For: 203.0.113.7",
        "-H",
        "X-Forwarded-Proto: http",
        "-H",
        "X-Request-Id: mine",
        &url("/cgi-bin/env"),
    ]);
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
    let r = curl(&["--http2", "--resolve", &other, &format!("https://nothing.alpha.localhost:{port}/")]);
    assert_eq!((r.status, r.version.as_str()), (404, "2"));
    let big = format!("X-Big: {}", "a".repeat(70 * 1024));
    let r = curl(&["--http1.1", "--resolve", &res, "-H", &big, &url("/")]);
    assert_eq!(r.status, 431, "oversized head over HTTP/1.1 and TLS");
    // (Over HTTP/2 the same limit is announced in SETTINGS_MAX_HEADER_LIST_SIZE;
    // curl then refuses to send such a head at all.)
    // A replica that accepts and never answers: 504 once the timeout has passed.
    let r = curl(&["--http2", "--resolve", &res, &url("/cgi-bin/hang")]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.took >= Duration::from_secs(3) && r.took < Duration::from_secs(15), "504 after {:?}", r.took);
    eprintln!("hanging upstream: 504 after {:?} (upstream_timeout_seconds = 3)", r.took);
    // Meanwhile and after, the service answers.
    assert_eq!(curl(&["--http2", "--resolve", &res, &url("/")]).status, 200);
    // No replica: 503.
    let r = admin.put(&format!("/v1/services/{svc}"), &json!({"replicas": 0}));
    assert_eq!(r.status, 200, "{}", r.text());
    crate::deployments::until(60, "the replica is gone", || {
        (curl(&["--http2", "--resolve", &res, &url("/")]).status == 503).then_some(())
    });
    let r = curl(&["--http1.1", "--resolve", &res, &url("/")]);
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some(), "{}", r.head);
}
