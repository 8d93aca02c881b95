//! External images: berth's client for remote registries against real ones on
//! loopback (CNCF distribution with htpasswd Basic auth, a second berth with token
//! auth, a hostile Python server), pulling into a content store laid out like the
//! daemon's; and the layer cache's status and GC through the API of a daemon whose
//! store holds pulled images.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth::images::remote::{ImageRef, PullError, Pulled, Puller, RegistryLogin};
use berth::registry::{Registry, Settings};
use berth::store::Store;
use serde_json::{Value, json};

use crate::harness::{Berth, Client, TempDir, require_tool};
use crate::registry::{digest, push_image, random};
use crate::tools::{
    LAYOUT_TAG, OCI_MANIFEST, blob_path, free_port, have_skopeo, layout_blobs, layout_tag_digest,
    oci_layout_with_random_layers, skopeo_ok,
};

/// A content store and its database laid out like a daemon's data dir
/// (`state.db`, `registry/blobs`, `registry/uploads`), and a puller.
struct Local {
    rt: tokio::runtime::Runtime,
    registry: Registry,
    puller: Puller,
}

impl Local {
    fn open(data_dir: &Path) -> Local {
        std::fs::create_dir_all(data_dir).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store = Store::open(&data_dir.join("state.db")).unwrap();
        let settings = Settings {
            root: data_dir.join("registry"),
            gc_grace: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(86_400),
            max_open_uploads_per_project: 16,
        };
        let registry = Registry::new(settings, store);
        registry.blobs.init().unwrap();
        Local { rt, registry, puller: Puller::new(Default::default()) }
    }

    fn pull(&self, reference: &str, login: Option<(&str, &str)>) -> Result<Pulled, PullError> {
        let image = ImageRef::parse(reference).unwrap();
        let login = login.map(|(u, p)| RegistryLogin { username: u.into(), password: p.to_string().into() });
        self.rt.block_on(self.puller.pull(&self.registry, &image, login.as_ref()))
    }

    fn has(&self, digest: &str) -> bool {
        self.registry.blobs.exists(&berth::oci::Digest::parse(digest).unwrap())
    }

    /// Every committed blob file; each is checked to hash to its name.
    fn files(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        for prefix in std::fs::read_dir(self.registry.blobs.blobs_dir()).unwrap() {
            for f in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
                let f = f.unwrap();
                let d = format!("sha256:{}", f.file_name().to_str().unwrap());
                assert_eq!(digest(&std::fs::read(f.path()).unwrap()), d, "{} does not hash to its name", d);
                out.insert(d);
            }
        }
        out
    }

    fn uploads(&self) -> usize {
        std::fs::read_dir(self.registry.blobs.uploads_dir()).unwrap().count()
    }

    /// Sets the last use of `digests` to `at` (unix seconds), as if long ago.
    fn used_at(&self, digests: &[String], at: i64) {
        let d = digests.to_vec();
        self.rt.block_on(self.registry.store().write(move |c| berth::store::cache::touch(c, &d, at))).unwrap();
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.registry.store().close();
    }
}

/// Asserts the store holds every blob of an OCI layout, byte for byte.
fn assert_has_layout(local: &Local, layout: &Path) {
    for d in layout_blobs(layout) {
        let want = std::fs::read(blob_path(layout, &d)).unwrap();
        let path = local.registry.blobs.blob_path(&berth::oci::Digest::parse(&d).unwrap());
        let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{d} is not in the store: {e}"));
        assert!(got == want, "{d} differs from the source");
    }
}

// ---------------------------------------------------------------------------------
// CNCF distribution with htpasswd

/// Debian's `docker-registry` with htpasswd Basic auth on a free loopback port.
struct AuthDistribution {
    addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
}

impl AuthDistribution {
    fn start(user: &str, password: &str) -> Option<AuthDistribution> {
        if !require_tool("docker-registry", &["--version"]) || !require_tool("htpasswd", &["-nbB", "a", "b"]) {
            return None;
        }
        // The port is picked by binding :0 and released before the registry binds
        // it; another process may grab it in between, so retry on an early exit.
        for attempt in 1..=5 {
            let dir = TempDir::new("authdist");
            let out = Command::new("htpasswd").args(["-nbB", user, password]).output().unwrap();
            assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, &out.stdout).unwrap();
            let addr = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n\
                     http:\n  addr: {addr}\n",
                    dir.path().join("data").display(),
                    htpasswd.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut cmd = Command::new("docker-registry");
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            // From here on the child is stopped on drop, even if the wait panics.
            let mut d = AuthDistribution { addr, child: Some(child), dir };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    d.child = None;
                    assert!(attempt < 5, "docker-registry exited with {status}: {}", d.log());
                    break;
                }
                // With auth on, /v2/ answers 401 once it is up.
                let client = Client { addr, token: None };
                if client.try_send("GET", "/v2/", None, &[]).is_ok_and(|r| r.status == 401) {
                    return Some(d);
                }
                assert!(Instant::now() < deadline, "docker-registry did not answer in 30 s: {}", d.log());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        unreachable!("the last attempt panics instead of looping")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for AuthDistribution {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn pulls_from_distribution_with_basic_auth() {
    if !have_skopeo() {
        return;
    }
    let Some(dist) = AuthDistribution::start("alice", "wonderland-42") else { return };
    let tmp = TempDir::new("remote-dist");
    let layout = oci_layout_with_random_layers(&tmp.path().join("src"), &[400_000, 70_001, 1]);
    let dest = format!("docker://{}/team/app:{LAYOUT_TAG}", dist.addr);
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:wonderland-42",
        &format!("oci:{}:{LAYOUT_TAG}", layout.display()),
        &dest,
    ]);
    let manifest = layout_tag_digest(&layout, LAYOUT_TAG);
    let local = Local::open(&tmp.path().join("data"));
    let reference = format!("{}/team/app:{LAYOUT_TAG}", dist.addr);

    // Without credentials, and with wrong ones: a clear 401 and nothing stored.
    let e = local.pull(&reference, None).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("credentials are needed"), "{e}");
    let e = local.pull(&reference, Some(("alice", "not-the-password"))).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    assert_eq!((local.files().len(), local.uploads()), (0, 0));

    let p = local.pull(&reference, Some(("alice", "wonderland-42"))).unwrap();
    assert_eq!(p.manifest.to_string(), manifest);
    assert_eq!((p.blobs_fetched, p.manifests_fetched), (4, 1), "a config and three layers");
    assert_has_layout(&local, &layout);
    assert_eq!(local.uploads(), 0);
    let fetched = p.bytes_fetched;
    assert!(fetched > 470_000, "{fetched}");

    // The second pull of the same image fetches no blob.
    let again = local.pull(&reference, Some(("alice", "wonderland-42"))).unwrap();
    assert_eq!((again.blobs_fetched, again.bytes_fetched, again.manifests_fetched), (0, 0, 0));
    assert_eq!(again.manifest, p.manifest);
    // By digest too, and an unknown tag is a clear 404.
    let by_digest =
        local.pull(&format!("{}/team/app@{manifest}", dist.addr), Some(("alice", "wonderland-42"))).unwrap();
    assert_eq!(by_digest.blobs_fetched, 0);
    let e = local.pull(&format!("{}/team/app:nope", dist.addr), Some(("alice", "wonderland-42"))).unwrap_err();
    assert!(matches!(e, PullError::NotFound { .. }), "{e}");
}

// ---------------------------------------------------------------------------------
// a second berth, token auth

#[test]
fn pulls_from_a_second_berth_with_token_auth() {
    let remote = Berth::start("");
    let admin = remote.admin();
    assert_eq!(admin.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    let t = admin.post("/v1/api-tokens", &json!({"name": "pull", "scopes": ["registry:pull", "registry:push"]}));
    let pat = t.json()["token"].as_str().unwrap().to_string();
    let pusher = admin.with_token(&pat);
    let layers = [random(250_000, 11), random(9_000, 12)];
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let m = push_image(&pusher, "alpha/app", "v1", &config, &[&layers[0], &layers[1]]);
    let manifest = digest(&m);

    let tmp = TempDir::new("remote-berth");
    let local = Local::open(&tmp.path().join("data"));
    let reference = format!("{}/alpha/app:v1", remote.addr);
    let e = local.pull(&reference, None).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "anonymous: {e}");
    let e = local.pull(&reference, Some(("admin", "berth_pat_wrong"))).unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");

    // An API token as the password: /v2 challenges with its token realm, the realm
    // hands the token back as the bearer.
    let p = local.pull(&reference, Some(("admin", &pat))).unwrap();
    assert_eq!(p.manifest.to_string(), manifest);
    assert_eq!(p.blobs_fetched, 3);
    for b in [&config[..], &layers[0], &layers[1], &m] {
        assert!(local.has(&digest(b)), "{} is in the store", digest(b));
    }
    let again = local.pull(&reference, Some(("admin", &pat))).unwrap();
    assert_eq!((again.blobs_fetched, again.bytes_fetched), (0, 0));
    // A password works too (the realm opens a short session).
    let by_password =
        local.pull(&format!("{}/alpha/app@{manifest}", remote.addr), Some(("admin", crate::harness::ADMIN_PASSWORD)));
    assert_eq!(by_password.unwrap().blobs_fetched, 0);
    // A repository of a project the user cannot see is unknown, not forbidden.
    let e = local.pull(&format!("{}/beta/app:v1", remote.addr), Some(("admin", &pat))).unwrap_err();
    assert!(matches!(e, PullError::NotFound { .. }), "{e}");
    let log = remote.log();
    assert!(!log.contains(&pat), "the token is not in the remote's log");
}

// ---------------------------------------------------------------------------------
// a hostile remote

const PY_REGISTRY: &str = r#"
import http.server, json, sys
routes = json.load(open(sys.argv[1]))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def serve(self, head):
        r = routes.get(self.path.split("?")[0])
        if r is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = open(r["file"], "rb").read() if "file" in r else b""
        self.send_response(r["status"])
        if "type" in r:
            self.send_header("Content-Type", r["type"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
    def do_GET(self):
        self.serve(False)
    def do_HEAD(self):
        self.serve(True)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
if len(sys.argv) > 3:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A Python registry serving fixed answers: path → status, type, body file.
struct PyRegistry {
    addr: SocketAddr,
    child: Child,
}

impl PyRegistry {
    fn start(dir: &Path, routes: &Value) -> Option<PyRegistry> {
        Self::start_with(dir, routes, &[])
    }

    /// With `tls` = [certificate chain, key] it serves HTTPS.
    fn start_with(dir: &Path, routes: &Value, tls: &[&Path]) -> Option<PyRegistry> {
        if !require_tool("python3", &["--version"]) {
            return None;
        }
        let script = dir.join("registry.py");
        std::fs::write(&script, PY_REGISTRY).unwrap();
        let routes_file = dir.join("routes.json");
        std::fs::write(&routes_file, routes.to_string()).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&routes_file)
            .args(tls)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("python registry said {line:?}"));
        Some(PyRegistry { addr: SocketAddr::from(([127, 0, 0, 1], port)), child })
    }
}

impl Drop for PyRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Routes serving an OCI layout's image under `repo:tag`, every blob at its digest.
fn layout_routes(routes: &mut serde_json::Map<String, Value>, layout: &Path, repo: &str, tag: &str) {
    let manifest = layout_tag_digest(layout, tag);
    for d in layout_blobs(layout) {
        let file = blob_path(layout, &d).display().to_string();
        if d == manifest {
            let r = json!({"status": 200, "type": OCI_MANIFEST, "file": file});
            routes.insert(format!("/v2/{repo}/manifests/{tag}"), r.clone());
            routes.insert(format!("/v2/{repo}/manifests/{d}"), r);
        } else {
            routes.insert(format!("/v2/{repo}/blobs/{d}"), json!({"status": 200, "file": file}));
        }
    }
}

#[test]
fn a_hostile_remote_is_refused_and_leaves_nothing() {
    let tmp = TempDir::new("remote-hostile");
    let layout = oci_layout_with_random_layers(&tmp.path().join("img"), &[300_000]);
    let mut routes = serde_json::Map::new();
    // evil/digest: every blob answered with other bytes of the same length.
    layout_routes(&mut routes, &layout, "evil/digest", LAYOUT_TAG);
    let junk = tmp.path().join("junk");
    for (path, r) in routes.clone() {
        if path.contains("/blobs/") {
            let len = std::fs::metadata(r["file"].as_str().unwrap()).unwrap().len() as usize;
            let f = junk.join(path.rsplit('/').next().unwrap());
            std::fs::create_dir_all(&junk).unwrap();
            std::fs::write(&f, vec![b'x'; len]).unwrap();
            routes.insert(path, json!({"status": 200, "file": f.display().to_string()}));
        }
    }
    // evil/big: a manifest over the 4 MiB cap.
    let big = tmp.path().join("big.json");
    let mut text = b"{\"schemaVersion\":2,\"x\":\"".to_vec();
    text.extend(vec![b'a'; 5 << 20]);
    text.extend(b"\"}");
    std::fs::write(&big, text).unwrap();
    routes.insert(
        "/v2/evil/big/manifests/v1".into(),
        json!({"status": 200, "type": OCI_MANIFEST, "file": big.display().to_string()}),
    );
    // evil/fail: a 500 for the manifest; evil/blob500: a 500 for every blob.
    routes.insert("/v2/evil/fail/manifests/v1".into(), json!({"status": 500}));
    let mut blob500 = serde_json::Map::new();
    layout_routes(&mut blob500, &layout, "evil/blob500", LAYOUT_TAG);
    for (path, r) in blob500 {
        let r = if path.contains("/blobs/") { json!({"status": 500}) } else { r };
        routes.insert(path, r);
    }
    // good/app: the image as it is.
    layout_routes(&mut routes, &layout, "good/app", LAYOUT_TAG);
    let Some(py) = PyRegistry::start(tmp.path(), &Value::Object(routes)) else { return };
    let local = Local::open(&tmp.path().join("data"));
    let at = |r: &str| format!("{}/{r}", py.addr);

    let e = local.pull(&at("evil/digest:v1"), None).unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
    assert_eq!(e.code(), "digest_mismatch");
    let e = local.pull(&at("evil/big:v1"), None).unwrap_err();
    assert!(matches!(e, PullError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("4194304"), "{e}");
    let e = local.pull(&at("evil/fail:v1"), None).unwrap_err();
    assert!(matches!(e, PullError::Status { status: 500, .. }), "{e}");
    assert!(e.to_string().contains("answered 500"), "{e}");
    let e = local.pull(&at("evil/blob500:v1"), None).unwrap_err();
    assert!(matches!(e, PullError::Status { status: 500, .. }), "{e}");
    let e = local.pull(&at("evil/none:v1"), None).unwrap_err();
    assert!(matches!(e, PullError::NotFound { .. }), "{e}");
    assert_eq!(local.files(), HashSet::new(), "nothing of the hostile answers is in the store");
    assert_eq!(local.uploads(), 0, "and no upload stays behind");

    // The same server's honest image goes in whole.
    let p = local.pull(&at("good/app:v1"), None).unwrap();
    assert_eq!(p.blobs_fetched, 2);
    assert_has_layout(&local, &layout);
}

// ---------------------------------------------------------------------------------
// TLS

/// Runs `openssl ARGS` in `dir`, asserting success.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A registry served over HTTPS under a name (`registry.test`) that `[dns]
/// overrides` points at 127.0.0.1, its certificate signed by a CA made here: pulled
/// from when that CA is trusted, refused with a certificate error when it is not.
#[test]
fn pulls_over_tls_from_a_name_in_dns_overrides() {
    if !require_tool("openssl", &["version"]) {
        return;
    }
    let tmp = TempDir::new("remote-tls");
    let d = tmp.path();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=berth test CA"],
        ]
        .concat(),
    );
    openssl(d, &[&["req"][..], &ec, &["-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=registry.test"]].concat());
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:registry.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let layout = oci_layout_with_random_layers(&d.join("img"), &[120_000]);
    let mut routes = serde_json::Map::new();
    layout_routes(&mut routes, &layout, "tls/app", LAYOUT_TAG);
    let Some(py) = PyRegistry::start_with(d, &Value::Object(routes), &[&d.join("srv.pem"), &d.join("srv.key")]) else {
        return;
    };
    let overrides: std::collections::BTreeMap<String, std::net::IpAddr> =
        [("registry.test".to_string(), "127.0.0.1".parse().unwrap())].into();
    let reference = format!("registry.test:{}/tls/app:{LAYOUT_TAG}", py.addr.port());

    // The system's roots do not know this CA.
    let mut local = Local::open(&d.join("data"));
    local.puller = Puller::new(overrides.clone());
    let e = local.pull(&reference, None).unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    assert_eq!((local.files().len(), local.uploads()), (0, 0));

    local.puller = Puller::with_extra_roots(overrides, std::fs::read(d.join("ca.pem")).unwrap());
    let p = local.pull(&reference, None).unwrap();
    assert_eq!(p.blobs_fetched, 2);
    assert_has_layout(&local, &layout);
    // The same server by address is plain HTTP (loopback), which a TLS server refuses.
    let e = local.pull(&format!("{}/tls/app:{LAYOUT_TAG}", py.addr), None).unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. } | PullError::Protocol { .. }), "{e}");
}

// ---------------------------------------------------------------------------------
// the cache through the API

#[test]
fn cache_status_and_gc_through_the_api() {
    let tmp = TempDir::new("remote-cache");
    let old = oci_layout_with_random_layers(&tmp.path().join("old"), &[200_000, 100_000]);
    let new = oci_layout_with_random_layers(&tmp.path().join("new"), &[150_000]);
    let mut routes = serde_json::Map::new();
    layout_routes(&mut routes, &old, "lib/old", LAYOUT_TAG);
    layout_routes(&mut routes, &new, "lib/new", LAYOUT_TAG);
    let Some(py) = PyRegistry::start(tmp.path(), &Value::Object(routes)) else { return };
    let new_bytes: u64 = layout_blobs(&new).iter().map(|d| std::fs::metadata(blob_path(&new, d)).unwrap().len()).sum();
    let old_bytes: u64 = layout_blobs(&old).iter().map(|d| std::fs::metadata(blob_path(&old, d)).unwrap().len()).sum();
    // The cap holds the newer image but not both; no grace, so age alone protects nothing.
    let cap = new_bytes + 1000;
    let mut b = Berth::start(&format!("[cache]\nmax_bytes = {cap}\n[registry]\ngc_grace_seconds = 0\n"));
    let admin = b.admin();
    let prj = admin.post("/v1/projects", &json!({"name": "alpha"})).json()["id"].as_str().unwrap().to_string();
    let t = admin.post("/v1/api-tokens", &json!({"name": "push"}));
    let pat_token = t.json()["token"].as_str().unwrap().to_string();
    let pat = admin.with_token(&pat_token);
    // One layer of the old image is also pushed to a hosted repository.
    let old_manifest = layout_tag_digest(&old, LAYOUT_TAG);
    let old_blobs: Vec<String> = layout_blobs(&old);
    let hosted_layer =
        old_blobs.iter().find(|d| std::fs::metadata(blob_path(&old, d)).unwrap().len() > 150_000).unwrap().clone();
    let layer = std::fs::read(blob_path(&old, &hosted_layer)).unwrap();
    push_image(&pat, "alpha/mirror", "v1", br#"{"architecture":"amd64","os":"linux"}"#, &[&layer]);

    // Pull both into the daemon's store while it is stopped, the old image used long ago.
    b.stop();
    {
        let local = Local::open(&b.data_dir());
        local.pull(&format!("{}/lib/old:v1", py.addr), None).unwrap();
        local.pull(&format!("{}/lib/new:v1", py.addr), None).unwrap();
        local.used_at(&old_blobs, 1_000);
        local.used_at(&layout_blobs(&new), 2_000);
    }
    b.spawn();
    // The restarted daemon listens on a new port.
    let admin = b.admin_session();
    let pat = b.client().with_token(&pat_token);

    // A viewer sees the figures; an operator may collect.
    let viewer = member(&b, &admin, &prj, "vera", "viewer");
    let operator = member(&b, &admin, &prj, "otto", "operator");
    let s = viewer.get("/v1/oci/cache/status");
    assert_eq!(s.status, 200, "{}", s.text());
    let s = s.json();
    assert_eq!(s["bytes"].as_u64(), Some(old_bytes + new_bytes), "{s}");
    assert_eq!(s["blobs"].as_u64(), Some(layout_blobs(&old).len() as u64 + layout_blobs(&new).len() as u64));
    assert_eq!(s["manifests"].as_u64(), Some(2));
    assert_eq!(s["max_bytes"].as_u64(), Some(cap));
    assert!(s["last_gc"].is_null());
    assert_eq!(viewer.post("/v1/oci/cache/gc", &json!({})).status, 403);

    // Registry GC (no grace) leaves cached blobs alone.
    let r = admin.post("/v1/registry/gc", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let store_path = |d: &str| b.data_dir().join("registry/blobs/sha256").join(&d[7..9]).join(&d[7..]);
    for d in layout_blobs(&old).iter().chain(layout_blobs(&new).iter()) {
        assert!(store_path(d).is_file(), "registry GC took cached blob {d}");
    }

    let r = operator.post("/v1/oci/cache/gc", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["bytes_before"].as_u64(), Some(old_bytes + new_bytes), "{report}");
    assert_eq!(report["bytes_after"].as_u64(), Some(new_bytes), "{report}");
    assert_eq!(report["blobs_evicted"].as_u64(), Some(old_blobs.len() as u64), "{report}");
    assert_eq!(report["blobs_kept_linked"].as_u64(), Some(1), "{report}");
    assert_eq!(report["over_cap"], false);
    for d in &old_blobs {
        assert_eq!(store_path(d).is_file(), *d == hosted_layer, "{d} (the hosted one stays)");
    }
    assert!(!store_path(&old_manifest).exists());
    for d in layout_blobs(&new) {
        assert!(store_path(&d).is_file(), "the recently used image stays: {d}");
    }
    // The hosted repository still serves its blob.
    let r = pat.send("GET", &format!("/v2/alpha/mirror/blobs/{hosted_layer}"), None, &[]);
    assert_eq!(r.status, 200);
    let s = viewer.get("/v1/oci/cache/status").json();
    assert_eq!(s["bytes"].as_u64(), Some(new_bytes));
    assert_eq!(s["last_gc"]["blobs_evicted"].as_u64(), Some(old_blobs.len() as u64));
    let audit = admin.get("/v1/audit").json();
    assert!(audit.to_string().contains("POST /v1/oci/cache/gc"), "the collection is audited");
}

/// A user with `role` in project `prj`, signed in.
fn member(b: &Berth, admin: &Client, prj: &str, name: &str, role: &str) -> Client {
    let r = admin.post("/v1/users", &json!({"username": name, "password": "password-123"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/v1/projects/{prj}/members"), &json!({"user_id": id, "role": role}));
    assert_eq!(r.status, 201, "{}", r.text());
    b.login(name, "password-123")
}

// ---------------------------------------------------------------------------------
// deployments of external images

/// The lines of a deployment's log, read from its stream until it ends.
fn deployment_log(c: &Client, dep: &str) -> Vec<String> {
    let events = crate::deployments::sse(c, &format!("/v1/deployments/{dep}/logs/stream"), None, 60, |e| {
        e.last().is_some_and(|e| e.event.as_deref() == Some("end"))
    });
    events
        .iter()
        .filter(|e| e.id.is_some())
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["line"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn deploy_external(c: &Client, svc: &str, image: &str, registry_id: Option<&str>) -> crate::harness::Resp {
    let mut source = json!({"kind": "ExternalImage", "image": image});
    if let Some(id) = registry_id {
        source["registry_id"] = json!(id);
    }
    c.post("/v1/deployments", &json!({"service_id": svc, "source": source}))
}

#[test]
fn external_images_deploy_with_stored_logins_and_a_second_deploy_fetches_no_blob() {
    use crate::deployments::{node_with, nowhere_in, project_id, push_web, service, settle, via_ingress};
    if !crate::runtime::can_run() || !have_skopeo() {
        return;
    }
    let Some(dist) = AuthDistribution::start("alice", "wonderland-42") else { return };
    // The image lives on a second berth (token auth) and, copied, on distribution
    // (Basic auth).
    let remote = Berth::start("");
    let radmin = remote.admin();
    assert_eq!(radmin.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    let t = radmin.post("/v1/api-tokens", &json!({"name": "pull", "scopes": ["registry:pull", "registry:push"]}));
    let pat = t.json()["token"].as_str().unwrap().to_string();
    let image_digest = push_web(&radmin.with_token(&pat), "alpha/web", "v1", "external v1\n", true);
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &format!("admin:{pat}"),
        "--dest-creds",
        "alice:wonderland-42",
        &format!("docker://{}/alpha/web:v1", remote.addr),
        &format!("docker://{}/team/web:v1", dist.addr),
    ]);

    // A cache capped at one byte: only what replicas run (or rollbacks need) stays.
    let (node, admin) = node_with("", "[cache]\nmax_bytes = 1\n[registry]\ngc_grace_seconds = 0\n");
    let project = project_id(&admin, "alpha");
    let login = |name: &str, server: SocketAddr, user: &str, password: &str| {
        let r = admin.post(
            &format!("/v1/projects/{project}/registries"),
            &json!({"name": name, "server": server.to_string(), "username": user, "password": password}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(!r.text().contains(password), "write-only: {}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    };
    let dist_login = login("dist", dist.addr, "alice", "wonderland-42");
    let berth_login = login("second", remote.addr, "admin", &pat);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let host = "web.alpha.localhost";

    // Refused before anything starts: a malformed reference, an unknown login, a
    // login for another server.
    assert_eq!(deploy_external(&admin, &svc, "127.0.0.1:1/UPPER/case:v1", None).status, 400);
    let other =
        deploy_external(&admin, &svc, &format!("{}/team/web:v1", dist.addr), Some("reg_01ZZZZZZZZZZZZZZZZZZZZZZZZ"));
    assert_eq!(other.status, 404, "{}", other.text());
    let wrong = deploy_external(&admin, &svc, &format!("{}/team/web:v1", dist.addr), Some(&berth_login));
    assert_eq!(wrong.status, 422, "{}", wrong.text());

    // From distribution with its stored Basic login (the only one for that server).
    let r = deploy_external(&admin, &svc, &format!("{}/team/web:v1", dist.addr), None);
    assert_eq!(r.status, 201, "{}", r.text());
    let dep1 = r.json()["id"].as_str().unwrap().to_string();
    let d = settle(&admin, &dep1, 120);
    assert_eq!((d["status"].as_str(), d["image_digest"].as_str()), (Some("live"), Some(image_digest.as_str())), "{d}");
    assert_eq!(via_ingress(&node, host, "/"), Some((200, "external v1\n".to_string())));
    let log = deployment_log(&admin, &dep1);
    assert!(log.iter().any(|l| l.contains("pulled") && l.contains("3 blob(s)")), "{log:?}");

    // Cache GC down to one byte keeps what the replica runs.
    let gc = admin.post("/v1/oci/cache/gc", &json!({}));
    assert_eq!(gc.status, 200, "{}", gc.text());
    // The same image again, now from the second berth with its token login, named:
    // every blob is already here, so nothing is fetched.
    let r = deploy_external(&admin, &svc, &format!("{}/alpha/web:v1", remote.addr), Some(&berth_login));
    assert_eq!(r.status, 201, "{}", r.text());
    let dep2 = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(settle(&admin, &dep2, 120)["status"], "live");
    let log = deployment_log(&admin, &dep2);
    assert!(log.iter().any(|l| l.contains("(0 blob(s), 0 byte(s) fetched)")), "{log:?}");
    assert_eq!(via_ingress(&node, host, "/"), Some((200, "external v1\n".to_string())));

    // A wrong password: the deployment fails with the reason in its log, the
    // previous one keeps serving, and the password shows nowhere.
    let r = admin
        .put(&format!("/v1/projects/{project}/registries/{dist_login}"), &json!({"password": "not-the-password-77"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = deploy_external(&admin, &svc, &format!("{}/team/web:v1", dist.addr), None);
    let dep3 = r.json()["id"].as_str().unwrap().to_string();
    let d = settle(&admin, &dep3, 120);
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["error"].as_str().unwrap().contains("refused"), "{d}");
    assert_eq!(admin.get(&format!("/v1/services/{svc}")).json()["current_deployment_id"], dep2.as_str());
    assert_eq!(via_ingress(&node, host, "/"), Some((200, "external v1\n".to_string())));
    // An unreachable registry fails the same way.
    let r = deploy_external(&admin, &svc, &format!("127.0.0.1:{}/team/web:v1", free_port().port()), None);
    let d = settle(&admin, r.json()["id"].as_str().unwrap(), 120);
    assert!(d["error"].as_str().unwrap().contains("unreachable"), "{d}");

    // Rollback to the first deployment: its digest, no pull.
    let r = admin.post(&format!("/v1/deployments/{dep1}/rollback"), &json!({}));
    assert_eq!(r.status, 201, "{}", r.text());
    let back = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(settle(&admin, &back, 120)["status"], "live");
    assert!(!deployment_log(&admin, &back).iter().any(|l| l.starts_with("pulling ")), "a rollback does not pull");

    for secret in ["wonderland-42", "not-the-password-77", pat.as_str()] {
        nowhere_in(&node.b.data_dir(), secret).unwrap();
        assert!(!node.b.log().contains(secret), "{secret} in the daemon's log");
    }
}
