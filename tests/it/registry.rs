//! The hosted registry over raw HTTP, checked against the distribution spec's
//! statuses, codes and headers: push (monolithic, chunked, streamed), pull (with
//! ranges), mount, tags, referrers, deletes, bad input, access, GC and crash safety.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::harness::{Berth, Client, Resp};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

pub fn random(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: reproducible, incompressible enough for a registry.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A daemon with project `alpha` and an admin API token.
pub fn setup(extra_config: &str) -> (Berth, Client) {
    let b = Berth::start(extra_config);
    let admin = b.admin();
    assert_eq!(admin.post("/v1/projects", &json!({"name": "alpha"})).status, 201);
    let t = admin.post("/v1/api-tokens", &json!({"name": "registry"}));
    let pat = admin.with_token(t.json()["token"].as_str().unwrap());
    (b, pat)
}

pub fn push_blob(c: &Client, repo: &str, bytes: &[u8]) -> String {
    let d = digest(bytes);
    let r = c.send(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        Some(bytes),
        &[("Content-Type", "application/octet-stream")],
    );
    assert_eq!(r.status, 201, "monolithic push to {repo}: {}", r.text());
    d
}

pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes()
}

pub fn put_manifest(c: &Client, repo: &str, reference: &str, body: &[u8], media_type: &str) -> Resp {
    c.send("PUT", &format!("/v2/{repo}/manifests/{reference}"), Some(body), &[("Content-Type", media_type)])
}

/// Pushes a one-layer image; returns the manifest bytes.
pub fn push_image(c: &Client, repo: &str, tag: &str, config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    push_blob(c, repo, config);
    for l in layers {
        push_blob(c, repo, l);
    }
    let m = image_manifest(config, layers);
    let r = put_manifest(c, repo, tag, &m, OCI_MANIFEST);
    assert_eq!(r.status, 201, "manifest: {}", r.text());
    m
}

fn oci_code(r: &Resp) -> String {
    r.json()["errors"][0]["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn spec_walk_push_pull_discover_manage() {
    let (b, c) = setup("");
    let repo = "alpha/app";
    let r = c.get("/v2/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));

    // POST then PUT.
    let data = random(300_000, 1);
    let d = digest(&data);
    let r = c.send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    let loc = r.header("location").unwrap().to_string();
    assert!(loc.starts_with(&format!("/v2/{repo}/blobs/uploads/")));
    assert!(r.header("docker-upload-uuid").is_some());
    let r = c.send("PUT", &format!("{loc}?digest={d}"), Some(&data), &[("Content-Type", "application/octet-stream")]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some(format!("/v2/{repo}/blobs/{d}").as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let r = c.send("HEAD", &format!("/v2/{repo}/blobs/{d}"), None, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r.body.is_empty());
    let r = c.get(&format!("/v2/{repo}/blobs/{d}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    assert!(r.body == data, "pulled bytes equal pushed bytes");
    let r = c.send("GET", &format!("/v2/{repo}/blobs/{d}"), None, &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[10..20]);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/300000"));
    let r = c.send("GET", &format!("/v2/{repo}/blobs/{d}"), None, &[("Range", "bytes=400000-")]);
    assert_eq!(r.status, 416);

    // Chunked, with an out-of-order chunk refused and the status endpoint.
    let data = random(250_000, 2);
    let d2 = digest(&data);
    let r = c.send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]);
    let loc = r.header("location").unwrap().to_string();
    let (a, rest) = data.split_at(100_000);
    let (bb, last) = rest.split_at(100_000);
    let r =
        c.send("PATCH", &loc, Some(a), &[("Content-Range", "0-99999"), ("Content-Type", "application/octet-stream")]);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("range"), Some("0-99999"));
    let loc = r.header("location").unwrap().to_string();
    let r = c.send("PATCH", &loc, Some(bb), &[("Content-Range", "0-99999")]);
    assert_eq!(r.status, 416, "out-of-order chunk: {}", r.text());
    let r = c.get(&loc);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("range"), Some("0-99999"), "a refused chunk changes nothing");
    let r = c.send("PATCH", &loc, Some(bb), &[("Content-Range", "100000-199999")]);
    assert_eq!(r.status, 202);
    let r = c.send("PUT", &format!("{loc}?digest={d2}"), Some(last), &[("Content-Range", "200000-249999")]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(c.get(&format!("/v2/{repo}/blobs/{d2}")).body == data);

    // Streamed PATCH (no Content-Range), then an empty PUT.
    let data = random(70_000, 3);
    let d3 = digest(&data);
    let loc =
        c.send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]).header("location").unwrap().to_string();
    let r = c.send("PATCH", &loc, Some(&data), &[]);
    assert_eq!(r.status, 202);
    let r = c.send("PUT", &format!("{loc}?digest={d3}"), Some(b""), &[]);
    assert_eq!(r.status, 201, "{}", r.text());

    // A wrong digest is refused and leaves nothing behind.
    let bogus = digest(b"something else");
    let loc =
        c.send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]).header("location").unwrap().to_string();
    let r = c.send("PUT", &format!("{loc}?digest={bogus}"), Some(b"actual bytes"), &[]);
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "DIGEST_INVALID"), "{}", r.text());
    assert_eq!(c.send("HEAD", &format!("/v2/{repo}/blobs/{bogus}"), None, &[]).status, 404);
    assert_eq!(c.send("HEAD", &format!("/v2/{repo}/blobs/{}", digest(b"actual bytes")), None, &[]).status, 404);
    let r = c.get(&loc);
    assert_eq!((r.status, oci_code(&r).as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let r = c.send("POST", &format!("/v2/{repo}/blobs/uploads/?digest={bogus}"), Some(b"x"), &[]);
    assert_eq!(oci_code(&r), "DIGEST_INVALID");
    let r = c.send("POST", &format!("/v2/{repo}/blobs/uploads/?digest=sha512:{}", "a".repeat(128)), Some(b"x"), &[]);
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "DIGEST_INVALID"));
    let r = c.send("PATCH", &format!("/v2/{repo}/blobs/uploads/upl_00000000000000000000000000"), Some(b"x"), &[]);
    assert_eq!((r.status, oci_code(&r).as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let r = c.send("PATCH", &format!("/v2/{repo}/blobs/uploads/../../etc"), Some(b"x"), &[]);
    assert_eq!(r.status, 404);
    let r = c.get(&format!("/v2/{repo}/blobs/{}", digest(b"never pushed")));
    assert_eq!((r.status, oci_code(&r).as_str()), (404, "BLOB_UNKNOWN"));

    // Manifests: by tag and digest, byte-for-byte.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random(50_000, 4);
    let manifest = push_image(&c, repo, "v1", &config, &[&layer]);
    let md = digest(&manifest);
    for reference in ["v1", md.as_str()] {
        let r = c.get(&format!("/v2/{repo}/manifests/{reference}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, manifest, "manifest bytes as pushed");
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(r.header("docker-content-digest"), Some(md.as_str()));
        let r = c.send("HEAD", &format!("/v2/{repo}/manifests/{reference}"), None, &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some(manifest.len().to_string().as_str()));
    }
    let r = c.get(&format!("/v2/{repo}/manifests/nope"));
    assert_eq!((r.status, oci_code(&r).as_str()), (404, "MANIFEST_UNKNOWN"));

    // Bad manifests create nothing.
    let missing = image_manifest(&config, &[b"never uploaded"]);
    let r = put_manifest(&c, repo, "broken", &missing, OCI_MANIFEST);
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "MANIFEST_BLOB_UNKNOWN"), "{}", r.text());
    let weird = json!({"schemaVersion": 2, "mediaType": "application/x-weird"}).to_string();
    let r = put_manifest(&c, repo, "broken", weird.as_bytes(), "application/x-weird");
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "MANIFEST_INVALID"));
    let r = put_manifest(&c, repo, "broken", b"{not json", OCI_MANIFEST);
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "MANIFEST_INVALID"));
    let r = put_manifest(&c, repo, &"t".repeat(129), &manifest, OCI_MANIFEST);
    assert_eq!(r.status, 400, "a 129-character tag");
    let r = put_manifest(&c, repo, &digest(b"other"), &manifest, OCI_MANIFEST);
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "DIGEST_INVALID"));
    let mut huge = manifest.clone();
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(format!(r#","annotations":{{"x":"{}"}}}}"#, "a".repeat(5 << 20)).as_bytes());
    let r = put_manifest(&c, repo, "huge", &huge, OCI_MANIFEST);
    assert_eq!(r.status, 413, "oversize manifest");
    let r = c.get(&format!("/v2/{repo}/tags/list"));
    assert_eq!(r.json(), json!({"name": repo, "tags": ["v1"]}), "no tag came from a refused manifest");

    // An index over the image; an index over a missing manifest is refused.
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}}]})
    .to_string();
    assert_eq!(put_manifest(&c, repo, "multi", index.as_bytes(), OCI_INDEX).status, 201);
    let dangling = index.replace(&md, &digest(b"no such manifest"));
    let r = put_manifest(&c, repo, "dangling", dangling.as_bytes(), OCI_INDEX);
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "MANIFEST_BLOB_UNKNOWN"));

    // Tags: sorted, paginated with Link.
    for t in ["b", "a", "c"] {
        assert_eq!(put_manifest(&c, repo, t, &manifest, OCI_MANIFEST).status, 201);
    }
    let r = c.get(&format!("/v2/{repo}/tags/list"));
    assert_eq!(r.json()["tags"], json!(["a", "b", "c", "multi", "v1"]));
    let r = c.get(&format!("/v2/{repo}/tags/list?n=2"));
    assert_eq!(r.json()["tags"], json!(["a", "b"]));
    assert_eq!(r.header("link"), Some(format!("</v2/{repo}/tags/list?n=2&last=b>; rel=\"next\"").as_str()));
    let r = c.get(&format!("/v2/{repo}/tags/list?n=2&last=b"));
    assert_eq!(r.json()["tags"], json!(["c", "multi"]));
    assert_eq!(c.get(&format!("/v2/{repo}/tags/list?n=0")).json()["tags"], json!([]));
    let r = c.get("/v2/alpha/nosuch/tags/list");
    assert_eq!((r.status, oci_code(&r).as_str()), (404, "NAME_UNKNOWN"));

    // Referrers: a signature-like artifact whose subject is the image.
    let sig_config = b"{}".to_vec();
    push_blob(&c, repo, &sig_config);
    let sig = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(&sig_config), "size": 2},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": md, "size": manifest.len()},
        "annotations": {"org.example": "yes"}})
    .to_string();
    let sd = digest(sig.as_bytes());
    let r = put_manifest(&c, repo, &sd, sig.as_bytes(), OCI_MANIFEST);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("oci-subject"), Some(md.as_str()));
    let r = c.get(&format!("/v2/{repo}/referrers/{md}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let idx = r.json();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(idx["manifests"][0]["digest"], sd.as_str());
    assert_eq!(idx["manifests"][0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(idx["manifests"][0]["annotations"]["org.example"], "yes");
    let r = c.get(&format!("/v2/{repo}/referrers/{md}?artifactType=application/vnd.other"));
    assert_eq!(r.json()["manifests"], json!([]));
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    let r = c.get(&format!("/v2/{repo}/referrers/{}", digest(b"nothing refers to this")));
    assert_eq!((r.status, r.json()["manifests"].clone()), (200, json!([])));

    // Cross-repository mount; an unknown source falls back to an upload.
    let layer_d = digest(&layer);
    let r = c.send("POST", &format!("/v2/alpha/other/blobs/uploads/?mount={layer_d}&from={repo}"), Some(b""), &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some(format!("/v2/alpha/other/blobs/{layer_d}").as_str()));
    assert!(c.get(&format!("/v2/alpha/other/blobs/{layer_d}")).body == layer);
    let r =
        c.send("POST", &format!("/v2/alpha/third/blobs/uploads/?mount={layer_d}&from=alpha/nosuch"), Some(b""), &[]);
    assert_eq!(r.status, 202);
    assert_eq!(
        c.send("HEAD", &format!("/v2/alpha/third/blobs/{layer_d}"), None, &[]).status,
        404,
        "blobs are per repository"
    );
    // A mount without `from` finds the blob in another repository of the project.
    let r = c.send("POST", &format!("/v2/alpha/fourth/blobs/uploads/?mount={layer_d}"), Some(b""), &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some(format!("/v2/alpha/fourth/blobs/{layer_d}").as_str()));
    assert!(c.get(&format!("/v2/alpha/fourth/blobs/{layer_d}")).body == layer);
    let unknown = digest(b"no repository has this");
    let r = c.send("POST", &format!("/v2/alpha/fourth/blobs/uploads/?mount={unknown}"), Some(b""), &[]);
    assert_eq!(r.status, 202, "an unknown blob opens an upload instead");

    // Deletes: a tag, a manifest, a blob.
    assert_eq!(c.delete(&format!("/v2/{repo}/manifests/a")).status, 202);
    assert_eq!(c.get(&format!("/v2/{repo}/manifests/a")).status, 404);
    assert_eq!(c.get(&format!("/v2/{repo}/manifests/b")).status, 200, "other tags stay");
    assert_eq!(c.delete(&format!("/v2/{repo}/manifests/{sd}")).status, 202);
    assert_eq!(c.get(&format!("/v2/{repo}/manifests/{sd}")).status, 404);
    assert_eq!(c.get(&format!("/v2/{repo}/referrers/{md}")).json()["manifests"], json!([]));
    assert_eq!(c.delete(&format!("/v2/{repo}/blobs/{d3}")).status, 202);
    let r = c.get(&format!("/v2/{repo}/blobs/{d3}"));
    assert_eq!((r.status, oci_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
    assert_eq!(c.delete(&format!("/v2/{repo}/manifests/{}", digest(b"zzz"))).status, 404);

    // Names.
    for bad in ["Alpha/app", "alpha/App", "alpha//x", "alpha/a..b"] {
        let r = c.get(&format!("/v2/{bad}/tags/list"));
        assert_eq!((r.status, oci_code(&r).as_str()), (400, "NAME_INVALID"), "{bad}");
    }
    let r = c.get("/v2/app/tags/list");
    assert_eq!((r.status, oci_code(&r).as_str()), (400, "NAME_INVALID"), "one component is not <project>/<name>");

    // The management view and the guard on deleting a project with repositories.
    let repos = b.admin_session().get("/v1/registry/repositories").json();
    let names: Vec<&str> = repos["data"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&repo) && names.contains(&"alpha/other"), "{names:?}");
    let status = c.get("/v1/registry/status").json();
    assert!(status["blobs"].as_i64().unwrap() >= 5 && status["disk_usage_bytes"].as_u64().unwrap() > 0, "{status}");
    let projects = c.get("/v1/projects").json();
    let alpha = projects["data"][0]["id"].as_str().unwrap().to_string();
    let r = c.delete(&format!("/v1/projects/{alpha}"));
    assert_eq!(r.status, 409, "a project with repositories is not empty: {}", r.text());
}

#[test]
fn repository_access_follows_project_roles() {
    let (b, admin) = setup("");
    let repo = "alpha/app";
    let manifest = push_image(&admin, repo, "v1", b"{}", &[&random(1000, 5)]);
    let root = b.login("admin", crate::harness::ADMIN_PASSWORD);
    let projects = root.get("/v1/projects").json();
    let alpha = projects["data"][0]["id"].as_str().unwrap().to_string();
    let beta = root.post("/v1/projects", &json!({"name": "beta"})).json()["id"].as_str().unwrap().to_string();
    let mk = |name: &str, project: &str, role: &str| {
        assert_eq!(root.post("/v1/users", &json!({"username": name, "password": "password-123"})).status, 201);
        assert_eq!(
            root.post(&format!("/v1/projects/{project}/members"), &json!({"username": name, "role": role})).status,
            201
        );
        b.login(name, "password-123")
    };
    let viewer = mk("vera", &alpha, "viewer");
    let operator = mk("otto", &alpha, "operator");
    let stranger = mk("sven", &beta, "admin");

    // A Viewer pulls but cannot push.
    assert_eq!(viewer.get(&format!("/v2/{repo}/manifests/v1")).body, manifest);
    let r = viewer.send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]);
    assert_eq!((r.status, oci_code(&r).as_str()), (403, "DENIED"));
    let r = viewer.delete(&format!("/v2/{repo}/manifests/v1"));
    assert_eq!(r.status, 403);
    // Another project's member sees nothing, for reads and writes alike.
    for (m, path) in [
        ("GET", format!("/v2/{repo}/manifests/v1")),
        ("GET", format!("/v2/{repo}/tags/list")),
        ("POST", format!("/v2/{repo}/blobs/uploads/")),
    ] {
        let r = stranger.send(m, &path, Some(b""), &[]);
        assert_eq!((r.status, oci_code(&r).as_str()), (404, "NAME_UNKNOWN"), "{m} {path}");
    }
    let r = stranger.get("/v2/alpha/never-existed/tags/list");
    assert_eq!((r.status, oci_code(&r).as_str()), (404, "NAME_UNKNOWN"), "same answer as a real but hidden repository");
    assert_eq!(stranger.get("/v1/registry/repositories").json()["data"], json!([]));
    // A mount without `from` never finds another project's blobs.
    let layer =
        admin.get(&format!("/v2/{repo}/manifests/v1")).json()["layers"][0]["digest"].as_str().unwrap().to_string();
    let r = stranger.send("POST", &format!("/v2/beta/copy/blobs/uploads/?mount={layer}"), Some(b""), &[]);
    assert_eq!(r.status, 202, "another project's blob is not mounted: {}", r.text());
    assert_eq!(stranger.send("HEAD", &format!("/v2/beta/copy/blobs/{layer}"), None, &[]).status, 404);
    // Anonymous gets the challenge.
    let r = b.client().get(&format!("/v2/{repo}/manifests/v1"));
    assert_eq!((r.status, oci_code(&r).as_str()), (401, "UNAUTHORIZED"));
    let ch = r.header("www-authenticate").unwrap();
    assert!(
        ch.starts_with("Bearer realm=\"http://")
            && ch.contains("/v2/token\"")
            && ch.contains("repository:alpha/app:pull"),
        "{ch}"
    );
    // A pull-only token of an Operator cannot push.
    let t = operator.post("/v1/api-tokens", &json!({"name": "pull", "scopes": ["registry:pull"]}));
    let pull_only = b.client().with_token(t.json()["token"].as_str().unwrap());
    assert_eq!(pull_only.get(&format!("/v2/{repo}/tags/list")).status, 200);
    let r = pull_only.send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]);
    assert_eq!((r.status, oci_code(&r).as_str()), (403, "DENIED"));
    let r = operator.send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]);
    assert_eq!(r.status, 202, "operators push");

    // The token flow: Basic password → a session; Basic API token → that token.
    use base64::Engine;
    let basic =
        |u: &str, p: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    let anon = b.client();
    let r = anon.send(
        "GET",
        "/v2/token?service=berth&scope=repository:alpha/app:pull",
        None,
        &[("Authorization", &basic("vera", "password-123"))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bearer = r.json()["token"].as_str().unwrap().to_string();
    assert!(bearer.starts_with("berth_ses_"));
    assert_eq!(anon.with_token(&bearer).get(&format!("/v2/{repo}/manifests/v1")).body, manifest);
    let r = anon.send("GET", "/v2/token", None, &[("Authorization", &basic("vera", "wrong-password"))]);
    assert_eq!(r.status, 401);
    let pat = pull_only.token.clone().unwrap();
    let r = anon.send("GET", "/v2/token", None, &[("Authorization", &basic("otto", &pat))]);
    assert_eq!(r.json()["token"], pat.as_str());
    let r = anon.send("GET", "/v2/token", None, &[("Authorization", &basic("vera", &pat))]);
    assert_eq!(r.status, 401, "an API token only logs in as its owner");
    assert_eq!(anon.get("/v2/token").status, 401);
    // Basic straight on /v2 works too.
    let r = anon.send(
        "GET",
        &format!("/v2/{repo}/manifests/v1"),
        None,
        &[("Authorization", &basic("vera", "password-123"))],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn gc_removes_exactly_the_unreferenced_blobs() {
    let (b, c) = setup("[registry]\ngc_grace_seconds = 0\n");
    let repo = "alpha/app";
    let shared = random(20_000, 10);
    let (ca, la) = (br#"{"a":1}"#.to_vec(), random(30_000, 11));
    let (cb, lb) = (br#"{"b":1}"#.to_vec(), random(40_000, 12));
    let ma = push_image(&c, repo, "a", &ca, &[&shared, &la]);
    let mb = push_image(&c, repo, "b", &cb, &[&shared, &lb]);
    let stray = random(5_000, 13);
    push_blob(&c, repo, &stray);
    // With a grace period of 0 everything unreferenced is collectable at once.
    assert_eq!(c.delete(&format!("/v2/{repo}/manifests/a")).status, 202);
    let r = b.admin_session().post("/v1/registry/gc", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    // Gone: image a's config, its own layer, its manifest, and the stray blob.
    assert_eq!(report["manifests_deleted"], 1, "{report}");
    assert_eq!(report["blobs_deleted"], 4, "{report}");
    let freed = ca.len() + la.len() + ma.len() + stray.len();
    assert_eq!(report["bytes_freed"], freed as u64, "{report}");
    for gone in [digest(&ca), digest(&la), digest(&stray)] {
        assert_eq!(c.send("HEAD", &format!("/v2/{repo}/blobs/{gone}"), None, &[]).status, 404);
    }
    assert_eq!(c.get(&format!("/v2/{repo}/manifests/{}", digest(&ma))).status, 404);
    // Kept, byte for byte: everything image b needs.
    assert_eq!(c.get(&format!("/v2/{repo}/manifests/b")).body, mb);
    for (kept, bytes) in [(digest(&cb), &cb), (digest(&lb), &lb), (digest(&shared), &shared)] {
        assert!(c.get(&format!("/v2/{repo}/blobs/{kept}")).body == *bytes);
    }
    let files = count_files(&b.data_dir().join("registry/blobs"));
    assert_eq!(files, 4, "b's manifest, config, layer and the shared layer stay on disk");
    let status = c.get("/v1/registry/status").json();
    assert_eq!(status["last_gc"]["blobs_deleted"], 4);
    assert_eq!(status["blobs"], 4);
    // A second run finds nothing more.
    assert_eq!(b.admin_session().post("/v1/registry/gc", &json!({})).json()["blobs_deleted"], 0);
}

pub fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum())
        .unwrap_or(0)
}

#[test]
fn gc_running_during_pushes_loses_nothing() {
    let (b, c) = setup("[registry]\ngc_grace_seconds = 30\n");
    let root = b.admin_session();
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let gc = {
        let (stop, runs, root) = (stop.clone(), runs.clone(), root.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(root.post("/v1/registry/gc", &json!({})).status, 200);
                runs.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut pushed = Vec::new();
    for i in 0..6u64 {
        let config = format!(r#"{{"n":{i}}}"#).into_bytes();
        let layer = random(200_000, 100 + i);
        push_blob(&c, "alpha/app", &config);
        push_blob(&c, "alpha/app", &layer);
        // A whole GC run passes between the blobs and the manifest that references them.
        let seen = runs.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        while runs.load(Ordering::SeqCst) < seen + 2 {
            assert!(Instant::now() < deadline, "no GC run finished within 30 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let m = image_manifest(&config, &[&layer]);
        let r = put_manifest(&c, "alpha/app", &format!("t{i}"), &m, OCI_MANIFEST);
        assert_eq!(r.status, 201, "{}", r.text());
        pushed.push((format!("t{i}"), m, config, layer));
    }
    stop.store(true, Ordering::SeqCst);
    gc.join().unwrap();
    assert!(runs.load(Ordering::SeqCst) >= 3, "GC ran alongside the pushes");
    assert_eq!(root.post("/v1/registry/gc", &json!({})).status, 200);
    for (tag, m, config, layer) in pushed {
        assert_eq!(c.get(&format!("/v2/alpha/app/manifests/{tag}")).body, m);
        assert!(c.get(&format!("/v2/alpha/app/blobs/{}", digest(&config))).body == config);
        assert!(c.get(&format!("/v2/alpha/app/blobs/{}", digest(&layer))).body == layer);
    }
}

#[test]
fn kill_dash_nine_during_ten_pushes_then_restart() {
    let (mut b, c) =
        setup("[registry]\ngc_grace_seconds = 0\nupload_ttl_seconds = 0\n[api]\nrate_limit_per_minute = 100000\n");
    let done = Arc::new(Mutex::new(Vec::<(String, Vec<u8>, Vec<Vec<u8>>)>::new()));
    let finished = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for i in 0..10u64 {
        let (c, done, finished) = (c.clone(), done.clone(), finished.clone());
        threads.push(std::thread::spawn(move || {
            let repo = format!("alpha/app{i}");
            let layers: Vec<Vec<u8>> =
                (0..3).map(|k| random(3_000_000 + (i as usize) * 1000, 1000 + i * 10 + k)).collect();
            let config = format!(r#"{{"image":{i}}}"#).into_bytes();
            // Chunked uploads, so a kill lands mid-blob.
            let ok = (|| -> Option<Vec<u8>> {
                for l in layers.iter().map(Vec::as_slice).chain([config.as_slice()]) {
                    let r = c.try_send("POST", &format!("/v2/{repo}/blobs/uploads/"), Some(b""), &[]).ok()?;
                    let mut loc = r.header("location")?.to_string();
                    for (n, chunk) in l.chunks(500_000).enumerate() {
                        let start = n * 500_000;
                        let range = format!("{start}-{}", start + chunk.len() - 1);
                        let r = c.try_send("PATCH", &loc, Some(chunk), &[("Content-Range", &range)]).ok()?;
                        (r.status == 202).then_some(())?;
                        loc = r.header("location")?.to_string();
                    }
                    let r = c.try_send("PUT", &format!("{loc}?digest={}", digest(l)), Some(b""), &[]).ok()?;
                    (r.status == 201).then_some(())?;
                }
                let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
                let m = image_manifest(&config, &refs);
                let r = c
                    .try_send("PUT", &format!("/v2/{repo}/manifests/v1"), Some(&m), &[("Content-Type", OCI_MANIFEST)])
                    .ok()?;
                (r.status == 201).then_some(m)
            })();
            if let Some(m) = ok {
                let mut all = layers.clone();
                all.push(config);
                done.lock().unwrap().push((repo, m, all));
                finished.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while finished.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    b.kill9();
    for t in threads {
        t.join().unwrap();
    }
    let done = done.lock().unwrap().clone();
    assert!(
        (1..10).contains(&done.len()),
        "{} pushes finished before the kill; the kill must land mid-way",
        done.len()
    );
    b.spawn();
    let c = b.client().with_token(c.token.as_deref().unwrap());
    // Every completed push is pullable and byte-identical.
    for (repo, m, blobs) in &done {
        assert_eq!(c.get(&format!("/v2/{repo}/manifests/v1")).body, *m, "{repo}");
        for blob in blobs {
            assert!(c.get(&format!("/v2/{repo}/blobs/{}", digest(blob))).body == *blob, "{repo}");
        }
    }
    // Nothing partial is ever served: whatever answers for an unfinished push is whole.
    for i in 0..10u64 {
        let repo = format!("alpha/app{i}");
        for k in 0..3 {
            let layer = random(3_000_000 + (i as usize) * 1000, 1000 + i * 10 + k);
            let r = c.get(&format!("/v2/{repo}/blobs/{}", digest(&layer)));
            assert!(r.status == 404 || r.body == layer, "{repo} layer {k}: {} with {} bytes", r.status, r.body.len());
        }
    }
    // GC reclaims the leftovers: interrupted uploads and unreferenced blobs (both
    // collectable at once: upload TTL and grace period are 0).
    let root = b.admin_session();
    let report = root.post("/v1/registry/gc", &json!({})).json();
    assert_eq!(count_files(&b.data_dir().join("registry/uploads")), 0, "uploads left after GC: {report}");
    let status = root.get("/v1/registry/status").json();
    // A push may have committed on the server after its client lost the connection,
    // so count what is tagged now: each image is three layers, a config, a manifest.
    let tagged = (0..10).filter(|i| c.get(&format!("/v2/alpha/app{i}/manifests/v1")).status == 200).count();
    assert!(tagged >= done.len());
    let expected_blobs = tagged * 5;
    assert_eq!(status["blobs"], expected_blobs as i64, "{status}");
    assert_eq!(count_files(&b.data_dir().join("registry/blobs")), expected_blobs, "no orphan files: {report}");
    assert_eq!(status["uploads_in_progress"], 0);
}

#[test]
fn json_helpers_agree_with_the_daemon() {
    let v: Value = serde_json::from_slice(&image_manifest(b"{}", &[b"x"])).unwrap();
    assert_eq!(v["config"]["digest"], digest(b"{}").as_str());
}
