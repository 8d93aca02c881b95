//! Start-up and shutdown as an operator sees them.

use std::process::Command;

use crate::harness::{Berth, require_tool};

#[test]
fn dev_mode_prints_a_bootstrap_curl_that_works() {
    if !require_tool("curl", &["--version"]) {
        return;
    }
    let b = Berth::start("");
    let log = b.log();
    let start = log.find("curl -s -X POST").expect("dev mode prints a curl command");
    let mut cmd = String::new();
    for line in log[start..].lines() {
        cmd.push_str(line.trim());
        cmd.push('\n');
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    // The printed command targets the configured listener; point it at the real port.
    let cmd = cmd.replace("http://127.0.0.1:0", &format!("http://{}", b.addr));
    let out = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("\"super_admin\":true"), "printed curl did not bootstrap: {cmd}\n{body}");
    let token = b.login("admin", "change-me-please");
    assert_eq!(token.get("/v1/me").status, 200);
}

#[test]
fn sigterm_stops_cleanly_and_state_persists() {
    let mut b = Berth::start("");
    let admin = b.admin();
    let r = admin.post("/v1/projects", &serde_json::json!({"name": "keep"}));
    assert_eq!(r.status, 201);
    assert_eq!(b.stop(), Some(0), "exit status after SIGTERM; log:\n{}", b.log());
    assert!(b.log().contains("\"message\":\"stopped\""), "clean shutdown is logged");
    // The WAL was checkpointed at close.
    let wal = b.data_dir().join("state.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0, "WAL left behind");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(b.data_dir()).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "state dir must not be readable by others");
    b.spawn();
    assert!(!b.data_dir().join("bootstrap-token").exists(), "no new bootstrap token once a user exists");
    let admin = b.login("admin", crate::harness::ADMIN_PASSWORD);
    assert_eq!(admin.get("/v1/projects").json()["data"][0]["name"], "keep");
}
