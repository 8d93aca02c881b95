//! The OCI distribution-spec conformance suite's checks (`tests/conformance/replay.py`,
//! the suite re-expressed in Python) against a fresh daemon: every workflow (pull,
//! push, content discovery, content management), automatic cross-mounting on, in the
//! suite's current form and in its v1.1.0 release form.

use std::process::Command;

use serde_json::json;

use crate::harness::{Berth, require_tool};

/// (passed, failed, skipped) from the replay's summary line.
fn counts(out: &str) -> Option<(u32, u32, u32)> {
    let line = out.lines().find(|l| l.starts_with("# ") && l.contains(" passed, "))?;
    let n: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    Some((n[0], n[1], n[2]))
}

#[test]
fn the_oci_conformance_checks_pass() {
    if !require_tool("python3", &["--version"]) {
        return;
    }
    // The suite's client asks every request without credentials first (about 160 of
    // them per run), as registry clients do; the anonymous limit must not interfere.
    let b = Berth::start("[api]\nanonymous_rate_limit_per_minute = 100000\n");
    let admin = b.admin();
    assert_eq!(admin.post("/v1/projects", &json!({"name": "conf"})).status, 201);
    let token =
        admin.post("/v1/api-tokens", &json!({"name": "conformance"})).json()["token"].as_str().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/replay.py");
    for suite in ["latest", "v1.1.0"] {
        let out = Command::new("python3")
            .args([script, "--suite", suite])
            .env("OCI_ROOT_URL", format!("http://{}", b.addr))
            .env("OCI_NAMESPACE", "conf/repo")
            .env("OCI_CROSSMOUNT_NAMESPACE", "conf/other")
            .env("OCI_AUTOMATIC_CROSSMOUNT", "1")
            .env("OCI_USERNAME", "admin")
            .env("OCI_PASSWORD", &token)
            .env("OCI_TEST_PULL", "1")
            .env("OCI_TEST_PUSH", "1")
            .env("OCI_TEST_CONTENT_DISCOVERY", "1")
            .env("OCI_TEST_CONTENT_MANAGEMENT", "1")
            .output()
            .expect("run the conformance replay");
        let text = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (passed, failed, skipped) =
            counts(&text).unwrap_or_else(|| panic!("no summary from the {suite} replay:\n{text}\n{stderr}"));
        assert!(out.status.success() && failed == 0, "{suite}: {failed} failed:\n{text}\n{stderr}");
        assert!(passed >= 65, "{suite}: only {passed} checks ran ({skipped} skipped):\n{text}");
        eprintln!("conformance ({suite}): {passed} passed, {skipped} skipped");
    }
}
