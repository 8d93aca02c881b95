//! The puller against registries served in-process on loopback: each answers the
//! way a real one does (or a hostile one would), and records what it was asked.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::*;
use crate::oci::Digest;
use crate::registry::{Registry, Settings};

/// What the mock was asked.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

type Handler = Arc<dyn Fn(&Parts) -> Response + Send + Sync>;

struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    async fn start(handler: Handler) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (parts, _) = req.into_parts();
            log.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                authorization: parts.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()),
            });
            let resp = handler(&parts);
            std::future::ready(resp)
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Mock { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, method: &str, path_part: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method && s.path.contains(path_part)).count()
    }
}

/// An image's documents and blobs, as a registry holds them.
#[derive(Clone, Default)]
struct Content {
    /// digest → (media type, bytes)
    blobs: HashMap<String, (String, Vec<u8>)>,
    tags: HashMap<String, String>,
}

impl Content {
    fn put(&mut self, media_type: &str, bytes: Vec<u8>) -> String {
        let d = Digest::of(&bytes).to_string();
        self.blobs.insert(d.clone(), (media_type.to_string(), bytes));
        d
    }

    /// An image of `layers` (uncompressed tars of one file each); returns the
    /// manifest's digest.
    fn image(&mut self, arch: &str, layers: &[Vec<u8>]) -> String {
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let config_len = config.len();
        let config_digest = self.put(crate::oci::OCI_CONFIG, config);
        let layer_descs: Vec<_> = layers
            .iter()
            .map(|l| {
                let d = self.put("application/vnd.oci.image.layer.v1.tar", l.clone());
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len()})
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": crate::oci::OCI_MANIFEST,
            "config": {"mediaType": crate::oci::OCI_CONFIG, "digest": config_digest, "size": config_len},
            "layers": layer_descs,
        }))
        .unwrap();
        self.put(crate::oci::OCI_MANIFEST, manifest)
    }

    fn len(&self, d: &str) -> usize {
        self.blobs[d].1.len()
    }
}

/// A tar holding one file of `n` bytes (uncompressed layer).
fn layer(name: &str, n: usize, seed: u8) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let mut h = tar::Header::new_gnu();
    h.set_size(n as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data.as_slice()).unwrap();
    b.into_inner().unwrap()
}

/// A distribution-like handler for `repo` serving `content`; `auth` decides whether
/// a request may through (else a 401 with `challenge`).
fn registry_handler(
    repo: &'static str,
    content: Content,
    challenge: Option<String>,
    auth: impl Fn(&HeaderMap) -> bool + Send + Sync + 'static,
) -> Handler {
    Arc::new(move |parts: &Parts| {
        let path = parts.uri.path();
        if let Some(c) = &challenge {
            if !auth(&parts.headers) {
                return (StatusCode::UNAUTHORIZED, [("www-authenticate", c.as_str())], "{}").into_response();
            }
        }
        let Some(rest) = path.strip_prefix(&format!("/v2/{repo}/")) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let (what, reference) = rest.split_once('/').unwrap_or(("", ""));
        let digest = match what {
            "manifests" => content.tags.get(reference).cloned().unwrap_or_else(|| reference.to_string()),
            _ => reference.to_string(),
        };
        let Some((mt, bytes)) = content.blobs.get(&digest) else {
            return (StatusCode::NOT_FOUND, r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#).into_response();
        };
        let body = if parts.method == "HEAD" { Body::empty() } else { Body::from(bytes.clone()) };
        let mut r = Response::new(body);
        r.headers_mut().insert("content-type", mt.parse().unwrap());
        r.headers_mut().insert("docker-content-digest", digest.parse().unwrap());
        r.headers_mut().insert("content-length", bytes.len().into());
        r
    })
}

struct Fixture {
    registry: Registry,
    dir: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let (store, dir) = crate::store::test_store();
        let settings = Settings {
            root: dir.join("registry"),
            gc_grace: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(3600),
            max_open_uploads_per_project: 4,
        };
        let registry = Registry::new(settings, store);
        registry.blobs.init().unwrap();
        Fixture { registry, dir }
    }

    /// Every committed blob file, checked to hash to its name.
    fn blob_files(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        for prefix in std::fs::read_dir(self.registry.blobs.blobs_dir()).unwrap() {
            for f in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
                let f = f.unwrap();
                let d = format!("sha256:{}", f.file_name().to_str().unwrap());
                assert_eq!(
                    Digest::of(&std::fs::read(f.path()).unwrap()).to_string(),
                    d,
                    "a blob file is not its digest"
                );
                out.insert(d);
            }
        }
        out
    }

    fn uploads(&self) -> usize {
        std::fs::read_dir(self.registry.blobs.uploads_dir()).unwrap().count()
    }

    async fn cached(&self, digests: &[String]) -> HashSet<String> {
        let d = digests.to_vec();
        self.registry.store().read(move |c| crate::store::cache::cached(c, &d)).await.unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.registry.store().close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn login(user: &str, pass: &str) -> RegistryLogin {
    RegistryLogin { username: user.into(), password: zeroize::Zeroizing::new(pass.into()) }
}

fn reference(addr: SocketAddr, rest: &str) -> ImageRef {
    ImageRef::parse(&format!("{addr}/{rest}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_into_the_store_and_a_second_pull_fetches_nothing() {
    let mut content = Content::default();
    let layers = vec![layer("a", 300_000, 1), layer("b", 5_000, 2)];
    let m = content.image(super::platform().1, &layers);
    content.tags.insert("v1".into(), m.clone());
    let mock = Mock::start(registry_handler("team/app", content.clone(), None, |_| true)).await;
    let f = Fixture::new();
    let puller = Puller::new(Default::default());
    let image = reference(mock.addr, "team/app:v1");
    let p = puller.pull(&f.registry, &image, None).await.unwrap();
    assert_eq!(p.manifest.to_string(), m);
    assert_eq!(p.image, p.manifest, "not an index");
    assert_eq!((p.blobs_fetched, p.manifests_fetched), (3, 1));
    let total: usize = p.blobs.iter().map(|d| content.len(&d.to_string())).sum();
    assert_eq!(p.bytes_fetched, total as u64);
    assert_eq!(p.image_bytes, total as u64);
    let files = f.blob_files();
    assert!(files.contains(&m), "the manifest is stored by digest");
    for d in &p.blobs {
        assert!(files.contains(&d.to_string()), "{d} is in the store");
    }
    assert_eq!(f.uploads(), 0, "no upload stays behind");
    let mut all: Vec<String> = p.blobs.iter().map(ToString::to_string).collect();
    all.push(m.clone());
    assert_eq!(f.cached(&all).await.len(), 4, "all of it is in the layer cache");
    // The engine reads what it runs from the same files.
    let bytes = f.registry.blobs.read_small(&p.manifest, 1 << 20).unwrap();
    assert!(crate::oci::Manifest::parse(&bytes, None).unwrap().image().is_ok());

    let gets_before = mock.count("GET", "/blobs/");
    let again = puller.pull(&f.registry, &image, None).await.unwrap();
    assert_eq!((again.blobs_fetched, again.bytes_fetched, again.manifests_fetched), (0, 0, 0));
    assert_eq!(again.manifest, p.manifest);
    assert_eq!(mock.count("GET", "/blobs/"), gets_before, "no blob was asked for again");
    assert_eq!(mock.count("GET", "/manifests/"), 1, "the tag was resolved with a HEAD the second time");
    // By digest, nothing at all goes to the registry.
    let asked = mock.seen().len();
    let by_digest = reference(mock.addr, &format!("team/app@{m}"));
    let third = puller.pull(&f.registry, &by_digest, None).await.unwrap();
    assert_eq!((third.blobs_fetched, third.manifests_fetched), (0, 0));
    assert_eq!(mock.seen().len(), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_this_platform() {
    let mut content = Content::default();
    let (_, arch) = super::platform();
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    let mine = content.image(arch, &[layer("mine", 1000, 3)]);
    let theirs = content.image(other, &[layer("theirs", 2000, 4)]);
    let desc = |d: &str, a: &str, c: &Content| json!({"mediaType": crate::oci::OCI_MANIFEST, "digest": d, "size": c.len(d), "platform": {"os": "linux", "architecture": a}});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": crate::oci::OCI_INDEX,
        "manifests": [desc(&theirs, other, &content), desc(&mine, arch, &content)],
    }))
    .unwrap();
    let index_digest = content.put(crate::oci::OCI_INDEX, index);
    content.tags.insert("multi".into(), index_digest.clone());
    // An index for another platform only.
    let only_other = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": crate::oci::OCI_INDEX, "manifests": [desc(&theirs, other, &content)],
    }))
    .unwrap();
    let only_other = content.put(crate::oci::OCI_INDEX, only_other);
    content.tags.insert("elsewhere".into(), only_other);
    let mock = Mock::start(registry_handler("org/multi", content.clone(), None, |_| true)).await;
    let f = Fixture::new();
    let puller = Puller::new(Default::default());
    let p = puller.pull(&f.registry, &reference(mock.addr, "org/multi:multi"), None).await.unwrap();
    assert_eq!((p.manifest.to_string(), p.image.to_string()), (index_digest.clone(), mine.clone()));
    assert_eq!(p.blobs_fetched, 2, "only this platform's config and layer");
    let files = f.blob_files();
    assert!(files.contains(&index_digest) && files.contains(&mine) && !files.contains(&theirs));
    // A deployment that runs it again (a rollback) marks the index, this platform's
    // manifest, its config and layer used.
    let all: Vec<String> =
        [index_digest.clone(), mine.clone()].into_iter().chain(p.blobs.iter().map(ToString::to_string)).collect();
    let old = all.clone();
    f.registry.store().write(move |c| crate::store::cache::touch(c, &old, 1)).await.unwrap();
    assert_eq!(cache::touch_image(&f.registry, &p.manifest).await.unwrap(), 4);
    let rows = f.registry.store().read(crate::store::cache::by_last_use).await.unwrap();
    assert!(rows.iter().filter(|r| all.contains(&r.digest)).all(|r| r.last_used_at > 1), "{rows:?}");
    let e = puller.pull(&f.registry, &reference(mock.addr, "org/multi:elsewhere"), None).await.unwrap_err();
    assert!(matches!(e, PullError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains(&format!("linux/{arch}")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_basic_credentials_and_redirects_without_them() {
    // Object storage on another port: it must never see the registry's credentials.
    let storage_content: Arc<Mutex<HashMap<String, Vec<u8>>>> = Default::default();
    let served = storage_content.clone();
    let storage = Mock::start(Arc::new(move |parts: &Parts| {
        let key = parts.uri.path().trim_start_matches('/').to_string();
        match served.lock().unwrap().get(&key) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }))
    .await;
    let mut content = Content::default();
    let m = content.image(super::platform().1, &[layer("x", 70_000, 5)]);
    content.tags.insert("v1".into(), m.clone());
    for (d, (_, bytes)) in &content.blobs {
        storage_content.lock().unwrap().insert(d.clone(), bytes.clone());
    }
    // The token service and the registry on one listener.
    let issued = Arc::new(Mutex::new(0usize));
    let counter = issued.clone();
    let storage_addr = storage.addr;
    let inner = registry_handler("private/app", content.clone(), None, |_| true);
    let realm_addr = Arc::new(Mutex::new(None::<SocketAddr>));
    let realm = realm_addr.clone();
    let mock = Mock::start(Arc::new(move |parts: &Parts| {
        let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let addr = realm.lock().unwrap().unwrap();
        if parts.uri.path() == "/token" {
            // alice:secret
            if auth != "Basic YWxpY2U6c2VjcmV0" {
                return (StatusCode::UNAUTHORIZED, "{}").into_response();
            }
            let q = parts.uri.query().unwrap_or("");
            assert!(q.contains("service=test") && q.contains("scope=repository%3Aprivate%2Fapp%3Apull"), "{q}");
            *counter.lock().unwrap() += 1;
            return axum::Json(json!({"token": "tok-1", "expires_in": 300})).into_response();
        }
        if auth != "Bearer tok-1" {
            let c = format!(r#"Bearer realm="http://{addr}/token",service="test",scope="repository:private/app:pull""#);
            return (StatusCode::UNAUTHORIZED, [("www-authenticate", c)], "{}").into_response();
        }
        if let Some(d) = parts.uri.path().strip_prefix("/v2/private/app/blobs/") {
            return (StatusCode::TEMPORARY_REDIRECT, [("location", format!("http://{storage_addr}/{d}?X-Sig=secret"))])
                .into_response();
        }
        inner(parts)
    }))
    .await;
    *realm_addr.lock().unwrap() = Some(mock.addr);
    let f = Fixture::new();
    let puller = Puller::new(Default::default());
    let image = reference(mock.addr, "private/app:v1");

    let e = puller.pull(&f.registry, &image, None).await.unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    let e = puller.pull(&f.registry, &image, Some(&login("alice", "wrong"))).await.unwrap_err();
    assert!(matches!(e, PullError::Unauthorized { .. }), "{e}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    assert!(!e.to_string().contains("wrong"), "no password in errors: {e}");
    assert!(f.blob_files().is_empty() && f.uploads() == 0);

    let alice = login("alice", "secret");
    let p = puller.pull(&f.registry, &image, Some(&alice)).await.unwrap();
    assert_eq!(p.blobs_fetched, 2);
    assert_eq!(*issued.lock().unwrap(), 1, "one token for the whole pull");
    for s in storage.seen() {
        assert!(s.authorization.is_none(), "credentials followed a redirect to another host: {s:?}");
    }
    assert_eq!(storage.count("GET", "sha256:"), 2);
    for s in mock.seen().iter().filter(|s| s.path.starts_with("/v2/")) {
        assert!(s.authorization.as_deref().is_none_or(|a| a == "Bearer tok-1"), "{s:?}");
    }
    // The token is kept: a pull by digest of a stored image asks nothing; one by tag
    // asks with the token straight away.
    let asked = mock.seen().len();
    puller.pull(&f.registry, &image, Some(&alice)).await.unwrap();
    let new: Vec<Seen> = mock.seen()[asked..].to_vec();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].authorization.as_deref(), Some("Bearer tok-1"));
    assert_eq!(*issued.lock().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registries() {
    let mut content = Content::default();
    let m = content.image(super::platform().1, &[layer("y", 10_000, 6)]);
    content.tags.insert("v1".into(), m);
    let ok = |h: &HeaderMap| h.get("authorization").is_some_and(|v| v == "Basic Ym9iOmh1bnRlcjI=");
    let mock =
        Mock::start(registry_handler("team/app", content, Some(r#"Basic realm="Registry Realm""#.into()), ok)).await;
    let f = Fixture::new();
    let puller = Puller::new(Default::default());
    let image = reference(mock.addr, "team/app:v1");
    let e = puller.pull(&f.registry, &image, None).await.unwrap_err();
    assert!(e.to_string().contains("credentials are needed"), "{e}");
    let e = puller.pull(&f.registry, &image, Some(&login("bob", "nope"))).await.unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    let p = puller.pull(&f.registry, &image, Some(&login("bob", "hunter2"))).await.unwrap();
    assert_eq!(p.blobs_fetched, 2);
}

/// A registry that serves `m` for tag v1 and answers `blob` for every blob.
async fn hostile(content: Content, blob: impl Fn(&str) -> Response + Send + Sync + 'static) -> Mock {
    let inner = registry_handler("evil/app", content, None, |_| true);
    Mock::start(Arc::new(move |parts: &Parts| match parts.uri.path().strip_prefix("/v2/evil/app/blobs/") {
        Some(d) => blob(d),
        None => inner(parts),
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registries_are_refused_and_leave_nothing() {
    let mut content = Content::default();
    let m = content.image(super::platform().1, &[layer("z", 200_000, 7)]);
    content.tags.insert("v1".into(), m);
    let f = Fixture::new();
    let puller = Puller::new(Default::default());

    // Bytes that are not the digest (the right length).
    let lens: HashMap<String, usize> = content.blobs.iter().map(|(d, (_, b))| (d.clone(), b.len())).collect();
    let lie = lens.clone();
    let mock = hostile(content.clone(), move |d| vec![b'x'; lie[d]].into_response()).await;
    let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v1"), None).await.unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
    assert!(f.blob_files().is_empty(), "nothing of it is in the store");
    assert_eq!(f.uploads(), 0);

    // More bytes than the manifest says, and fewer.
    let long = lens.clone();
    let mock = hostile(content.clone(), move |d| {
        let mut r = vec![b'x'; long[d] + 10].into_response();
        r.headers_mut().remove("content-length");
        r
    })
    .await;
    let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v1"), None).await.unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. } | PullError::Protocol { .. }), "{e}");
    let short = lens.clone();
    let mock = hostile(content.clone(), move |d| vec![b'x'; short[d] / 2].into_response()).await;
    let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v1"), None).await.unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. } | PullError::Protocol { .. }), "{e}");
    assert!(f.blob_files().is_empty());
    assert_eq!(f.uploads(), 0);

    // A 500, and a 404 for a blob.
    let mock = hostile(content.clone(), |_| StatusCode::INTERNAL_SERVER_ERROR.into_response()).await;
    let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v1"), None).await.unwrap_err();
    assert!(matches!(e, PullError::Status { status: 500, .. }), "{e}");
    let mock = hostile(content.clone(), |_| StatusCode::NOT_FOUND.into_response()).await;
    let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v1"), None).await.unwrap_err();
    assert!(matches!(e, PullError::NotFound { .. }), "{e}");
    // An unknown tag and an unknown repository.
    let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v2"), None).await.unwrap_err();
    assert!(matches!(e, PullError::NotFound { .. }), "{e}");
    assert_eq!(e.code(), "not_found");
    assert!(f.blob_files().is_empty());
    assert_eq!(f.uploads(), 0);

    // A manifest over the cap, with and without a Content-Length.
    for declared in [true, false] {
        let big = vec![b' '; crate::oci::MAX_MANIFEST_BYTES + 1];
        let mock = Mock::start(Arc::new(move |_: &Parts| {
            let mut r = big.clone().into_response();
            r.headers_mut().insert("content-type", crate::oci::OCI_MANIFEST.parse().unwrap());
            if !declared {
                r.headers_mut().remove("content-length");
            }
            r
        }))
        .await;
        let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v1"), None).await.unwrap_err();
        assert!(matches!(e, PullError::TooLarge { .. }), "{e}");
    }
    // Nobody listening.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = puller.pull(&f.registry, &reference(gone, "a/b:v1"), None).await.unwrap_err();
    assert!(matches!(e, PullError::Unreachable { .. }), "{e}");
    assert!(f.blob_files().is_empty());
    assert_eq!(f.uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_lies_about_its_digest_is_refused() {
    let mut content = Content::default();
    let m = content.image(super::platform().1, &[layer("w", 100, 8)]);
    content.tags.insert("v1".into(), m.clone());
    let inner = registry_handler("evil/app", content, None, |_| true);
    let mock = Mock::start(Arc::new(move |parts: &Parts| {
        let mut r = inner(parts);
        if parts.uri.path().contains("/manifests/") {
            let fake = Digest::of(b"something else").to_string();
            r.headers_mut().insert("docker-content-digest", fake.parse().unwrap());
        }
        r
    }))
    .await;
    let f = Fixture::new();
    let puller = Puller::new(Default::default());
    let e = puller.pull(&f.registry, &reference(mock.addr, "evil/app:v1"), None).await.unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
    // By digest, the header's claim is checked against the bytes too.
    let e = puller.pull(&f.registry, &reference(mock.addr, &format!("evil/app@{m}")), None).await.unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
    // Other bytes than the digest asked for, with no claim at all.
    let mut other = Content::default();
    let substitute = other.image(super::platform().1, &[layer("v", 100, 10)]);
    let bytes = other.blobs[&substitute].1.clone();
    let mock = Mock::start(Arc::new(move |_: &Parts| {
        let mut r = bytes.clone().into_response();
        r.headers_mut().insert("content-type", crate::oci::OCI_MANIFEST.parse().unwrap());
        r
    }))
    .await;
    let e = puller.pull(&f.registry, &reference(mock.addr, &format!("evil/app@{m}")), None).await.unwrap_err();
    assert!(matches!(e, PullError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&substitute), "{e}");
    assert!(f.blob_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_for_loopback_only_even_after_a_redirect() {
    let mock = Mock::start(Arc::new(|_: &Parts| {
        (StatusCode::FOUND, [("location", "http://registry.example.com/v2/")]).into_response()
    }))
    .await;
    let f = Fixture::new();
    let e = Puller::new(Default::default()).pull(&f.registry, &reference(mock.addr, "a/b:v1"), None).await.unwrap_err();
    assert!(e.to_string().contains("refusing plain HTTP to registry.example.com"), "{e}");
}

/// Cache GC: least recently used first, down to the cap; pinned and recent blobs and
/// files a hosted repository links stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_gc_respects_the_cap_the_pins_and_hosted_links() {
    let f = Fixture::new();
    let store = f.registry.store().clone();
    // Five blobs of 1000 bytes, used at t = 1..5 (all long ago).
    let mut digests = Vec::new();
    for i in 0..5u8 {
        let bytes = vec![i; 1000];
        let d = Digest::of(&bytes);
        f.registry.blobs.put_small(&d, &bytes).unwrap();
        let row = cache::entry(&d, 1000, cache::Kind::Layer);
        store.write(move |c| crate::store::cache::record(c, &[row], "r.io/a:1", i64::from(i) + 1)).await.unwrap();
        digests.push(d.to_string());
    }
    // The oldest is linked by a hosted repository; the second oldest is pinned.
    let linked = digests[0].clone();
    store
        .write(move |c| {
            let p = crate::store::projects::Project {
                id: "prj_1".into(),
                name: "p".into(),
                description: String::new(),
                env: Default::default(),
                limits: Default::default(),
                created_at: "t".into(),
                updated_at: "t".into(),
            };
            crate::store::projects::insert(c, &p)?;
            let repo = crate::store::registry::repo_ensure(c, "p/a", "prj_1", 1)?;
            crate::store::registry::link_blob(c, repo.id, &linked, 1)
        })
        .await
        .unwrap();
    let pinned: HashSet<String> = [digests[1].clone()].into();
    let r = cache::gc(&f.registry, &pinned, 5000, Duration::from_secs(60)).await.unwrap();
    assert_eq!((r.blobs_evicted, r.bytes_after, r.over_cap), (0, 5000, false), "within the cap: nothing goes");
    let r = cache::gc(&f.registry, &pinned, 2500, Duration::from_secs(60)).await.unwrap();
    assert_eq!(r.bytes_before, 5000);
    assert_eq!((r.blobs_evicted, r.blobs_kept_linked, r.skipped_pinned), (3, 1, 1));
    assert_eq!((r.bytes_after, r.bytes_freed, r.over_cap), (2000, 2000, false));
    let files = f.blob_files();
    assert!(files.contains(&digests[0]), "a hosted repository still links it");
    assert!(files.contains(&digests[1]), "pinned");
    assert!(!files.contains(&digests[2]) && !files.contains(&digests[3]), "the least recently used went");
    assert!(files.contains(&digests[4]), "the most recent stays");
    assert_eq!(f.cached(&digests).await, [digests[1].clone(), digests[4].clone()].into());
    // Recently used blobs stay even over the cap.
    let now_used = vec![digests[4].clone()];
    store.write(move |c| crate::store::cache::touch(c, &now_used, crate::ids::unix_now())).await.unwrap();
    let r = cache::gc(&f.registry, &pinned, 0, Duration::from_secs(60)).await.unwrap();
    assert_eq!((r.blobs_evicted, r.skipped_pinned, r.skipped_recent, r.over_cap), (0, 1, 1, true));
    let status = cache::status(&f.registry, 0).await.unwrap();
    assert_eq!((status.totals.bytes, status.totals.blobs), (2000, 2));
    assert!(status.last_gc.is_some_and(|g| g.over_cap));
    // With no pins and no grace, everything goes.
    let r = cache::gc(&f.registry, &HashSet::new(), 0, Duration::ZERO).await.unwrap();
    assert_eq!((r.blobs_evicted, r.bytes_after), (2, 0));
    assert_eq!(f.blob_files(), [digests[0].clone()].into());
}

/// Registry GC keeps pulled blobs no repository links; once out of the cache they
/// are collected like any unreferenced blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_gc_keeps_cached_blobs() {
    let mut content = Content::default();
    let m = content.image(super::platform().1, &[layer("k", 1000, 9)]);
    content.tags.insert("v1".into(), m);
    let mock = Mock::start(registry_handler("team/app", content, None, |_| true)).await;
    let (store, dir) = crate::store::test_store();
    let settings = Settings {
        root: dir.join("registry"),
        gc_grace: Duration::ZERO,
        upload_ttl: Duration::ZERO,
        max_open_uploads_per_project: 4,
    };
    let registry = Registry::new(settings, store.clone());
    registry.blobs.init().unwrap();
    let p = Puller::new(Default::default()).pull(&registry, &reference(mock.addr, "team/app:v1"), None).await.unwrap();
    let report = crate::registry::gc::run(&registry, &HashSet::new()).await.unwrap();
    assert_eq!(report.blobs_deleted, 0, "cached blobs are not registry garbage");
    for d in p.blobs.iter().chain([&p.manifest]) {
        assert!(registry.blobs.exists(d), "{d}");
    }
    cache::gc(&registry, &HashSet::new(), 0, Duration::ZERO).await.unwrap();
    for d in p.blobs.iter().chain([&p.manifest]) {
        assert!(!registry.blobs.exists(d), "{d} was evicted");
    }
    store.close();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn logins_never_print_their_password() {
    let l = login("alice", "s3cr3t");
    assert!(!format!("{l:?}").contains("s3cr3t"));
}

/// Eviction planning: whole images, oldest first; shared layers go with the last
/// image that has them; pinned blobs and recently used images stay.
#[test]
fn eviction_takes_whole_images_and_keeps_shared_layers() {
    use crate::store::cache::CachedBlob;
    let blob =
        |d: &str, kind: &str, t: i64| CachedBlob { digest: d.into(), size: 100, kind: kind.into(), last_used_at: t };
    let unit = |blobs: Vec<CachedBlob>| cache::Unit { last_used_at: blobs[0].last_used_at, blobs };
    let units = vec![
        unit(vec![blob("lone", "layer", 0)]),
        unit(vec![
            blob("mA", "manifest", 1),
            blob("cA", "config", 1),
            blob("l1", "layer", 1),
            blob("shared", "layer", 2),
        ]),
        unit(vec![
            blob("mB", "manifest", 2),
            blob("cB", "config", 2),
            blob("shared", "layer", 2),
            blob("l2", "layer", 2),
        ]),
        unit(vec![blob("mC", "manifest", 50), blob("l3", "layer", 50)]),
    ];
    let names = |v: &[CachedBlob]| v.iter().map(|b| b.digest.clone()).collect::<Vec<_>>();
    // Enough to drop the lone blob and image A: the layer B shares stays.
    let mut r = CacheGcReport::default();
    let chosen = cache::plan(units.clone(), 1100, 700, &HashSet::new(), 10, &mut r);
    assert_eq!(names(&chosen), ["lone", "mA", "cA", "l1"]);
    // Down to nothing: B goes too, with the shared layer, but not its pinned layer;
    // C was used within the grace period.
    let mut r = CacheGcReport::default();
    let pinned: HashSet<String> = ["l2".to_string()].into();
    let chosen = cache::plan(units, 1100, 0, &pinned, 10, &mut r);
    assert_eq!(names(&chosen), ["lone", "mA", "cA", "l1", "mB", "cB", "shared"]);
    assert_eq!((r.skipped_pinned, r.skipped_recent), (1, 1));
}

/// Units come from the manifests in the store: an image with its blobs, an index
/// with its entries, lone blobs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_images_are_grouped_from_their_manifests() {
    let mut content = Content::default();
    let (_, arch) = super::platform();
    let m = content.image(arch, &[layer("g", 100, 11)]);
    let len = content.len(&m);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": crate::oci::OCI_INDEX,
        "manifests": [{"mediaType": crate::oci::OCI_MANIFEST, "digest": m, "size": len, "platform": {"os": "linux", "architecture": arch}}],
    }))
    .unwrap();
    let index = content.put(crate::oci::OCI_INDEX, index);
    content.tags.insert("v1".into(), index.clone());
    let mock = Mock::start(registry_handler("g/app", content, None, |_| true)).await;
    let f = Fixture::new();
    let p = Puller::new(Default::default()).pull(&f.registry, &reference(mock.addr, "g/app:v1"), None).await.unwrap();
    // A blob a failed pull left.
    let stray = Digest::of(b"stray");
    f.registry.blobs.put_small(&stray, b"stray").unwrap();
    let row = cache::entry(&stray, 5, cache::Kind::Layer);
    f.registry.store().write(move |c| crate::store::cache::record(c, &[row], "r.io/x:1", 1)).await.unwrap();
    let rows = f.registry.store().read(crate::store::cache::by_last_use).await.unwrap();
    let blobs = f.registry.blobs.clone();
    let units = tokio::task::spawn_blocking(move || cache::units(&blobs, rows)).await.unwrap();
    let mut groups: Vec<Vec<String>> = units
        .iter()
        .map(|u| {
            let mut v: Vec<String> = u.blobs.iter().map(|b| b.digest.clone()).collect();
            v.sort();
            v
        })
        .collect();
    groups.sort();
    let mut image: Vec<String> = p.blobs.iter().map(ToString::to_string).chain([m.clone()]).collect();
    image.sort();
    let mut with_index = vec![index, m];
    with_index.sort();
    let mut want = vec![image, with_index, vec![stray.to_string()]];
    want.sort();
    assert_eq!(groups, want);
    assert_eq!(units[0].blobs[0].digest, stray.to_string(), "the stray blob is the least recently used");
}
