//! One pull: resolve the manifest, fetch what the store lacks, verify, commit,
//! record in the layer cache.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode, Uri};
use sha2::Digest as _;
use tokio::task::JoinSet;

use super::auth::{self, Challenge, Tokens};
use super::cache::{self, Kind};
use super::client::{BodyFault, Guarded, Http, display_url};
use super::{ImageRef, PullError, RegistryLogin};
use crate::images::Compression;
use crate::oci::{
    DOCKER_LIST, DOCKER_MANIFEST, Digest, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest, OCI_INDEX, OCI_MANIFEST,
};
use crate::registry::Registry;
use crate::registry::blobs::{self, Appended, BlobStore};

/// Largest blob accepted (a layer of a sane image is far below).
pub const MAX_BLOB_BYTES: u64 = 64 << 30;
/// Blobs fetched at once.
const PARALLEL_BLOBS: usize = 3;
/// Room left on the disk beyond what a pull needs.
const DISK_MARGIN: u64 = 256 << 20;
/// Largest token service answer read.
const MAX_TOKEN_ANSWER: u64 = 256 << 10;
/// The manifest types asked for, in order of preference.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The client for remote registries; cheap to clone (one connection pool and token
/// cache behind it).
#[derive(Clone)]
pub struct Puller {
    inner: Arc<Inner>,
}

struct Inner {
    overrides: Arc<BTreeMap<String, IpAddr>>,
    /// CA certificates (PEM) trusted besides the system's.
    extra_roots: Vec<u8>,
    http: tokio::sync::OnceCell<Result<Http, String>>,
    tokens: Tokens,
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference, canonical (`docker.io/library/nginx:1.27`).
    pub reference: String,
    /// The manifest the reference names: an index, or the image manifest itself.
    /// This is what `RootSource::Image { manifest }` takes.
    pub manifest: Digest,
    /// The image manifest for this machine's platform.
    pub image: Digest,
    /// The config, then the layers, bottom layer first.
    pub blobs: Vec<Digest>,
    /// Bytes of the config and layers together.
    pub image_bytes: u64,
    /// Manifests fetched from the remote (a tag asked with HEAD whose digest the
    /// store already had fetches none).
    pub manifests_fetched: u32,
    /// Blobs fetched from the remote, and their bytes: zero when the store had them all.
    pub blobs_fetched: u32,
    pub bytes_fetched: u64,
}

/// A manifest in hand: its bytes, digest, parse, and whether it came from the store.
struct Fetched {
    digest: Digest,
    bytes: Vec<u8>,
    parsed: Manifest,
    local: bool,
}

impl Puller {
    /// A client answering `overrides` (`[dns] overrides`) before the system resolver.
    pub fn new(overrides: BTreeMap<String, IpAddr>) -> Puller {
        Self::with_extra_roots(overrides, Vec::new())
    }

    /// A client that also trusts the CA certificates in `pem` (a private CA the
    /// system store lacks). Checked when the first pull builds the client.
    pub fn with_extra_roots(overrides: BTreeMap<String, IpAddr>, pem: Vec<u8>) -> Puller {
        let overrides = overrides.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        Puller {
            inner: Arc::new(Inner {
                overrides: Arc::new(overrides),
                extra_roots: pem,
                http: tokio::sync::OnceCell::new(),
                tokens: Tokens::default(),
            }),
        }
    }

    /// Pulls `image` (with `login`, if the registry wants credentials) into the
    /// registry's blob store and records it in the layer cache. Blobs already in the
    /// store are not fetched again; every fetched one is verified against its digest
    /// and size before it becomes visible.
    pub async fn pull(
        &self,
        registry: &Registry,
        image: &ImageRef,
        login: Option<&RegistryLogin>,
    ) -> Result<Pulled, PullError> {
        let source = image.to_string();
        let blobs = registry.blobs.clone();
        let mut pulled = Pulled {
            reference: source.clone(),
            manifest: Digest::of(b""),
            image: Digest::of(b""),
            blobs: Vec::new(),
            image_bytes: 0,
            manifests_fetched: 0,
            blobs_fetched: 0,
            bytes_fetched: 0,
        };
        let top = self.inner.manifest(&blobs, image, login, &image.manifest_reference(), &mut pulled).await?;
        let child = if top.parsed.is_index() {
            let (os, arch) = super::platform();
            let entry = top.parsed.platform_entry(os, arch).cloned().ok_or_else(|| {
                PullError::Unsupported(format!("{source} has no image for this machine's platform ({os}/{arch})"))
            })?;
            let child = self.inner.manifest(&blobs, image, login, &entry.to_string(), &mut pulled).await?;
            if child.parsed.is_index() {
                return Err(PullError::Unsupported(format!("{source}: the {os}/{arch} entry is an index itself")));
            }
            Some(child)
        } else {
            None
        };
        let image_manifest = child.as_ref().unwrap_or(&top);
        let wanted = self.check_image(image, image_manifest)?;
        pulled.manifest = top.digest.clone();
        pulled.image = image_manifest.digest.clone();
        pulled.blobs = wanted.iter().map(|(d, _, _)| d.clone()).collect();
        pulled.image_bytes = wanted.iter().map(|(_, s, _)| *s).sum();

        // What the store has is recorded now, under the commit lock, so no
        // collection takes it away before the image is in use.
        let missing = {
            let _shared = registry.hold_commits().await;
            let (store, check) = (blobs.clone(), wanted.clone());
            let (present, missing): (Vec<_>, Vec<_>) =
                tokio::task::spawn_blocking(move || check.into_iter().partition(|(d, _, _)| store.exists(d)))
                    .await
                    .map_err(|e| PullError::Local(e.to_string()))?;
            if !present.is_empty() {
                let rows: Vec<_> = present.iter().map(|(d, size, kind)| cache::entry(d, *size, *kind)).collect();
                let src = source.clone();
                registry
                    .store()
                    .write(move |c| crate::store::cache::record(c, &rows, &src, crate::ids::unix_now()))
                    .await?;
            }
            missing
        };
        self.check_space(&blobs, &missing).await?;
        self.fetch_all(registry, image, login, &source, missing, &mut pulled).await?;

        // The manifests last: an image is in the store only once all it needs is.
        let _shared = registry.hold_commits().await;
        let mut rows = Vec::new();
        for m in child.iter().chain(std::iter::once(&top)) {
            if !m.local {
                let (store, d, bytes) = (blobs.clone(), m.digest.clone(), m.bytes.clone());
                tokio::task::spawn_blocking(move || store.put_small(&d, &bytes))
                    .await
                    .map_err(|e| PullError::Local(e.to_string()))??;
            }
            let kind = if m.parsed.is_index() { Kind::Index } else { Kind::Manifest };
            rows.push(cache::entry(&m.digest, m.bytes.len() as u64, kind));
        }
        let src = source.clone();
        registry.store().write(move |c| crate::store::cache::record(c, &rows, &src, crate::ids::unix_now())).await?;
        tracing::info!(
            image = %source,
            manifest = %pulled.manifest,
            blobs_fetched = pulled.blobs_fetched,
            bytes_fetched = pulled.bytes_fetched,
            manifests_fetched = pulled.manifests_fetched,
            "external image pulled"
        );
        Ok(pulled)
    }

    /// The config and layers to fetch, after refusing what could not run: foreign
    /// layers, unknown layer types, sizes past the caps.
    fn check_image(&self, image: &ImageRef, m: &Fetched) -> Result<Vec<(Digest, u64, Kind)>, PullError> {
        let img = m.parsed.image().map_err(|e| PullError::Protocol {
            registry: image.registry.clone(),
            reason: format!("manifest {}: {e}", m.digest),
        })?;
        let own: HashSet<&Digest> = m.parsed.blobs().iter().collect();
        for l in &img.layers {
            if !own.contains(&l.digest) {
                return Err(PullError::Unsupported(format!(
                    "{image}: layer {} is a foreign layer (stored outside the registry), which berth does not pull",
                    l.digest
                )));
            }
            if Compression::from_media_type(&l.media_type).is_none() {
                return Err(PullError::Unsupported(format!(
                    "{image}: layer {} has media type {:?}, which berth cannot unpack",
                    l.digest, l.media_type
                )));
            }
        }
        let too_large =
            |what: String, limit: u64| PullError::TooLarge { registry: image.registry.clone(), what, limit };
        if img.config.size > MAX_CONFIG_BYTES as u64 {
            return Err(too_large(format!("image config {}", img.config.digest), MAX_CONFIG_BYTES as u64));
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (b, kind) in std::iter::once((&img.config, Kind::Config)).chain(img.layers.iter().map(|l| (l, Kind::Layer)))
        {
            if b.size > MAX_BLOB_BYTES {
                return Err(too_large(format!("layer {}", b.digest), MAX_BLOB_BYTES));
            }
            if seen.insert(b.digest.clone()) {
                out.push((b.digest.clone(), b.size, kind));
            }
        }
        Ok(out)
    }

    async fn check_space(&self, blobs: &BlobStore, missing: &[(Digest, u64, Kind)]) -> Result<(), PullError> {
        let needed: u64 = missing.iter().map(|(_, s, _)| *s).sum();
        if needed == 0 {
            return Ok(());
        }
        let dir = blobs.uploads_dir();
        let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&dir))
            .await
            .map_err(|e| PullError::Local(e.to_string()))?
            .map_err(|e| PullError::Local(format!("statvfs of the blob store: {e}")))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if needed.saturating_add(DISK_MARGIN) > available {
            return Err(PullError::NoSpace { needed: needed + DISK_MARGIN, available });
        }
        Ok(())
    }

    /// Fetches the missing blobs, a few at a time; each is committed (and recorded)
    /// as soon as it is complete and verified. On the first failure the others are
    /// stopped and their uploads removed before the error is returned.
    async fn fetch_all(
        &self,
        registry: &Registry,
        image: &ImageRef,
        login: Option<&RegistryLogin>,
        source: &str,
        missing: Vec<(Digest, u64, Kind)>,
        pulled: &mut Pulled,
    ) -> Result<(), PullError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut queue = missing.into_iter();
        let mut set = JoinSet::new();
        let mut failure: Option<PullError> = None;
        loop {
            while failure.is_none() && set.len() < PARALLEL_BLOBS {
                let Some((digest, size, kind)) = queue.next() else { break };
                let job = Fetch {
                    inner: self.inner.clone(),
                    blobs: registry.blobs.clone(),
                    image: image.clone(),
                    login: login.cloned(),
                    digest,
                    size,
                    kind,
                    stop: stop_rx.clone(),
                };
                set.spawn(job.run());
            }
            let Some(done) = set.join_next().await else { break };
            let outcome = match done {
                Ok(Ok(blob)) => self.commit(registry, source, blob).await,
                Ok(Err(e)) => Err(e),
                Err(e) => Err(PullError::Local(format!("a blob fetch stopped: {e}"))),
            };
            match outcome {
                Ok(size) => {
                    pulled.blobs_fetched += 1;
                    pulled.bytes_fetched += size;
                }
                Err(e) => {
                    if failure.is_none() {
                        let _ = stop_tx.send(true);
                        failure = Some(e);
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Moves a verified upload into the store and records it, under the commit lock.
    async fn commit(&self, registry: &Registry, source: &str, blob: Downloaded) -> Result<u64, PullError> {
        let _shared = registry.hold_commits().await;
        let (store, id, d) = (registry.blobs.clone(), blob.upload.id.clone(), blob.digest.clone());
        let committed = tokio::task::spawn_blocking(move || store.commit_upload(&id, &d))
            .await
            .map_err(|e| PullError::Local(e.to_string()));
        match committed {
            Ok(Ok(())) => blob.upload.disarm(),
            Ok(Err(e)) => {
                blob.upload.remove().await;
                return Err(e.into());
            }
            Err(e) => {
                blob.upload.remove().await;
                return Err(e);
            }
        }
        let rows = vec![cache::entry(&blob.digest, blob.size, blob.kind)];
        let src = source.to_string();
        registry.store().write(move |c| crate::store::cache::record(c, &rows, &src, crate::ids::unix_now())).await?;
        Ok(blob.size)
    }
}

impl Inner {
    async fn http(&self) -> Result<&Http, PullError> {
        let (overrides, extra) = (self.overrides.clone(), self.extra_roots.clone());
        let built = self
            .http
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || Http::new(overrides, &extra))
                    .await
                    .unwrap_or_else(|e| Err(format!("building the HTTP client: {e}")))
            })
            .await;
        built.as_ref().map_err(|e| PullError::Local(e.clone()))
    }

    /// A request to the registry's API for `image`'s repository, authenticated as
    /// the registry asks: anonymous first (or what worked before), then Basic or a
    /// token from the realm, once. Answers anything but a 401.
    async fn request(
        &self,
        image: &ImageRef,
        login: Option<&RegistryLogin>,
        method: Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(Response<Incoming>, Uri), PullError> {
        let http = self.http().await?;
        let registry = image.registry.as_str();
        let url: Uri = format!("{}{path}", image.base_url())
            .parse()
            .map_err(|e| PullError::Protocol { registry: registry.to_string(), reason: format!("url: {e}") })?;
        let key = Tokens::key(&image.endpoint, &image.repository, login);
        let mut auth = self.tokens.header(&key, login);
        let mut retried = false;
        loop {
            let (resp, at) = http.send(registry, method.clone(), url.clone(), headers, auth.as_ref()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok((resp, at));
            }
            let sent_credentials = auth.is_some() && login.is_some();
            if retried {
                self.tokens.forget(&key);
                return Err(unauthorized(registry, login.is_some()));
            }
            retried = true;
            auth = match auth::challenge(resp.headers()) {
                None => {
                    return Err(PullError::Protocol {
                        registry: registry.to_string(),
                        reason: "a 401 without a WWW-Authenticate challenge".into(),
                    });
                }
                Some(Challenge::Basic) => {
                    let Some(l) = login else { return Err(unauthorized(registry, false)) };
                    if sent_credentials {
                        self.tokens.forget(&key);
                        return Err(unauthorized(registry, true));
                    }
                    self.tokens.remember_basic(key.clone());
                    auth::basic_header(l)
                }
                Some(Challenge::Bearer { realm, service, scope }) => {
                    let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", image.repository));
                    let (token, ttl) = self.token(http, registry, &realm, service.as_deref(), &scope, login).await?;
                    let header = auth::bearer_header(&token).ok_or_else(|| PullError::Protocol {
                        registry: registry.to_string(),
                        reason: "the token service answered a token that is not a header value".into(),
                    })?;
                    self.tokens.remember_bearer(key.clone(), header.clone(), ttl);
                    Some(header)
                }
            };
        }
    }

    /// Asks the token service at `realm` for a bearer token.
    async fn token(
        &self,
        http: &Http,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        login: Option<&RegistryLogin>,
    ) -> Result<(String, std::time::Duration), PullError> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
            q.finish()
        };
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url: Uri = format!("{realm}{sep}{query}").parse().map_err(|_| PullError::Protocol {
            registry: registry.to_string(),
            reason: "the token realm is not a valid URL".into(),
        })?;
        let basic = login.and_then(auth::basic_header);
        let (resp, at) = http.send(registry, Method::GET, url, &HeaderMap::new(), basic.as_ref()).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(PullError::Unauthorized {
                registry: registry.to_string(),
                reason: if login.is_some() {
                    format!("the token service at {} refused the credentials", display_url(&at))
                } else {
                    format!("the token service at {} wants credentials", display_url(&at))
                },
            });
        }
        if status != StatusCode::OK {
            return Err(PullError::Status {
                registry: registry.to_string(),
                status: status.as_u16(),
                what: format!("a token from {}", display_url(&at)),
            });
        }
        let body = Guarded::new(resp.into_body(), MAX_TOKEN_ANSWER)
            .read_all()
            .await
            .map_err(|f| body_error(registry, "the token answer", &f))?;
        let answer: auth::TokenAnswer = serde_json::from_slice(&body).map_err(|e| PullError::Protocol {
            registry: registry.to_string(),
            reason: format!("the token answer is not JSON: {e}"),
        })?;
        answer.into_token().ok_or_else(|| PullError::Protocol {
            registry: registry.to_string(),
            reason: "the token answer has no token".into(),
        })
    }

    /// A manifest by tag or digest: from the store when it has that digest (for a
    /// tag, the digest comes from a HEAD), else fetched and checked.
    async fn manifest(
        &self,
        blobs: &BlobStore,
        image: &ImageRef,
        login: Option<&RegistryLogin>,
        reference: &str,
        pulled: &mut Pulled,
    ) -> Result<Fetched, PullError> {
        let registry = image.registry.as_str();
        let path = format!("/v2/{}/manifests/{reference}", image.repository);
        let what = format!("manifest {}:{reference}", image.repository);
        let by_digest = Digest::parse(reference).ok();
        let mut accept = HeaderMap::new();
        accept.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT));
        let known = match &by_digest {
            Some(d) => Some(d.clone()),
            None => {
                let (resp, _) = self.request(image, login, Method::HEAD, &path, &accept).await?;
                match resp.status() {
                    StatusCode::OK => resp
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| Digest::parse(v).ok()),
                    _ => None,
                }
            }
        };
        if let Some(d) = known {
            if let Some(local) = local_manifest(blobs, &d).await? {
                return Ok(local);
            }
        }
        let (resp, _) = self.request(image, login, Method::GET, &path, &accept).await?;
        if resp.status() != StatusCode::OK {
            return Err(status_error(image, &what, resp.status()));
        }
        let limit = MAX_MANIFEST_BYTES as u64;
        let declared_len = content_length(resp.headers());
        if declared_len.is_some_and(|n| n > limit) {
            return Err(PullError::TooLarge { registry: registry.to_string(), what, limit });
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
        let claimed = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = Guarded::new(resp.into_body(), limit).read_all().await.map_err(|f| match f {
            BodyFault::TooLarge(limit) => {
                PullError::TooLarge { registry: registry.to_string(), what: what.clone(), limit }
            }
            f => body_error(registry, &what, &f),
        })?;
        let digest = Digest::of(&bytes);
        if let Some(want) = &by_digest {
            if *want != digest {
                return Err(PullError::DigestMismatch { what, expected: want.to_string(), actual: digest.to_string() });
            }
        }
        if let Some(claimed) = claimed.filter(|c| Digest::parse(c).is_ok()) {
            if claimed != digest.to_string() {
                return Err(PullError::DigestMismatch { what, expected: claimed, actual: digest.to_string() });
            }
        }
        let declared = match content_type.as_deref() {
            Some(t @ (OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST)) => Some(t),
            Some(t) if t.starts_with("application/vnd.docker.distribution.manifest.v1") => {
                return Err(PullError::Unsupported(format!(
                    "{image} is a Docker schema 1 image, which berth does not run; push it again with a current client"
                )));
            }
            _ => None,
        };
        let parsed = Manifest::parse(&bytes, declared)
            .map_err(|e| PullError::Protocol { registry: registry.to_string(), reason: format!("{what}: {e}") })?;
        pulled.manifests_fetched += 1;
        Ok(Fetched { digest, bytes, parsed, local: false })
    }
}

/// The manifest with digest `d` if the store has it (checked: it hashes to its name).
async fn local_manifest(blobs: &BlobStore, d: &Digest) -> Result<Option<Fetched>, PullError> {
    let (store, digest) = (blobs.clone(), d.clone());
    let read = tokio::task::spawn_blocking(move || {
        store.exists(&digest).then(|| store.read_small(&digest, MAX_MANIFEST_BYTES as u64 + 1))
    })
    .await
    .map_err(|e| PullError::Local(e.to_string()))?;
    let Some(bytes) = read.transpose()? else { return Ok(None) };
    if Digest::of(&bytes) != *d {
        return Ok(None);
    }
    // A stored blob with this digest that is not a manifest (a layer asked for as a
    // manifest) is fetched and refused like any other answer.
    Ok(Manifest::parse(&bytes, None).ok().map(|parsed| Fetched { digest: d.clone(), bytes, parsed, local: true }))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

fn unauthorized(registry: &str, had_credentials: bool) -> PullError {
    PullError::Unauthorized {
        registry: registry.to_string(),
        reason: if had_credentials {
            "the credentials were refused (401)".into()
        } else {
            "credentials are needed (401); add the registry's credentials to the project".into()
        },
    }
}

/// The error for a status other than the one wanted (a 401 never gets here).
fn status_error(image: &ImageRef, what: &str, status: StatusCode) -> PullError {
    let registry = image.registry.clone();
    match status {
        StatusCode::NOT_FOUND => PullError::NotFound { registry, what: what.to_string() },
        StatusCode::UNAUTHORIZED => unauthorized(&registry, true),
        StatusCode::FORBIDDEN => PullError::Denied { registry, repository: image.repository.clone() },
        s => PullError::Status { registry, status: s.as_u16(), what: what.to_string() },
    }
}

fn body_error(registry: &str, what: &str, f: &BodyFault) -> PullError {
    match f {
        BodyFault::TooSlow => {
            PullError::Timeout { registry: registry.to_string(), what: format!("{what} arrived too slowly") }
        }
        BodyFault::TooLarge(limit) => {
            PullError::TooLarge { registry: registry.to_string(), what: what.to_string(), limit: *limit }
        }
        BodyFault::Broken(e) => {
            PullError::Unreachable { registry: registry.to_string(), reason: format!("{what} broke off: {e}") }
        }
    }
}

/// An upload directory that is removed unless its content was committed, even when
/// the pull is dropped midway.
struct Upload {
    blobs: BlobStore,
    id: String,
    armed: bool,
}

impl Upload {
    async fn create(blobs: &BlobStore) -> Result<Upload, PullError> {
        let id = crate::ids::new_id("upl");
        let (store, upload) = (blobs.clone(), id.clone());
        tokio::task::spawn_blocking(move || store.create_upload(&upload))
            .await
            .map_err(|e| PullError::Local(e.to_string()))??;
        Ok(Upload { blobs: blobs.clone(), id, armed: true })
    }

    fn disarm(mut self) {
        self.armed = false;
    }

    /// Removes the upload now, and waits for it.
    async fn remove(mut self) {
        self.armed = false;
        let (store, id) = (self.blobs.clone(), self.id.clone());
        let _ = tokio::task::spawn_blocking(move || store.remove_upload(&id)).await;
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, id) = (self.blobs.clone(), std::mem::take(&mut self.id));
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || store.remove_upload(&id));
            }
            Err(_) => store.remove_upload(&id),
        }
    }
}

/// A blob verified in its upload, ready to commit.
struct Downloaded {
    upload: Upload,
    digest: Digest,
    size: u64,
    kind: Kind,
}

/// One blob to fetch, owning what its task needs.
struct Fetch {
    inner: Arc<Inner>,
    blobs: BlobStore,
    image: ImageRef,
    login: Option<RegistryLogin>,
    digest: Digest,
    size: u64,
    kind: Kind,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Fetch {
    async fn run(mut self) -> Result<Downloaded, PullError> {
        let upload = Upload::create(&self.blobs).await?;
        let mut stop = self.stop.clone();
        let outcome = tokio::select! {
            r = self.download(&upload.id) => r,
            _ = stop.wait_for(|s| *s) => Err(PullError::Local("stopped: another blob of the pull failed".into())),
        };
        match outcome {
            Ok(()) => Ok(Downloaded { upload, digest: self.digest, size: self.size, kind: self.kind }),
            Err(e) => {
                upload.remove().await;
                Err(e)
            }
        }
    }

    /// Streams the blob into the upload through the store's writer, hashing as it
    /// goes, then checks size and digest.
    async fn download(&mut self, upload: &str) -> Result<(), PullError> {
        let registry = self.image.registry.clone();
        let what = format!("blob {}", self.digest);
        let path = format!("/v2/{}/blobs/{}", self.image.repository, self.digest);
        let (resp, _) =
            self.inner.request(&self.image, self.login.as_ref(), Method::GET, &path, &HeaderMap::new()).await?;
        if resp.status() != StatusCode::OK {
            return Err(status_error(&self.image, &what, resp.status()));
        }
        if let Some(n) = content_length(resp.headers()).filter(|n| *n != self.size) {
            return Err(PullError::Protocol {
                registry,
                reason: format!("{what} is {n} bytes long, but the manifest says {}", self.size),
            });
        }
        let body = Guarded::new(resp.into_body(), self.size);
        let fault = body.fault.clone();
        let written = blobs::append(&self.blobs, upload, Appended::new(), Body::new(body)).await;
        let state = match written {
            Ok(s) => s,
            Err(e) => {
                let f = fault.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(match f {
                    Some(BodyFault::TooLarge(_)) => PullError::DigestMismatch {
                        what,
                        expected: format!("{} ({} bytes)", self.digest, self.size),
                        actual: "more bytes than that".into(),
                    },
                    Some(f) => body_error(&registry, &what, &f),
                    None => PullError::Local(e.to_string()),
                });
            }
        };
        let actual = Digest::from_sha256(&state.hasher.clone().finalize());
        if state.offset != self.size {
            return Err(PullError::DigestMismatch {
                what,
                expected: format!("{} ({} bytes)", self.digest, self.size),
                actual: format!("{actual} ({} bytes)", state.offset),
            });
        }
        if actual != self.digest {
            return Err(PullError::DigestMismatch {
                what,
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}
