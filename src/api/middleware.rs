//! The per-route layer of `/v1`: after `http::context` (request id, who is calling,
//! rate limit) and routing, `authorize` applies the route's row of the route table
//! (access and scope), then writes the audit entry for a successful mutation.
//! `/v2` routes are authorized per repository by the registry, which also writes
//! its own audit entries (one per pushed or deleted manifest, not one per chunk).

use axum::extract::{RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, Kind};
use super::extract::{AuditNote, Auth, Ctx};
use super::router::{Access, Route};
use crate::auth::{AuthError, Role};
use crate::store::audit::AuditEntry;

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
    let path_id = params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string());
    let project_id = match check(&state, route, &ctx, path_id.as_deref()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutating && route.access != Access::Registry && resp.status().is_success() {
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

/// The access decision for one request: the project the route's `{id}` resolves
/// to (for the audit entry), or the response to send instead.
async fn check(state: &AppState, route: &Route, ctx: &Ctx, path_id: Option<&str>) -> Result<Option<String>, ApiError> {
    let principal = match (route.access, &ctx.auth) {
        (Access::Public | Access::Registry, _) => return Ok(None),
        (Access::Bootstrap, Auth::Other(token)) => {
            return match state.gate.auth.check_bootstrap(token).await? {
                crate::auth::Bootstrap::Valid => Ok(None),
                crate::auth::Bootstrap::Done => Err(ApiError::new(
                    Kind::InvalidToken,
                    "bootstrap is done: the first super-admin exists; log in with POST /v1/auth/login",
                )),
                crate::auth::Bootstrap::Wrong => {
                    Err(ApiError::new(Kind::InvalidToken, "the bootstrap token is not valid"))
                }
            };
        }
        (Access::Bootstrap, _) => {
            return Err(if state.gate.auth.bootstrap_done().await? {
                ApiError::new(
                    Kind::MissingToken,
                    "bootstrap is done: the first super-admin exists; log in with POST /v1/auth/login",
                )
            } else {
                ApiError::new(Kind::MissingToken, "bootstrap needs the token from <data_dir>/bootstrap-token")
            });
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
    let mut project = None;
    match route.access {
        Access::Public | Access::Bootstrap | Access::Authenticated | Access::Registry | Access::InBody(_) => {}
        Access::SuperAdmin if super_admin => {}
        Access::SuperAdmin => return Err(ApiError::forbidden("this route is for super-admins")),
        Access::AnyMember | Access::AnyOperator | Access::AnyAdmin if super_admin => {}
        Access::AnyMember | Access::AnyOperator | Access::AnyAdmin => {
            let highest = state.store.read(move |c| crate::store::projects::highest_role(c, &user_id)).await?;
            let needed = match route.access {
                Access::AnyAdmin => Role::Admin,
                Access::AnyOperator => Role::Operator,
                _ => Role::Viewer,
            };
            if highest.is_none_or(|r| r < needed) {
                return Err(ApiError::forbidden(format!(
                    "this route needs the {} role in at least one project",
                    needed.as_str()
                )));
            }
        }
        Access::Project(min) => {
            let id = path_id.unwrap_or_default().to_string();
            require_role(state, &principal, &id, min, ApiError::not_found(format!("project {id} not found"))).await?;
            project = Some(id);
        }
        Access::Service(min) | Access::Deployment(min) => {
            let id = path_id.unwrap_or_default().to_string();
            let (prefix, what) =
                if matches!(route.access, Access::Service(_)) { ("svc", "service") } else { ("dep", "deployment") };
            let hidden = || ApiError::not_found(format!("{what} {id} not found"));
            if !crate::ids::has_shape(&id, prefix) {
                return Err(hidden());
            }
            let lookup = id.clone();
            let owner = state
                .store
                .read(move |c| match prefix {
                    "svc" => crate::store::services::project_of(c, &lookup),
                    _ => crate::store::deployments::project_of(c, &lookup),
                })
                .await?
                .ok_or_else(hidden)?;
            require_role(state, &principal, &owner, min, hidden()).await?;
            project = Some(owner);
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
    Ok(project)
}

/// At least `min` in `project_id` (super-admins pass): a project that does not
/// exist, or in which the caller holds no role, answers `hidden` (a 404 that names
/// what the caller asked for); a lower role answers 403.
pub async fn require_role(
    state: &AppState,
    principal: &crate::auth::Principal,
    project_id: &str,
    min: Role,
    hidden: ApiError,
) -> Result<(), ApiError> {
    if !crate::ids::has_shape(project_id, "prj") {
        return Err(hidden);
    }
    let (lookup, user_id) = (project_id.to_string(), principal.user.id.clone());
    let (exists, role) = state
        .store
        .read(move |c| {
            Ok((crate::store::projects::exists(c, &lookup)?, crate::store::projects::role_of(c, &lookup, &user_id)?))
        })
        .await?;
    match role {
        _ if !exists => Err(hidden),
        _ if principal.user.super_admin => Ok(()),
        None => Err(hidden),
        Some(r) if r < min => Err(ApiError::forbidden(format!(
            "this needs the {} role in project {project_id}; you are {}",
            min.as_str(),
            r.as_str()
        ))),
        Some(_) => Ok(()),
    }
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {}", req.uri().path()))
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(Kind::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.uri().path()))
}
