//! Every route in the route table × every kind of caller. The table is iterated, so
//! a route added later is covered with no new test code, and it fails until
//! [`request`] knows how to call it: every request is one the handler accepts (a
//! valid body, ids that exist), so "allowed" means the call succeeded (2xx), never
//! that it got past authorization only to be refused as a bad request. On `/v2` the
//! probes name a repository that exists.

use berth::api::router::{Access, ROUTES, Route};
use berth::auth::Role;
use serde_json::{Value, json};

use crate::deployments::Node;
use crate::harness::{ADMIN_PASSWORD, Berth, Client, Resp};
use crate::registry::{OCI_MANIFEST, digest, image_manifest, push_image};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    Anonymous,
    /// Signed in, member of nothing.
    Outsider,
    Viewer,
    Operator,
    Admin,
    SuperAdmin,
    /// Admin of another project.
    OtherAdmin,
}

const CALLERS: &[Caller] = &[
    Caller::Anonymous,
    Caller::Outsider,
    Caller::Viewer,
    Caller::Operator,
    Caller::Admin,
    Caller::SuperAdmin,
    Caller::OtherAdmin,
];

impl Caller {
    /// Username and password, for the routes that need a session of the caller's own.
    fn credentials(self) -> Option<(&'static str, &'static str)> {
        match self {
            Caller::Anonymous => None,
            Caller::Outsider => Some(("outsider", PASSWORD)),
            Caller::Viewer => Some(("viewer", PASSWORD)),
            Caller::Operator => Some(("operator", PASSWORD)),
            Caller::Admin => Some(("padmin", PASSWORD)),
            Caller::OtherAdmin => Some(("otheradmin", PASSWORD)),
            Caller::SuperAdmin => Some(("admin", ADMIN_PASSWORD)),
        }
    }
}

const PASSWORD: &str = "password-123";

/// The repository the `/v2` probes use, in the project [`Fixture::new`] makes first
/// (`m0`, where the Viewer, Operator and Admin callers hold their roles).
const REPO: &str = "m0/app";

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Served: a 2xx.
    Allowed,
    Unauthorized,
    Forbidden,
    /// The project is invisible to this caller.
    Hidden,
}

/// The role a `/v2/{*path}` request needs in the repository's project.
fn registry_role(route: &Route) -> Role {
    match route.method.as_str() {
        "GET" | "HEAD" => Role::Viewer,
        _ => Role::Operator,
    }
}

fn expected(route: &Route, caller: Caller) -> Expect {
    use Caller::*;
    use Expect::*;
    let role = match caller {
        Viewer => Some(Role::Viewer),
        Operator => Some(Role::Operator),
        Admin => Some(Role::Admin),
        _ => None,
    };
    // Repository requests are checked against the repository's project, like a
    // project route with the role the method needs.
    let access = match route.access {
        Access::Registry if route.path.contains('{') => Access::Project(registry_role(route)),
        // A service, a deployment or a body's project: the project's role decides.
        // A routed host: its service's project decides.
        Access::Service(min) | Access::Deployment(min) | Access::Job(min) | Access::InBody(min) | Access::Host(min) => {
            Access::Project(min)
        }
        a => a,
    };
    match (access, caller) {
        (Access::Public, _) => Allowed,
        (Access::Bootstrap, _) => Unauthorized,
        (_, Anonymous) => Unauthorized,
        (Access::Registry, _) => Allowed,
        (Access::Authenticated, _) => Allowed,
        (_, SuperAdmin) => Allowed,
        (Access::SuperAdmin, _) => Forbidden,
        (Access::AnyMember, Outsider) => Forbidden,
        (Access::AnyMember, _) => Allowed,
        (Access::AnyOperator, Operator | Admin | OtherAdmin) => Allowed,
        (Access::AnyOperator, _) => Forbidden,
        (Access::AnyAdmin, Admin | OtherAdmin) => Allowed,
        (Access::AnyAdmin, _) => Forbidden,
        (Access::Project(_), Outsider | OtherAdmin) => Hidden,
        (Access::Service(_) | Access::Deployment(_) | Access::Job(_) | Access::InBody(_) | Access::Host(_), _) => {
            unreachable!("mapped above")
        }
        (Access::Project(min), _) => {
            if role.is_some_and(|r| r >= min) {
                Allowed
            } else {
                Forbidden
            }
        }
    }
}

struct Fixture {
    node: Node,
    root: Client,
    tokens: Vec<(Caller, Option<Client>)>,
    ids: std::collections::HashMap<Caller, String>,
    /// The manifest pushed to [`REPO`] as `v1`, and its one layer.
    manifest: Vec<u8>,
    layer: Vec<u8>,
    /// Deployments left in progress, cancelled when the fixture goes.
    in_progress: std::cell::RefCell<Vec<String>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for d in self.in_progress.borrow().iter() {
            let _ = self.root.try_send("POST", &format!("/v1/deployments/{d}/cancel"), None, &[]);
        }
    }
}

impl Fixture {
    fn new() -> Fixture {
        // Containers run (cancel needs a rollout in progress), under names of the
        // fixture's own; a rollout waits as long as the test may take.
        // Domain verification resolves its names here and finds nothing listening
        // on loopback's port 1: no lookup leaves the machine. Routed hosts get
        // certificates (so a forced renewal is accepted), from a CA that is not
        // there: the worker fails once per host and backs off.
        let names: Vec<String> =
            CALLERS.iter().map(|c| format!("\"{}\" = \"127.0.0.1\"", verify_hostname(*c))).collect();
        let node = Node::start(&format!(
            "[deploy]\nhealth_deadline_seconds = 3600\ndrain_seconds = 0\n\
             [ingress]\nchallenge_port = 1\napps_domain = \"matrix.test\"\n\
             [acme]\nenabled = true\ndirectory_url = \"https://127.0.0.1:9/directory\"\nbackoff_min_seconds = 3600\n\
             [dns]\noverrides = {{ {} }}\n",
            names.join(", ")
        ));
        let b = &node.b;
        let root = b.admin();
        let mut tokens = Vec::new();
        let mut ids = std::collections::HashMap::new();
        let other = root.post("/v1/projects", &json!({"name": "other"})).json()["id"].as_str().unwrap().to_string();
        for caller in [Caller::Outsider, Caller::Viewer, Caller::Operator, Caller::Admin, Caller::OtherAdmin] {
            let (name, password) = caller.credentials().unwrap();
            let r = root.post("/v1/users", &json!({"username": name, "password": password}));
            assert_eq!(r.status, 201, "{}", r.text());
            ids.insert(caller, r.json()["id"].as_str().unwrap().to_string());
            let c = b.login(name, password);
            let t = c.post("/v1/api-tokens", &json!({"name": "matrix"}));
            assert_eq!(t.status, 201, "{}", t.text());
            tokens.push((caller, Some(c.with_token(t.json()["token"].as_str().unwrap()))));
        }
        let r = root.post(
            &format!("/v1/projects/{other}/members"),
            &json!({"user_id": ids[&Caller::OtherAdmin], "role": "admin"}),
        );
        assert_eq!(r.status, 201);
        // The fixture itself works through an API token: the matrix revokes sessions.
        let t = root.post("/v1/api-tokens", &json!({"name": "matrix"}));
        let root = root.with_token(t.json()["token"].as_str().unwrap());
        tokens.push((Caller::SuperAdmin, Some(root.clone())));
        tokens.push((Caller::Anonymous, None));
        let layer = crate::registry::random(1000, 7);
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let mut f = Fixture {
            node,
            root,
            tokens,
            ids,
            manifest: Vec::new(),
            layer,
            in_progress: std::cell::RefCell::new(Vec::new()),
        };
        // Viewer, Operator and Admin hold their role somewhere from the start, so
        // routes without a project id see them as members; the registry probes use
        // a repository of this project.
        f.project(0);
        f.manifest = push_image(&f.root, REPO, "v1", &config, &[&f.layer]);
        assert_eq!(f.manifest, image_manifest(&config, &[&f.layer]));
        f
    }

    /// A fresh project with the Viewer, Operator and Admin callers as members, so a
    /// destructive call in one cell cannot disturb another.
    fn project(&self, n: usize) -> String {
        let r = self.root.post("/v1/projects", &json!({"name": format!("m{n}")}));
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        for (caller, role) in [(Caller::Viewer, "viewer"), (Caller::Operator, "operator"), (Caller::Admin, "admin")] {
            let r = self
                .root
                .post(&format!("/v1/projects/{id}/members"), &json!({"user_id": self.ids[&caller], "role": role}));
            assert_eq!(r.status, 201, "{}", r.text());
        }
        id
    }

    /// A service of project `m{n}` with no replicas (a deployment of it goes live
    /// without starting a container); `extra` adds settings.
    fn service(&self, project: &str, n: usize, extra: Value) -> String {
        let mut body = json!({"project_id": project, "name": format!("s{n}"), "port": 8080, "replicas": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        crate::deployments::service(&self.root, body)
    }

    /// A deployment of a service of project `m{n}` that went live (no replicas).
    fn live_deployment(&self, project: &str, n: usize) -> String {
        let svc = self.service(project, n, json!({}));
        let repo = format!("m{n}/tiny");
        let layer = crate::deployments::layer(&[("hello", b"hi\n", 0o644)]);
        crate::deployments::push(&self.root, &repo, "v1", &[layer], &["/hello"]);
        let dep = crate::deployments::deploy(&self.root, &svc, &repo, "v1");
        let d = crate::deployments::settle(&self.root, &dep, 60);
        assert_eq!(d["status"], "live", "{d}");
        dep
    }

    /// A deployment of project `m{n}` in progress: a replica that never passes its
    /// health check (nothing listens), whose rollout waits until cancelled.
    fn deployment_in_progress(&self, project: &str, n: usize) -> String {
        let svc = self.service(
            project,
            n,
            json!({"replicas": 1, "health_check": {"path": "/never", "interval_s": 1}, "restart_policy": "no"}),
        );
        let repo = format!("m{n}/sleeper");
        crate::deployments::push(
            &self.root,
            &repo,
            "v1",
            &[crate::deployments::busybox_layer()],
            &["/bin/busybox", "sleep", "3600"],
        );
        let dep = crate::deployments::deploy(&self.root, &svc, &repo, "v1");
        crate::deployments::until(60, "the rollout reaches starting", || {
            let d = self.root.get(&format!("/v1/deployments/{dep}")).json();
            (d["status"] == "starting").then_some(())
        });
        self.in_progress.borrow_mut().push(dep.clone());
        dep
    }

    /// A live service of project `m{n}` with one running replica (busybox's
    /// httpd), for consoles.
    fn running_service(&self, project: &str, n: usize) -> String {
        let svc = self.service(project, n, json!({"replicas": 1}));
        let repo = format!("m{n}/web");
        crate::deployments::push_web(&self.root, &repo, "v1", "hello", true);
        let dep = crate::deployments::deploy(&self.root, &svc, &repo, "v1");
        let d = crate::deployments::settle(&self.root, &dep, 60);
        assert_eq!(d["status"], "live", "{d}");
        svc
    }

    /// A hosted image of project `m{n}` for jobs (a file, no shell): `m{n}/jobimg:v1`.
    fn job_image(&self, n: usize) -> String {
        let repo = format!("m{n}/jobimg");
        let layer = crate::deployments::layer(&[("hello", b"hi\n", 0o644)]);
        crate::deployments::push(&self.root, &repo, "v1", &[layer], &["/hello"]);
        format!("{repo}:v1")
    }

    /// A job of project `m{n}` (on demand only).
    fn job(&self, project: &str, n: usize) -> String {
        let body =
            json!({"project_id": project, "name": format!("j{n}"), "command": ["/hello"], "image": self.job_image(n)});
        let r = self.root.post("/v1/jobs", &body);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// A user of no project, made for one cell.
    fn user(&self, n: usize) -> String {
        let r = self.root.post("/v1/users", &json!({"username": format!("cell{n}"), "password": PASSWORD}));
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    }
}

/// The domain a verify cell checks: one per caller, in `[dns] overrides`.
fn verify_hostname(caller: Caller) -> String {
    format!("verify-{}.domains.test", format!("{caller:?}").to_lowercase())
}

/// One request: method, path, body, headers, and the client to send it with.
struct Request {
    path: String,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    client: Client,
    /// What a 404 says when the resource is invisible to the caller (`project
    /// prj_… not found` unless the request names a service or deployment).
    hidden: Option<String>,
}

impl Request {
    fn json(client: &Client, path: String, body: Value) -> Request {
        let headers = vec![("Content-Type", "application/json".to_string())];
        Request { path, body: Some(body.to_string().into_bytes()), headers, client: client.clone(), hidden: None }
    }
    fn empty(client: &Client, path: String) -> Request {
        Request { path, body: None, headers: vec![], client: client.clone(), hidden: None }
    }
    fn hidden(mut self, what: &str, id: &str) -> Request {
        self.hidden = Some(format!("{what} {id} not found"));
        self
    }
}

/// A request the route's handler serves when authorization lets it through: a
/// valid body and ids that exist, made for this cell (`n`) so a destructive call
/// cannot disturb another. `client` is the caller's (an API token, or anonymous);
/// routes that need a session get one of the caller's own.
fn request(f: &Fixture, route: &Route, caller: Caller, client: &Client, project: Option<&str>, n: usize) -> Request {
    let project = project.unwrap_or("");
    let session = || match caller.credentials() {
        Some((name, password)) => f.node.b.login(name, password),
        None => client.clone(),
    };
    match (route.method.as_str(), route.path) {
        ("POST", "/v1/bootstrap") => {
            Request::json(client, route.path.into(), json!({"username": format!("boot{n}"), "password": PASSWORD}))
        }
        ("POST", "/v1/auth/login") => {
            Request::json(client, route.path.into(), json!({"username": "viewer", "password": PASSWORD}))
        }
        ("POST", "/v1/auth/logout") => Request::json(&session(), route.path.into(), json!({})),
        ("DELETE", "/v1/auth/sessions/{session_id}") => {
            // One of the caller's own sessions.
            let id = match caller {
                Caller::Anonymous => "ses_00000000000000000000000000".to_string(),
                _ => session().get("/v1/me").json()["credential"]["id"].as_str().unwrap().to_string(),
            };
            Request::empty(client, format!("/v1/auth/sessions/{id}"))
        }
        ("POST", "/v1/users") => {
            Request::json(client, route.path.into(), json!({"username": format!("new{n}"), "password": PASSWORD}))
        }
        ("DELETE", "/v1/users/{user_id}") => Request::empty(client, format!("/v1/users/{}", f.user(n))),
        ("POST", "/v1/api-tokens") => Request::json(client, route.path.into(), json!({"name": format!("cell{n}")})),
        ("DELETE", "/v1/api-tokens/{token_id}") => {
            // One of the caller's own tokens.
            let id = match caller {
                Caller::Anonymous => "tok_00000000000000000000000000".to_string(),
                _ => {
                    let r = client.post("/v1/api-tokens", &json!({"name": format!("doomed{n}")}));
                    assert_eq!(r.status, 201, "{}", r.text());
                    r.json()["api_token"]["id"].as_str().unwrap().to_string()
                }
            };
            Request::empty(client, format!("/v1/api-tokens/{id}"))
        }
        ("POST", "/v1/projects") => Request::json(client, route.path.into(), json!({"name": format!("new{n}")})),
        ("PUT", "/v1/projects/{id}") => {
            Request::json(client, format!("/v1/projects/{project}"), json!({"description": format!("cell {n}")}))
        }
        ("POST", "/v1/projects/{id}/members") => Request::json(
            client,
            format!("/v1/projects/{project}/members"),
            json!({"user_id": f.user(n), "role": "viewer"}),
        ),
        ("DELETE", "/v1/projects/{id}/members/{user_id}") => {
            let user = f.user(n);
            let r =
                f.root.post(&format!("/v1/projects/{project}/members"), &json!({"user_id": user, "role": "viewer"}));
            assert_eq!(r.status, 201, "{}", r.text());
            Request::empty(client, format!("/v1/projects/{project}/members/{user}"))
        }
        ("POST", "/v1/projects/{id}/registries") => Request::json(
            client,
            format!("/v1/projects/{project}/registries"),
            json!({"name": format!("reg{n}"), "server": "ghcr.io", "username": "u", "password": "p"}),
        ),
        ("GET" | "PUT" | "DELETE", "/v1/projects/{id}/registries/{registry_id}") => {
            let r = f.root.post(
                &format!("/v1/projects/{project}/registries"),
                &json!({"name": "hub", "server": "docker.io", "username": "u", "password": "p"}),
            );
            assert_eq!(r.status, 201, "{}", r.text());
            let path = format!("/v1/projects/{project}/registries/{}", r.json()["id"].as_str().unwrap());
            match route.method.as_str() {
                "PUT" => Request::json(client, path, json!({"username": format!("u{n}")})),
                _ => Request::empty(client, path),
            }
        }
        ("POST", "/v1/projects/{id}/credentials/git") => Request::json(
            client,
            format!("/v1/projects/{project}/credentials/git"),
            json!({"private_key": crate::credentials::ED25519}),
        ),
        ("GET" | "DELETE", "/v1/projects/{id}/credentials/git") => {
            let path = format!("/v1/projects/{project}/credentials/git");
            let r = f.root.post(&path, &json!({"private_key": crate::credentials::ED25519}));
            assert_eq!(r.status, 201, "{}", r.text());
            Request::empty(client, path)
        }
        ("POST", "/v1/registry/gc") => Request::json(client, route.path.into(), json!({})),
        ("GET", "/console/{*file}") => Request::empty(client, "/console/console.js".into()),
        ("GET", "/v2/{*path}") => Request::empty(client, format!("/v2/{REPO}/manifests/v1")),
        ("HEAD", "/v2/{*path}") => Request::empty(client, format!("/v2/{REPO}/blobs/{}", digest(&f.layer))),
        ("POST", "/v2/{*path}") => Request {
            path: format!("/v2/{REPO}/blobs/uploads/"),
            body: Some(Vec::new()),
            headers: vec![],
            client: client.clone(),
            hidden: None,
        },
        ("PATCH", "/v2/{*path}") => {
            // An upload the super-admin started: its next chunk.
            let r = f.root.send("POST", &format!("/v2/{REPO}/blobs/uploads/"), Some(b""), &[]);
            assert_eq!(r.status, 202, "{}", r.text());
            Request {
                path: r.header("location").unwrap().to_string(),
                body: Some(b"data".to_vec()),
                headers: vec![
                    ("Content-Type", "application/octet-stream".to_string()),
                    ("Content-Range", "0-3".to_string()),
                ],
                client: client.clone(),
                hidden: None,
            }
        }
        ("PUT", "/v2/{*path}") => Request {
            path: format!("/v2/{REPO}/manifests/cell{n}"),
            body: Some(f.manifest.clone()),
            headers: vec![("Content-Type", OCI_MANIFEST.to_string())],
            client: client.clone(),
            hidden: None,
        },
        ("DELETE", "/v2/{*path}") => {
            // A tag of its own to delete.
            let r = crate::registry::put_manifest(&f.root, REPO, &format!("doomed{n}"), &f.manifest, OCI_MANIFEST);
            assert_eq!(r.status, 201, "{}", r.text());
            Request::empty(client, format!("/v2/{REPO}/manifests/doomed{n}"))
        }
        ("POST", "/v1/services") => Request::json(
            client,
            route.path.into(),
            json!({"project_id": project, "name": format!("new{n}"), "port": 8080, "replicas": 0}),
        ),
        ("PUT", "/v1/services/{id}") => {
            let svc = f.service(project, n, json!({}));
            Request::json(client, format!("/v1/services/{svc}"), json!({"replicas": 0, "command": ["/cell"]}))
                .hidden("service", &svc)
        }
        ("POST", "/v1/deployments") => {
            let svc = f.service(project, n, json!({}));
            let repo = format!("m{n}/app");
            push_image(&f.root, &repo, "v1", br#"{"architecture":"amd64","os":"linux"}"#, &[&f.layer]);
            let source = json!({"kind": "Image", "repository": repo, "reference": "v1"});
            Request::json(client, route.path.into(), json!({"service_id": svc, "source": source}))
                .hidden("service", &svc)
        }
        ("POST", "/v1/deployments/{id}/cancel") => {
            let dep = f.deployment_in_progress(project, n);
            Request::json(client, format!("/v1/deployments/{dep}/cancel"), json!({})).hidden("deployment", &dep)
        }
        ("POST", "/v1/services/{id}/uploads") => {
            let svc = f.service(project, n, json!({}));
            Request {
                path: format!("/v1/services/{svc}/uploads"),
                body: Some(crate::uploads::small_context()),
                headers: vec![("Content-Type", "application/gzip".to_string())],
                client: client.clone(),
                hidden: None,
            }
            .hidden("service", &svc)
        }
        ("POST", "/v1/services/{id}/webhook") => {
            let svc = f.service(project, n, json!({}));
            let body = json!({"repo_url": "https://git.example.com/app.git", "branch": "main"});
            Request::json(client, format!("/v1/services/{svc}/webhook"), body).hidden("service", &svc)
        }
        ("GET" | "DELETE", "/v1/services/{id}/webhook") => {
            let svc = f.service(project, n, json!({}));
            let path = format!("/v1/services/{svc}/webhook");
            let r = f.root.post(&path, &json!({"repo_url": "https://git.example.com/app.git", "branch": "main"}));
            assert_eq!(r.status, 201, "{}", r.text());
            Request::empty(client, path).hidden("service", &svc)
        }
        ("POST", "/v1/webhooks/git/{service_id}") => {
            // A signed ping: served (200) whoever sends it; the signature is the credential.
            let project = f.project(n);
            let svc = f.service(&project, n, json!({}));
            let r = f.root.post(
                &format!("/v1/services/{svc}/webhook"),
                &json!({"repo_url": "https://git.example.com/app.git", "branch": "main"}),
            );
            assert_eq!(r.status, 201, "{}", r.text());
            let secret = r.json()["secret"].as_str().unwrap().to_string();
            let body = b"{\"zen\":\"hi\"}".to_vec();
            let signature = berth::build::webhook::github_signature(secret.as_bytes(), &body);
            Request {
                path: format!("/v1/webhooks/git/{svc}"),
                body: Some(body),
                headers: vec![
                    ("Content-Type", "application/json".to_string()),
                    ("X-GitHub-Event", "ping".to_string()),
                    ("X-Hub-Signature-256", signature),
                ],
                client: client.clone(),
                hidden: None,
            }
        }
        ("POST", "/v1/services/{id}/console/tickets") => {
            let svc = f.running_service(project, n);
            Request::json(client, format!("/v1/services/{svc}/console/tickets"), json!({})).hidden("service", &svc)
        }
        ("GET", "/v1/services/{id}/console/ws") => {
            // The ticket is the credential, whoever presents it: a fresh one from
            // an operator of the project, and a WebSocket upgrade.
            let svc = f.running_service(project, n);
            let r = f.root.post(&format!("/v1/services/{svc}/console/tickets"), &json!({}));
            assert_eq!(r.status, 201, "{}", r.text());
            let ticket = r.json()["ticket"].as_str().unwrap().to_string();
            Request {
                path: format!("/v1/services/{svc}/console/ws?ticket={ticket}"),
                body: None,
                headers: vec![
                    ("Connection", "Upgrade".to_string()),
                    ("Upgrade", "websocket".to_string()),
                    ("Sec-WebSocket-Version", "13".to_string()),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==".to_string()),
                ],
                client: client.clone(),
                hidden: None,
            }
        }
        ("POST", "/v1/services/{id}/domains") => {
            let svc = f.service(project, n, json!({}));
            let body = json!({"hostname": format!("d{n}.domains.test")});
            Request::json(client, format!("/v1/services/{svc}/domains"), body).hidden("service", &svc)
        }
        (method, path) if path.starts_with("/v1/services/{id}/domains/{domain_id}") => {
            // A domain of a fresh service; the one a verify checks resolves to loopback.
            let svc = f.service(project, n, json!({}));
            let hostname =
                if path.ends_with("/verify") { verify_hostname(caller) } else { format!("d{n}.domains.test") };
            let r = f.root.post(&format!("/v1/services/{svc}/domains"), &json!({ "hostname": hostname }));
            assert_eq!(r.status, 201, "{}", r.text());
            let dom = r.json()["id"].as_str().unwrap().to_string();
            let path = path.replace("{id}", &svc).replace("{domain_id}", &dom);
            match method {
                "POST" => Request::json(client, path, json!({})),
                _ => Request::empty(client, path),
            }
            .hidden("service", &svc)
        }
        ("POST", "/v1/ingress/routes/{host}/renew") => {
            // The default hostname of a live service of this cell's project.
            f.live_deployment(project, n);
            let host = format!("s{n}.m{n}.matrix.test");
            Request::json(client, format!("/v1/ingress/routes/{host}/renew"), json!({})).hidden("route", &host)
        }
        (method, path) if path.starts_with("/v1/services/{id}") => {
            let svc = f.service(project, n, json!({}));
            let path = path.replace("{id}", &svc);
            match method {
                "POST" => Request::json(client, path, json!({})),
                _ => Request::empty(client, path),
            }
            .hidden("service", &svc)
        }
        ("POST", "/v1/jobs") => {
            let body = json!({"project_id": project, "name": format!("new{n}"), "command": ["/hello"],
                "image": f.job_image(n)});
            Request::json(client, route.path.into(), body)
        }
        (method, path) if path.starts_with("/v1/jobs/{id}") => {
            let job = f.job(project, n);
            let mut path = path.replace("{id}", &job);
            if path.contains("{run_id}") {
                let r = f.root.post(&format!("/v1/jobs/{job}/run"), &json!({}));
                assert_eq!(r.status, 201, "{}", r.text());
                path = path.replace("{run_id}", r.json()["id"].as_str().unwrap());
            }
            match method {
                "POST" => Request::json(client, path, json!({})),
                "PUT" => Request::json(client, path, json!({"timeout_s": 60 + n})),
                _ => Request::empty(client, path),
            }
            .hidden("job", &job)
        }
        (method, path) if path.starts_with("/v1/deployments/{id}") => {
            let dep = f.live_deployment(project, n);
            let path = path.replace("{id}", &dep);
            match method {
                "POST" => Request::json(client, path, json!({})),
                _ => Request::empty(client, path),
            }
            .hidden("deployment", &dep)
        }
        (method, path) => {
            // GETs and bodiless DELETEs need only the project; anything else needs an
            // entry above, or the cell reports that it could not be exercised.
            let path = path.replace("{id}", project);
            match method {
                "POST" | "PUT" | "PATCH" => Request::json(client, path, json!({})),
                _ => Request::empty(client, path),
            }
        }
    }
}

/// The OCI error code of a `/v2` error body.
fn oci_code(r: &Resp) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A request to a stream: the status and headers, and the body only when it is not
/// an event stream (an error); a stream's connection is dropped after its head.
fn head_only(c: &Client, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", c.addr);
    // An upgrade names its own Connection.
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("connection")) {
        req.push_str("Connection: close\r\n");
    }
    if let Some(t) = &c.token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut hs = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hs.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let stream = hs.iter().any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.starts_with("text/event-stream"));
    let mut body = Vec::new();
    if !stream {
        let len = hs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        body.resize(len, 0);
        r.read_exact(&mut body).unwrap();
    }
    Resp { status, headers: hs, body }
}

#[test]
fn every_route_by_every_caller() {
    if !crate::runtime::can_run() {
        return;
    }
    let f = Fixture::new();
    let anon = f.node.b.client();
    let mut failures = Vec::new();
    let mut n = 0;
    for route in ROUTES {
        let registry = route.access == Access::Registry;
        for &caller in CALLERS {
            n += 1;
            let client = match f.tokens.iter().find(|(c, _)| *c == caller).unwrap() {
                (_, Some(c)) => c.clone(),
                (_, None) => anon.clone(),
            };
            let needs_project =
                route.path.contains("{id}") || matches!(route.access, Access::InBody(_) | Access::Host(_));
            let project = needs_project.then(|| f.project(n));
            let req = request(&f, route, caller, &client, project.as_deref(), n);
            let headers: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            // Streams and sockets: the answer's head is enough (the connection goes).
            let socket = route.path.ends_with("/console/ws");
            let r = if route.path.ends_with("/stream") || socket {
                head_only(&req.client, route.method.as_str(), &req.path, &headers)
            } else {
                req.client.send(route.method.as_str(), &req.path, req.body.as_deref(), &headers)
            };
            let want = expected(route, caller);
            let hidden_message =
                req.hidden.clone().or_else(|| project.as_ref().map(|p| format!("project {p} not found")));
            let hidden = |r: &Resp| match (registry, &hidden_message) {
                // A repository in a project the caller cannot see is unknown (HEAD
                // answers without a body).
                (true, _) => r.status == 404 && (route.method == "HEAD" || oci_code(r) == "NAME_UNKNOWN"),
                (false, Some(m)) => r.status == 404 && r.text().contains(m.as_str()),
                (false, None) => false,
            };
            let ok = match want {
                // `/console` answers with the way to the page.
                Expect::Allowed if route.path == "/console" => {
                    r.status == 308 && r.header("location") == Some("/console/")
                }
                Expect::Allowed if socket => r.status == 101,
                Expect::Allowed => (200..300).contains(&r.status),
                Expect::Unauthorized if registry => {
                    r.status == 401
                        && r.header("www-authenticate")
                            .is_some_and(|c| c.starts_with("Bearer realm=") || c.starts_with("Basic realm="))
                }
                Expect::Unauthorized => r.status == 401 && r.code().contains("token"),
                Expect::Forbidden if registry => r.status == 403 && oci_code(&r) == "DENIED",
                Expect::Forbidden => r.status == 403 && r.code() == "forbidden",
                Expect::Hidden => hidden(&r),
            };
            if !ok {
                let refused = matches!(r.status, 401 | 403) || hidden(&r);
                let what = if want == Expect::Allowed && !refused {
                    "could not be exercised (the request itself was refused)"
                } else {
                    "wrong authorization"
                };
                failures.push(format!(
                    "{} {} as {caller:?} ({} {}): {what}: expected {want:?}, got {} {}",
                    route.method,
                    route.path,
                    route.method,
                    req.path,
                    r.status,
                    r.text()
                ));
            }
            assert!(r.header("x-request-id").is_some(), "{} {} lacks X-Request-Id", route.method, route.path);
            assert!(
                !r.text().contains("no route for"),
                "{} {} is in the table but not mounted",
                route.method,
                route.path
            );
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn routes_outside_the_table_are_not_served() {
    let b = Berth::start("");
    let admin = b.admin();
    for (method, path) in [("GET", "/v1/secret-admin"), ("GET", "/v1/projects/x/y/z"), ("PATCH", "/v1/projects")] {
        let r = admin.send(method, path, None, &[]);
        assert!(r.status == 404 || r.status == 405, "{method} {path}: {}", r.status);
        assert!(matches!(r.code().as_str(), "not_found" | "method_not_allowed"), "{}", r.text());
    }
}
