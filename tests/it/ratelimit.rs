//! Rate limits: the login lockout and the per-credential / per-address windows.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{ADMIN_PASSWORD, Berth};

/// Failed logins allowed per minute and source address in the lockout test: enough
/// that a limiter which refills continuously (one failure every 60/N s) answers with
/// a short Retry-After, so the test can watch the lockout end without waiting out a
/// minute.
const FAILURES_PER_MINUTE: u32 = 30;

/// Longest Retry-After the test waits out; a longer one (a fixed one-minute window)
/// is checked for being announced, not waited for.
const LONGEST_WAIT_S: u64 = 5;

#[test]
fn a_failed_login_past_the_limit_is_refused_and_so_is_the_right_password_until_retry_after() {
    let b = Berth::start(&format!("[api]\nlogin_failures_per_minute = {FAILURES_PER_MINUTE}\n"));
    let _admin = b.admin();
    let anon = b.client();
    for i in 0..FAILURES_PER_MINUTE {
        let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": format!("wrong-{i}")}));
        assert_eq!(r.status, 401, "attempt {i}: {}", r.text());
        assert_eq!(r.code(), "invalid_credentials");
    }
    let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": "wrong-again"}));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": ADMIN_PASSWORD}));
    assert_eq!(r.status, 429, "the right password is refused too while locked out");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    if retry > LONGEST_WAIT_S {
        eprintln!("Retry-After is {retry} s: the end of the lockout is not waited for");
        return;
    }
    // The lockout ends when Retry-After said: the right password is accepted again
    // (polled, since the daemon's clock and this one tick apart).
    let deadline = Instant::now() + Duration::from_secs(retry + 5);
    loop {
        let r = anon.post("/v1/auth/login", &json!({"username": "admin", "password": ADMIN_PASSWORD}));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(Instant::now() < deadline, "still locked out 5 s past Retry-After ({retry} s)");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn every_response_carries_rate_limit_headers_and_the_window_is_enforced() {
    let b = Berth::start("[api]\nrate_limit_per_minute = 5\nanonymous_rate_limit_per_minute = 5\n");
    // Bootstrap and login are two anonymous requests from this address; three remain.
    let admin = b.admin();
    // Anonymous: counted per source address.
    let anon = b.client();
    let mut last = None;
    for _ in 0..3 {
        let r = anon.get("/healthz");
        assert!(r.status == 200);
        last = Some(r.header("x-ratelimit-remaining").unwrap().parse::<u32>().unwrap());
    }
    assert_eq!(last, Some(0));
    let r = anon.get("/healthz");
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.header("retry-after").is_some() && r.header("x-ratelimit-reset").is_some());
    // A token has its own window.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = admin.get("/v1/me");
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
}
