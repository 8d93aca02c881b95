//! The per-route layer of `/v1`: after `http::context` (request id, who is calling,
//! rate limit) and routing, [`AuthorizeLayer`] applies the route's row of the route
//! table (access and scope), then writes the audit entry for a successful mutation.
//! `/v2` routes are authorized per repository by the registry, which also writes
//! its own audit entries (one per pushed or deleted manifest, not one per chunk).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::AppState;
use super::error::{ApiError, Kind};
use super::extract::{AuditNote, Auth, Ctx};
use super::router::{Access, Route};
use crate::auth::{AuthError, Principal, Role};
use crate::http::context::ResponseFuture;
use crate::store::audit::AuditEntry;

/// Per-route layer: enforce the route's access and scope, then audit a successful
/// mutation. A read whose access is decided from the caller alone (most routes:
/// public, any caller, super-admins) goes straight to the handler; the store is
/// asked only for project roles, bootstrap, and the audit entry.
#[derive(Clone)]
pub struct AuthorizeLayer {
    state: AppState,
    route: &'static Route,
}

impl AuthorizeLayer {
    pub fn new(state: AppState, route: &'static Route) -> Self {
        AuthorizeLayer { state, route }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { state: self.state.clone(), route: self.route, inner }
    }
}

/// The service of [`AuthorizeLayer`].
#[derive(Clone)]
pub struct Authorize<S> {
    state: AppState,
    route: &'static Route,
    inner: S,
}

/// The response future of [`Authorize`]: the handler's own when nothing is left to
/// do after it, else a boxed one.
pub enum AuthorizeFuture<F> {
    Handler(F),
    Boxed(ResponseFuture),
}

impl<F> Future for AuthorizeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            AuthorizeFuture::Handler(f) => Pin::new(f).poll(cx),
            AuthorizeFuture::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

impl<S> Service<Request> for Authorize<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + Unpin + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AuthorizeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = self.route;
        let audited =
            !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) && route.access != Access::Registry;
        if !audited {
            let decided = match req.extensions().get::<Ctx>() {
                Some(ctx) => decide_now(route, &ctx.auth),
                None => Some(Err(ApiError::internal("request context missing"))),
            };
            match decided {
                Some(Ok(())) => return AuthorizeFuture::Handler(self.inner.call(req)),
                Some(Err(e)) => return AuthorizeFuture::Boxed(Box::pin(std::future::ready(Ok(e.into_response())))),
                None => {}
            }
        }
        let (state, inner) = (self.state.clone(), self.inner.clone());
        AuthorizeFuture::Boxed(Box::pin(async move { Ok(authorize(state, route, req, inner).await) }))
    }
}

/// [`Authorize`] when the decision needs the store, or the request is audited.
async fn authorize<S>(state: AppState, route: &'static Route, req: Request, mut inner: S) -> Response
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let (mut parts, body) = req.into_parts();
    let Ok(params) = RawPathParams::from_request_parts(&mut parts, &()).await else {
        return ApiError::internal("path parameters missing").into_response();
    };
    let req = Request::from_parts(parts, body);
    let Some(ctx) = req.extensions().get::<Ctx>() else {
        return ApiError::internal("request context missing").into_response();
    };
    let path_id = params.iter().find(|(k, _)| *k == "id" || *k == "host").map(|(_, v)| v.to_string());
    let project_id = match check(&state, route, &ctx.auth, path_id.as_deref()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !mutating || route.access == Access::Registry {
        let Ok(resp) = inner.call(req).await;
        return resp;
    }
    // What the audit entry needs, taken before the request is handed on.
    let ctx = ctx.clone();
    let path = req.uri().path().to_string();
    let Ok(resp) = inner.call(req).await;
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

/// The caller a route that needs one gets, or the refusal.
fn principal_of(auth: &Auth) -> Result<&Arc<Principal>, ApiError> {
    match auth {
        Auth::Principal(p) => Ok(p),
        Auth::Anonymous => Err(ApiError::new(Kind::MissingToken, "this route needs a bearer token")),
        Auth::Other(_) => Err(AuthError::Invalid.into()),
        Auth::Basic { .. } => {
            Err(ApiError::new(Kind::MissingToken, "/v1 takes a bearer token; log in with POST /v1/auth/login"))
        }
        Auth::Failed(e) => Err(match e.as_ref() {
            AuthError::Malformed => AuthError::Malformed.into(),
            AuthError::Invalid => AuthError::Invalid.into(),
            AuthError::Expired => AuthError::Expired.into(),
            AuthError::Store(e) => ApiError::internal(e),
        }),
    }
}

/// The access decision when the caller alone decides it; `None` when it needs the
/// store (bootstrap, project roles). `Err` is the response to send instead.
fn decide_now(route: &Route, auth: &Auth) -> Option<Result<(), ApiError>> {
    let principal = match route.access {
        Access::Public | Access::Registry => return Some(Ok(())),
        Access::Bootstrap => return None,
        Access::Authenticated
        | Access::SuperAdmin
        | Access::AnyMember
        | Access::AnyOperator
        | Access::AnyAdmin
        | Access::Project(_)
        | Access::InBody(_)
        | Access::Service(_)
        | Access::Deployment(_)
        | Access::Job(_)
        | Access::Host(_) => match principal_of(auth) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        },
    };
    let super_admin = principal.user.super_admin;
    match route.access {
        // The handler checks the role in the project the body names.
        Access::Authenticated | Access::InBody(_) => {}
        Access::SuperAdmin if super_admin => {}
        Access::SuperAdmin => return Some(Err(ApiError::forbidden("this route is for super-admins"))),
        Access::AnyMember | Access::AnyOperator | Access::AnyAdmin if super_admin => {}
        // Roles live in the store; and a project (service, deployment) must exist
        // even for a super-admin.
        Access::AnyMember
        | Access::AnyOperator
        | Access::AnyAdmin
        | Access::Project(_)
        | Access::Service(_)
        | Access::Deployment(_)
        | Access::Job(_)
        | Access::Host(_) => return None,
        Access::Public | Access::Registry | Access::Bootstrap => {}
    }
    Some(check_scope(route, principal))
}

fn check_scope(route: &Route, principal: &Principal) -> Result<(), ApiError> {
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

/// The access decision for one request: the project the route's `{id}` resolves
/// to (for the audit entry), or the response to send instead.
async fn check(
    state: &AppState,
    route: &Route,
    auth: &Auth,
    path_id: Option<&str>,
) -> Result<Option<String>, ApiError> {
    if let Some(decided) = decide_now(route, auth) {
        return decided.map(|()| None);
    }
    if route.access == Access::Bootstrap {
        return check_bootstrap(state, auth).await.map(|()| None);
    }
    let principal = principal_of(auth)?;
    let mut project = None;
    match route.access {
        Access::AnyMember | Access::AnyOperator | Access::AnyAdmin => {
            let user_id = principal.user.id.clone();
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
            require_role(state, principal, &id, min, ApiError::not_found(format!("project {id} not found"))).await?;
            project = Some(id);
        }
        Access::Service(min) | Access::Deployment(min) | Access::Job(min) => {
            let id = path_id.unwrap_or_default().to_string();
            let (prefix, what) = match route.access {
                Access::Service(_) => ("svc", "service"),
                Access::Job(_) => ("job", "job"),
                _ => ("dep", "deployment"),
            };
            let hidden = || ApiError::not_found(format!("{what} {id} not found"));
            if !crate::ids::has_shape(&id, prefix) {
                return Err(hidden());
            }
            let lookup = id.clone();
            let owner = state
                .store
                .read(move |c| match prefix {
                    "svc" => crate::store::services::project_of(c, &lookup),
                    "job" => crate::store::jobs::project_of(c, &lookup),
                    _ => crate::store::deployments::project_of(c, &lookup),
                })
                .await?
                .ok_or_else(hidden)?;
            require_role(state, principal, &owner, min, hidden()).await?;
            project = Some(owner);
        }
        Access::Host(min) => {
            let host = crate::ingress::routes::normalize_host(path_id.unwrap_or_default());
            let hidden = || ApiError::not_found(format!("route {host} not found"));
            let control = state.config.ingress.control_domain.as_deref().map(crate::ingress::routes::normalize_host);
            if control.as_deref() == Some(host.as_str()) {
                if !principal.user.super_admin {
                    return Err(ApiError::forbidden("the control domain is for super-admins"));
                }
            } else {
                let owner = state.routes.lookup(&host).ok_or_else(hidden)?.project_id.clone();
                require_role(state, principal, &owner, min, hidden()).await?;
                project = Some(owner);
            }
        }
        // Decided by `decide_now` above.
        Access::Public
        | Access::Registry
        | Access::Bootstrap
        | Access::Authenticated
        | Access::SuperAdmin
        | Access::InBody(_) => {}
    }
    check_scope(route, principal)?;
    Ok(project)
}

/// At least `min` in `project_id` (super-admins pass): a project that does not
/// exist, or in which the caller holds no role, answers `hidden` (a 404 that names
/// what the caller asked for); a lower role answers 403.
pub async fn require_role(
    state: &AppState,
    principal: &Principal,
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

/// A bootstrap route: only the one-time token, and only until bootstrap is done.
async fn check_bootstrap(state: &AppState, auth: &Auth) -> Result<(), ApiError> {
    let Auth::Other(token) = auth else {
        return Err(if state.gate.auth.bootstrap_done().await? {
            ApiError::new(
                Kind::MissingToken,
                "bootstrap is done: the first super-admin exists; log in with POST /v1/auth/login",
            )
        } else {
            ApiError::new(Kind::MissingToken, "bootstrap needs the token from <data_dir>/bootstrap-token")
        });
    };
    match state.gate.auth.check_bootstrap(token).await? {
        crate::auth::Bootstrap::Valid => Ok(()),
        crate::auth::Bootstrap::Done => Err(ApiError::new(
            Kind::InvalidToken,
            "bootstrap is done: the first super-admin exists; log in with POST /v1/auth/login",
        )),
        crate::auth::Bootstrap::Wrong => Err(ApiError::new(Kind::InvalidToken, "the bootstrap token is not valid")),
    }
}

pub async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {}", req.uri().path()))
}

pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(Kind::MethodNotAllowed, format!("{} is not allowed on {}", req.method(), req.uri().path()))
}
