//! The console page (`/console/`): served from the binary with its security headers,
//! and used for real in Debian's chromium, driven by playwright-core
//! (`tests/browser/console.mjs`): log in, pick a replica, type into its shell, see
//! the output and the end of the session.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::deployments::{deploy, node, project_id, push_web, service, settle};
use crate::harness::{ADMIN_PASSWORD, Berth, require, require_tool};

#[test]
fn the_console_page_is_served_from_the_binary_with_strict_headers() {
    let b = Berth::start("");
    let c = b.client();

    let r = c.get("/console");
    assert_eq!((r.status, r.header("location")), (308, Some("/console/")));

    let page = c.get("/console/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("<script src=\"console.js\""), "{}", page.text());
    let csp = page.header("content-security-policy").unwrap();
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));

    // The files it loads are the ones in the repository, byte for byte.
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/console");
    for (path, content_type) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("vendor/xterm/lib/xterm.js", "text/javascript; charset=utf-8"),
        ("vendor/xterm/css/xterm.css", "text/css; charset=utf-8"),
        ("vendor/addon-fit/lib/addon-fit.js", "text/javascript; charset=utf-8"),
        ("vendor/xterm/LICENSE", "text/plain; charset=utf-8"),
    ] {
        let r = c.get(&format!("/console/{path}"));
        assert_eq!((r.status, r.header("content-type")), (200, Some(content_type)), "{path}");
        assert_eq!(r.body, std::fs::read(assets.join(path)).unwrap(), "{path}");
        assert!(r.header("content-security-policy").is_some(), "{path}");
        // Revalidation costs no body.
        let etag = r.header("etag").unwrap().to_string();
        let again = c.send("GET", &format!("/console/{path}"), None, &[("If-None-Match", &etag)]);
        assert_eq!((again.status, again.body.len()), (304, 0), "{path}");
    }

    for path in
        ["/console/nope.js", "/console/vendor/", "/console/vendor/xterm/lib/xterm.js.map", "/console/..%2fCargo.toml"]
    {
        let r = c.get(path);
        assert_eq!((r.status, r.code().as_str()), (404, "not_found"), "{path}: {}", r.text());
        assert!(r.header("content-security-policy").is_some(), "{path}");
    }
    // A page, not an API: only GET (and the HEAD that comes with it).
    let r = c.send("POST", "/console/", Some(b""), &[]);
    assert_eq!(r.status, 405, "{}", r.text());
}

/// `node`, the npm modules of `tests/browser` and chromium, or why not.
fn browser_tools() -> bool {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    require_tool("node", &["--version"])
        && require(
            "tests/browser has no node_modules/playwright-core (npm ci --prefix tests/browser)",
            dir.join("node_modules/playwright-core/package.json").is_file(),
        )
        && require_tool("/usr/bin/chromium", &["--version"])
}

#[test]
fn a_person_logs_in_on_the_console_page_and_uses_a_replicas_shell_in_chromium() {
    if !crate::runtime::can_run() || !browser_tools() {
        return;
    }
    let (node, admin) = node("");
    let project = project_id(&admin, "alpha");
    push_web(&admin, "alpha/web", "v1", "hello\n", true);
    let svc = service(
        &admin,
        json!({"project_id": project, "name": "web", "port": 8080, "health_check": {"path": "/health", "interval_s": 1}}),
    );
    let dep = deploy(&admin, &svc, "alpha/web", "v1");
    assert_eq!(settle(&admin, &dep, 90)["status"], "live");

    let r = admin.post(
        "/v1/api-tokens",
        &json!({"name": "console-page", "scopes": ["projects:read", "services:read", "console"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_string();

    let artifacts = crate::harness::TempDir::new("browser");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.mjs");
    let out = Command::new("node")
        .arg(script)
        .env("BERTH_URL", format!("http://{}", node.b.addr))
        .env("BERTH_USERNAME", "admin")
        .env("BERTH_PASSWORD", ADMIN_PASSWORD)
        .env("BERTH_API_TOKEN", &token)
        .env("BERTH_PROJECT", "alpha")
        .env("BERTH_SERVICE", "web")
        .env("BERTH_ARTIFACTS", std::env::temp_dir())
        .env("HOME", artifacts.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "the browser run failed ({}):\n{stdout}\n{stderr}", out.status);

    // The page went through the audited API for its ticket.
    let audit = admin.get("/v1/audit?limit=100").json();
    let opened =
        audit["data"].as_array().unwrap().iter().any(|e| e["action"].as_str().is_some_and(|a| a.contains("console")));
    assert!(opened, "no console entry in the audit log: {audit}");
}
