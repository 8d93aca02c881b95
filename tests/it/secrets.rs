//! Passwords, token secrets and sealed credentials (registry passwords, Git deploy
//! keys) never reach any file under the state dir or the logs in plain text.

use serde_json::json;

use crate::harness::Berth;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn database_and_logs_hold_no_plaintext_secrets() {
    let mut b = Berth::start("");
    let bootstrap = b.bootstrap_token();
    let admin = b.admin();
    let password = "Very-Distinct-Password-4711";
    assert_eq!(admin.post("/v1/users", &json!({"username": "sam", "password": password})).status, 201);
    let sam = b.login("sam", password);
    let session = sam.token.clone().unwrap();
    let r = sam.post("/v1/api-tokens", &json!({"name": "ci"}));
    let pat = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(b.client().with_token(&pat).get("/v1/me").status, 200);
    // Failed logins and bad tokens get logged; they must not log what was sent.
    let wrong = "Wrong-Distinct-Password-0815";
    assert_eq!(b.client().post("/v1/auth/login", &json!({"username": "sam", "password": wrong})).status, 401);
    // The last character changed (to one it is not: a fixed "Z" left 1 token in 62
    // as it was).
    let last = if pat.ends_with('Z') { 'Y' } else { 'Z' };
    let bogus = format!("{}{last}", &pat[..pat.len() - 1]);
    assert_eq!(b.client().with_token(&bogus).get("/v1/me").status, 401);

    // Credentials sealed at rest: a registry password (set, refused, changed) and a
    // deploy key.
    let project = admin.post("/v1/projects", &json!({"name": "alpha"})).json()["id"].as_str().unwrap().to_string();
    let regs = format!("/v1/projects/{project}/registries");
    let registry_password = "Registry-Distinct-Pass-9931";
    let changed_password = "Registry-Changed-Pass-1177";
    let refused_password = "Registry-Refused-Pass-3054";
    let body = json!({"name": "hub", "server": "docker.io", "username": "ci", "password": registry_password});
    let r = admin.post(&regs, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let reg = r.json()["id"].as_str().unwrap().to_string();
    let bad = json!({"name": "x", "server": "https://bad/", "username": "ci", "password": refused_password});
    assert_eq!(admin.post(&regs, &bad).status, 400);
    assert_eq!(admin.put(&format!("{regs}/{reg}"), &json!({"server": "ghcr.io"})).status, 422);
    assert_eq!(admin.put(&format!("{regs}/{reg}"), &json!({"password": changed_password})).status, 200);
    let second = json!({"name": "gh", "server": "ghcr.io", "username": "ci", "password": registry_password});
    assert_eq!(admin.post(&regs, &second).status, 201);
    let key = crate::credentials::ED25519;
    let git = format!("/v1/projects/{project}/credentials/git");
    assert_eq!(admin.post(&git, &json!({"private_key": key})).status, 201);
    assert_eq!(admin.post(&git, &json!({"private_key": format!("{key}\nnot-a-key")})).status, 400);

    let secret_of = |t: &str| t.rsplit('_').next().unwrap().to_string();
    let needles = [
        password.to_string(),
        wrong.to_string(),
        crate::harness::ADMIN_PASSWORD.to_string(),
        secret_of(&session),
        secret_of(&pat),
        secret_of(&bogus),
        secret_of(&bootstrap),
        registry_password.to_string(),
        changed_password.to_string(),
        refused_password.to_string(),
    ]
    .into_iter()
    // Every line of the key's base64 (the armor lines are public knowledge).
    .chain(key.lines().filter(|l| !l.starts_with("-----")).map(str::to_string))
    .collect::<Vec<_>>();
    let check = |label: &str, bytes: &[u8]| {
        for n in &needles {
            assert!(!contains(bytes, n), "{label} contains a secret in plain text");
        }
    };
    // While running (WAL and main file included), then after a clean stop: every
    // file under the state dir, and the log.
    let data_dir = b.data_dir();
    let check_tree = |when: &str| {
        let files = files_under(&data_dir);
        assert!(files.iter().any(|f| f.ends_with("state.db")), "{files:?}");
        for f in files {
            if let Ok(bytes) = std::fs::read(&f) {
                check(&format!("{} ({when})", f.display()), &bytes);
            }
        }
    };
    check_tree("running");
    assert_eq!(b.stop(), Some(0));
    check_tree("stopped");
    // The credentials are in the database, sealed.
    let db = std::fs::read(data_dir.join("state.db")).unwrap();
    assert!(contains(&db, "age:"), "no sealed value in state.db");
    let log = std::fs::read(b.log_path()).unwrap();
    assert!(log.len() > 1000, "debug logs were written");
    check("the log", &log);
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
