//! Passwords and token secrets never reach the database file or the logs in plain text.

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
    let bogus = format!("{}Z", &pat[..pat.len() - 1]);
    assert_eq!(b.client().with_token(&bogus).get("/v1/me").status, 401);

    let secret_of = |t: &str| t.rsplit('_').next().unwrap().to_string();
    let needles = [
        password.to_string(),
        wrong.to_string(),
        crate::harness::ADMIN_PASSWORD.to_string(),
        secret_of(&session),
        secret_of(&pat),
        secret_of(&bogus),
        secret_of(&bootstrap),
    ];
    let check = |label: &str, bytes: &[u8]| {
        for n in &needles {
            assert!(!contains(bytes, n), "{label} contains a secret in plain text");
        }
    };
    // While running (WAL and main file), then after a clean stop.
    for suffix in ["state.db", "state.db-wal"] {
        if let Ok(bytes) = std::fs::read(b.data_dir().join(suffix)) {
            check(suffix, &bytes);
        }
    }
    assert_eq!(b.stop(), Some(0));
    check("state.db", &std::fs::read(b.data_dir().join("state.db")).unwrap());
    let log = std::fs::read(b.log_path()).unwrap();
    assert!(log.len() > 1000, "debug logs were written");
    check("the log", &log);
}
