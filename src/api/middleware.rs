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
    let Some(ctx) = req.extensions().get::<Ctx>() else {
        return ApiError::internal("request context missing").into_response();
    };
    let project_id = params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_string());
    if let Err(e) = check(&state, route, &ctx.auth, project_id.as_deref()).await {
        return e.into_response();
    }
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !mutating || route.access == Access::Registry {
        return next.run(req).await;
    }
    // What the audit entry needs, taken before the request is handed on.
    let ctx = ctx.clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if resp.status().is_success() {
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
async fn check(state: &AppState, route: &Route, auth: &Auth, project_id: Option<&str>) -> Result<(), ApiError> {
    let principal = match (route.access, auth) {
        (Access::Public | Access::Registry, _) => return Ok(()),
        (Access::Bootstrap, Auth::Other(token)) => {
            return match state.gate.auth.check_bootstrap(token).await? {
                crate::auth::Bootstrap::Valid => Ok(()),
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
        (_, Auth::Principal(p)) => p,
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
    match route.access {
        Access::Public | Access::Bootstrap | Access::Authenticated | Access::Registry => {}
        Access::SuperAdmin if super_admin => {}
        Access::SuperAdmin => return Err(ApiError::forbidden("this route is for super-admins")),
        Access::AnyMember | Access::AnyAdmin if super_admin => {}
        Access::AnyMember | Access::AnyAdmin => {
            let user_id = principal.user.id.clone();
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
            let (lookup, user_id) = (id.clone(), principal.user.id.clone());
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
