//! Build context uploads (`POST /v1/services/{id}/uploads`): good archives are kept
//! and described; hostile ones (escaping names, links out, device nodes, bombs) are
//! refused with nothing written outside the uploads dir and the service untouched;
//! unused uploads expire.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Berth, Client, Resp};

/// One archive member.
pub enum Member<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A character device (major, minor).
    Char(&'a str),
    Fifo(&'a str),
}

/// A tar stream with exactly these names: written header by header, so names the
/// `tar` crate's builder refuses to write (`..`, absolute) can be made too.
pub fn tar(members: &[Member<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = tar::Header::new_ustar();
        let (name, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match m {
            Member::File(n, d) => (n, d, tar::EntryType::Regular, None),
            Member::Dir(n) => (n, b"", tar::EntryType::Directory, None),
            Member::Symlink(n, t) => (n, b"", tar::EntryType::Symlink, Some(t)),
            Member::Hardlink(n, t) => (n, b"", tar::EntryType::Link, Some(t)),
            Member::Char(n) => (n, b"", tar::EntryType::Char, None),
            Member::Fifo(n) => (n, b"", tar::EntryType::Fifo, None),
        };
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

/// A small, good build context: a Dockerfile, a page, a link inside.
pub fn small_context() -> Vec<u8> {
    gzip(&tar(&[
        Member::File("Dockerfile", b"FROM scratch\nCOPY site /site\n"),
        Member::Dir("site/"),
        Member::File("site/index.html", b"hello\n"),
        Member::Symlink("site/home.html", "index.html"),
        Member::Symlink("site/up", "../Dockerfile"),
    ]))
}

/// Uploads `body` to the service.
pub fn upload(c: &Client, service: &str, body: &[u8]) -> Resp {
    c.send("POST", &format!("/v1/services/{service}/uploads"), Some(body), &[("Content-Type", "application/zstd")])
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn setup(b: &Berth) -> (Client, String, String) {
    let admin = b.admin();
    let r = admin.post("/v1/projects", &json!({"name": "alpha"}));
    assert_eq!(r.status, 201, "{}", r.text());
    let project = r.json()["id"].as_str().unwrap().to_string();
    let r = admin.post("/v1/services", &json!({"project_id": project, "name": "web", "port": 8080, "replicas": 0}));
    assert_eq!(r.status, 201, "{}", r.text());
    let svc = r.json()["id"].as_str().unwrap().to_string();
    (admin, project, svc)
}

#[test]
fn good_contexts_are_kept_and_hostile_ones_refused_with_nothing_written_outside() {
    const CAP: u64 = 256 << 10;
    let b = Berth::start(&format!("[build]\nmax_upload_bytes = {CAP}\n"));
    let (admin, _project, svc) = setup(&b);
    let uploads = b.data_dir().join("uploads");
    // Sentinels beside and above the uploads dir: no refused archive may touch them.
    let sentinels = [b.data_dir().join("sentinel"), b.dir.path().join("sentinel")];
    for s in &sentinels {
        std::fs::write(s, b"untouched").unwrap();
    }

    // Good: gzip, zstd and plain tar.
    let plain = tar(&[Member::File("Dockerfile", b"FROM scratch\n"), Member::File("app/run.sh", b"#!/bin/sh\n")]);
    for (what, body, compression) in
        [("gzip", small_context(), "gzip"), ("zstd", zstd(&plain), "zstd"), ("tar", plain.clone(), "uncompressed")]
    {
        let r = upload(&admin, &svc, &body);
        assert_eq!(r.status, 201, "{what}: {}", r.text());
        let v = r.json();
        assert!(v["upload_id"].as_str().unwrap().starts_with("upl_"), "{v}");
        assert_eq!(v["compression"], compression, "{v}");
        assert_eq!(v["bytes"], body.len() as u64, "{v}");
        assert_eq!(v["has_dockerfile"], true, "{v}");
        assert!(v["expires_at"].as_str().is_some_and(|t| t > v["created_at"].as_str().unwrap()), "{v}");
        let kept = uploads.join(format!("{}.archive", v["upload_id"].as_str().unwrap()));
        assert_eq!(std::fs::read(&kept).unwrap(), body, "{what}: the archive is kept as sent");
    }
    let r = upload(&admin, &svc, &gzip(&tar(&[Member::File("src/main.rs", b"fn main() {}\n")])));
    assert_eq!((r.status, r.json()["has_dockerfile"].clone()), (201, Value::Bool(false)), "{}", r.text());
    let before = tree(&uploads);

    let zeros = vec![0u8; (CAP as usize) * 4];
    let hostile: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("dot-dot name", gzip(&tar(&[Member::File("../../sentinel", b"pwned")])), 400, "\"..\""),
        ("dot-dot inside", gzip(&tar(&[Member::File("a/../../sentinel", b"pwned")])), 400, "\"..\""),
        ("absolute name", gzip(&tar(&[Member::File("/tmp/berth-upload-abs", b"pwned")])), 400, "absolute"),
        ("symlink out", gzip(&tar(&[Member::Symlink("out", "../../sentinel")])), 400, "leaves the archive"),
        ("absolute symlink", gzip(&tar(&[Member::Symlink("passwd", "/etc/passwd")])), 400, "leaves the archive"),
        (
            "write through a symlink",
            gzip(&tar(&[Member::Symlink("d", "."), Member::File("d/x", b"ok")])),
            400,
            "not a directory",
        ),
        (
            "link over a link",
            gzip(&tar(&[Member::Symlink("d", "a/b"), Member::Symlink("e", "d/../..")])),
            400,
            "leaves",
        ),
        ("hardlink out", gzip(&tar(&[Member::Hardlink("h", "/etc/passwd")])), 400, "absolute"),
        ("hardlink up", gzip(&tar(&[Member::Hardlink("h", "../sentinel")])), 400, "hardlink target"),
        ("char device", gzip(&tar(&[Member::Char("null")])), 400, "character device"),
        ("fifo", gzip(&tar(&[Member::Fifo("pipe")])), 400, "fifo"),
        ("whiteout", gzip(&tar(&[Member::File(".wh.Dockerfile", b"")])), 400, "whiteout"),
        ("not an archive", b"{\"just\": \"json\"}".to_vec(), 400, "not a valid"),
        ("truncated gzip", gzip(&plain)[..40].to_vec(), 400, ""),
        ("empty body", Vec::new(), 400, "empty"),
        ("zstd bomb", zstd(&tar(&[Member::File("zeros", &zeros)])), 413, "262144-byte"),
        ("gzip bomb", gzip(&tar(&[Member::File("zeros", &zeros)])), 413, "262144-byte"),
        ("too large as sent", vec![7u8; CAP as usize + 1], 413, "262144-byte"),
    ];
    for (what, body, status, says) in &hostile {
        if *what == "zstd bomb" || *what == "gzip bomb" {
            assert!((body.len() as u64) < CAP, "{what}: the bomb itself is under the cap ({} bytes)", body.len());
        }
        let r = upload(&admin, &svc, body);
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(says), "{what}: {message}");
    }
    for s in &sentinels {
        assert_eq!(std::fs::read(s).unwrap(), b"untouched", "{}", s.display());
    }
    assert!(!Path::new("/tmp/berth-upload-abs").exists());
    assert_eq!(tree(&uploads), before, "refused uploads leave nothing in the uploads dir");
    // The service is as it was.
    let r = admin.get(&format!("/v1/services/{svc}"));
    assert_eq!((r.status, r.json()["name"].clone()), (200, json!("web")), "{}", r.text());
}

#[test]
fn uploads_follow_project_roles_are_capped_per_service_and_expire() {
    let b = Berth::start("[build]\nupload_ttl_seconds = 2\n");
    let (admin, project, svc) = setup(&b);
    // A viewer of the project may not upload; a stranger does not see the service.
    for (name, role) in [("vic", Some("viewer")), ("stan", None)] {
        let r = admin.post("/v1/users", &json!({"username": name, "password": "correct horse battery"}));
        assert_eq!(r.status, 201, "{}", r.text());
        let uid = r.json()["id"].as_str().unwrap().to_string();
        if let Some(role) = role {
            let r = admin.post(&format!("/v1/projects/{project}/members"), &json!({"user_id": uid, "role": role}));
            assert_eq!(r.status, 201, "{}", r.text());
        }
        let c = b.login(name, "correct horse battery");
        let r = upload(&c, &svc, &small_context());
        assert_eq!(r.status, if role.is_some() { 403 } else { 404 }, "{name}: {}", r.text());
    }
    // At most 16 uploads wait per service.
    let mut ids = Vec::new();
    for _ in 0..16 {
        let r = upload(&admin, &svc, &small_context());
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["upload_id"].as_str().unwrap().to_string());
    }
    let r = upload(&admin, &svc, &small_context());
    assert_eq!(r.status, 409, "{}", r.text());
    // Unused, they expire (the worker runs at half the time to live).
    let uploads = b.data_dir().join("uploads");
    crate::deployments::until(30, "the uploads expire", || {
        let left = std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0);
        (left == 0).then_some(())
    });
    let r = upload(&admin, &svc, &small_context());
    assert_eq!(r.status, 201, "room again once they expired: {}", r.text());
    std::thread::sleep(Duration::from_millis(10));
}
