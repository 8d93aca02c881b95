//! Users (super-admin only).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Extension, IntoResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiResult;
use super::extract::{AuditNote, JsonBody, ListParams, Paginated};
use super::{AppState, check_password, check_username};
use crate::store::users::User;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub super_admin: bool,
}

/// Lists users.
#[utoipa::path(get, operation_id = "users_list", path = "/v1/users", tag = "users",
    params(("limit" = Option<u32>, Query, description = "1-100, default 20"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<User>), (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, params: ListParams) -> ApiResult<Json<Paginated<User>>> {
    let q = params.page_query();
    let page = state.store.read(move |c| crate::store::users::list(c, &q)).await?;
    Ok(Json(Paginated::from_page(page, |u| &u.id)))
}

/// Creates a user.
#[utoipa::path(post, operation_id = "users_create", path = "/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = User), (status = 400, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(State(state): State<AppState>, JsonBody(body): JsonBody<NewUser>) -> ApiResult<impl IntoResponse> {
    check_username(&body.username)?;
    check_password(&body.password)?;
    let name = body.username.clone();
    if state.store.read(move |c| crate::store::users::by_username(c, &name)).await?.is_some() {
        return Err(super::error::ApiError::conflict(format!("username {} is taken", body.username)));
    }
    let hash = super::hash_password(&state, body.password).await?;
    let user = User {
        id: crate::ids::new_id("usr"),
        username: body.username,
        super_admin: body.super_admin,
        created_at: crate::ids::now_rfc3339(),
    };
    let u = user.clone();
    state.store.write(move |c| crate::store::users::insert(c, &u, &hash)).await?;
    let note = AuditNote { target: Some(user.id.clone()), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(user)))
}

/// Deletes a user with their sessions, tokens and memberships (never the last super-admin).
#[utoipa::path(delete, operation_id = "users_delete", path = "/v1/users/{user_id}", tag = "users",
    params(("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, Path(user_id): Path<String>) -> ApiResult<StatusCode> {
    state.store.write(move |c| crate::store::users::delete(c, &user_id)).await?;
    state.gate.auth.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}
