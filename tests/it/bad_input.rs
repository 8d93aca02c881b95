//! Hostile and malformed input gets the documented 4xx, and nothing changes.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};

use crate::harness::{Berth, Client};

/// Everything a bad request could have changed, read back through the API.
fn snapshot(admin: &Client) -> Value {
    let mut out = json!({});
    for path in ["/v1/projects?limit=100", "/v1/users?limit=100", "/v1/api-tokens?limit=100", "/v1/audit?limit=100"] {
        let r = admin.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let mut v = r.json();
        // last_used_at of the admin's own credential moves as it is used; ignore it.
        if let Some(items) = v["data"].as_array_mut() {
            for i in items {
                if let Some(o) = i.as_object_mut() {
                    o.remove("last_used_at");
                }
            }
        }
        out[path] = v;
    }
    out
}

#[test]
fn malformed_requests_are_refused_and_change_nothing() {
    let b = Berth::start("");
    let admin = b.admin();
    let r = admin.post("/v1/projects", &json!({"name": "alpha"}));
    let alpha = r.json()["id"].as_str().unwrap().to_string();
    let r = admin.post("/v1/users", &json!({"username": "bob", "password": "bob-password"}));
    let bob = r.json()["id"].as_str().unwrap().to_string();
    let before = snapshot(&admin);

    let (pa, pm, pmb) = (
        format!("/v1/projects/{alpha}"),
        format!("/v1/projects/{alpha}/members"),
        format!("/v1/projects/{alpha}/members/{bob}"),
    );
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", "/v1/projects", b"{\"name\": ".to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", b"".to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", b"[1,2]".to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", br#"{"name":"beta","owner":"me"}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", br#"{"name":42}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", br#"{"name":"Not A Label"}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", br#"{"name":"-dash"}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", format!(r#"{{"name":"{}"}}"#, "a".repeat(64)).into_bytes(), 400, "invalid_input"),
        ("POST", "/v1/projects", br#"{"name":"../../etc"}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/projects", br#"{"name":"alpha"}"#.to_vec(), 409, "conflict"),
        ("POST", "/v1/projects", br#"{"name":"beta"} trailing"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/users", br#"{"username":"bob","password":"another-pass"}"#.to_vec(), 409, "conflict"),
        ("POST", "/v1/users", br#"{"username":"carol","password":"short"}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/users", br#"{"username":"Carol!","password":"long-enough-pw"}"#.to_vec(), 400, "invalid_input"),
        (
            "POST",
            "/v1/users",
            br#"{"username":"carol","password":"long-enough-pw","root":true}"#.to_vec(),
            400,
            "invalid_input",
        ),
        ("POST", "/v1/api-tokens", br#"{"name":"x","scopes":["root"]}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/api-tokens", br#"{"name":"x","scopes":[]}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/api-tokens", br#"{"name":""}"#.to_vec(), 400, "invalid_input"),
        ("POST", "/v1/api-tokens", br#"{"name":"x","expires_at":"tomorrow"}"#.to_vec(), 400, "invalid_input"),
        (
            "POST",
            "/v1/api-tokens",
            br#"{"name":"x","expires_at":"2001-01-01T00:00:00Z"}"#.to_vec(),
            422,
            "unprocessable",
        ),
        ("PUT", &pa, br#"{"name":"renamed"}"#.to_vec(), 400, "invalid_input"),
        ("PUT", &pa, br#"{"env":{"1BAD":"x"}}"#.to_vec(), 400, "invalid_input"),
        ("PUT", &pa, br#"{"limits":{"memory_mb":1}}"#.to_vec(), 400, "invalid_input"),
        ("PUT", &pa, br#"{"limits":{"cpus":-1}}"#.to_vec(), 400, "invalid_input"),
        ("PUT", &pa, br#"{"limits":{"gpus":1}}"#.to_vec(), 400, "invalid_input"),
        ("POST", &pm, br#"{"user_id":"usr_x","role":"root"}"#.to_vec(), 400, "invalid_input"),
        ("POST", &pm, br#"{"role":"viewer"}"#.to_vec(), 400, "invalid_input"),
        ("POST", &pm, br#"{"username":"nobody","role":"viewer"}"#.to_vec(), 422, "unprocessable"),
        ("DELETE", "/v1/users/usr_00000000000000000000000000", vec![], 404, "not_found"),
        ("DELETE", "/v1/projects/prj_00000000000000000000000000", vec![], 404, "not_found"),
        ("DELETE", &pmb, vec![], 404, "not_found"),
        ("GET", "/v1/projects?limit=0", vec![], 400, "invalid_input"),
        ("GET", "/v1/projects?limit=101", vec![], 400, "invalid_input"),
        ("GET", "/v1/projects?limit=ten", vec![], 400, "invalid_input"),
        ("GET", "/v1/projects?cursor=%00%ff", vec![], 400, "invalid_input"),
        ("GET", "/v1/projects?cursor=Li4vLi4v", vec![], 400, "invalid_input"),
    ];
    for (method, path, body, status, code) in &cases {
        let r = admin.send(method, path, Some(body), &[("Content-Type", "application/json")]);
        assert_eq!(r.status, *status, "{method} {path} {:?}: {}", String::from_utf8_lossy(body), r.text());
        assert_eq!(r.code(), *code, "{method} {path}: {}", r.text());
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(!msg.is_empty() && !msg.ends_with('.'), "message style: {msg:?}");
        assert!(r.json()["error"]["request_id"].as_str().unwrap() == r.header("x-request-id").unwrap());
    }

    // The last super-admin cannot be deleted.
    let me = admin.get("/v1/me").json();
    let r = admin.delete(&format!("/v1/users/{}", me["user"]["id"].as_str().unwrap()));
    assert_eq!(r.status, 409, "{}", r.text());

    // Bodies: 10 MB is refused with 413 whether or not the length is announced.
    let big = vec![b'a'; 10 * 1024 * 1024];
    let r = admin.post_raw("/v1/projects", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.code(), "payload_too_large");
    let r = chunked_post(&admin, "/v1/projects", 2 * 1024 * 1024);
    assert!(r.starts_with("HTTP/1.1 413"), "{}", &r[..r.len().min(200)]);

    // Tokens: missing, garbled, wrong scheme, bootstrap reused.
    let anon = b.client();
    let cases: Vec<(Client, &str)> = vec![
        (anon.clone(), "missing_token"),
        (anon.with_token("garbage"), "invalid_token"),
        (
            anon.with_token("berth_pat_tok_00000000000000000000000000_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            "invalid_token",
        ),
        (anon.with_token(&format!("{}x", admin.token.clone().unwrap())), "invalid_token"),
    ];
    for (c, code) in cases {
        let r = c.get("/v1/projects");
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.code(), code);
    }
    let r = anon.send("GET", "/v1/projects", None, &[("Authorization", "Basic YWRtaW46YWRtaW4=")]);
    assert_eq!(r.status, 401);
    let mut forged = admin.token.clone().unwrap();
    let last = forged.pop();
    forged.push(if last == Some('A') { 'B' } else { 'A' });
    assert_eq!(anon.with_token(&forged).get("/v1/me").status, 401, "a token with a wrong secret is refused");

    // Huge headers are refused by the HTTP layer; the daemon carries on.
    let huge = "x".repeat(256 * 1024);
    let r = admin.try_send("GET", "/v1/projects", None, &[("X-Huge", huge.as_str())]);
    if let Ok(r) = r {
        assert!(r.status == 431 || r.status == 400, "huge header: {}", r.status);
    }
    assert_eq!(anon.get("/healthz").status, 200);

    assert_eq!(snapshot(&admin), before, "bad requests must not change state");
}

/// A chunked body with no Content-Length: the limit must hold while streaming.
fn chunked_post(client: &Client, path: &str, total: usize) -> String {
    let mut s = TcpStream::connect(client.addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        client.token.as_deref().unwrap()
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
