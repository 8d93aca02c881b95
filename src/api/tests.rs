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
    state: AppState,
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
    World { app: super::router::build(state.clone()), state, store, dir, project }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_reads_issued_with_its_certificate_and_takes_it_when_deleted() {
    let w = world().await;
    let root = user(&w, "root", true, None, None).await;
    let body = json!({"project_id": w.project, "name": "web", "port": 8080, "replicas": 0});
    let (s, v) = call(&w, "POST", "/v1/services", Some(&root), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let svc = v["id"].as_str().unwrap().to_string();
    let path = format!("/v1/services/{svc}/domains");
    // Two attaches of one name at once: one wins.
    let (a, b) = tokio::join!(
        call(&w, "POST", &path, Some(&root), Some(json!({"hostname": "app.test"}))),
        call(&w, "POST", &path, Some(&root), Some(json!({"hostname": "App.Test"}))),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT], "{} {}", a.1, b.1);
    let d = if a.0 == StatusCode::CREATED { a.1 } else { b.1 };
    let (id, token) = (d["id"].as_str().unwrap().to_string(), d["verification_token"].as_str().unwrap().to_string());
    assert_eq!(w.state.challenges.answer("app.test", &format!("/.well-known/berth-challenge/{token}")), Some(token));
    let (i, s2) = (id.clone(), svc.clone());
    let now = crate::ids::now_rfc3339();
    w.store.write(move |c| crate::store::domains::record_check(c, &s2, &i, Ok(()), &now)).await.unwrap();
    let one = format!("{path}/{id}");
    let (_, v) = call(&w, "GET", &one, Some(&root), None).await;
    assert_eq!((v["status"].as_str(), v["certificate"].is_null()), (Some("verified"), true), "{v}");
    // A certificate of its own (the ACME code installs them) makes it `issued`.
    let cert = rcgen::generate_simple_self_signed(vec!["app.test".to_string()]).unwrap();
    let info = w.state.certs.install("app.test", &cert.cert.pem(), &cert.signing_key.serialize_pem()).unwrap();
    let (_, v) = call(&w, "GET", &one, Some(&root), None).await;
    assert_eq!(v["status"], "issued", "{v}");
    assert_eq!(v["certificate"]["not_after"], crate::ids::format_time(info.not_after).as_str(), "{v}");
    assert_eq!(v["certificate"]["issuer"], info.issuer.as_str(), "{v}");
    let (_, v) = call(&w, "GET", &path, Some(&root), None).await;
    assert_eq!(v["data"][0]["status"], "issued", "{v}");
    // The routing table's view: each host with its kind, replicas and certificate.
    let backend = crate::ingress::routes::Backend { replica_id: "rep_1".into(), addr: ([10, 0, 0, 2], 8080).into() };
    let hosts = ["web.alpha.localhost".to_string(), "app.test".to_string()];
    w.state.routes.set_service(&svc, &w.project, &hosts, vec![backend]);
    let (s, v) = call(&w, "GET", "/v1/ingress/routes", Some(&root), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let want = |host: &str, kind: &str, cert: Value| {
        json!({"host": host, "service_id": svc, "service": "web", "project_id": w.project, "kind": kind,
            "replicas": [{"id": "rep_1", "address": "10.0.0.2:8080"}], "certificate": cert})
    };
    let issued = json!({"state": "issued", "serial": null, "not_before": crate::ids::format_time(info.not_before),
        "not_after": crate::ids::format_time(info.not_after), "issuer": info.issuer, "error": null, "failures": 0,
        "next_attempt_at": null});
    let none = json!({"state": "none", "serial": null, "not_before": null, "not_after": null, "issuer": null,
        "error": null, "failures": 0, "next_attempt_at": null});
    assert_eq!(v["data"], json!([want("app.test", "domain", issued), want("web.alpha.localhost", "default", none)]));
    let viewer = user(&w, "vera", false, Some(Role::Viewer), None).await;
    let alpha_only = user(&w, "otto", false, Some(Role::Operator), None).await;
    let (_, v) = call(&w, "GET", "/v1/ingress/routes", Some(&viewer), None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
    let other = "prj_00000000000000000000000002";
    w.state.routes.set_service("svc_other", other, &["x.other.localhost".to_string()], vec![]);
    let (_, v) = call(&w, "GET", "/v1/ingress/routes", Some(&alpha_only), None).await;
    assert!(v["data"].as_array().unwrap().iter().all(|r| r["project_id"] == w.project.as_str()), "{v}");
    let (_, v) = call(&w, "GET", "/v1/ingress/routes", Some(&root), None).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 3, "an admin sees every project's: {v}");
    // Deleting the domain takes its certificate and its challenge answer.
    let (s, _) = call(&w, "DELETE", &one, Some(&root), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(w.state.certs.get("app.test").is_none());
    assert_eq!(
        w.state
            .challenges
            .answer("app.test", &format!("/.well-known/berth-challenge/{}", d["verification_token"].as_str().unwrap())),
        None
    );
    let (s, v) = call(&w, "GET", &one, Some(&root), None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}
