//! The router in process (`tower::ServiceExt::oneshot`): the context layer and the
//! per-route authorization, with a real store in a temp dir and no listener.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::{self, CredentialKind, Role};
use crate::state::AppState;
use crate::store::Store;
use crate::store::auth::{ApiToken, NewSession};
use crate::store::projects::{Limits, Project};
use crate::store::users::User;

struct World {
    app: axum::Router,
    store: Store,
    dir: std::path::PathBuf,
    project: String,
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
    let project = "prj_00000000000000000000000001".to_string();
    let p = Project {
        id: project.clone(),
        name: "alpha".into(),
        description: String::new(),
        env: Default::default(),
        limits: Limits::default(),
        created_at: "t".into(),
        updated_at: "t".into(),
    };
    store.write(move |c| crate::store::projects::insert(c, &p)).await.unwrap();
    World { app: super::router::build(state), store, dir, project }
}

/// A user with a session (and, with `scopes`, an API token instead); returns the bearer.
async fn user(w: &World, name: &str, super_admin: bool, role: Option<Role>, scopes: Option<&[&str]>) -> String {
    let user = User {
        id: crate::ids::new_id("usr"),
        username: name.into(),
        super_admin,
        created_at: crate::ids::now_rfc3339(),
    };
    let secret = auth::new_secret();
    let hash = auth::hash_secret(&secret);
    let (u, project) = (user.clone(), w.project.clone());
    let id = match scopes {
        None => crate::ids::new_id("ses"),
        Some(_) => crate::ids::new_id("tok"),
    };
    let scopes: Option<Vec<String>> = scopes.map(|s| s.iter().map(|s| s.to_string()).collect());
    let (cred, sc) = (id.clone(), scopes.clone());
    w.store
        .write(move |c| {
            crate::store::users::insert(c, &u, "unused")?;
            if let Some(r) = role {
                crate::store::projects::upsert_member(c, &project, &u.id, r, "t")?;
            }
            match sc {
                None => crate::store::auth::insert_session(
                    c,
                    &NewSession {
                        id: &cred,
                        user_id: &u.id,
                        secret_hash: &hash,
                        created_at: "2026-01-01T00:00:00Z",
                        expires_at: "2099-01-01T00:00:00Z",
                        source_addr: "127.0.0.1",
                        user_agent: "test",
                    },
                ),
                Some(scopes) => {
                    let t = ApiToken {
                        id: cred.clone(),
                        name: "t".into(),
                        prefix: "p".into(),
                        scopes,
                        expires_at: None,
                        last_used_at: None,
                        created_at: "t".into(),
                    };
                    crate::store::auth::insert_token(c, &u.id, &t, &hash, None)
                }
            }
        })
        .await
        .unwrap();
    let kind = if scopes.is_none() { CredentialKind::Session(id) } else { CredentialKind::ApiToken(id) };
    auth::format_token(&kind, &secret)
}

async fn call(w: &World, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    let body = match body {
        Some(v) => Body::from(v.to_string()),
        None => Body::empty(),
    };
    let resp = w.app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    assert!(resp.headers().contains_key("x-request-id"), "{method} {path}: no request id");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_follows_the_route_table() {
    let w = world().await;
    let p = w.project.clone();
    let root = user(&w, "root", true, None, None).await;
    let viewer = user(&w, "vera", false, Some(Role::Viewer), None).await;
    let admin = user(&w, "ada", false, Some(Role::Admin), None).await;
    let stranger = user(&w, "sam", false, None, None).await;
    let reader = user(&w, "rita", false, Some(Role::Admin), Some(&["projects:read"])).await;

    // Anonymous: 401, with the envelope.
    let (s, v) = call(&w, "GET", "/v1/me", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "missing_token"));
    // A token that is not one: 401 invalid_token.
    let (s, v) = call(&w, "GET", "/v1/me", Some("berth_pat_nope"), None).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "invalid_token"));
    // A project a caller is not in is not found, whatever the route needs.
    let (s, v) = call(&w, "GET", &format!("/v1/projects/{p}"), Some(&stranger), None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = call(&w, "DELETE", &format!("/v1/projects/{p}"), Some(&stranger), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A member with too low a role: 403.
    let (s, v) = call(&w, "GET", &format!("/v1/projects/{p}"), Some(&viewer), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "alpha");
    let (s, v) = call(&w, "PUT", &format!("/v1/projects/{p}"), Some(&viewer), Some(json!({"description": "x"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    // Enough role: the change happens and is audited.
    let (s, v) = call(&w, "PUT", &format!("/v1/projects/{p}"), Some(&admin), Some(json!({"description": "x"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["description"], "x");
    // A token's scopes are a ceiling over its owner's role.
    let (s, _) = call(&w, "GET", &format!("/v1/projects/{p}"), Some(&reader), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = call(&w, "PUT", &format!("/v1/projects/{p}"), Some(&reader), Some(json!({"description": "y"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "insufficient_scope"));
    // Super-admin routes, and the super-admin bypass of membership.
    let (s, _) = call(&w, "GET", "/v1/users", Some(&admin), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = call(&w, "GET", "/v1/users", Some(&root), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 5);
    let (s, _) = call(&w, "GET", &format!("/v1/projects/{p}"), Some(&root), None).await;
    assert_eq!(s, StatusCode::OK);
    // The audit log has the admin's change, with who and which project.
    let (s, v) = call(&w, "GET", "/v1/audit", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let entries = v["data"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{v}");
    assert_eq!(entries[0]["actor_name"], "ada");
    assert_eq!(entries[0]["action"], "PUT /v1/projects/{id}");
    assert_eq!(entries[0]["project_id"], p.as_str());
    // The refused calls changed nothing.
    let (_, v) = call(&w, "GET", &format!("/v1/projects/{p}"), Some(&root), None).await;
    assert_eq!(v["description"], "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_layer_refuses_before_routing() {
    let w = world().await;
    // Unknown routes and methods keep the envelope.
    let (s, v) = call(&w, "GET", "/v1/nope", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = call(&w, "PATCH", "/v1/me", None, None).await;
    assert_eq!((s, code(&v)), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    // A declared body over the limit is refused without being read, in the
    // protocol of the path.
    let req = Request::builder()
        .method("POST")
        .uri("/v1/auth/login")
        .header("content-length", (2u64 << 20).to_string())
        .body(Body::empty())
        .unwrap();
    let resp = w.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["connection"], "close");
    let req = Request::builder()
        .method("PUT")
        .uri("/v2/alpha/app/manifests/v1")
        .header("content-length", (5u64 << 20).to_string())
        .body(Body::empty())
        .unwrap();
    let resp = w.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["errors"][0]["code"], "SIZE_INVALID", "{v}");
    // Every answer carries the rate-limit headers.
    let resp = w.app.clone().oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-ratelimit-limit") && resp.headers().contains_key("x-ratelimit-remaining"));
}
