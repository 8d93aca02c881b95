//! Bootstrap, login/logout, sessions and `/v1/me`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Extension, IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, Kind};
use super::extract::{AuditNote, Caller, Ctx, JsonBody, ListParams, Paginated};
use super::{AppState, check_password, check_username};
use crate::auth::{self, CredentialKind};
use crate::store::auth::SessionInfo;
use crate::store::projects::Membership;
use crate::store::users::User;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    /// Session token; send as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: String,
    pub user: User,
}

/// Creates the first super-admin with the one-time bootstrap token.
#[utoipa::path(post, operation_id = "session_bootstrap", path = "/v1/bootstrap", tag = "auth", request_body = Credentials,
    responses((status = 201, body = User), (status = 400, body = super::error::ErrorBody),
        (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn bootstrap(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Credentials>,
) -> ApiResult<impl IntoResponse> {
    check_username(&body.username)?;
    check_password(&body.password)?;
    let hash = super::hash_password(&state, body.password).await?;
    let user = User {
        id: crate::ids::new_id("usr"),
        username: body.username,
        super_admin: true,
        created_at: crate::ids::now_rfc3339(),
    };
    let u = user.clone();
    let used = state
        .store
        .write(move |c| {
            if !crate::store::auth::meta_delete(c, auth::BOOTSTRAP_META_KEY)? {
                return Ok(false);
            }
            crate::store::users::insert(c, &u, &hash)?;
            Ok(true)
        })
        .await?;
    if !used {
        return Err(ApiError::new(Kind::InvalidToken, "the bootstrap token was already used"));
    }
    let file = state.config.data_dir.join("bootstrap-token");
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&file).map_err(|e| (file, e))).await;
    if let Ok(Err((path, e))) = removed {
        tracing::warn!(path = %path.display(), error = %e, "could not remove the used bootstrap token file");
    }
    tracing::info!(user = user.username, "bootstrap complete; first super-admin created");
    let note = AuditNote {
        target: Some(user.id.clone()),
        actor: Some((user.id.clone(), user.username.clone())),
        ..Default::default()
    };
    Ok((StatusCode::CREATED, Extension(note), Json(user)))
}

/// Exchanges a username and password for a session token.
#[utoipa::path(post, operation_id = "session_login", path = "/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = LoginResponse), (status = 401, body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    JsonBody(body): JsonBody<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let user = crate::http::login::verify(&state.gate, ctx.source, &body.username, body.password).await?;
    let ttl = time::Duration::hours(state.config.api.session_ttl_hours as i64);
    let opened = crate::http::login::open_session(&state.gate, &ctx, &user, ttl).await?;
    let note = AuditNote {
        target: Some(opened.id),
        actor: Some((user.id.clone(), user.username.clone())),
        ..Default::default()
    };
    Ok((Extension(note), Json(LoginResponse { token: opened.token, expires_at: opened.expires_at, user })))
}

/// Ends the session making the request.
#[utoipa::path(post, operation_id = "session_logout", path = "/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn logout(State(state): State<AppState>, Caller(p): Caller) -> ApiResult<StatusCode> {
    let Some(sid) = p.session_id().map(str::to_string) else {
        return Err(ApiError::unprocessable(
            "logout ends a session, and this is an API token; revoke it with DELETE /v1/api-tokens/{token_id}",
        ));
    };
    let uid = p.user.id.clone();
    state.store.write(move |c| crate::store::auth::delete_session(c, &uid, &sid)).await?;
    state.gate.auth.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

/// Your own sessions.
#[utoipa::path(get, operation_id = "session_list_sessions", path = "/v1/auth/sessions", tag = "auth",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<SessionInfo>), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sessions(
    State(state): State<AppState>,
    Caller(p): Caller,
    params: ListParams,
) -> ApiResult<Json<Paginated<SessionInfo>>> {
    let uid = p.user.id.clone();
    let current = p.session_id().map(str::to_string);
    let q = params.page_query();
    let page = state.store.read(move |c| crate::store::auth::page_sessions(c, &uid, current.as_deref(), &q)).await?;
    Ok(Json(Paginated::from_page(page, |s| &s.id)))
}

/// Revokes one of your sessions.
#[utoipa::path(delete, operation_id = "session_revoke_session", path = "/v1/auth/sessions/{session_id}", tag = "auth",
    params(("session_id" = String, Path, description = "session id")),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_session(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(session_id): Path<String>,
) -> ApiResult<StatusCode> {
    let uid = p.user.id.clone();
    let sid = session_id.clone();
    if !state.store.write(move |c| crate::store::auth::delete_session(c, &uid, &sid)).await? {
        return Err(ApiError::not_found(format!("session {session_id} not found")));
    }
    state.gate.auth.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    /// How many sessions were revoked.
    pub revoked: usize,
}

/// Revokes all your sessions but the one making the request.
#[utoipa::path(delete, operation_id = "session_revoke_other_sessions", path = "/v1/auth/sessions", tag = "auth",
    responses((status = 200, body = Revoked)),
    security(("bearer" = [])))]
pub async fn revoke_other_sessions(State(state): State<AppState>, Caller(p): Caller) -> ApiResult<Json<Revoked>> {
    let uid = p.user.id.clone();
    let keep = p.session_id().map(str::to_string);
    let revoked =
        state.store.write(move |c| crate::store::auth::delete_other_sessions(c, &uid, keep.as_deref())).await?;
    state.gate.auth.invalidate_all();
    Ok(Json(Revoked { revoked }))
}

#[derive(Serialize, ToSchema)]
pub struct CredentialInfo {
    /// `session` or `api_token`.
    pub kind: &'static str,
    pub id: String,
    /// Scope names, or `["*"]` for every scope.
    pub scopes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub credential: CredentialInfo,
    pub memberships: Vec<Membership>,
}

/// The caller, the credential used, and their project memberships.
#[utoipa::path(get, operation_id = "session_me", path = "/v1/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, Caller(p): Caller) -> ApiResult<Json<Me>> {
    let uid = p.user.id.clone();
    let memberships = state.store.read(move |c| crate::store::projects::memberships(c, &uid)).await?;
    let (kind, id) = match &p.credential {
        CredentialKind::Session(id) => ("session", id.clone()),
        CredentialKind::ApiToken(id) => ("api_token", id.clone()),
        CredentialKind::Password => ("password", p.user.id.clone()),
    };
    let scopes = match &p.scopes {
        None => vec![auth::scopes::WILDCARD.to_string()],
        Some(s) => s.iter().map(|s| s.as_str().to_string()).collect(),
    };
    Ok(Json(Me { user: p.user.clone(), credential: CredentialInfo { kind, id, scopes }, memberships }))
}
