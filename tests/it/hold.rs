//! Holding under load and abuse: slow and stalled clients, a flood of logins, and
//! every bound a client can grow, each tried past its limit, with the daemon's
//! memory watched.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{ADMIN_PASSWORD, Berth, Client};
use crate::registry::{OCI_MANIFEST, digest, push_blob, push_image, random};

/// The daemon's resident memory, in KiB.
fn rss_kib(b: &Berth) -> u64 {
    let pid = b.child.as_ref().expect("daemon running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/pid/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Waits (polling) until the daemon's RSS is at most `limit_kib`; returns the last reading.
fn settle_rss(b: &Berth, limit_kib: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let now = rss_kib(b);
        if now <= limit_kib || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A TCP connection to `dst` from the loopback address `src`.
fn connect_from(rt: &tokio::runtime::Runtime, src: IpAddr, dst: SocketAddr) -> TcpStream {
    let s = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(src, 0))?;
            socket.connect(dst).await?.into_std()
        })
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    s.set_nonblocking(false).unwrap();
    s
}

fn loopback(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, i])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap()
}

/// Reads what the server sends until it closes the connection or `within` passes;
/// returns what was read and whether the server closed it.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(500)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (out, true),
        }
    }
}

/// Mints `n` API tokens for the client's user; each is new to the credential cache.
fn mint(c: &Client, n: usize, tag: &str) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let r = c.post("/v1/api-tokens", &json!({"name": format!("{tag}-{i}")}));
            assert_eq!(r.status, 201, "{}", r.text());
            c.with_token(r.json()["token"].as_str().unwrap())
        })
        .collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

#[test]
fn slow_and_stalled_clients_do_not_starve_the_api_and_are_cut_off() {
    let b = Berth::start(
        "[api]\nrate_limit_per_minute = 1000000\nanonymous_rate_limit_per_minute = 1000000\n\
         body_grace_seconds = 12\nbody_idle_seconds = 12\n",
    );
    let admin = b.admin();
    assert_eq!(admin.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    let pat = mint(&admin, 1, "push").remove(0);
    let blob = random(64 << 20, 7);
    let d = push_blob(&pat, "alpha/big", &blob);
    drop(blob);
    let fresh = mint(&admin, 12, "fresh");
    let rt = runtime();
    let addr = b.addr;
    let token = pat.token.clone().unwrap();
    let idle = settle_rss(&b, 0, Duration::ZERO);

    // 32 blob downloads that never read, from their own address.
    let mut downloads = Vec::new();
    for _ in 0..32 {
        let mut s = connect_from(&rt, loopback(2), addr);
        write!(s, "GET /v2/alpha/big/blobs/{d} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
        downloads.push(s);
    }
    // 32 uploads that send 1 MiB of a promised 64 MiB, then stall.
    let mut uploads = Vec::new();
    for _ in 0..32 {
        let r = pat.send("POST", "/v2/alpha/stalled/blobs/uploads/", None, &[]);
        assert_eq!(r.status, 202, "{}", r.text());
        let location = r.header("location").unwrap().to_string();
        let mut s = connect_from(&rt, loopback(3), addr);
        write!(
            s,
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            64 << 20
        )
        .unwrap();
        s.write_all(&vec![7u8; 1 << 20]).unwrap();
        uploads.push(s);
    }
    // Hundreds of half-sent login bodies, from four addresses.
    let mut held = Vec::new();
    for i in 0..400u32 {
        let mut s = connect_from(&rt, loopback(4 + (i % 4) as u8), addr);
        s.write_all(b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            .unwrap();
        held.push(s);
    }
    let loaded = rss_kib(&b);

    // Under that load: requests that miss the credential cache, and logins, answer
    // within a second.
    for (i, c) in fresh.iter().enumerate() {
        let (r, took) = timed(|| c.get("/v1/projects"));
        assert_eq!(r.status, 200, "fresh token {i}: {}", r.text());
        assert!(took < Duration::from_secs(1), "fresh token {i} took {took:?} under load");
    }
    for i in 0..3 {
        let (r, took) =
            timed(|| b.client().post("/v1/auth/login", &json!({"username": "admin", "password": ADMIN_PASSWORD})));
        assert_eq!(r.status, 200, "login {i}: {}", r.text());
        assert!(took < Duration::from_secs(1), "login {i} took {took:?} under load");
    }
    let (r, took) = timed(|| pat.get("/v2/alpha/big/tags/list"));
    assert!(r.status == 200 || r.status == 404, "{}", r.text());
    assert!(took < Duration::from_secs(1), "a registry read took {took:?} under load");

    // The body deadline closes every half-sent body, with a 408 where the answer
    // can still be written.
    let mut timed_out = 0;
    for s in held.iter_mut().chain(uploads.iter_mut()) {
        let (bytes, closed) = read_until_closed(s, Duration::from_secs(40));
        assert!(closed, "a stalled body was still held open after the deadline");
        if String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 408") {
            timed_out += 1;
        }
    }
    assert!(timed_out >= 400, "408s: {timed_out} of 432");
    drop(held);
    drop(uploads);
    drop(downloads);
    // Nothing is held any more: memory goes back near its idle figure.
    let after = settle_rss(&b, idle + idle / 2 + 8 * 1024, Duration::from_secs(20));
    eprintln!("rss: idle {idle} KiB, loaded {loaded} KiB, after {after} KiB");
    assert!(after <= idle + idle / 2 + 8 * 1024, "RSS stayed at {after} KiB after the load (idle {idle} KiB)");
    // And the daemon still serves.
    assert_eq!(admin.get("/v1/projects").status, 200);
}

#[test]
fn five_hundred_concurrent_wrong_logins_are_checked_at_most_ten_times() {
    let b = Berth::start("[api]\nanonymous_rate_limit_per_minute = 1000000\n");
    let _admin = b.admin();
    let threads = 100;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (client, barrier) = (b.client(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..5)
                    .map(|i| {
                        let r = client.post(
                            "/v1/auth/login",
                            &json!({"username": "admin", "password": format!("wrong-{t}-{i}")}),
                        );
                        (r.status, r.header("retry-after").map(str::to_string))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(u16, Option<String>)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(results.len(), 500);
    let checked = results.iter().filter(|(s, _)| *s == 401).count();
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    assert!(checked <= 10, "{checked} passwords were checked");
    assert_eq!(checked + refused, 500, "only 401 and 429: {results:?}");
    assert!(results.iter().filter(|(s, _)| *s == 429).all(|(_, retry)| retry.is_some()), "429 without Retry-After");
    // Another address is not locked out.
    let rt = runtime();
    let mut s = connect_from(&rt, loopback(9), b.addr);
    let body = json!({"username": "admin", "password": ADMIN_PASSWORD}).to_string();
    write!(
        s,
        "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (bytes, _) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&bytes));
}

#[test]
fn a_child_token_never_outlives_or_outranks_its_parent_nor_survives_it() {
    let b = Berth::start("");
    let admin = b.admin();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let soon_text = berth::ids::format_time(soon);
    let r = admin.post(
        "/v1/api-tokens",
        &json!({"name": "parent", "scopes": ["tokens:write", "tokens:read", "projects:read"], "expires_at": soon_text}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let parent = admin.with_token(r.json()["token"].as_str().unwrap());
    // No expiry asked: the parent's.
    let r = parent.post("/v1/api-tokens", &json!({"name": "child", "scopes": ["projects:read"]}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["api_token"]["expires_at"], soon_text);
    let child = admin.with_token(r.json()["token"].as_str().unwrap());
    // A later expiry, or a scope the parent lacks, is refused.
    let later = berth::ids::format_time(soon + time::Duration::hours(1));
    let r = parent.post("/v1/api-tokens", &json!({"name": "longer", "scopes": ["projects:read"], "expires_at": later}));
    assert_eq!((r.status, r.code().as_str()), (422, "unprocessable"), "{}", r.text());
    let r = parent.post("/v1/api-tokens", &json!({"name": "wider", "scopes": ["users:write"]}));
    assert_eq!(r.status, 403, "{}", r.text());
    let r = parent.post("/v1/api-tokens", &json!({"name": "all"}));
    assert_eq!(r.status, 403, "omitted scopes mean every scope, more than the parent holds: {}", r.text());
    // A grandchild, then revoking the parent revokes both.
    let r = parent.post("/v1/api-tokens", &json!({"name": "child2", "scopes": ["tokens:write"]}));
    let child2 = admin.with_token(r.json()["token"].as_str().unwrap());
    let r = child2.post("/v1/api-tokens", &json!({"name": "grandchild", "scopes": ["tokens:write"]}));
    assert_eq!(r.status, 201, "{}", r.text());
    let grandchild = admin.with_token(r.json()["token"].as_str().unwrap());
    assert_eq!(child.get("/v1/me").status, 200);
    assert_eq!(grandchild.get("/v1/me").status, 200);
    let parent_id =
        admin.get("/v1/api-tokens").json()["data"].as_array().unwrap().iter().find(|t| t["name"] == "parent").unwrap()
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(admin.delete(&format!("/v1/api-tokens/{parent_id}")).status, 204);
    for (who, c) in [("child", &child), ("grandchild", &grandchild)] {
        let r = c.get("/v1/me");
        assert_eq!((r.status, r.code().as_str()), (401, "invalid_token"), "{who} outlived its parent's revocation");
    }
    // A session mints tokens of its own standing: they outlive the session.
    let names: Vec<String> = admin.get("/v1/api-tokens").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.is_empty(), "every token minted from the parent went with it: {names:?}");
}

#[test]
fn every_bound_refuses_past_its_limit_and_memory_stays_flat() {
    let b = Berth::start(
        "[api]\nanonymous_rate_limit_per_minute = 1000000\nrate_limit_per_minute = 40\n\
         max_tokens_per_user = 5\nmax_sessions_per_user = 3\n\
         [registry]\nmax_open_uploads_per_project = 4\n",
    );
    let admin = b.admin();
    assert_eq!(admin.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    let idle = rss_kib(&b);

    // API tokens per user.
    let tokens = mint(&admin, 5, "t");
    let r = admin.post("/v1/api-tokens", &json!({"name": "sixth"}));
    assert_eq!((r.status, r.code().as_str()), (409, "conflict"), "{}", r.text());

    // The rate limit is per user as well as per token: five tokens do not make five budgets.
    let mut ok = 0;
    for round in 0..20 {
        for t in &tokens {
            match t.get("/v1/me").status {
                200 => ok += 1,
                429 => {}
                s => panic!("round {round}: {s}"),
            }
        }
    }
    assert!(ok <= 45, "{ok} of 100 requests by one user's five tokens passed a 40/min user limit");

    // Sessions per user: the least recently used go.
    let b2 = Berth::start("[api]\nmax_sessions_per_user = 3\n");
    let first = b2.admin();
    assert_eq!(first.get("/v1/me").status, 200);
    let later: Vec<Client> = (0..3).map(|_| b2.login("admin", ADMIN_PASSWORD)).collect();
    let r = later[2].get("/v1/auth/sessions");
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 3, "{}", r.text());
    assert_eq!(first.get("/v1/me").status, 401, "the oldest session was ended");
    assert_eq!(later[0].get("/v1/me").status, 200);
    // `docker login` with a password: each /v2/token call opens a short session,
    // counted against the same cap, never a pile of day-long ones.
    let basic = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{ADMIN_PASSWORD}")))
    };
    for _ in 0..20 {
        let r = b2.client().send("GET", "/v2/token?service=berth", None, &[("Authorization", &basic)]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["expires_in"], 3600);
    }
    let sessions = b2.login("admin", ADMIN_PASSWORD).get("/v1/auth/sessions").json();
    let rows = sessions["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{sessions}");
    let hour = time::OffsetDateTime::now_utc() + time::Duration::minutes(61);
    let short = rows
        .iter()
        .filter(|s| berth::ids::parse_time(s["expires_at"].as_str().unwrap()).is_some_and(|t| t < hour))
        .count();
    assert!(short >= 2, "registry sessions live an hour: {sessions}");

    // Upload sessions per project.
    let b3 = Berth::start("[registry]\nmax_open_uploads_per_project = 4\n[api]\nrate_limit_per_minute = 100000\n");
    let a3 = b3.admin();
    assert_eq!(a3.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    let mut open = Vec::new();
    for i in 0..4 {
        let r = a3.send("POST", &format!("/v2/alpha/app{i}/blobs/uploads/"), None, &[]);
        assert_eq!(r.status, 202, "{}", r.text());
        open.push(r.header("location").unwrap().to_string());
    }
    let r = a3.send("POST", "/v2/alpha/app9/blobs/uploads/", None, &[]);
    assert_eq!(r.status, 429, "a fifth open upload in the project: {}", r.text());
    assert_eq!(r.json()["errors"][0]["code"], "TOOMANYREQUESTS");
    assert!(r.header("retry-after").is_some());
    // Finishing one makes room.
    let bytes = random(1000, 3);
    let r = a3.send("PUT", &format!("{}?digest={}", open[0], digest(&bytes)), Some(&bytes), &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(a3.send("POST", "/v2/alpha/app9/blobs/uploads/", None, &[]).status, 202);

    // Thousands of refused attempts later, the first daemon's memory is flat.
    for _ in 0..2000 {
        let r = admin.post("/v1/api-tokens", &json!({"name": "again"}));
        assert!(r.status == 409 || r.status == 429, "{}", r.text());
    }
    let after = settle_rss(&b, idle + 8 * 1024, Duration::from_secs(10));
    assert!(after <= idle + 8 * 1024, "RSS grew from {idle} to {after} KiB");
}

#[test]
fn the_listener_refuses_early_what_it_will_not_take() {
    let b = Berth::start("[api]\nmax_connections_per_address = 4\nanonymous_rate_limit_per_minute = 100000\n");
    let _admin = b.admin();
    let rt = runtime();

    // A declared body over the route's limit: 413 at once, no `100 Continue`, and
    // the connection closed (the body was never read).
    let mut s = connect_from(&rt, loopback(20), b.addr);
    write!(
        s,
        "POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        8 << 20
    )
    .unwrap();
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(closed, "the connection stays open with an unread body");

    // Request heads: 64 KiB is the cap.
    let c = b.client();
    let small = "a".repeat(60 * 1024);
    assert_eq!(c.send("GET", "/healthz", None, &[("X-Pad", &small)]).status, 200);
    let big = "a".repeat(64 * 1024);
    assert_eq!(c.send("GET", "/healthz", None, &[("X-Pad", &big)]).status, 431);

    // Connections per address: the fifth from one address is closed at once, while
    // another address is served.
    let mut idle: Vec<TcpStream> = (0..4).map(|_| connect_from(&rt, loopback(21), b.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = connect_from(&rt, loopback(21), b.addr);
    let _ = write!(fifth, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (bytes, closed) = read_until_closed(&mut fifth, Duration::from_secs(5));
    assert!(closed && bytes.is_empty(), "the fifth connection was served: {}", String::from_utf8_lossy(&bytes));
    let mut other = connect_from(&rt, loopback(22), b.addr);
    write!(other, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let (bytes, _) = read_until_closed(&mut other, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 200"));
    // Closing one frees a place.
    idle.pop();
    std::thread::sleep(Duration::from_millis(200));
    let mut again = connect_from(&rt, loopback(21), b.addr);
    write!(again, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let (bytes, _) = read_until_closed(&mut again, Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&bytes));

    // The /v2 challenge names this listener, never the Host the client sent.
    let mut s = connect_from(&rt, loopback(23), b.addr);
    write!(s, "GET /v2/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").unwrap();
    let (bytes, _) = read_until_closed(&mut s, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&bytes).to_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(!text.contains("evil.example"), "{text}");
    assert!(text.contains(&format!("realm=\"http://{}/v2/token\"", b.addr)), "{text}");
}

#[test]
fn lists_are_paginated_and_registry_changes_are_audited_once() {
    let b = Berth::start("[api]\nrate_limit_per_minute = 100000\nanonymous_rate_limit_per_minute = 100000\n");
    let admin = b.admin();
    let alpha = admin.post("/v1/projects", &json!({"name": "alpha"})).json()["id"].as_str().unwrap().to_string();
    assert_eq!(admin.post("/v1/users", &json!({"username": "dana", "password": "another-long-password"})).status, 201);
    let r = admin.post(&format!("/v1/projects/{alpha}/members"), &json!({"username": "dana", "role": "admin"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let dana = b.login("dana", "another-long-password");

    // Sessions, page by page.
    for _ in 0..4 {
        b.login("dana", "another-long-password");
    }
    let mut seen = Vec::new();
    let mut path = "/v1/auth/sessions?limit=2".to_string();
    loop {
        let page = dana.get(&path).json();
        for s in page["data"].as_array().unwrap() {
            seen.push(s["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/auth/sessions?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");

    // A push with a password (Basic), chunked: audited once, with actor and project.
    let basic = {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("dana:another-long-password"))
    };
    let anon = b.client();
    let send = |m: &str, p: &str, body: Option<&[u8]>| anon.send(m, p, body, &[("Authorization", &basic)]);
    let layer = random(300_000, 11);
    let r = send("POST", "/v2/alpha/web/blobs/uploads/", None);
    assert_eq!(r.status, 202, "{}", r.text());
    let mut location = r.header("location").unwrap().to_string();
    for chunk in layer.chunks(100_000) {
        let r = anon.send(
            "PATCH",
            &location,
            Some(chunk),
            &[("Authorization", &basic), ("Content-Type", "application/octet-stream")],
        );
        assert_eq!(r.status, 202, "{}", r.text());
        location = r.header("location").unwrap().to_string();
    }
    let r = send("PUT", &format!("{location}?digest={}", digest(&layer)), None);
    assert_eq!(r.status, 201, "{}", r.text());
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let pat = mint(&admin, 1, "p").remove(0);
    push_blob(&pat, "alpha/web", config);
    let manifest = crate::registry::image_manifest(config, &[&layer]);
    let r = anon.send(
        "PUT",
        "/v2/alpha/web/manifests/v1",
        Some(&manifest),
        &[("Authorization", &basic), ("Content-Type", OCI_MANIFEST)],
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = send("DELETE", "/v2/alpha/web/manifests/v1", None);
    assert_eq!(r.status, 202, "{}", r.text());

    let audit = dana.get("/v1/audit?limit=100").json();
    let entries: Vec<&serde_json::Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap_or_default().contains("/v2/"))
        .collect();
    assert_eq!(entries.len(), 2, "one entry for the push, one for the delete, none per chunk: {audit}");
    for e in &entries {
        assert_eq!(e["actor_name"], "dana", "{e}");
        assert_eq!(e["project_id"], alpha.as_str(), "{e}");
    }
    assert!(entries.iter().any(|e| e["target"].as_str().unwrap().starts_with("alpha/web:v1@sha256:")));

    // Repositories, page by page, filtered to the caller's projects.
    let _ = push_image(&pat, "alpha/other", "v1", b"{}", &[b"x"]);
    let page = dana.get("/v1/registry/repositories?limit=1").json();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], true);
    let next = page["next_cursor"].as_str().unwrap();
    let page2 = dana.get(&format!("/v1/registry/repositories?limit=1&cursor={next}")).json();
    assert_ne!(page2["data"][0]["name"], page["data"][0]["name"]);
    // Registry figures: per project for a member, node-wide for a super-admin.
    let st = dana.get("/v1/registry/status").json();
    assert_eq!(st["scope"], "projects", "{st}");
    assert!(st["disk_usage_bytes"].is_null(), "{st}");
    let st = admin.get("/v1/registry/status").json();
    assert_eq!(st["scope"], "node", "{st}");
    assert!(st["disk_usage_bytes"].as_u64().unwrap() > 0, "{st}");

    // A second bootstrap says bootstrap is done.
    let r = b.client().post("/v1/bootstrap", &json!({"username": "x", "password": "yyyyyyyyyyyyyyyy"}));
    assert_eq!(r.status, 401);
    assert!(r.text().contains("bootstrap is done"), "{}", r.text());
}

/// Registry GC never takes the blobs a replica runs from, even once no tag holds
/// them: after a reboot the replica must be able to rebuild its root filesystem.
#[test]
fn gc_keeps_the_blobs_a_replica_runs_from() {
    if !crate::runtime::can_run() {
        return;
    }
    let (mut b, pat) = crate::registry::setup("[registry]\ngc_grace_seconds = 0\n");
    let layer = random(5000, 21);
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = push_image(&pat, "alpha/web", "v1", config, &[&layer]);
    let blobs = [digest(&manifest), digest(config), digest(&layer)];
    let data = b.data_dir();
    let file = |d: &str| data.join("registry/blobs/sha256").join(&d[7..9]).join(&d[7..]);
    let rt = runtime();
    let replica_rows = |add: bool| {
        let store = berth::store::Store::open(&data.join("state.db")).unwrap();
        let manifest = blobs[0].clone();
        rt.block_on(async {
            store
                .write(move |c| {
                    if !add {
                        berth::store::replicas::delete(c, "rep_00000000000000000000000077")?;
                        return Ok(());
                    }
                    let cfg = berth::engine::ReplicaConfig {
                        project_id: "prj_00000000000000000000000077".into(),
                        service: "web".into(),
                        root: berth::engine::RootSource::Image { manifest },
                        args: vec![],
                        env: vec![],
                        cwd: "/".into(),
                        uid: 0,
                        gid: 0,
                        memory_bytes: None,
                        cpus: None,
                        pids: None,
                        restart: berth::engine::RestartPolicy::No,
                        network: false,
                        netns: None,
                        hosts_file: None,
                        resolv_file: None,
                        volumes: vec![],
                        cmd: None,
                        service_id: None,
                        deployment_id: None,
                        job_run: None,
                    };
                    let r = berth::store::replicas::Replica {
                        id: "rep_00000000000000000000000077".into(),
                        project_id: cfg.project_id.clone(),
                        service: "web".into(),
                        state: "stopped".into(),
                        pid: None,
                        restarts: 0,
                        exit_code: None,
                        signal: None,
                        oom_killed: false,
                        error: None,
                        created_at: berth::ids::now_rfc3339(),
                        started_at: None,
                        finished_at: None,
                        address: None,
                        next_restart_at: None,
                        window_start: None,
                        window_restarts: 0,
                    };
                    let json = serde_json::to_string(&cfg).unwrap();
                    berth::store::replicas::insert(c, &r, &json)
                })
                .await
                .unwrap();
            store.close();
        });
    };
    // A replica recorded on the node (stopped: it may be started again).
    b.stop();
    replica_rows(true);
    b.spawn();
    let pat = b.client().with_token(pat.token.as_deref().unwrap());
    assert_eq!(pat.delete("/v2/alpha/web/manifests/v1").status, 202);
    let gc = b.admin_session().post("/v1/registry/gc", &json!({}));
    assert_eq!(gc.status, 200, "{}", gc.text());
    for d in &blobs {
        assert!(file(d).exists(), "{d} was collected while a replica runs from it: {}", gc.text());
    }
    // Without the replica, the untagged image goes.
    b.stop();
    replica_rows(false);
    b.spawn();
    let gc = b.admin_session().post("/v1/registry/gc", &json!({}));
    assert_eq!(gc.status, 200, "{}", gc.text());
    for d in &blobs {
        assert!(!file(d).exists(), "{d} outlived its last user: {}", gc.text());
    }
}
