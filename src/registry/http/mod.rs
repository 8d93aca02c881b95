//! `/v2` over HTTP: path parsing, authentication challenges, per-repository access,
//! and the distribution spec's status codes and headers.
//!
//! [`dispatch`] parses the path into a [`Target`], authenticates and authorizes the
//! caller for the repository, and hands the request to the handler of that
//! resource: [`blobs`], [`uploads`], [`manifests`], [`tags`] (tags and referrers).
//! Request plumbing (who is calling, body limits, rate limits) comes from
//! `crate::http`; nothing here reaches into `/v1`.

mod blobs;
mod manifests;
mod tags;
mod uploads;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{RegistryError, RegistryResult};
use super::names::{self, Digest, DigestError, Reference};
use crate::auth::{CredentialKind, Principal, Role, Scope};
use crate::http::{Auth, Ctx};
use crate::state::AppState;

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

    fn describe(&self) -> &'static str {
        match self {
            Target::Blob { .. } => "blobs",
            Target::UploadStart { .. } | Target::Upload { .. } => "uploads",
            Target::Manifest { .. } => "manifests",
            Target::Tags { .. } => "tags",
            Target::Referrers { .. } => "referrers",
        }
    }
}

/// The endpoint template of a `/v2` path, as `GET /metrics` labels it: the
/// distribution spec's templates (never a repository name or digest), decided in
/// [`Target::parse`]'s order without allocating.
pub fn route_template(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v2/") else { return "/v2/" };
    if rest.is_empty() {
        return "/v2/";
    }
    if rest == "token" {
        return "/v2/token";
    }
    if rest.ends_with("/tags/list") {
        "/v2/{name}/tags/list"
    } else if rest.ends_with("/blobs/uploads/") || rest.ends_with("/blobs/uploads") {
        "/v2/{name}/blobs/uploads/"
    } else if rest.contains("/blobs/uploads/") {
        "/v2/{name}/blobs/uploads/{id}"
    } else if rest.contains("/blobs/") {
        "/v2/{name}/blobs/{digest}"
    } else if rest.contains("/manifests/") {
        "/v2/{name}/manifests/{reference}"
    } else if rest.contains("/referrers/") {
        "/v2/{name}/referrers/{digest}"
    } else {
        crate::metrics::UNMATCHED
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Pull,
    Push,
}

/// One authorized `/v2` request on a repository, as every handler gets it.
struct Call<'a> {
    state: &'a AppState,
    ctx: &'a Ctx,
    principal: Arc<Principal>,
    /// The repository name, `<project>/<name>[/…]`.
    name: String,
    /// The id of the repository's project.
    project: String,
}

impl Call<'_> {
    /// The repository, which must exist.
    async fn existing(&self) -> RegistryResult<crate::store::registry::Repo> {
        self.state
            .registry
            .repo(&self.name)
            .await?
            .ok_or_else(|| RegistryError::NameUnknown(format!("repository {} is not known", self.name)))
    }

    /// Records a change to the repository in the audit log, where that project's
    /// admins see it: who, what, which repository and reference.
    async fn audit(&self, action: &str, target: String, status: StatusCode) {
        let entry = self.ctx.audit_entry(
            &self.principal.user,
            self.principal.token_id(),
            action,
            target,
            Some(self.project.clone()),
            status.as_u16(),
        );
        if let Err(e) = self.state.store.write(move |c| crate::store::audit::insert(c, &entry)).await {
            tracing::error!(request_id = self.ctx.request_id, error = %e, "audit write failed");
        }
    }
}

fn digest(s: &str) -> RegistryResult<Digest> {
    Digest::parse(s).map_err(|e| match e {
        DigestError::Malformed => RegistryError::DigestInvalid(format!("{s:?} is not a valid digest")),
        DigestError::UnsupportedAlgorithm(a) => {
            RegistryError::DigestInvalid(format!("digest algorithm {a} is not supported; use sha256"))
        }
    })
}

/// The query string, decoded.
fn query(req: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The `WWW-Authenticate` challenge pointing clients at the token endpoint: on the
/// control domain when there is one, else on the listener the client reached. The
/// request's own `Host` header is never echoed.
fn challenge(state: &AppState, ctx: &Ctx, scope: Option<(&str, Need)>) -> String {
    let realm = match &state.config.ingress.control_domain {
        Some(domain) => match state.https_port.load(std::sync::atomic::Ordering::Relaxed) {
            // The HTTPS listener's port when it is not the default (dev mode: 8443).
            0 | 443 => format!("https://{domain}/v2/token"),
            port => format!("https://{domain}:{port}/v2/token"),
        },
        None => format!("http://{}/v2/token", ctx.local.unwrap_or(state.config.api.listen)),
    };
    let mut c = format!("Bearer realm=\"{realm}\",service=\"berth\"");
    if let Some((name, need)) = scope {
        let actions = if need == Need::Push { "pull,push" } else { "pull" };
        c.push_str(&format!(",scope=\"repository:{name}:{actions}\""));
    }
    c
}

/// The caller, verifying a Basic password if that is what was sent.
async fn caller(state: &AppState, ctx: &Ctx, scope: Option<(&str, Need)>) -> RegistryResult<Arc<Principal>> {
    let unauthorized = || RegistryError::Unauthorized { challenge: challenge(state, ctx, scope) };
    match &ctx.auth {
        Auth::Principal(p) => Ok(p.clone()),
        Auth::Basic { username, password } => {
            match crate::http::login::verify(&state.gate, ctx.source, username, password.to_string()).await {
                Ok(user) => Ok(Arc::new(Principal {
                    user,
                    credential: CredentialKind::Password,
                    scopes: None,
                    expires_unix: None,
                })),
                Err(e @ crate::http::login::LoginError::Invalid) | Err(e @ crate::http::login::LoginError::TooLong) => {
                    tracing::debug!(error = %e, "registry password refused");
                    Err(unauthorized())
                }
                Err(e) => Err(e.into()),
            }
        }
        Auth::Anonymous | Auth::Other(_) | Auth::Failed(_) => Err(unauthorized()),
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
pub async fn base(State(state): State<AppState>, ctx: Ctx) -> Response {
    respond(caller(&state, &ctx, None).await.map(|_| axum::Json(json!({})).into_response()))
}

/// `GET /v2/token`: exchanges Basic credentials for a bearer token (the Docker token
/// flow). An API token given as the password is handed back as the bearer; a
/// password opens a short-lived session (`api.registry_token_ttl_seconds`), listed
/// like any other in `/v1/auth/sessions` and counted against the user's sessions.
#[utoipa::path(get, operation_id = "registry_token", path = "/v2/token", tag = "registry",
    responses((status = 200, description = "{token, access_token, expires_in, issued_at}"),
        (status = 401, description = "wrong credentials")),
    security(("basic" = [])))]
pub async fn token(State(state): State<AppState>, ctx: Ctx, headers: HeaderMap) -> Response {
    let basic_challenge = || RegistryError::Unauthorized { challenge: "Basic realm=\"berth\"".into() };
    let result = async {
        let (token, expires_in) = match &ctx.auth {
            Auth::Principal(p) => {
                let presented = match crate::http::context::presented(&headers) {
                    Some(Ok(crate::http::context::Presented::Bearer(t))) => t,
                    Some(Ok(crate::http::context::Presented::Basic(_, t))) => t,
                    _ => return Err(basic_challenge()),
                };
                let left = p.expires_unix.map_or(3600, |e| (e - crate::ids::unix_now()).clamp(0, 3600));
                (presented, left as u64)
            }
            Auth::Basic { .. } => {
                let p = caller(&state, &ctx, None).await.map_err(|e| match e {
                    RegistryError::Unauthorized { .. } => basic_challenge(),
                    e => e,
                })?;
                let ttl = state.config.api.registry_token_ttl_seconds;
                let opened =
                    crate::http::login::open_session(&state.gate, &ctx, &p.user, time::Duration::seconds(ttl as i64))
                        .await?;
                (opened.token, ttl)
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

/// Authorizes the request for its repository and routes it to its resource.
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
    let principal = caller(state, ctx, Some((&name, need))).await?;
    let project = authorize(state, &principal, &name, need).await?;
    let call = Call { state, ctx, principal, name, project };
    match (method, target) {
        (m @ (Method::GET | Method::HEAD), Target::Blob { digest, .. }) => {
            let range = req.headers().get(header::RANGE).map(|v| v.to_str().unwrap_or_default().to_string());
            blobs::get(&call, &digest, range.as_deref(), m == Method::HEAD).await
        }
        (Method::DELETE, Target::Blob { digest, .. }) => blobs::delete(&call, &digest).await,
        (Method::POST, Target::UploadStart { .. }) => uploads::start(&call, req).await,
        (Method::GET, Target::Upload { id, .. }) => uploads::status(&call, &id).await,
        (Method::PATCH, Target::Upload { id, .. }) => uploads::patch(&call, &id, req).await,
        (Method::PUT, Target::Upload { id, .. }) => uploads::finish(&call, &id, req).await,
        (Method::DELETE, Target::Upload { id, .. }) => uploads::cancel(&call, &id).await,
        (m @ (Method::GET | Method::HEAD), Target::Manifest { reference, .. }) => {
            manifests::get(&call, &reference, m == Method::HEAD).await
        }
        (Method::PUT, Target::Manifest { reference, .. }) => manifests::put(&call, &reference, req).await,
        (Method::DELETE, Target::Manifest { reference, .. }) => manifests::delete(&call, &reference).await,
        (Method::GET, Target::Tags { .. }) => tags::list(&call, &query(&req)).await,
        (Method::GET, Target::Referrers { digest, .. }) => tags::referrers(&call, &digest, &query(&req)).await,
        (m, t) => Err(RegistryError::Unsupported(format!("{m} is not supported on {}", t.describe()))),
    }
}

fn set(h: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
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
    fn route_templates_name_the_endpoint_the_parser_finds() {
        let cases = [
            ("a/b/tags/list", "/v2/{name}/tags/list"),
            ("a/b/blobs/uploads/", "/v2/{name}/blobs/uploads/"),
            ("a/b/blobs/uploads", "/v2/{name}/blobs/uploads/"),
            ("a/b/blobs/uploads/upl_1", "/v2/{name}/blobs/uploads/{id}"),
            ("a/b/c/blobs/sha256:x", "/v2/{name}/blobs/{digest}"),
            ("a/manifests/b/manifests/v1", "/v2/{name}/manifests/{reference}"),
            ("a/b/referrers/sha256:x", "/v2/{name}/referrers/{digest}"),
            ("a/b/other", "unmatched"),
        ];
        for (rest, template) in cases {
            assert_eq!(route_template(&format!("/v2/{rest}")), template, "{rest}");
            let kind = Target::parse(rest).map(|t| t.describe());
            let expected = template.split('/').nth(3);
            match kind {
                Some("uploads") => assert!(template.contains("/blobs/uploads"), "{rest}"),
                Some(k) => assert_eq!(Some(k), expected, "{rest}"),
                None => assert_eq!(template, "unmatched"),
            }
        }
        assert_eq!(route_template("/v2/"), "/v2/");
        assert_eq!(route_template("/v2/token"), "/v2/token");
    }
}
