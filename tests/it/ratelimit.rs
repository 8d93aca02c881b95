//! Rate limits: the login lockout and the per-credential / per-address windows.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{ADMIN_PASSWORD, Berth};

#[test]
fn eleventh_failed_login_is_refused_and_so_is_the_right_password_until_the_window_passes() {
    let b = Berth::start("[api]\nlogin_window_seconds = 3\n");
    let _admin = b.admin();
    let anon = b.client();
    for i in 0..10 {
        let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": format!("wrong-{i}")}));
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
        assert_eq!(r.code(), "invalid_credentials");
    }
    let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": "wrong-again"}));
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": ADMIN_PASSWORD}));
    assert_eq!(r.status, 429, "the right password is refused too while locked out");
    assert!(r.header("retry-after").is_some());
    // Once the window has slid past the failures, the right password works again.
    let deadline = Instant::now() + Duration::from_secs(retry + 10);
    loop {
        let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": ADMIN_PASSWORD}));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(Instant::now() < deadline, "still locked out long after the window");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_response_carries_rate_limit_headers_and_the_window_is_enforced() {
    let b = Berth::start("[api]\nrate_limit_per_minute = 5\nanonymous_rate_limit_per_minute = 5\n");
    // Bootstrap and login are two anonymous requests from this address.
    let admin = b.admin();
    // The session's first use is not in the credential cache yet, so it is counted
    // against the address too (the third of five); then against the credential.
    let r = admin.get("/v1/me");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"), "the credential's budget");
    // Anonymous: counted per source address; two remain.
    let anon = b.client();
    let mut last = None;
    for _ in 0..2 {
        let r = anon.get("/healthz");
        assert!(r.status == 200);
        last = Some(r.header("x-ratelimit-remaining").unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(last, Some(0));
    let r = anon.get("/healthz");
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").is_some() && r.header("x-ratelimit-reset").is_some());
    // An address that is refused cannot have unknown tokens looked up: a session
    // made earlier but never used is refused before the store is asked.
    let r = b
        .client()
        .with_token("berth_ses_ses_00000000000000000000000000_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        .get("/v1/me");
    assert_eq!(r.status, 429, "{}", r.text());
    // A verified token has its own budget: four more, then refused.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = admin.get("/v1/me");
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 429]);
}
