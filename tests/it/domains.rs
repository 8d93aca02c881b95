//! Custom domains for real: attach a hostname to a live busybox httpd service, the
//! ingress answers its challenge only for that host, verification fetches it
//! through `[dns] overrides` and `ingress.challenge_port`, the verified domain is
//! routed (and listed in `GET /v1/ingress/routes`), survives a daemon restart, and
//! stops routing the moment it is deleted. Bad names, duplicates across projects,
//! unreachable names and callers without the role are refused.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::deployments::{deploy, node, project_id, push_web, service, settle, until, via_ingress};
use crate::harness::{Berth, Client, get_as};

/// A loopback port that forwards every connection to `target` (the daemon's HTTP
/// ingress), as a host's port 80 forwards to it: the harness gives the ingress a
/// port of the kernel's choosing, and verification needs a port known before the
/// daemon starts (`ingress.challenge_port`). Stops when dropped.
pub struct Relay {
    pub port: u16,
    target: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(Mutex::new("127.0.0.1:1".parse().unwrap()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (target.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let to = *t.lock().unwrap();
                std::thread::spawn(move || {
                    client.set_nonblocking(false).unwrap();
                    let Ok(upstream) = TcpStream::connect(to) else { return };
                    let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut u2);
                        let _ = u2.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut c, mut u) = (client, upstream);
                    let _ = std::io::copy(&mut u, &mut c);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Relay { port, target, stop }
    }

    pub fn point_at(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The challenge path's (status, body) through the ingress for `host`.
fn challenge(b: &Berth, host: &str, token: &str) -> (u16, String) {
    let r = get_as(b.ingress_addr(), host, &format!("/.well-known/berth-challenge/{token}")).unwrap();
    (r.status, r.text())
}

fn attach(c: &Client, svc: &str, hostname: &str) -> crate::harness::Resp {
    c.post(&format!("/v1/services/{svc}/domains"), &json!({ "hostname": hostname }))
}

/// `GET /v1/ingress/routes` as (host → route).
fn routes(c: &Client) -> std::collections::BTreeMap<String, Value> {
    let r = c.get("/v1/ingress/routes?limit=100");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].as_array().unwrap().iter().map(|r| (r["host"].as_str().unwrap().to_string(), r.clone())).collect()
}

/// A user who is `role` in `project` (or of no project when `None`), signed in.
fn member(b: &Berth, admin: &Client, name: &str, project: Option<&str>, role: &str) -> Client {
    let r = admin.post("/v1/users", &json!({"username": name, "password": "password-123"}));
    assert_eq!(r.status, 201, "{}", r.text());
    if let Some(p) = project {
        let uid = r.json()["id"].as_str().unwrap().to_string();
        let r = admin.post(&format!("/v1/projects/{p}/members"), &json!({"user_id": uid, "role": role}));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    b.login(name, "password-123")
}

#[test]
fn names_are_checked_unique_across_projects_and_hidden_from_other_projects() {
    let b = Berth::start("[dns]\noverrides = { \"app.test\" = \"127.0.0.1\" }\n");
    let admin = b.admin();
    let mut svcs = Vec::new();
    for name in ["alpha", "beta"] {
        let p = admin.post("/v1/projects", &json!({ "name": name })).json()["id"].as_str().unwrap().to_string();
        svcs.push((p.clone(), service(&admin, json!({"project_id": p, "name": "web", "port": 8080, "replicas": 0}))));
    }
    let [(alpha, web), (_, beta_web)] = [svcs[0].clone(), svcs[1].clone()];
    let r = attach(&admin, &web, "App.Test");
    assert_eq!(r.status, 201, "{}", r.text());
    let d = r.json();
    let token = d["verification_token"].as_str().unwrap().to_string();
    assert_eq!(
        (d["hostname"].as_str(), d["status"].as_str(), d["service_id"].as_str()),
        (Some("app.test"), Some("pending"), Some(web.as_str()))
    );
    assert!(d["id"].as_str().unwrap().starts_with("dom_"), "{d}");
    assert_eq!(token.len(), 64, "{d}");
    // Dev mode checks on the dev ingress's port.
    assert_eq!(d["verification_url"], format!("http://app.test:8080/.well-known/berth-challenge/{token}"));
    assert!(d["certificate"].is_null() && d["error"].is_null() && d["verified_at"].is_null(), "{d}");
    // The challenge answers at once, for its own host only (issue 11, done-when 2).
    assert_eq!(challenge(&b, "app.test", &token), (200, token.clone()));
    assert_eq!(challenge(&b, "APP.test:80", &token), (200, token.clone()));
    assert_eq!(challenge(&b, "other.test", &token).0, 404);
    assert_eq!(challenge(&b, "web.alpha.localhost", &token).0, 404);
    assert_eq!(challenge(&b, "app.test", &"0".repeat(64)).0, 404);
    assert_eq!(via_ingress_b(&b, "app.test"), 404, "not routed before it is verified");

    // One owner on the node: another project, the same service, any case.
    for (svc, name) in [(&beta_web, "app.test"), (&web, "APP.TEST"), (&beta_web, "app.test.")] {
        let r = attach(&admin, svc, name);
        assert_eq!(r.status, 409, "{name}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "conflict", "{}", r.text());
    }
    for bad in [
        "127.0.0.1",
        "[::1]",
        "::1",
        "10.1.2",
        "not a name",
        "app",
        "x.localhost",
        "localhost",
        "web.alpha.localhost",
        "a..b.test",
        "-a.test",
        "*.app.test",
        "app.test:8080",
        "",
    ] {
        let r = attach(&admin, &web, bad);
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_input", "{}", r.text());
    }
    let long = format!("{}.test", ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(63)].join("."));
    assert_eq!(attach(&admin, &web, &long).status, 400);
    let r = admin.post(&format!("/v1/services/{web}/domains"), &json!({"hostname": "ok.test", "extra": 1}));
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.text());

    // A Viewer reads but cannot attach, delete or verify; another project's admin
    // cannot see the service at all.
    let dom = d["id"].as_str().unwrap().to_string();
    let viewer = member(&b, &admin, "viewer", Some(&alpha), "viewer");
    assert_eq!(viewer.get(&format!("/v1/services/{web}/domains")).json()["data"][0]["id"], dom.as_str());
    assert_eq!(viewer.get(&format!("/v1/services/{web}/domains/{dom}")).status, 200);
    assert_eq!(attach(&viewer, &web, "viewer.test").status, 403);
    assert_eq!(viewer.delete(&format!("/v1/services/{web}/domains/{dom}")).status, 403);
    assert_eq!(viewer.post(&format!("/v1/services/{web}/domains/{dom}/verify"), &json!({})).status, 403);
    let beta = svcs[1].0.clone();
    let outsider = member(&b, &admin, "betaadmin", Some(&beta), "admin");
    for r in [
        outsider.get(&format!("/v1/services/{web}/domains")),
        outsider.get(&format!("/v1/services/{web}/domains/{dom}")),
        attach(&outsider, &web, "outsider.test"),
        outsider.delete(&format!("/v1/services/{web}/domains/{dom}")),
    ] {
        assert_eq!(r.status, 404, "{}", r.text());
    }
    // A domain id is looked up under its own service only.
    assert_eq!(admin.get(&format!("/v1/services/{beta_web}/domains/{dom}")).status, 404);
    assert_eq!(admin.delete(&format!("/v1/services/{beta_web}/domains/{dom}")).status, 404);
    assert_eq!(challenge(&b, "app.test", &token), (200, token.clone()), "still there");

    // Attach and delete are audited.
    let audit = admin.get("/v1/audit?limit=100").json();
    let actions: Vec<(String, String)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["target"].as_str().unwrap().to_string()))
        .collect();
    assert!(actions.contains(&("POST /v1/services/{id}/domains".into(), format!("{dom} (app.test)"))), "{actions:?}");

    // Deleting the service takes its domains: the challenge goes and the name is free.
    assert_eq!(admin.delete(&format!("/v1/services/{web}")).status, 204);
    assert_eq!(challenge(&b, "app.test", &token).0, 404);
    let r = attach(&admin, &beta_web, "app.test");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_ne!(r.json()["verification_token"].as_str(), Some(token.as_str()), "a fresh token");
}

fn via_ingress_b(b: &Berth, host: &str) -> u16 {
    get_as(b.ingress_addr(), host, "/").unwrap().status
}

#[test]
fn a_verified_domain_routes_to_its_service_survives_a_restart_and_stops_when_deleted() {
    if !crate::runtime::can_run() {
        return;
    }
    let relay = Relay::start();
    let extra = format!(
        "[ingress]\nchallenge_port = {}\n[dns]\noverrides = {{ \"app.test\" = \"127.0.0.1\", \"down.test\" = \"127.0.0.2\" }}\n",
        relay.port
    );
    let (mut node, admin) = node(&extra);
    relay.point_at(node.b.ingress_addr());
    let project = project_id(&admin, "alpha");
    push_web(&admin, "alpha/web", "v1", "hello from web\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let d = settle(&admin, &deploy(&admin, &svc, "alpha/web", "v1"), 90);
    assert_eq!(d["status"], "live", "{d}");

    let r = attach(&admin, &svc, "app.test");
    assert_eq!(r.status, 201, "{}", r.text());
    let dom = r.json();
    let (id, token) =
        (dom["id"].as_str().unwrap().to_string(), dom["verification_token"].as_str().unwrap().to_string());
    assert_eq!(dom["verification_url"], format!("http://app.test:{}/.well-known/berth-challenge/{token}", relay.port));
    assert_eq!(challenge(&node.b, "app.test", &token), (200, token.clone()));
    assert_eq!(challenge(&node.b, "web.alpha.localhost", &token).0, 404, "only for its own host");
    assert_eq!(via_ingress(&node, "app.test", "/").map(|r| r.0), Some(404), "not routed while pending");

    // Verify: berth resolves app.test through the override, fetches the challenge
    // through the port it is told, finds its token.
    let r = admin.post(&format!("/v1/services/{svc}/domains/{id}/verify"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!((v["status"].as_str(), v["error"].as_str()), (Some("verified"), None), "{v}");
    assert!(v["verified_at"].is_string(), "{v}");
    assert_eq!(via_ingress(&node, "app.test", "/"), Some((200, "hello from web\n".to_string())));
    assert_eq!(via_ingress(&node, "App.Test:8080", "/").map(|r| r.0), Some(200));
    // Idempotent.
    let again = admin.post(&format!("/v1/services/{svc}/domains/{id}/verify"), &json!({})).json();
    assert_eq!(
        (again["status"].as_str(), again["verified_at"].as_str()),
        (Some("verified"), v["verified_at"].as_str())
    );
    let s = admin.get(&format!("/v1/services/{svc}")).json();
    assert_eq!(s["domains"], json!(["app.test"]), "{s}");
    let address = s["instances"][0]["address"].as_str().unwrap().to_string();
    let replica = s["instances"][0]["id"].as_str().unwrap().to_string();

    // The routing table: both hosts, one replica, no certificate of their own yet.
    let table = routes(&admin);
    for (host, kind) in [("web.alpha.localhost", "default"), ("app.test", "domain")] {
        let r = &table[host];
        assert_eq!(
            (r["service_id"].as_str(), r["service"].as_str(), r["project_id"].as_str(), r["kind"].as_str()),
            (Some(svc.as_str()), Some("web"), Some(project.as_str()), Some(kind)),
            "{r}"
        );
        assert_eq!(r["replicas"], json!([{"id": replica, "address": address}]), "{r}");
        assert_eq!(r["certificate"]["state"], "none", "{r}");
    }
    // Another project's member sees none of it.
    let other = admin.post("/v1/projects", &json!({"name": "beta"})).json()["id"].as_str().unwrap().to_string();
    let outsider = member(&node.b, &admin, "betaviewer", Some(&other), "viewer");
    assert!(routes(&outsider).is_empty());
    let beta_svc = service(&admin, json!({"project_id": other, "name": "web", "port": 8080, "replicas": 0}));
    assert_eq!(attach(&admin, &beta_svc, "app.test").status, 409, "taken by another project");

    // A name that leads nowhere: the check says why, and the domain is not routed.
    let down = attach(&admin, &svc, "down.test").json();
    let down_id = down["id"].as_str().unwrap();
    let r = admin.post(&format!("/v1/services/{svc}/domains/{down_id}/verify"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["status"], "error", "{e}");
    assert_eq!(
        e["error"].as_str().unwrap(),
        format!("could not connect to down.test (127.0.0.2:{}): connection refused", relay.port),
        "{e}"
    );
    assert_eq!(via_ingress(&node, "down.test", "/").map(|r| r.0), Some(404));
    let audit = admin.get("/v1/audit?limit=100").json();
    let targets: Vec<&str> = audit["data"].as_array().unwrap().iter().filter_map(|e| e["target"].as_str()).collect();
    assert!(targets.contains(&format!("{id} (app.test): verified").as_str()), "{targets:?}");
    assert!(targets.contains(&format!("{down_id} (down.test): error").as_str()), "{targets:?}");

    // A restart: the challenge answers and the route come back with the replicas.
    assert_eq!(node.b.stop(), Some(0));
    node.b.spawn();
    relay.point_at(node.b.ingress_addr());
    let admin = node.b.admin_session();
    until(60, "app.test routed again after the restart", || {
        (via_ingress(&node, "app.test", "/") == Some((200, "hello from web\n".to_string()))).then_some(())
    });
    assert_eq!(challenge(&node.b, "app.test", &token), (200, token.clone()));
    assert_eq!(routes(&admin)["app.test"]["kind"], "domain");

    // Delete: no route, no challenge, at once.
    assert_eq!(admin.delete(&format!("/v1/services/{svc}/domains/{id}")).status, 204);
    assert_eq!(via_ingress(&node, "app.test", "/").map(|r| r.0), Some(404));
    assert_eq!(challenge(&node.b, "app.test", &token).0, 404);
    assert_eq!(admin.get(&format!("/v1/services/{svc}/domains/{id}")).status, 404);
    assert!(!routes(&admin).contains_key("app.test"));
    assert_eq!(via_ingress(&node, "web.alpha.localhost", "/").map(|r| r.0), Some(200), "the default hostname stays");
    let s = admin.get(&format!("/v1/services/{svc}")).json();
    assert_eq!(s["domains"], json!([]), "{s}");
}
