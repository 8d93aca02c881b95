//! `berth admin` run as the sysadmin would, beside a live daemon: users, a backup
//! taken while pushes run and restored into a fresh dir, damaged archives, a second
//! daemon on one dir, a database from a newer berth.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::harness::{ADMIN_PASSWORD, Berth, Client, TempDir};
use crate::registry::{OCI_MANIFEST, digest, push_image, random};

/// What a finished command said.
struct Out {
    ok: bool,
    stderr: String,
}

/// Runs `berth admin ARGS` against `b`'s state dir, `stdin` fed to it.
fn admin_cmd(b: &Berth, args: &[&str], stdin: &str) -> Out {
    let cfg = b.dir.path().join("berth.toml");
    let mut all: Vec<String> = vec!["admin".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend(["--config".into(), cfg.display().to_string()]);
    if !args.contains(&"--data-dir") {
        all.extend(["--data-dir".into(), b.data_dir().display().to_string()]);
    }
    berth(&all, stdin)
}

fn berth(args: &[String], stdin: &str) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Out { ok: out.status.success(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// A daemon object for `dir` that has not started yet (its state is put there first).
fn unstarted(dir: TempDir) -> Berth {
    let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    Berth { child: None, dir, addr: nowhere, ingress: nowhere, https: nowhere, extra_config: String::new() }
}

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

fn created(r: crate::harness::Resp) -> String {
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Pulls `repo:tag` and every blob its manifest names, checking each digest.
fn pull_verified(c: &Client, repo: &str, tag: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let r = c.send("GET", &format!("/v2/{repo}/manifests/{tag}"), None, &[("Accept", OCI_MANIFEST)]);
    assert_eq!(r.status, 200, "{repo}:{tag}: {}", r.text());
    let m: Value = serde_json::from_slice(&r.body).unwrap();
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    digests.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
    let blobs = digests
        .iter()
        .map(|d| {
            let b = c.get(&format!("/v2/{repo}/blobs/{d}"));
            assert_eq!(b.status, 200, "{repo}@{d}: {}", b.text());
            assert_eq!(&digest(&b.body), d, "blob {d} of {repo}:{tag} does not verify");
            b.body
        })
        .collect();
    (r.body, blobs)
}

#[test]
fn a_backup_taken_during_pushes_restores_users_projects_tags_blobs_and_secrets() {
    let (b, pat) = crate::registry::setup("");
    let root = b.admin_session();
    created(root.post("/v1/users", &json!({"username": "carol", "password": "carol-password-1"})));
    let alpha = root.get("/v1/projects").json()["data"][0]["id"].as_str().unwrap().to_string();
    let cred = created(root.post(
        &format!("/v1/projects/{alpha}/registries"),
        &json!({"name": "hub", "server": "docker.io", "username": "u", "password": "p-1"}),
    ));
    // A service with a secret env value (sealed with the host key) and a follow.
    let svc = created(root.post(
        "/v1/services",
        &json!({"project_id": alpha, "name": "web", "port": 8080, "replicas": 2,
                "env": [{"key": "TOKEN", "value": "s3cret-value", "secret": true}],
                "follow": {"repository": "alpha/app", "tag": "main"}}),
    ));
    let first = push_image(&pat, "alpha/app", "v1", b"config-v1", &[&random(300_000, 1)]);

    // Pushes go on while the backup runs; each records itself once its tag is in.
    let stop = Arc::new(AtomicBool::new(false));
    let pushed: Arc<Mutex<Vec<String>>> = Arc::default();
    let pusher = {
        let (stop, pushed, pat) = (stop.clone(), pushed.clone(), pat.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 500 {
                let tag = format!("t{i}");
                push_image(&pat, "alpha/app", &tag, format!("config-{i}").as_bytes(), &[&random(50_000, 100 + i)]);
                pushed.lock().unwrap().push(tag);
                i += 1;
            }
        })
    };
    // And deployments (of a service with no replicas: records and their logs, no
    // containers) one after another.
    let bg = created(root.post("/v1/services", &json!({"project_id": alpha, "name": "bg", "port": 80, "replicas": 0})));
    let deployed: Arc<Mutex<Vec<String>>> = Arc::default();
    let deployer = {
        let (stop, deployed, c, bg) = (stop.clone(), deployed.clone(), root.clone(), bg.clone());
        std::thread::spawn(move || {
            let source = json!({"kind": "Image", "repository": "alpha/app", "reference": "v1"});
            while !stop.load(Ordering::Relaxed) && deployed.lock().unwrap().len() < 200 {
                let r = c.post("/v1/deployments", &json!({"service_id": bg, "source": source}));
                if r.status != 201 {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let id = r.json()["id"].as_str().unwrap().to_string();
                deployed.lock().unwrap().push(id.clone());
                while !stop.load(Ordering::Relaxed) {
                    let d = c.get(&format!("/v1/deployments/{id}")).json();
                    if !matches!(d["status"].as_str(), Some("queued" | "building" | "pulling" | "starting")) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pushed.lock().unwrap().len() < 3 || deployed.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no pushes");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before: Vec<String> = pushed.lock().unwrap().clone();
    let deployments_before: Vec<String> = deployed.lock().unwrap().clone();
    let archive = b.dir.path().join("backup.tar.zst");
    let out = admin_cmd(&b, &["backup", "--with-blobs", "--output", archive.to_str().unwrap()], "");
    assert!(out.ok, "backup failed: {}", out.stderr);
    stop.store(true, Ordering::Relaxed);
    pusher.join().unwrap();
    deployer.join().unwrap();
    let during = pushed.lock().unwrap().len() - before.len();
    assert!(out.stderr.contains("keep it secret"), "{}", out.stderr);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);

    let mut fresh = unstarted(TempDir::new("restored"));
    let out = berth(
        &[
            "admin".into(),
            "restore".into(),
            "--input".into(),
            archive.display().to_string(),
            "--data-dir".into(),
            fresh.data_dir().display().to_string(),
        ],
        "",
    );
    assert!(out.ok, "restore failed: {}", out.stderr);
    fresh.spawn();
    let root2 = fresh.login("admin", ADMIN_PASSWORD);
    fresh.login("carol", "carol-password-1");
    let users: Vec<String> = root2.get("/v1/users").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(users.len(), 2, "{users:?}");
    assert_eq!(root2.get("/v1/projects").json()["data"][0]["name"], "alpha");
    // The host key came along: the sealed registry password still opens.
    let r = root2.get(&format!("/v1/projects/{alpha}/registries/{cred}"));
    assert_eq!((r.status, r.json()["usable"].as_bool()), (200, Some(true)), "{}", r.text());
    // Every deployment made before the backup began is there and has ended (one
    // cut off by the copy is ended by the restored daemon's recovery).
    for id in &deployments_before {
        let d = root2.get(&format!("/v1/deployments/{id}"));
        assert_eq!(d.status, 200, "{id}: {}", d.text());
        let status = d.json()["status"].as_str().unwrap().to_string();
        assert!(["live", "failed", "cancelled", "superseded"].contains(&status.as_str()), "{id}: {status}");
    }
    let list = root2.get(&format!("/v1/services/{bg}/deployments?limit=100")).json();
    assert!(list["data"].as_array().unwrap().len() >= deployments_before.len(), "{list}");
    // The service, with its settings; its secret is still redacted (and sealed).
    let s = root2.get(&format!("/v1/services/{svc}"));
    assert_eq!(s.status, 200, "{}", s.text());
    let s = s.json();
    assert_eq!((s["name"].as_str(), s["replicas"].as_u64()), (Some("web"), Some(2)), "{s}");
    assert_eq!(s["env"][0]["value"], "***", "{s}");
    assert_eq!(s["follow"]["tag"], "main", "{s}");

    let (m, blobs) = pull_verified(&root2, "alpha/app", "v1");
    assert_eq!(m, first);
    assert_eq!(blobs[1], random(300_000, 1));
    for tag in &before {
        pull_verified(&root2, "alpha/app", tag);
    }
    // Whatever the copy caught of the pushes in flight is whole.
    let tags = root2.get("/v2/alpha/app/tags/list").json()["tags"].as_array().unwrap().clone();
    for t in &tags {
        pull_verified(&root2, "alpha/app", t.as_str().unwrap());
    }
    assert!(tags.len() > before.len(), "tags {tags:?}");
    eprintln!("backup during pushes: {} pushed before, {during} during, {} tags restored", before.len(), tags.len());
    // The restored node takes pushes.
    push_image(&root2, "alpha/app", "after", b"config-after", &[b"layer-after"]);
}

#[test]
fn a_cut_or_altered_backup_is_refused_and_leaves_the_target_empty() {
    let (b, pat) = crate::registry::setup("");
    push_image(&pat, "alpha/app", "v1", b"config", &[&random(100_000, 7)]);
    let archive = b.dir.path().join("b.tar.zst");
    let out = admin_cmd(&b, &["backup", "--output", archive.to_str().unwrap()], "");
    assert!(out.ok, "{}", out.stderr);
    let good = std::fs::read(&archive).unwrap();

    // The same archive with a byte of state.db changed, recompressed whole, so only
    // the manifest's checksum can tell.
    let mut tar = zstd::decode_all(good.as_slice()).unwrap();
    tar[512 + 4096] ^= 0x01;
    let altered = zstd::encode_all(tar.as_slice(), 3).unwrap();
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("cut", good[..good.len() / 2].to_vec(), ""),
        ("altered", altered, "does not match its checksum"),
        ("flipped", flipped, ""),
    ];
    let work = TempDir::new("damaged");
    for (name, bytes, says) in cases {
        let input = work.path().join(format!("{name}.tar.zst"));
        std::fs::write(&input, bytes).unwrap();
        let target = work.path().join(format!("{name}-target"));
        std::fs::create_dir(&target).unwrap();
        let out =
            admin_cmd(&b, &["restore", "--input", input.to_str().unwrap(), "--data-dir", target.to_str().unwrap()], "");
        assert!(!out.ok, "{name} archive restored");
        assert!(out.stderr.contains("nothing was written") && out.stderr.contains(says), "{name}: {}", out.stderr);
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "{name}: the target was written to");
    }
    let staging: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name())
        .collect();
    assert!(staging.is_empty(), "left behind: {staging:?}");

    // A state dir in use, or anything in the way, is refused and left alone.
    let out = admin_cmd(&b, &["restore", "--input", archive.to_str().unwrap()], "");
    assert!(!out.ok && out.stderr.contains("is not empty"), "{}", out.stderr);
    assert_eq!(b.client().get("/healthz").status, 200);
    let busy = work.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("notes.txt"), "mine").unwrap();
    let out =
        admin_cmd(&b, &["restore", "--input", archive.to_str().unwrap(), "--data-dir", busy.to_str().unwrap()], "");
    assert!(!out.ok && out.stderr.contains("is not empty"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // The untouched archive restores into the same kind of empty dir.
    let target = work.path().join("good-target");
    std::fs::create_dir(&target).unwrap();
    let out =
        admin_cmd(&b, &["restore", "--input", archive.to_str().unwrap(), "--data-dir", target.to_str().unwrap()], "");
    assert!(out.ok, "{}", out.stderr);
    assert!(target.join("state.db").is_file() && target.join("secrets/host.key").is_file());
}

#[test]
fn users_made_and_reset_from_the_host_while_the_daemon_runs() {
    let b = Berth::start("");
    let root = b.admin();
    let out = admin_cmd(&b, &["create-user", "--username", "bob"], "bob-password-1\n");
    assert!(out.ok, "{}", out.stderr);
    let bob = b.login("bob", "bob-password-1");
    assert_eq!(bob.get("/v1/users").status, 403, "bob is no super-admin");
    assert_eq!(root.get("/v1/users").json()["data"].as_array().unwrap().len(), 2);

    let out = admin_cmd(&b, &["create-user", "--username", "bob"], "another-password\n");
    assert!(!out.ok && out.stderr.contains("taken"), "{}", out.stderr);
    let out = admin_cmd(&b, &["create-user", "--username", "short"], "abc\n");
    assert!(!out.ok && out.stderr.contains("password must be"), "{}", out.stderr);

    let file = b.dir.path().join("new-password");
    std::fs::write(&file, "bob-password-2\n").unwrap();
    let out = admin_cmd(&b, &["reset-password", "--username", "bob", "--password-file", file.to_str().unwrap()], "");
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.contains("1 sessions ended"), "{}", out.stderr);
    let old = b.client().post("/v1/auth/login", &json!({"username": "bob", "password": "bob-password-1"}));
    assert_eq!(old.status, 401, "{}", old.text());
    b.login("bob", "bob-password-2");
    let out = admin_cmd(&b, &["reset-password", "--username", "nobody"], "whatever-password\n");
    assert!(!out.ok && out.stderr.contains("no user named nobody"), "{}", out.stderr);

    // On a node nobody has bootstrapped, a super-admin made here spends the token.
    let fresh = Berth::start("");
    let token = fresh.bootstrap_token();
    let out = admin_cmd(&fresh, &["create-user", "--username", "root", "--super-admin"], "root-password-1\n");
    assert!(out.ok, "{}", out.stderr);
    assert!(!fresh.data_dir().join("bootstrap-token").exists());
    let r = fresh
        .client()
        .with_token(&token)
        .post("/v1/bootstrap", &json!({"username": "eve", "password": "eve-password-1"}));
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(fresh.login("root", "root-password-1").get("/v1/users").status, 200);
}

#[test]
fn a_second_daemon_on_one_state_dir_is_refused_and_gc_waits_for_the_api() {
    let mut b = Berth::start("");
    let first = b.child.as_ref().unwrap().id();
    let cfg = b.dir.path().join("berth.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--dev", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(b.data_dir())
        .args(["--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("in use by another berth process") && said.contains(&format!("pid {first}")), "{said}");
    assert_eq!(b.client().get("/healthz").status, 200, "the first daemon was disturbed");

    let out = admin_cmd(&b, &["gc"], "");
    assert!(!out.ok && out.stderr.contains("POST /v1/registry/gc"), "{}", out.stderr);
    assert_eq!(b.stop(), Some(0));
    let out = admin_cmd(&b, &["gc"], "");
    assert!(out.ok && out.stderr.contains("gc: registry"), "{}", out.stderr);
    // The lock went with the daemon and with gc: the dir serves again.
    b.spawn();
    assert_eq!(b.client().get("/healthz").status, 200);
}

#[test]
fn gc_from_the_host_collects_what_no_tag_holds() {
    // A grace period of zero, so what was just pushed and untagged is collectable.
    let (mut b, pat) = crate::registry::setup("[registry]\ngc_grace_seconds = 0\n");
    push_image(&pat, "alpha/app", "keep", b"config-keep", &[b"layer-keep"]);
    let m = push_image(&pat, "alpha/app", "drop", b"config-drop", &[b"layer-drop"]);
    assert_eq!(pat.delete(&format!("/v2/alpha/app/manifests/{}", digest(&m))).status, 202);
    assert_eq!(b.stop(), Some(0));
    std::thread::sleep(Duration::from_millis(1100));
    let out = admin_cmd(&b, &["gc"], "");
    assert!(out.ok, "{}", out.stderr);
    let blobs = b.data_dir().join("registry/blobs/sha256");
    let exists = |bytes: &[u8]| {
        let d = digest(bytes);
        let hex = d.strip_prefix("sha256:").unwrap();
        blobs.join(&hex[..2]).join(hex).exists()
    };
    assert!(!exists(b"layer-drop") && !exists(b"config-drop"), "{}", out.stderr);
    assert!(exists(b"layer-keep") && exists(b"config-keep"));
    b.spawn();
    pull_verified(&b.admin_session(), "alpha/app", "keep");
}

#[test]
fn a_database_from_a_newer_berth_is_refused_and_left_untouched() {
    if !crate::harness::require_tool("sqlite3", &["-version"]) {
        return;
    }
    let mut b = Berth::start("");
    b.admin();
    assert_eq!(b.stop(), Some(0));
    let db = b.data_dir().join("state.db");
    let set = Command::new("sqlite3").arg(&db).arg("PRAGMA user_version = 999").status().unwrap();
    assert!(set.success());
    let before = sha(&db);
    let cfg = b.dir.path().join("berth.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--dev", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(b.data_dir())
        .args(["--api-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("schema is version 999, newer than this berth knows"), "{said}");
    assert_eq!(sha(&db), before, "the database changed");
    // The admin commands refuse it the same way.
    let out = admin_cmd(&b, &["create-user", "--username", "x"], "x-password-1\n");
    assert!(!out.ok && out.stderr.contains("newer than this berth knows"), "{}", out.stderr);
    let archive = b.dir.path().join("b.tar.zst");
    let out = admin_cmd(&b, &["backup", "--output", archive.to_str().unwrap()], "");
    assert!(!out.ok && out.stderr.contains("newer than this berth knows"), "{}", out.stderr);
    assert_eq!(sha(&db), before);
}
