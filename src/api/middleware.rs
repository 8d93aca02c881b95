//! The two layers every request passes through.
//!
//! `context` (outermost, before routing): request id, authentication, rate limit,
//! response headers, request log. `authorize` (per route, after routing): the
//! route's access and scope check, then the audit entry for a successful mutation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, Kind, REQUEST_ID};
use super::extract::{AuditNote, Auth, Ctx};
use super::router::{Access, Route};
use crate::auth::{AuthError, BOOTSTRAP_PREFIX, Role};
use crate::store::audit::AuditEntry;

const MAX_USER_AGENT: usize = 256;

fn request_id_from(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
        .unwrap_or_else(|| crate::ids::new_id("req"))
}

/// What the `Authorization` header holds.
enum Presented<'a> {
    Bearer(&'a str),
    Basic(String, String),
}

fn presented(headers: &HeaderMap) -> Option<Result<Presented<'_>, ()>> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?;
    let Ok(value) = value.to_str() else { return Some(Err(())) };
    Some(match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Presented::Bearer(token.trim())),
        Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(u, p)| Presented::Basic(u.to_string(), p.to_string())))
            .ok_or(()),
        _ => Err(()),
    })
}

/// Outer layer: request id, authentication, rate limiting, headers, log line.
pub async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request_id_from(req.headers());
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    REQUEST_ID
        .scope(request_id.clone(), async move {
            let auth = match presented(req.headers()) {
                None => Auth::Anonymous,
                Some(Err(())) => Auth::Failed(Arc::new(AuthError::Malformed)),
                Some(Ok(Presented::Bearer(t))) if t.starts_with(BOOTSTRAP_PREFIX) => Auth::Other(Arc::from(t)),
                Some(Ok(Presented::Bearer(t))) => match state.auth.authenticate(t).await {
                    Ok(p) => Auth::Principal(Arc::new(p)),
                    Err(e) => Auth::Failed(Arc::new(e)),
                },
                // `docker login` sends an API token as the password; it must belong to
                // the user named.
                Some(Ok(Presented::Basic(user, secret))) if crate::auth::parse_token(&secret).is_ok() => {
                    match state.auth.authenticate(&secret).await {
                        Ok(p) if p.user.username == user => Auth::Principal(Arc::new(p)),
                        Ok(_) => Auth::Failed(Arc::new(AuthError::Invalid)),
                        Err(e) => Auth::Failed(Arc::new(e)),
                    }
                }
                Some(Ok(Presented::Basic(user, password))) => {
                    Auth::Basic { username: Arc::from(user), password: Arc::from(password) }
                }
            };
            let (key, limit) = match &auth {
                Auth::Principal(p) => (format!("c:{}", p.credential_id()), state.config.api.rate_limit_per_minute),
                _ => (format!("ip:{source}"), state.config.api.anonymous_rate_limit_per_minute),
            };
            let decision = state.limiter.check(&key, limit);
            let actor = match &auth {
                Auth::Principal(p) => Some(p.user.username.clone()),
                _ => None,
            };
            let user_agent = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(MAX_USER_AGENT).collect())
                .unwrap_or_default();
            let mut resp = if decision.allowed {
                req.extensions_mut().insert(Ctx { request_id: request_id.clone(), source, user_agent, auth });
                next.run(req).await
            } else if path.starts_with("/v2/") {
                crate::registry::error::RegistryError::TooManyRequests { retry_after: decision.reset }.into_response()
            } else {
                ApiError::rate_limited(decision.reset).into_response()
            };
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                h.insert("x-request-id", v);
            }
            h.insert("x-ratelimit-limit", HeaderValue::from(decision.limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from(decision.remaining));
            h.insert("x-ratelimit-reset", HeaderValue::from(decision.reset));
            let status = resp.status().as_u16();
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let actor = actor.as_deref().unwrap_or("-");
            if status >= 500 {
                tracing::error!(request_id, %method, path, status, ms, actor, "request");
            } else if method != Method::GET && method != Method::HEAD {
                tracing::info!(request_id, %method, path, status, ms, actor, "request");
            } else {
                tracing::debug!(request_id, %method, path, status, ms, actor, "request");
            }
            resp
        })
        .await
}

/// Per-route layer: enforce the route's access and scope, then audit a successful mutation.
pub async fn authorize(
    State((state, route)): State<(AppState, &'static Route)>,
    params: RawPathParams,
    req: Request,
    next: Next,
) -> Response {
    let ctx = match req.extensions().get::<Ctx>() {
        Some(c) => c.clone(),
        None => return ApiError::internal("request context missing").into_response(),
    };
    let project_id = params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string());
    if let Err(e) = check(&state, route, &ctx, project_id.as_deref()).await {
        return e.into_response();
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating && resp.status().is_success() {
        let note = resp.extensions().get::<AuditNote>().cloned().unwrap_or_default();
        let (actor_id, actor_name, token_id) = match &ctx.auth {
            Auth::Principal(p) => {
                (Some(p.user.id.clone()), Some(p.user.username.clone()), p.token_id().map(str::to_string))
            }
            _ => (note.actor.as_ref().map(|a| a.0.clone()), note.actor.as_ref().map(|a| a.1.clone()), None),
        };
        let entry = AuditEntry {
            id: crate::ids::new_id("aud"),
            at: crate::ids::now_rfc3339(),
            actor_id,
            actor_name,
            token_id,
            action: format!("{} {}", route.method, route.path),
            target: note.target.unwrap_or(path),
            project_id: note.project_id.or(project_id),
            source_addr: ctx.source.to_string(),
            request_id: ctx.request_id.clone(),
            status: resp.status().as_u16(),
        };
        if let Err(e) = state.store.write(move |c| crate::store::audit::insert(c, &entry)).await {
            tracing::error!(request_id = ctx.request_id, error = %e, "audit write failed");
        }
    }
    resp
}

/// The access decision for one request; `Err` is the response to send instead.
async fn check(state: &AppState, route: &Route, ctx: &Ctx, project_id: Option<&str>) -> Result<(), ApiError> {
    let principal = match (route.access, &ctx.auth) {
        (Access::Public | Access::Registry, _) => return Ok(()),
        (Access::Bootstrap, Auth::Other(token)) => {
            return if state.auth.check_bootstrap(token).await? {
                Ok(())
            } else {
                Err(ApiError::new(Kind::InvalidToken, "the bootstrap token is not valid or was already used"))
            };
        }
        (Access::Bootstrap, _) => {
            return Err(ApiError::new(Kind::MissingToken, "bootstrap needs the token from <data_dir>/bootstrap-token"));
        }
        (_, Auth::Principal(p)) => p.clone(),
        (_, Auth::Anonymous) => return Err(ApiError::new(Kind::MissingToken, "this route needs a bearer token")),
        (_, Auth::Other(_)) => return Err(AuthError::Invalid.into()),
        (_, Auth::Basic { .. }) => {
            return Err(ApiError::new(Kind::MissingToken, "/v1 takes a bearer token; log in with POST /v1/auth/login"));
        }
        (_, Auth::Failed(e)) => {
            return Err(match e.as_ref() {
                AuthError::Malformed => AuthError::Malformed.into(),
                AuthError::Invalid => AuthError::Invalid.into(),
                AuthError::Expired => AuthError::Expired.into(),
                AuthError::Store(e) => ApiError::internal(e),
            });
        }
    };
    let super_admin = principal.user.super_admin;
    let user_id = principal.user.id.clone();
    match route.access {
        Access::Public | Access::Bootstrap | Access::Authenticated | Access::Registry => {}
        Access::SuperAdmin if super_admin => {}
        Access::SuperAdmin => return Err(ApiError::forbidden("this route is for super-admins")),
        Access::AnyMember | Access::AnyAdmin if super_admin => {}
        Access::AnyMember | Access::AnyAdmin => {
            let highest = state.store.read(move |c| crate::store::projects::highest_role(c, &user_id)).await?;
            let needed = if route.access == Access::AnyAdmin { Role::Admin } else { Role::Viewer };
            if highest.is_none_or(|r| r < needed) {
                return Err(ApiError::forbidden(format!(
                    "this route needs the {} role in at least one project",
                    needed.as_str()
                )));
            }
        }
        Access::Project(min) => {
            let id = project_id.unwrap_or_default().to_string();
            let hidden = || ApiError::not_found(format!("project {id} not found"));
            if !crate::ids::has_shape(&id, "prj") {
                return Err(hidden());
            }
            let lookup = id.clone();
            let (exists, role) = state
                .store
                .read(move |c| {
                    Ok((
                        crate::store::projects::exists(c, &lookup)?,
                        crate::store::projects::role_of(c, &lookup, &user_id)?,
                    ))
                })
                .await?;
            match role {
                _ if !exists => return Err(hidden()),
                _ if super_admin => {}
                None => return Err(hidden()),
                Some(r) if r < min => {
                    return Err(ApiError::forbidden(format!(
                        "this needs the {} role in project {id}; you are {}",
                        min.as_str(),
                        r.as_str()
                    )));
                }
                Some(_) => {}
            }
        }
    }
    if let Some(scope) = route.scope {
        if !principal.has_scope(scope) {
            return Err(ApiError::new(
                Kind::InsufficientScope,
                format!("this token lacks the {} scope", scope.as_str()),
            ));
        }
    }
    Ok(())
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {}", req.uri().path()))
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(Kind::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.uri().path()))
}
