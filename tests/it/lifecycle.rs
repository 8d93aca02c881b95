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

/// A read-only bind mount of a dir over itself, undone on drop.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> ReadOnly {
        let d = dir.to_str().unwrap();
        let out = Command::new("mount").args(["--bind", "-o", "ro", d, d]).output().expect("run mount");
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_state_dir_that_cannot_be_written_is_refused_with_its_name() {
    if !crate::harness::require_root() || !require_tool("mount", &["--version"]) {
        return;
    }
    let tmp = crate::harness::TempDir::new("readonly");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let ro = ReadOnly::mount(&data);
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--dev", "--data-dir"])
        .arg(&data)
        .args(["--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"])
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berth kept running on a read-only state dir");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&format!("the state dir {} is not writable", data.display())), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    drop(ro);
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "nothing was made in it");
}
