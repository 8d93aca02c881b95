//! The foundation story end to end: bootstrap, login, users, projects, roles, tokens.

use std::time::Duration;

use serde_json::json;

use crate::harness::{ADMIN_PASSWORD, Berth};

#[test]
fn bootstrap_login_roles_scopes_revocation_expiry() {
    let b = Berth::start("");
    let anon = b.client();

    // Bootstrap once; the token is then spent and its file gone.
    let boot = anon.with_token(&b.bootstrap_token());
    let admin = b.admin();
    let again = boot.post("/v1/bootstrap", &json!({"username": "eve", "password": "whatever-123"}));
    assert_eq!(again.status, 401, "{}", again.text());
    assert!(!b.data_dir().join("bootstrap-token").exists());
    let me = admin.get("/v1/me").json();
    assert_eq!(me["user"]["username"], "admin");
    assert_eq!(me["user"]["super_admin"], true);
    assert_eq!(me["credential"]["kind"], "session");

    // A user, two projects, the user a Viewer of one.
    let r = admin.post("/v1/users", &json!({"username": "vic", "password": "vic-password-1"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let vic_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["super_admin"], false);
    let alpha = admin.post("/v1/projects", &json!({"name": "alpha", "description": "first"}));
    assert_eq!(alpha.status, 201, "{}", alpha.text());
    let alpha = alpha.json()["id"].as_str().unwrap().to_string();
    let beta = admin.post("/v1/projects", &json!({"name": "beta"})).json()["id"].as_str().unwrap().to_string();
    let r = admin.post(&format!("/v1/projects/{alpha}/members"), &json!({"user_id": vic_id, "role": "viewer"}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["username"], "vic");
    assert_eq!(r.json()["role"], "viewer");

    let vic = b.login("vic", "vic-password-1");
    let r = vic.get(&format!("/v1/projects/{alpha}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "alpha");
    assert_eq!(r.json()["description"], "first");
    let r = vic.put(&format!("/v1/projects/{alpha}"), &json!({"description": "mine now"}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.code(), "forbidden");
    let hidden = vic.get(&format!("/v1/projects/{beta}"));
    assert_eq!(hidden.status, 404);
    let missing = vic.get("/v1/projects/prj_00000000000000000000000000");
    assert_eq!(missing.status, 404);
    assert_eq!(hidden.code(), missing.code(), "a hidden project must look like a missing one");
    let listed = vic.get("/v1/projects").json();
    let names: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["alpha"]);
    assert_eq!(vic.get(&format!("/v1/projects/{alpha}")).json()["description"], "first", "the 403 changed nothing");
    let me = vic.get("/v1/me").json();
    assert_eq!(me["memberships"][0]["project_id"], alpha.as_str());
    assert_eq!(me["memberships"][0]["role"], "viewer");
    let node = vic.get("/v1/node");
    assert_eq!(node.status, 200, "{}", node.text());
    assert!(node.json()["cpus"].as_u64().unwrap() >= 1);
    assert!(["v1", "v2"].contains(&node.json()["cgroup_version"].as_str().unwrap()));
    assert!(node.json()["memory"]["total_bytes"].as_u64().unwrap() > 0);
    assert!(node.json()["disk"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(vic.get("/v1/audit").status, 403, "viewers do not read the audit log");

    // A token narrower than its owner's role is refused outside its scopes.
    let r = admin.post("/v1/api-tokens", &json!({"name": "read-only", "scopes": ["projects:read"]}));
    assert_eq!(r.status, 201, "{}", r.text());
    let ro_token = r.json()["token"].as_str().unwrap().to_string();
    assert!(ro_token.starts_with("berth_pat_tok_"));
    assert!(ro_token.starts_with(r.json()["api_token"]["prefix"].as_str().unwrap()));
    let ro = anon.with_token(&ro_token);
    assert_eq!(ro.get(&format!("/v1/projects/{alpha}")).status, 200);
    let r = ro.put(&format!("/v1/projects/{alpha}"), &json!({"description": "x"}));
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "insufficient_scope");
    assert_eq!(ro.post("/v1/projects", &json!({"name": "gamma"})).code(), "insufficient_scope");
    assert_eq!(ro.get("/v1/users").code(), "insufficient_scope");
    assert_eq!(ro.get("/v1/me").json()["credential"]["scopes"], json!(["projects:read"]));

    // A scoped token cannot mint a broader one.
    let minter = admin.post("/v1/api-tokens", &json!({"name": "minter", "scopes": ["tokens:write", "projects:read"]}));
    let minter = anon.with_token(minter.json()["token"].as_str().unwrap());
    let r = minter.post("/v1/api-tokens", &json!({"name": "wider", "scopes": ["projects:write"]}));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(minter.post("/v1/api-tokens", &json!({"name": "all"})).status, 403);
    assert_eq!(minter.post("/v1/api-tokens", &json!({"name": "same", "scopes": ["projects:read"]})).status, 201);

    // A revoked token fails at once.
    let r = admin.post("/v1/api-tokens", &json!({"name": "ci"}));
    let full = anon.with_token(r.json()["token"].as_str().unwrap());
    let full_id = r.json()["api_token"]["id"].as_str().unwrap().to_string();
    assert_eq!(full.get("/v1/me").status, 200);
    assert_eq!(full.put(&format!("/v1/projects/{alpha}"), &json!({"env": {"A": "1"}})).status, 200);
    let listed = admin.get("/v1/api-tokens").json();
    let entry = listed["data"].as_array().unwrap().iter().find(|t| t["id"] == full_id.as_str()).unwrap().clone();
    assert!(entry["last_used_at"].is_string(), "last_used_at recorded: {entry}");
    assert!(entry.get("token").is_none() && !entry.to_string().contains("secret"));
    assert_eq!(admin.delete(&format!("/v1/api-tokens/{full_id}")).status, 204);
    let r = full.get("/v1/me");
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "invalid_token");
    assert_eq!(admin.delete(&format!("/v1/api-tokens/{full_id}")).status, 404);

    // An expired token fails.
    let soon = berth::ids::format_time(time::OffsetDateTime::now_utc() + time::Duration::seconds(2));
    let r = admin.post("/v1/api-tokens", &json!({"name": "short", "expires_at": soon}));
    assert_eq!(r.status, 201, "{}", r.text());
    let short = anon.with_token(r.json()["token"].as_str().unwrap());
    assert_eq!(short.get("/v1/me").status, 200);
    // Accepted until it expires, then refused as expired.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = short.get("/v1/me");
        if r.status != 200 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "the token was still accepted 30 s later");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.code(), "token_expired");

    // Sessions: list, revoke the others, log out.
    let second = b.login("admin", ADMIN_PASSWORD);
    let sessions = admin.get("/v1/auth/sessions").json();
    let sessions = sessions["data"].as_array().unwrap();
    assert!(sessions.len() >= 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let r = admin.delete("/v1/auth/sessions");
    assert_eq!(r.status, 200);
    assert!(r.json()["revoked"].as_u64().unwrap() >= 1);
    assert_eq!(second.get("/v1/me").status, 401);
    assert_eq!(admin.get("/v1/me").status, 200);
    assert_eq!(vic.post("/v1/auth/logout", &json!({})).status, 204);
    assert_eq!(vic.get("/v1/me").status, 401);

    // Removing the member hides the project again; the audit log saw the mutations.
    let vic = b.login("vic", "vic-password-1");
    assert_eq!(admin.delete(&format!("/v1/projects/{alpha}/members/{vic_id}")).status, 204);
    assert_eq!(vic.get(&format!("/v1/projects/{alpha}")).status, 404);
    let audit = admin.get(&format!("/v1/audit?project_id={alpha}&limit=100")).json();
    let actions: Vec<&str> = audit["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"POST /v1/projects"), "{actions:?}");
    assert!(actions.contains(&"DELETE /v1/projects/{id}/members/{user_id}"), "{actions:?}");
    assert!(actions.contains(&"PUT /v1/projects/{id}"), "{actions:?}");
    let entry = &audit["data"][0];
    assert_eq!(entry["actor_name"], "admin");
    assert_eq!(entry["source_addr"], "127.0.0.1");
    assert!(entry["request_id"].as_str().unwrap().starts_with("req_"));

    // Project admins manage their project; deleting it removes it for everyone.
    let r = admin.post(&format!("/v1/projects/{beta}/members"), &json!({"username": "vic", "role": "admin"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = vic.put(
        &format!("/v1/projects/{beta}"),
        &json!({"env": {"RUST_LOG": "info"}, "limits": {"memory_mb": 512, "cpus": 1.5, "pids": 200}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["env"]["RUST_LOG"], "info");
    assert_eq!(r.json()["limits"]["cpus"], 1.5);
    assert_eq!(vic.get("/v1/audit").status, 200, "project admins read their projects' audit log");
    assert_eq!(vic.delete(&format!("/v1/projects/{beta}")).status, 204);
    assert_eq!(admin.get(&format!("/v1/projects/{beta}")).status, 404);
}

#[test]
fn pagination_walks_every_item_once() {
    let b = Berth::start("");
    let admin = b.admin();
    for i in 0..25 {
        assert_eq!(admin.post("/v1/projects", &json!({"name": format!("p{i:02}")})).status, 201);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/projects?limit=7&cursor={c}"),
            None => "/v1/projects?limit=7".to_string(),
        };
        let page = admin.get(&path).json();
        for p in page["data"].as_array().unwrap() {
            seen.push(p["name"].as_str().unwrap().to_string());
        }
        if page["has_more"] == false {
            assert!(page["next_cursor"].is_null());
            break;
        }
        cursor = Some(page["next_cursor"].as_str().unwrap().to_string());
    }
    let expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(admin.get("/v1/projects").json()["data"].as_array().unwrap().len(), 20, "default limit");
}
