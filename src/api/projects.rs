//! Projects and their members.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Extension, IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AuditNote, Caller, JsonBody, ListParams, Paginated};
use super::validate;
use crate::auth::Role;
use crate::store::PageQuery;
use crate::store::projects::{Limits, Listed, Member, PageKey, Project, ProjectUpdate, Viewer};

const MAX_DESCRIPTION: usize = 1000;
const MAX_ENV_KEYS: usize = 200;
const MAX_ENV_VALUE: usize = 32 * 1024;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// A DNS label, unique on this node.
    pub name: String,
    pub description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectChanges {
    pub description: Option<String>,
    /// Replaces the shared environment when present.
    pub env: Option<BTreeMap<String, String>>,
    /// Replaces the project-wide limits when present.
    pub limits: Option<Limits>,
}

fn check_description(d: &str) -> ApiResult<()> {
    if !validate::is_text(d, MAX_DESCRIPTION) {
        return Err(ApiError::invalid(format!("description must be at most {MAX_DESCRIPTION} printable characters")));
    }
    Ok(())
}

fn check_env(env: &BTreeMap<String, String>) -> ApiResult<()> {
    if env.len() > MAX_ENV_KEYS {
        return Err(ApiError::invalid(format!("env may hold at most {MAX_ENV_KEYS} variables")));
    }
    for (k, v) in env {
        if !validate::is_env_key(k) {
            return Err(ApiError::invalid(format!("env name {k:?} must match [A-Za-z_][A-Za-z0-9_]*")));
        }
        if v.len() > MAX_ENV_VALUE || v.contains('\0') {
            return Err(ApiError::invalid(format!("env {k}: value must be under {MAX_ENV_VALUE} bytes with no NUL")));
        }
    }
    Ok(())
}

fn check_limits(l: &Limits) -> ApiResult<()> {
    if l.memory_mb.is_some_and(|m| !(4..=1 << 24).contains(&m)) {
        return Err(ApiError::invalid("limits.memory_mb must be between 4 and 16777216"));
    }
    if l.cpus.is_some_and(|c| !c.is_finite() || !(0.01..=1024.0).contains(&c)) {
        return Err(ApiError::invalid("limits.cpus must be between 0.01 and 1024"));
    }
    if l.pids.is_some_and(|p| !(1..=4_194_304).contains(&p)) {
        return Err(ApiError::invalid("limits.pids must be between 1 and 4194304"));
    }
    Ok(())
}

/// The projects you belong to (every project for super-admins).
#[utoipa::path(get, operation_id = "projects_list", path = "/v1/projects", tag = "projects",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<Project>)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, Caller(p): Caller, params: ListParams) -> ApiResult<Response> {
    let viewer = if p.user.super_admin { Viewer::All } else { Viewer::Member(p.user.id.clone()) };
    let key = PageKey { viewer, limit: params.limit, after: params.cursor };
    if let Some(body) = state.gate.lists.get(&key) {
        return Ok(json_bytes(body));
    }
    let (viewer, q) = (key.viewer.clone(), PageQuery { limit: key.limit, after: key.after.clone() });
    let Listed { page, stamp } = state.store.read(move |c| crate::store::projects::list_page(c, &viewer, &q)).await?;
    let rendered = Paginated::from_page(page, |p| &p.id);
    // A project renders to ~230 bytes with an empty env.
    let mut body = Vec::with_capacity(64 + 256 * rendered.data.len());
    serde_json::to_writer(&mut body, &rendered).map_err(ApiError::internal)?;
    let body = Bytes::from(body);
    state.gate.lists.keep(key, &stamp, body.clone(), body.len());
    Ok(json_bytes(body))
}

/// A `200` with a JSON body rendered beforehand.
fn json_bytes(body: Bytes) -> Response {
    // Room for the headers the outer layers add (length, request id, rate limits),
    // so the map is allocated once.
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let mut resp = Response::new(Body::from(body));
    *resp.headers_mut() = headers;
    resp
}

/// Creates a project.
#[utoipa::path(post, operation_id = "projects_create", path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = Project), (status = 400, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<NewProject>,
) -> ApiResult<impl IntoResponse> {
    if !validate::is_dns_label(&body.name) {
        return Err(ApiError::invalid(
            "name must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
    let description = body.description.unwrap_or_default();
    check_description(&description)?;
    let now = crate::ids::now_rfc3339();
    let project = Project {
        id: crate::ids::new_id("prj"),
        name: body.name,
        description,
        env: BTreeMap::new(),
        limits: Limits::default(),
        created_at: now.clone(),
        updated_at: now,
    };
    let p = project.clone();
    state.store.write(move |c| crate::store::projects::insert(c, &p)).await?;
    let note =
        AuditNote { target: Some(project.id.clone()), project_id: Some(project.id.clone()), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(project)))
}

/// One project.
#[utoipa::path(get, operation_id = "projects_get", path = "/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = Project), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Project>> {
    let lookup = id.clone();
    state
        .store
        .read(move |c| crate::store::projects::get(c, &lookup))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("project {id} not found")))
}

/// Changes a project's description, shared env or limits.
#[utoipa::path(put, operation_id = "projects_update", path = "/v1/projects/{id}", tag = "projects", request_body = ProjectChanges,
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = Project), (status = 400, body = super::error::ErrorBody),
        (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ProjectChanges>,
) -> ApiResult<Json<Project>> {
    if let Some(d) = &body.description {
        check_description(d)?;
    }
    if let Some(e) = &body.env {
        check_env(e)?;
    }
    if let Some(l) = &body.limits {
        check_limits(l)?;
    }
    let update = ProjectUpdate {
        description: body.description,
        env: body.env,
        limits: body.limits,
        updated_at: crate::ids::now_rfc3339(),
    };
    Ok(Json(state.store.write(move |c| crate::store::projects::update(c, &id, update)).await?))
}

/// Deletes an empty project.
#[utoipa::path(delete, operation_id = "projects_delete", path = "/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "project id")),
    responses((status = 204), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.store.write(move |c| crate::store::projects::delete(c, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The project's members.
#[utoipa::path(get, operation_id = "projects_list_members", path = "/v1/projects/{id}/members", tag = "projects",
    params(("id" = String, Path, description = "project id"), ("limit" = Option<u32>, Query),
        ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<Member>), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_members(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: ListParams,
) -> ApiResult<Json<Paginated<Member>>> {
    let q = params.page_query();
    let page = state.store.read(move |c| crate::store::projects::list_members(c, &id, &q)).await?;
    Ok(Json(Paginated::from_page(page, |m| &m.user_id)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// The user to add; give this or `username`.
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub role: Role,
}

/// Adds a member, or changes the role of an existing one (200 then, 201 when added).
#[utoipa::path(post, operation_id = "projects_add_member", path = "/v1/projects/{id}/members", tag = "projects", request_body = NewMember,
    params(("id" = String, Path, description = "project id")),
    responses((status = 201, body = Member), (status = 200, body = Member),
        (status = 400, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_member(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewMember>,
) -> ApiResult<impl IntoResponse> {
    let who = match (body.user_id, body.username) {
        (Some(u), None) => Ok(u),
        (None, Some(n)) => Err(n),
        _ => return Err(ApiError::invalid("give exactly one of user_id and username")),
    };
    let role = body.role;
    let now = crate::ids::now_rfc3339();
    let pid = id.clone();
    let (member, added) = state
        .store
        .write(move |c| {
            let user = match &who {
                Ok(uid) => crate::store::users::get(c, uid)?,
                Err(name) => crate::store::users::by_username(c, name)?,
            };
            let user = user.ok_or_else(|| {
                crate::store::StoreError::NotFound(match &who {
                    Ok(uid) => format!("user {uid} not found"),
                    Err(name) => format!("user {name} not found"),
                })
            })?;
            crate::store::projects::upsert_member(c, &pid, &user.id, role, &now)
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(m) => ApiError::unprocessable(m),
            e => e.into(),
        })?;
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    let note = AuditNote { target: Some(member.user_id.clone()), project_id: Some(id), ..Default::default() };
    Ok((status, Extension(note), Json(member)))
}

/// Removes a member.
#[utoipa::path(delete, operation_id = "projects_remove_member", path = "/v1/projects/{id}/members/{user_id}", tag = "projects",
    params(("id" = String, Path, description = "project id"), ("user_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_member(
    State(state): State<AppState>,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let uid = user_id.clone();
    if !state.store.write(move |c| crate::store::projects::remove_member(c, &id, &uid)).await? {
        return Err(ApiError::not_found(format!("user {user_id} is not a member of this project")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {

    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::state::AppState;
    use crate::store::Store;

    struct World {
        app: axum::Router,
        state: AppState,
        store: Store,
        dir: std::path::PathBuf,
    }

    impl Drop for World {
        fn drop(&mut self) {
            self.store.close();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn world() -> World {
        let (store, dir) = crate::store::test_store();
        let state = AppState::for_tests(store.clone(), &dir);
        World { app: super::super::router::build(state.clone()), state, store, dir }
    }

    /// A user with a session; returns their id and bearer token.
    async fn user(w: &World, name: &str, super_admin: bool) -> (String, String) {
        let user = crate::store::users::User {
            id: crate::ids::new_id("usr"),
            username: name.into(),
            super_admin,
            created_at: crate::ids::now_rfc3339(),
        };
        let secret = crate::auth::new_secret();
        let hash = crate::auth::hash_secret(&secret);
        let session = crate::ids::new_id("ses");
        let (u, s) = (user.clone(), session.clone());
        w.store
            .write(move |c| {
                crate::store::users::insert(c, &u, "unused")?;
                crate::store::auth::insert_session(
                    c,
                    &crate::store::auth::NewSession {
                        id: &s,
                        user_id: &u.id,
                        secret_hash: &hash,
                        created_at: "2026-01-01T00:00:00Z",
                        expires_at: "2099-01-01T00:00:00Z",
                        source_addr: "127.0.0.1",
                        user_agent: "test",
                    },
                )
            })
            .await
            .unwrap();
        (user.id, crate::auth::format_token(&crate::auth::CredentialKind::Session(session), &secret))
    }

    async fn call(w: &World, method: &str, path: &str, bearer: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {bearer}"));
        let body = body.map_or_else(axum::body::Body::empty, |v| axum::body::Body::from(v.to_string()));
        let resp = w.app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        assert!(resp.headers().contains_key("x-ratelimit-remaining"), "{method} {path}: no rate-limit headers");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The names on a caller's first page, read twice: the second read is served
    /// from the kept page and must say the same.
    async fn names(w: &World, bearer: &str, query: &str) -> Vec<String> {
        let path = format!("/v1/projects{query}");
        let (s, first) = call(w, "GET", &path, bearer, None).await;
        assert_eq!(s, StatusCode::OK, "{first}");
        assert!(!w.state.gate.lists.is_empty(), "the page was kept");
        let (_, again) = call(w, "GET", &path, bearer, None).await;
        assert_eq!(first, again);
        first["data"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_shows_in_the_next_list() {
        let w = world().await;
        let (_, root) = user(&w, "root", true).await;
        let (bob_id, bob) = user(&w, "bob", false).await;
        assert!(names(&w, &root, "").await.is_empty());
        assert!(names(&w, &bob, "").await.is_empty());

        // Create: read, write, read.
        let (s, alpha) = call(&w, "POST", "/v1/projects", &root, Some(json!({"name": "alpha"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{alpha}");
        let alpha = alpha["id"].as_str().unwrap().to_string();
        assert_eq!(names(&w, &root, "").await, ["alpha"]);
        assert!(names(&w, &bob, "").await.is_empty());

        // Membership: bob sees the project once added, and no longer once removed.
        let add = json!({"username": "bob", "role": "viewer"});
        let (s, v) = call(&w, "POST", &format!("/v1/projects/{alpha}/members"), &root, Some(add)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(names(&w, &bob, "").await, ["alpha"]);

        // Update: the new description is in both lists at once.
        let (s, v) =
            call(&w, "PUT", &format!("/v1/projects/{alpha}"), &root, Some(json!({"description": "changed"}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        for who in [&root, &bob] {
            let (_, page) = call(&w, "GET", "/v1/projects", who, None).await;
            assert_eq!(page["data"][0]["description"], "changed", "{page}");
        }

        // Pages are kept per page: the second page follows the first's cursor.
        let (s, beta) = call(&w, "POST", "/v1/projects", &root, Some(json!({"name": "beta"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{beta}");
        let (_, first) = call(&w, "GET", "/v1/projects?limit=1", &root, None).await;
        assert_eq!((first["data"][0]["name"].as_str(), first["has_more"].as_bool()), (Some("alpha"), Some(true)));
        let cursor = first["next_cursor"].as_str().unwrap();
        assert_eq!(names(&w, &root, &format!("?limit=1&cursor={cursor}")).await, ["beta"]);
        assert_eq!(names(&w, &root, "").await, ["alpha", "beta"]);

        let (s, _) = call(&w, "DELETE", &format!("/v1/projects/{alpha}/members/{bob_id}"), &root, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert!(names(&w, &bob, "").await.is_empty());

        // Delete.
        let (s, _) = call(&w, "DELETE", &format!("/v1/projects/{alpha}"), &root, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        assert_eq!(names(&w, &root, "").await, ["beta"]);

        // A user's deletion: their kept pages are never served again (they cannot
        // sign in), and a list page kept before it is dropped.
        let beta = beta["id"].as_str().unwrap();
        let add = json!({"username": "bob", "role": "admin"});
        let (s, _) = call(&w, "POST", &format!("/v1/projects/{beta}/members"), &root, Some(add)).await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(names(&w, &bob, "").await, ["beta"]);
        let (s, _) = call(&w, "DELETE", &format!("/v1/users/{bob_id}"), &root, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = call(&w, "GET", "/v1/projects", &bob, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(names(&w, &root, "").await, ["beta"]);
    }
}
