//! Every route in the route table × every kind of caller. The table is iterated, so
//! a route added later is covered with no new test code.

use berth::api::router::{Access, ROUTES, Route};
use berth::auth::Role;
use serde_json::json;

use crate::harness::{Berth, Client, Resp};

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

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Not refused: anything but 401/403, and not the hidden-project 404.
    Allowed,
    Unauthorized,
    Forbidden,
    /// The project is invisible to this caller.
    Hidden,
}

fn expected(access: Access, caller: Caller) -> Expect {
    use Caller::*;
    use Expect::*;
    let role = match caller {
        Viewer => Some(Role::Viewer),
        Operator => Some(Role::Operator),
        Admin => Some(Role::Admin),
        _ => None,
    };
    match (access, caller) {
        (Access::Public, _) => Allowed,
        (Access::Bootstrap, _) => Unauthorized,
        (Access::Registry, Anonymous) => Unauthorized,
        (Access::Registry, _) => Allowed,
        (_, Anonymous) => Unauthorized,
        (Access::Authenticated, _) => Allowed,
        (_, SuperAdmin) => Allowed,
        (Access::SuperAdmin, _) => Forbidden,
        (Access::AnyMember, Outsider) => Forbidden,
        (Access::AnyMember, _) => Allowed,
        (Access::AnyAdmin, Admin | OtherAdmin) => Allowed,
        (Access::AnyAdmin, _) => Forbidden,
        (Access::Project(_), Outsider | OtherAdmin) => Hidden,
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
    b: Berth,
    root: Client,
    tokens: Vec<(Caller, Option<Client>)>,
    ids: std::collections::HashMap<Caller, String>,
}

impl Fixture {
    fn new() -> Fixture {
        let b = Berth::start("[api]\n");
        let root = b.admin();
        let mut tokens = Vec::new();
        let mut ids = std::collections::HashMap::new();
        let other = root.post("/v1/projects", &json!({"name": "other"})).json()["id"].as_str().unwrap().to_string();
        for (caller, name) in [
            (Caller::Outsider, "outsider"),
            (Caller::Viewer, "viewer"),
            (Caller::Operator, "operator"),
            (Caller::Admin, "padmin"),
            (Caller::OtherAdmin, "otheradmin"),
        ] {
            let r = root.post("/v1/users", &json!({"username": name, "password": "password-123"}));
            assert_eq!(r.status, 201, "{}", r.text());
            ids.insert(caller, r.json()["id"].as_str().unwrap().to_string());
            let c = b.login(name, "password-123");
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
        let f = Fixture { b, root, tokens, ids };
        // Viewer, Operator and Admin hold their role somewhere from the start, so
        // routes without a project id see them as members.
        f.project(0);
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
}

fn call(client: &Client, route: &Route, path: &str) -> Resp {
    let body = match route.method.as_str() {
        "POST" | "PUT" | "PATCH" => Some(&b"{}"[..]),
        _ => None,
    };
    client.send(route.method.as_str(), path, body, &[("Content-Type", "application/json")])
}

#[test]
fn every_route_by_every_caller() {
    let f = Fixture::new();
    let anon = f.b.client();
    let mut failures = Vec::new();
    let mut n = 0;
    for route in ROUTES {
        for &caller in CALLERS {
            let client = match f.tokens.iter().find(|(c, _)| *c == caller).unwrap() {
                (_, Some(c)) => c.clone(),
                (_, None) => anon.clone(),
            };
            let project = if route.path.contains("{id}") {
                n += 1;
                Some(f.project(n))
            } else {
                None
            };
            let path = route
                .path
                .replace("{id}", project.as_deref().unwrap_or(""))
                .replace("{user_id}", "usr_00000000000000000000000000")
                .replace("{session_id}", "ses_00000000000000000000000000")
                .replace("{token_id}", "tok_00000000000000000000000000")
                .replace("{*path}", "nosuch/app/tags/list");
            let r = call(&client, route, &path);
            let want = expected(route.access, caller);
            let hidden_project = |r: &Resp| {
                r.status == 404
                    && project.as_deref().is_some_and(|p| r.text().contains(&format!("project {p} not found")))
            };
            let ok = match want {
                Expect::Allowed => r.status != 401 && r.status != 403 && !hidden_project(&r) && r.status < 500,
                Expect::Unauthorized if route.access == Access::Registry => {
                    r.status == 401
                        && r.header("www-authenticate")
                            .is_some_and(|c| c.starts_with("Bearer realm=") || c.starts_with("Basic realm="))
                }
                Expect::Unauthorized => r.status == 401 && r.code().contains("token"),
                Expect::Forbidden => r.status == 403 && r.code() == "forbidden",
                Expect::Hidden => hidden_project(&r),
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {caller:?}: expected {want:?}, got {} {}",
                    route.method,
                    route.path,
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
