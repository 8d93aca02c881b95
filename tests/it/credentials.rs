//! Registry credentials and Git deploy keys through the API: write-only, scoped to
//! their project, Admin to change, and honest about a host key that cannot open them.

use serde_json::{Value, json};

use crate::harness::{Berth, Client, Resp};

/// Throw-away keys the unit tests use too, with what `ssh-keygen -l` printed for them.
pub const ED25519: &str = include_str!("../../src/secrets/testdata/ed25519");
pub const ED25519_FP: &str = include_str!("../../src/secrets/testdata/ed25519.fp");
pub const RSA_PEM: &str = include_str!("../../src/secrets/testdata/rsa.pkcs1");
pub const RSA_FP: &str = include_str!("../../src/secrets/testdata/rsa.fp");
const ENCRYPTED: &str = include_str!("../../src/secrets/testdata/ed25519.encrypted");
const KNOWN_HOSTS: &str =
    "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n";

const PASSWORD: &str = "member-password-1";

/// A project with a Viewer, an Operator and an Admin, a stranger, and the Admin of
/// another project.
struct World {
    b: Berth,
    root: Client,
    alpha: String,
    beta: String,
    viewer: Client,
    operator: Client,
    admin: Client,
    stranger: Client,
    beta_admin: Client,
}

fn created(r: &Resp) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

impl World {
    fn new() -> World {
        let b = Berth::start("");
        let root = b.admin();
        let alpha = created(&root.post("/v1/projects", &json!({"name": "alpha"})));
        let beta = created(&root.post("/v1/projects", &json!({"name": "beta"})));
        let user = |name: &str, membership: Option<(&str, &str)>| {
            let id = created(&root.post("/v1/users", &json!({"username": name, "password": PASSWORD})));
            if let Some((project, role)) = membership {
                let r = root.post(&format!("/v1/projects/{project}/members"), &json!({"user_id": id, "role": role}));
                assert_eq!(r.status, 201, "{}", r.text());
            }
            b.login(name, PASSWORD)
        };
        let viewer = user("viewer", Some((&alpha, "viewer")));
        let operator = user("operator", Some((&alpha, "operator")));
        let admin = user("padmin", Some((&alpha, "admin")));
        let stranger = user("stranger", None);
        let beta_admin = user("badmin", Some((&beta, "admin")));
        World { b, root, alpha, beta, viewer, operator, admin, stranger, beta_admin }
    }
}

/// The fields a credential shows, exactly: nothing that could carry the secret.
fn assert_shape(v: &Value, fields: &[&str]) {
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = fields.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "{v}");
}

const REGISTRY_FIELDS: &[&str] =
    &["id", "project_id", "name", "server", "username", "usable", "created_at", "updated_at"];
const GIT_FIELDS: &[&str] =
    &["project_id", "name", "key_type", "fingerprint", "known_hosts", "usable", "created_at", "updated_at"];

#[test]
fn registry_credentials_are_write_only_and_scoped_to_their_project() {
    let w = World::new();
    let secret = "Registry-Pass-5b1e9c";
    let regs = format!("/v1/projects/{}/registries", w.alpha);
    let mut responses = Vec::new();
    let mut keep = |r: Resp| {
        responses.push(r.text());
        r
    };

    let r =
        keep(w.admin.post(
            &regs,
            &json!({"name": "hub", "server": "Index.Docker.io", "username": "ci-bot", "password": secret}),
        ));
    let id = created(&r);
    let v = r.json();
    assert_shape(&v, REGISTRY_FIELDS);
    assert!(id.starts_with("reg_"), "{id}");
    assert_eq!(
        (v["name"].as_str(), v["server"].as_str(), v["username"].as_str()),
        (Some("hub"), Some("docker.io"), Some("ci-bot"))
    );
    assert_eq!((v["project_id"].as_str(), v["usable"].as_bool()), (Some(w.alpha.as_str()), Some(true)));
    let one = format!("{regs}/{id}");

    // Bad input: each a 400 or 409 that does not quote the password.
    for (body, status) in [
        (json!({"name": "hub", "server": "ghcr.io", "username": "u", "password": secret}), 409),
        (json!({"name": "Hub!", "server": "ghcr.io", "username": "u", "password": secret}), 400),
        (json!({"name": "gh", "server": "https://ghcr.io/v2", "username": "u", "password": secret}), 400),
        (json!({"name": "gh", "server": "ghcr.io", "username": "a:b", "password": secret}), 400),
        (json!({"name": "gh", "server": "ghcr.io", "username": "u", "password": format!("{secret}\u{1b}")}), 400),
        (json!({"name": "gh", "server": "ghcr.io", "username": "u", "password": ""}), 400),
        (json!({"name": "gh", "server": "ghcr.io", "username": "u"}), 400),
        (json!({"name": "gh", "server": "ghcr.io", "username": "u", "password": secret, "scope": "x"}), 400),
    ] {
        let r = keep(w.admin.post(&regs, &body));
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }

    // Who may do what.
    let gh = json!({"name": "gh", "server": "ghcr.io", "username": "u", "password": secret});
    for c in [&w.viewer, &w.operator] {
        let r = keep(c.post(&regs, &gh));
        assert_eq!((r.status, r.code()), (403, "forbidden".to_string()), "{}", r.text());
        assert_eq!(keep(c.put(&one, &json!({"username": "x"}))).status, 403);
        assert_eq!(keep(c.delete(&one)).status, 403);
    }
    let list = keep(w.viewer.get(&regs));
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json()["data"].as_array().unwrap().len(), 1);
    assert_shape(&list.json()["data"][0], REGISTRY_FIELDS);
    assert_eq!(keep(w.viewer.get(&one)).json()["id"], id.as_str());
    for c in [&w.stranger, &w.beta_admin] {
        for r in [keep(c.get(&regs)), keep(c.get(&one)), keep(c.post(&regs, &gh)), keep(c.delete(&one))] {
            assert_eq!(r.status, 404, "{}", r.text());
            assert!(r.text().contains(&format!("project {} not found", w.alpha)), "{}", r.text());
        }
    }
    // alpha's credential through beta's path: not found, the same as an id that never existed.
    let through_beta = format!("/v1/projects/{}/registries/{id}", w.beta);
    for r in [
        keep(w.beta_admin.get(&through_beta)),
        keep(w.beta_admin.put(&through_beta, &json!({"username": "x"}))),
        keep(w.beta_admin.delete(&through_beta)),
        keep(w.admin.get(&format!("{regs}/reg_00000000000000000000000000"))),
        keep(w.admin.get(&format!("{regs}/nonsense"))),
    ] {
        assert_eq!((r.status, r.code()), (404, "not_found".to_string()), "{}", r.text());
        assert!(r.text().contains("registry credential"), "{}", r.text());
    }
    assert_eq!(keep(w.beta_admin.get(&format!("/v1/projects/{}/registries", w.beta))).json()["data"], json!([]));

    // A token narrowed to reading lists, and cannot write even for an Admin.
    let t = keep(w.admin.post("/v1/api-tokens", &json!({"name": "ro", "scopes": ["projects:read"]})));
    let reader = w.b.client().with_token(t.json()["token"].as_str().unwrap());
    assert_eq!(keep(reader.get(&regs)).status, 200);
    let r = keep(reader.post(&regs, &gh));
    assert_eq!((r.status, r.code()), (403, "insufficient_scope".to_string()));

    // Updates: any subset; a new server needs the password again.
    let r = keep(w.admin.put(&one, &json!({"username": "robot$ci"})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_shape(&r.json(), REGISTRY_FIELDS);
    assert_eq!(r.json()["username"], "robot$ci");
    let r = keep(w.admin.put(&one, &json!({"server": "quay.io"})));
    assert_eq!((r.status, r.code()), (422, "unprocessable".to_string()), "{}", r.text());
    assert_eq!(keep(w.admin.get(&one)).json()["server"], "docker.io");
    let r = keep(w.admin.put(&one, &json!({"server": "registry-1.docker.io"})));
    assert_eq!(r.status, 200, "the same registry in another spelling is no change of server: {}", r.text());
    let r = keep(w.admin.put(&one, &json!({"server": "127.0.0.1:5000", "password": "Second-Pass-77a1"})));
    assert_eq!((r.status, r.json()["server"].as_str()), (200, Some("127.0.0.1:5000")), "{}", r.text());
    assert_eq!(created(&keep(w.admin.post(&regs, &gh))).len(), 30);
    let r = keep(w.admin.put(&one, &json!({"name": "gh"})));
    assert_eq!(r.status, 409, "{}", r.text());
    let r = keep(w.admin.put(&one, &json!({"password": "bad\u{0}pass"})));
    assert_eq!(r.status, 400);
    let list = keep(w.viewer.get(&format!("{regs}?limit=1")));
    assert_eq!(
        (list.json()["has_more"].as_bool(), list.json()["data"][0]["id"].as_str()),
        (Some(true), Some(id.as_str()))
    );

    // The audit log names the credential, never the password.
    let audit = keep(w.root.get("/v1/audit?limit=100"));
    let entries = audit.json()["data"].as_array().unwrap().clone();
    let mine: Vec<&Value> = entries.iter().filter(|e| e["target"].as_str().unwrap_or("").contains(&id)).collect();
    assert!(mine.len() >= 4, "create and three updates: {mine:?}");
    assert!(mine.iter().all(|e| e["project_id"] == w.alpha.as_str()));
    assert!(mine.iter().any(|e| e["target"] == format!("{id} (hub)")), "{mine:?}");

    let r = keep(w.admin.delete(&one));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(keep(w.admin.get(&one)).status, 404);
    assert_eq!(keep(w.admin.delete(&one)).status, 404);
    let audit = keep(w.root.get("/v1/audit?limit=100"));
    assert!(audit.json()["data"].as_array().unwrap().iter().any(|e| {
        e["action"] == "DELETE /v1/projects/{id}/registries/{registry_id}" && e["target"] == format!("{id} (hub)")
    }));

    for text in &responses {
        assert!(!text.contains(secret) && !text.contains("Second-Pass"), "a response shows the password: {text}");
        assert!(!text.contains("age:"), "a response shows sealed text: {text}");
    }
}

#[test]
fn a_git_deploy_key_is_stored_sealed_and_shown_by_fingerprint() {
    let w = World::new();
    let git = format!("/v1/projects/{}/credentials/git", w.alpha);
    let mut responses = Vec::new();
    let mut keep = |r: Resp| {
        responses.push(r.text());
        r
    };
    let r = keep(w.viewer.get(&git));
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("no git deploy key"));

    let body = json!({"name": "github deploy", "private_key": ED25519, "known_hosts": KNOWN_HOSTS});
    assert_eq!(keep(w.operator.post(&git, &body)).status, 403);
    assert_eq!(keep(w.stranger.post(&git, &body)).status, 404);
    let r = keep(w.admin.post(&git, &body));
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_shape(&v, GIT_FIELDS);
    assert_eq!(v["fingerprint"], ED25519_FP.trim());
    assert_eq!((v["key_type"].as_str(), v["name"].as_str()), (Some("ssh-ed25519"), Some("github deploy")));
    assert_eq!((v["known_hosts"].as_str(), v["usable"].as_bool()), (Some(KNOWN_HOSTS), Some(true)));

    let r = keep(w.viewer.get(&git));
    assert_eq!((r.status, r.json()["fingerprint"].as_str()), (200, Some(ED25519_FP.trim())));
    assert_eq!(keep(w.beta_admin.get(&git)).status, 404);
    assert_eq!(keep(w.beta_admin.get(&format!("/v1/projects/{}/credentials/git", w.beta))).status, 404);

    // Replacing it answers 200 and keeps one key; the name defaults.
    let r = keep(w.admin.post(&git, &json!({"private_key": RSA_PEM})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["fingerprint"], RSA_FP.trim());
    assert_eq!((r.json()["name"].as_str(), r.json()["known_hosts"].as_str()), (Some("deploy-key"), None));
    assert_eq!(r.json()["created_at"], v["created_at"]);

    // What is not an unencrypted private key is refused, without quoting it.
    let public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host";
    for (key, says) in [
        (ENCRYPTED, "passphrase"),
        (public, "not an SSH private key"),
        ("", "not an SSH private key"),
        (&"A".repeat(20_000), "larger than"),
    ] {
        let r = keep(w.admin.post(&git, &json!({"private_key": key})));
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(says), "{}", r.text());
    }
    let r = keep(w.admin.post(&git, &json!({"private_key": ED25519, "known_hosts": "github.com ssh-rsa AAAA"})));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("known_hosts line 1"), "{}", r.text());
    assert_eq!(keep(w.viewer.get(&git)).json()["fingerprint"], RSA_FP.trim(), "refusals changed nothing");

    assert_eq!(keep(w.viewer.delete(&git)).status, 403);
    assert_eq!(keep(w.admin.delete(&git)).status, 204);
    assert_eq!(keep(w.admin.get(&git)).status, 404);
    assert_eq!(keep(w.admin.delete(&git)).status, 404);
    let audit = keep(w.root.get("/v1/audit?limit=100"));
    let targets: Vec<String> = audit.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap_or("").ends_with("/credentials/git"))
        .map(|e| e["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets.len(), 3, "set, replace, delete: {targets:?}");
    assert!(targets.iter().all(|t| t.starts_with("git deploy key SHA256:")), "{targets:?}");

    let key_lines: Vec<&str> =
        [ED25519, RSA_PEM, ENCRYPTED].iter().flat_map(|k| k.lines().filter(|l| !l.starts_with("-----"))).collect();
    for text in &responses {
        for line in &key_lines {
            assert!(!text.contains(line), "a response shows key material: {text}");
        }
    }
}

#[test]
fn credentials_sealed_under_a_lost_host_key_are_reported_unusable_until_set_again() {
    let mut w = World::new();
    let regs = format!("/v1/projects/{}/registries", w.alpha);
    let git = format!("/v1/projects/{}/credentials/git", w.alpha);
    let id = created(
        &w.admin.post(&regs, &json!({"name": "hub", "server": "docker.io", "username": "u", "password": "p-1"})),
    );
    assert_eq!(w.admin.post(&git, &json!({"private_key": ED25519})).status, 201);

    // The state is restored without its host key: the daemon makes a new one.
    assert_eq!(w.b.stop(), Some(0));
    let key = w.b.data_dir().join("secrets/host.key");
    let old_key = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    w.b.spawn();
    assert_ne!(std::fs::read(&key).unwrap(), old_key);
    let admin = w.b.login("padmin", PASSWORD);
    let r = admin.get(&format!("{regs}/{id}"));
    assert_eq!((r.status, r.json()["usable"].as_bool()), (200, Some(false)), "{}", r.text());
    assert_eq!(admin.get(&git).json()["usable"], false);
    assert!(w.b.log().contains("host key for secrets created"));

    // Setting the secret again seals it under the new key.
    let r = admin.put(&format!("{regs}/{id}"), &json!({"password": "p-2"}));
    assert_eq!((r.status, r.json()["usable"].as_bool()), (200, Some(true)), "{}", r.text());
    let r = admin.post(&git, &json!({"private_key": ED25519}));
    assert_eq!((r.status, r.json()["usable"].as_bool()), (200, Some(true)), "{}", r.text());
    // A key readable by others stops the daemon from starting rather than being used.
    assert_eq!(w.b.stop(), Some(0));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = w.b.dir.path().join("berth.toml");
    let out_path = w.b.dir.path().join("refused.log");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--dev", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(w.b.data_dir())
        .args(["--api-listen", "127.0.0.1:0"])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berth started with a host key readable by others");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let said = std::fs::read_to_string(&out_path).unwrap();
    assert!(said.contains("mode must be 0600"), "{said}");
}
