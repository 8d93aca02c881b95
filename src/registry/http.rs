//! `/v2` over HTTP: path parsing, authentication challenges, per-repository access,
//! and the distribution spec's status codes and headers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{RegistryError, RegistryResult};
use super::manifests::{MAX_MANIFEST_BYTES, OCI_INDEX};
use super::names::{self, Digest, DigestError, Reference};
use crate::api::AppState;
use crate::api::extract::{Auth, Ctx};
use crate::auth::{CredentialKind, Principal, Role, Scope};

/// What a `/v2/<rest>` path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Blob { name: String, digest: String },
    UploadStart { name: String },
    Upload { name: String, id: String },
    Manifest { name: String, reference: String },
    Tags { name: String },
    Referrers { name: String, digest: String },
}

impl Target {
    fn parse(rest: &str) -> Option<Target> {
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Target::Tags { name: name.into() });
        }
        if let Some(name) = rest.strip_suffix("/blobs/uploads/").or_else(|| rest.strip_suffix("/blobs/uploads")) {
            return Some(Target::UploadStart { name: name.into() });
        }
        if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
            return Some(Target::Upload { name: name.into(), id: id.into() });
        }
        if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
            return Some(Target::Blob { name: name.into(), digest: digest.into() });
        }
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            return Some(Target::Manifest { name: name.into(), reference: reference.into() });
        }
        if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
            return Some(Target::Referrers { name: name.into(), digest: digest.into() });
        }
        None
    }

    fn name(&self) -> &str {
        match self {
            Target::Blob { name, .. }
            | Target::UploadStart { name }
            | Target::Upload { name, .. }
            | Target::Manifest { name, .. }
            | Target::Tags { name }
            | Target::Referrers { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Pull,
    Push,
}

fn digest(s: &str) -> RegistryResult<Digest> {
    Digest::parse(s).map_err(|e| match e {
        DigestError::Malformed => RegistryError::DigestInvalid(format!("{s:?} is not a valid digest")),
        DigestError::UnsupportedAlgorithm(a) => {
            RegistryError::DigestInvalid(format!("digest algorithm {a} is not supported; use sha256"))
        }
    })
}

fn query(req: &Request) -> Vec<(String, String)> {
    crate::api::extract::form_pairs(req.uri().query().unwrap_or(""))
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The `WWW-Authenticate` challenge pointing clients at the token endpoint.
fn challenge(headers: &HeaderMap, state: &AppState, scope: Option<(&str, Need)>) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        .map(str::to_string)
        .unwrap_or_else(|| state.config.api.listen.to_string());
    let proto = match headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    };
    let mut c = format!("Bearer realm=\"{proto}://{host}/v2/token\",service=\"berth\"");
    if let Some((name, need)) = scope {
        let actions = if need == Need::Push { "pull,push" } else { "pull" };
        c.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
    }
    c
}

/// The caller, verifying a Basic password if that is what was sent.
async fn caller(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    scope: Option<(&str, Need)>,
) -> RegistryResult<Arc<Principal>> {
    match &ctx.auth {
        Auth::Principal(p) => Ok(p.clone()),
        Auth::Basic { username, password } => {
            match crate::api::session::verify_login(state, ctx, username, password.to_string()).await {
                Ok(user) => Ok(Arc::new(Principal { user, credential: CredentialKind::Password, scopes: None })),
                Err(e) if e.kind == crate::api::error::Kind::RateLimited => {
                    Err(RegistryError::TooManyRequests { retry_after: e.retry_after.unwrap_or(60) })
                }
                Err(_) => Err(RegistryError::Unauthorized { challenge: challenge(headers, state, scope) }),
            }
        }
        Auth::Anonymous | Auth::Other(_) | Auth::Failed(_) => {
            Err(RegistryError::Unauthorized { challenge: challenge(headers, state, scope) })
        }
    }
}

/// Checks the caller may `need` the repository; returns the owning project's id.
/// A repository in a project the caller cannot see is reported as unknown.
async fn authorize(state: &AppState, p: &Principal, name: &str, need: Need) -> RegistryResult<String> {
    if !names::is_repository(name) {
        return Err(RegistryError::NameInvalid(format!(
            "{name:?} is not a valid repository name; use <project>/<name>"
        )));
    }
    let project = name.split('/').next().unwrap_or_default().to_string();
    let user = p.user.id.clone();
    let (pid, role) = state
        .store
        .read(move |c| {
            let pid = crate::store::projects::id_by_name(c, &project)?;
            let role = match &pid {
                Some(id) => crate::store::projects::role_of(c, id, &user)?,
                None => None,
            };
            Ok((pid, role))
        })
        .await?;
    let role = if p.user.super_admin { Some(Role::Admin) } else { role };
    let (Some(pid), Some(role)) = (pid, role) else {
        return Err(RegistryError::NameUnknown(format!("repository {name} is not known")));
    };
    let (min, scope) = match need {
        Need::Pull => (Role::Viewer, Scope::RegistryPull),
        Need::Push => (Role::Operator, Scope::RegistryPush),
    };
    if role < min {
        return Err(RegistryError::Denied(format!(
            "pushing to {name} needs the operator role in its project; you are {}",
            role.as_str()
        )));
    }
    if !p.has_scope(scope) {
        return Err(RegistryError::Denied(format!("this token lacks the {} scope", scope.as_str())));
    }
    Ok(pid)
}

fn version_header(mut resp: Response) -> Response {
    resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    resp
}

fn respond(result: RegistryResult<Response>) -> Response {
    version_header(result.unwrap_or_else(IntoResponse::into_response))
}

/// `GET /v2/`: whether the caller is authenticated.
#[utoipa::path(get, operation_id = "registry_base", path = "/v2/", tag = "registry",
    responses((status = 200, description = "authenticated"), (status = 401, description = "challenge")),
    security(("bearer" = [])))]
pub async fn base(State(state): State<AppState>, ctx: Ctx, headers: HeaderMap) -> Response {
    respond(caller(&state, &ctx, &headers, None).await.map(|_| axum::Json(json!({})).into_response()))
}

/// `GET /v2/token`: exchanges Basic credentials for a bearer token (the Docker token
/// flow). An API token given as the password is handed back as the bearer; a
/// password opens a session, listed like any other in `/v1/auth/sessions`.
#[utoipa::path(get, operation_id = "registry_token", path = "/v2/token", tag = "registry",
    responses((status = 200, description = "{token, access_token, expires_in, issued_at}"),
        (status = 401, description = "wrong credentials")),
    security(("basic" = [])))]
pub async fn token(State(state): State<AppState>, ctx: Ctx, headers: HeaderMap) -> Response {
    let basic_challenge = || RegistryError::Unauthorized { challenge: "Basic realm=\"berth\"".into() };
    let result = async {
        let presented_token =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.split_once(' ')).and_then(
                |(scheme, rest)| {
                    use base64::Engine;
                    if scheme.eq_ignore_ascii_case("bearer") {
                        Some(rest.trim().to_string())
                    } else {
                        let raw = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
                        let pair = String::from_utf8(raw).ok()?;
                        pair.split_once(':').map(|(_, p)| p.to_string())
                    }
                },
            );
        let (token, expires_in) = match &ctx.auth {
            Auth::Principal(_) => (presented_token.ok_or_else(basic_challenge)?, 3600),
            Auth::Basic { .. } => {
                let p = caller(&state, &ctx, &headers, None).await.map_err(|e| match e {
                    RegistryError::Unauthorized { .. } => basic_challenge(),
                    e => e,
                })?;
                let (_, token, _) = crate::api::session::open_session(&state, &ctx, &p.user)
                    .await
                    .map_err(|e| RegistryError::Internal(e.message))?;
                (token, state.config.api.session_ttl_hours * 3600)
            }
            _ => return Err(basic_challenge()),
        };
        Ok(axum::Json(json!({
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": crate::ids::now_rfc3339(),
        }))
        .into_response())
    }
    .await;
    respond(result)
}

macro_rules! v2_route {
    ($fn:ident, $method:ident, $op:literal) => {
        #[doc = concat!("`", stringify!($method), " /v2/<repository>/…`: blobs, uploads, manifests, tags, referrers.")]
        #[utoipa::path($method, operation_id = $op, path = "/v2/{path}", tag = "registry",
            params(("path" = String, Path, description = "<repository>/blobs/…, /blobs/uploads/…, /manifests/…, /tags/list or /referrers/…")),
            responses((status = 200, description = "see the OCI distribution spec"),
                (status = 401, description = "challenge"), (status = 404, description = "unknown or not visible")),
            security(("bearer" = [])))]
        pub async fn $fn(State(state): State<AppState>, ctx: Ctx, req: Request) -> Response {
            respond(dispatch(&state, &ctx, req).await)
        }
    };
}

v2_route!(v2_get, get, "registry_get");
v2_route!(v2_head, head, "registry_head");
v2_route!(v2_post, post, "registry_post");
v2_route!(v2_put, put, "registry_put");
v2_route!(v2_patch, patch, "registry_patch");
v2_route!(v2_delete, delete, "registry_delete");

async fn dispatch(state: &AppState, ctx: &Ctx, req: Request) -> RegistryResult<Response> {
    let method = req.method().clone();
    let rest = req.uri().path().strip_prefix("/v2/").unwrap_or_default().to_string();
    let target = Target::parse(&rest)
        .ok_or_else(|| RegistryError::NameUnknown(format!("/v2/{rest} is not a registry endpoint")))?;
    let need = match method {
        Method::GET | Method::HEAD => Need::Pull,
        _ => Need::Push,
    };
    let name = target.name().to_string();
    let p = caller(state, ctx, req.headers(), Some((&name, need))).await?;
    let project = authorize(state, &p, &name, need).await?;
    let reg = &state.registry;
    let existing = || async {
        reg.repo(&name).await?.ok_or_else(|| RegistryError::NameUnknown(format!("repository {name} is not known")))
    };
    match (method, target) {
        (m @ (Method::GET | Method::HEAD), Target::Blob { digest: d, .. }) => {
            let d = digest(&d)?;
            let repo = existing().await?;
            let size = reg
                .blob_size(&repo, &d)
                .await?
                .ok_or_else(|| RegistryError::BlobUnknown(format!("blob {d} is not in {name}")))?;
            get_blob(state, &d, size, req.headers(), m == Method::HEAD).await
        }
        (m @ (Method::GET | Method::HEAD), Target::Manifest { reference, .. }) => {
            let reference = match parse_reference(&reference) {
                Ok(r) => r,
                Err(RegistryError::ManifestInvalid(msg)) => return Err(RegistryError::ManifestUnknown(msg)),
                Err(e) => return Err(e),
            };
            let repo = existing().await?;
            let row = reg.manifest_row(&repo, &reference).await?;
            let body = if m == Method::HEAD { Vec::new() } else { reg.manifest_bytes(&row).await? };
            let mut resp = Response::new(Body::from(body));
            let h = resp.headers_mut();
            set(h, header::CONTENT_TYPE, &row.media_type);
            set(h, header::CONTENT_LENGTH, &row.size.to_string());
            set(h, "docker-content-digest", &row.digest);
            set(h, header::ETAG, &format!("\"{}\"", row.digest));
            Ok(resp)
        }
        (Method::GET, Target::Tags { .. }) => {
            let repo = existing().await?;
            let q = query(&req);
            let n = param(&q, "n")
                .map(|n| n.parse::<u32>().map(|n| n.min(10_000)))
                .transpose()
                .map_err(|_| RegistryError::Unsupported("n must be a non-negative integer".into()))?;
            let last = param(&q, "last").map(str::to_string);
            let (tags, more) = reg.tags(&repo, last, n).await?;
            let mut resp = axum::Json(json!({"name": name, "tags": tags})).into_response();
            if let (true, Some(n), Some(last)) = (more, n, tags.last()) {
                set(
                    resp.headers_mut(),
                    header::LINK,
                    &format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
                );
            }
            Ok(resp)
        }
        (Method::GET, Target::Referrers { digest: d, .. }) => {
            let d = digest(&d)?;
            let repo = existing().await?;
            let q = query(&req);
            let filter = param(&q, "artifactType").map(str::to_string);
            let rows = reg.referrers(&repo, &d).await?;
            let manifests: Vec<serde_json::Value> = rows
                .iter()
                .filter(|r| filter.as_ref().is_none_or(|f| r.artifact_type.as_ref() == Some(f)))
                .map(|r| {
                    let mut v = json!({"mediaType": r.media_type, "digest": r.digest, "size": r.size});
                    if let Some(a) = &r.artifact_type {
                        v["artifactType"] = json!(a);
                    }
                    if let Some(a) =
                        r.annotations.as_deref().and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                    {
                        v["annotations"] = a;
                    }
                    v
                })
                .collect();
            let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
            let mut resp = Response::new(Body::from(body.to_string()));
            set(resp.headers_mut(), header::CONTENT_TYPE, OCI_INDEX);
            if filter.is_some() {
                set(resp.headers_mut(), "oci-filters-applied", "artifactType");
            }
            Ok(resp)
        }
        (Method::GET, Target::Upload { id, .. }) => {
            let repo = existing().await?;
            let offset = reg.upload_offset(&repo, &id).await?;
            Ok(upload_response(StatusCode::NO_CONTENT, &name, &id, offset))
        }
        (Method::POST, Target::UploadStart { .. }) => {
            let q = query(&req);
            let repo = reg.repo_for_push(&name, &project).await?;
            match (param(&q, "mount"), param(&q, "from")) {
                (Some(mount), Some(from)) => {
                    let d = digest(mount)?;
                    if mount_allowed(state, &p, from).await {
                        if let Some(from_repo) = reg.repo(from).await? {
                            if reg.mount(&repo, &from_repo, &d).await? {
                                return Ok(blob_created(&name, &d));
                            }
                        }
                    }
                }
                // Without `from`, a blob any repository of the same project holds
                // is mounted (the spec's optional automatic content discovery).
                (Some(mount), None) => {
                    let d = digest(mount)?;
                    if reg.mount_from_project(&repo, &d).await? {
                        return Ok(blob_created(&name, &d));
                    }
                }
                _ => {}
            }
            if let Some(d) = param(&q, "digest") {
                let d = digest(d)?;
                let id = reg.start_upload(&repo).await?;
                reg.finish(&repo, &id, &d, req.into_body()).await?;
                return Ok(blob_created(&name, &d));
            }
            let id = reg.start_upload(&repo).await?;
            Ok(upload_response(StatusCode::ACCEPTED, &name, &id, 0))
        }
        (Method::PATCH, Target::Upload { id, .. }) => {
            let repo = existing().await?;
            let start = content_range_start(req.headers())?;
            let offset = reg.patch(&repo, &id, start, req.into_body()).await?;
            Ok(upload_response(StatusCode::ACCEPTED, &name, &id, offset))
        }
        (Method::PUT, Target::Upload { id, .. }) => {
            let repo = existing().await?;
            let q = query(&req);
            let d = digest(
                param(&q, "digest")
                    .ok_or_else(|| RegistryError::DigestInvalid("finishing an upload needs ?digest=".into()))?,
            )?;
            let start = content_range_start(req.headers())?;
            let body = req.into_body();
            if let Some(start) = start {
                reg.patch(&repo, &id, Some(start), body).await?;
                reg.finish(&repo, &id, &d, Body::empty()).await?;
            } else {
                reg.finish(&repo, &id, &d, body).await?;
            }
            Ok(blob_created(&name, &d))
        }
        (Method::DELETE, Target::Upload { id, .. }) => {
            let repo = existing().await?;
            reg.cancel(&repo, &id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::PUT, Target::Manifest { reference, .. }) => {
            let reference = parse_reference(&reference)?;
            let content_type =
                req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            if req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|l| l > MAX_MANIFEST_BYTES)
            {
                return Err(too_large());
            }
            let body =
                crate::api::extract::read_limited(req.into_body(), MAX_MANIFEST_BYTES).await.map_err(|e| {
                    match e.kind {
                        crate::api::error::Kind::PayloadTooLarge => too_large(),
                        _ => RegistryError::ManifestInvalid(e.message),
                    }
                })?;
            let repo = reg.repo_for_push(&name, &project).await?;
            let (d, subject) = reg.put_manifest(&repo, &reference, content_type.as_deref(), body.to_vec()).await?;
            let mut resp = StatusCode::CREATED.into_response();
            let h = resp.headers_mut();
            set(h, header::LOCATION, &format!("/v2/{name}/manifests/{d}"));
            set(h, "docker-content-digest", &d.to_string());
            if let Some(s) = subject {
                set(h, "oci-subject", &s.to_string());
            }
            Ok(resp)
        }
        (Method::DELETE, Target::Manifest { reference, .. }) => {
            let reference = parse_reference(&reference)?;
            let repo = existing().await?;
            reg.delete_manifest(&repo, &reference).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Method::DELETE, Target::Blob { digest: d, .. }) => {
            let d = digest(&d)?;
            let repo = existing().await?;
            reg.delete_blob(&repo, &d).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (m, t) => Err(RegistryError::Unsupported(format!("{m} is not supported on {}", describe(&t)))),
    }
}

fn describe(t: &Target) -> &'static str {
    match t {
        Target::Blob { .. } => "blobs",
        Target::UploadStart { .. } | Target::Upload { .. } => "uploads",
        Target::Manifest { .. } => "manifests",
        Target::Tags { .. } => "tags",
        Target::Referrers { .. } => "referrers",
    }
}

fn too_large() -> RegistryError {
    RegistryError::TooLarge(format!("manifests are limited to {MAX_MANIFEST_BYTES} bytes"))
}

fn parse_reference(s: &str) -> RegistryResult<Reference> {
    if s.contains(':') {
        return digest(s).map(Reference::Digest);
    }
    if !names::is_tag(s) {
        return Err(RegistryError::ManifestInvalid(format!(
            "tag {:?} is not valid: 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
            s.chars().take(140).collect::<String>()
        )));
    }
    Ok(Reference::Tag(s.to_string()))
}

/// Cross-repository mount needs pull rights on the source; anything else falls back
/// to a normal upload, as the spec allows.
async fn mount_allowed(state: &AppState, p: &Principal, from: &str) -> bool {
    authorize(state, p, from, Need::Pull).await.is_ok()
}

fn set(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn upload_response(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"));
    set(h, header::RANGE, &format!("0-{}", offset.saturating_sub(1)));
    set(h, "docker-upload-uuid", id);
    set(h, header::CONTENT_LENGTH, "0");
    resp
}

fn blob_created(name: &str, d: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{name}/blobs/{d}"));
    set(h, "docker-content-digest", &d.to_string());
    set(h, header::CONTENT_LENGTH, "0");
    resp
}

/// The start of `Content-Range: <start>-<end>` (a `bytes ` / `bytes=` prefix is tolerated).
fn content_range_start(h: &HeaderMap) -> RegistryResult<Option<u64>> {
    let Some(v) = h.get(header::CONTENT_RANGE) else { return Ok(None) };
    let v = v.to_str().unwrap_or("").trim();
    let v = v.strip_prefix("bytes").map(|r| r.trim_start_matches([' ', '='])).unwrap_or(v);
    let bad = || RegistryError::RangeInvalid(format!("Content-Range {v:?} is not <start>-<end>"));
    let (start, end) = v.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.split('/').next().unwrap_or("").trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some(start))
}

/// A blob body, whole or the one range asked for.
async fn get_blob(
    state: &AppState,
    d: &Digest,
    size: u64,
    headers: &HeaderMap,
    head: bool,
) -> RegistryResult<Response> {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (status, start, len) = match range {
        None => (StatusCode::OK, 0, size),
        Some(r) => {
            let (start, end) = parse_range(&r, size).ok_or_else(|| {
                RegistryError::RangeInvalid(format!("range {r:?} cannot be served from {size} bytes"))
            })?;
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
    };
    let body = if head || len == 0 {
        Body::empty()
    } else {
        // Opening and seeking the file are blocking calls.
        let (blobs, digest) = (state.registry.blobs.clone(), d.clone());
        super::blocking(move || blobs.stream(&digest, start, len)).await??
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::CONTENT_LENGTH, &len.to_string());
    set(h, "docker-content-digest", &d.to_string());
    set(h, header::ETAG, &format!("\"{d}\""));
    set(h, header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        set(h, header::CONTENT_RANGE, &format!("bytes {start}-{}/{size}", start + len - 1));
    }
    Ok(resp)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` against a blob of `size` bytes.
fn parse_range(r: &str, size: u64) -> Option<(u64, u64)> {
    let spec = r.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = |s: &str| Target::parse(s);
        assert_eq!(t("a/b/tags/list"), Some(Target::Tags { name: "a/b".into() }));
        assert_eq!(t("a/b/blobs/uploads/"), Some(Target::UploadStart { name: "a/b".into() }));
        assert_eq!(t("a/b/blobs/uploads/upl_1"), Some(Target::Upload { name: "a/b".into(), id: "upl_1".into() }));
        assert_eq!(t("a/b/c/blobs/sha256:x"), Some(Target::Blob { name: "a/b/c".into(), digest: "sha256:x".into() }));
        assert_eq!(
            t("a/manifests/b/manifests/v1"),
            Some(Target::Manifest { name: "a/manifests/b".into(), reference: "v1".into() })
        );
        assert_eq!(
            t("a/b/referrers/sha256:x"),
            Some(Target::Referrers { name: "a/b".into(), digest: "sha256:x".into() })
        );
        assert_eq!(t("a/b/other"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(content_range_start(&h).unwrap(), Some(0));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/*"));
        assert_eq!(content_range_start(&h).unwrap(), Some(100));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("nonsense"));
        assert!(content_range_start(&h).is_err());
    }
}
