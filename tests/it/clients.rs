//! The hosted registry driven by real clients: the Docker CLI against a private
//! engine, and skopeo.

use serde_json::Value;

use crate::harness::TempDir;
use crate::registry::setup;
use crate::tools::{
    Dockerd, LAYOUT_TAG, MULTI_TAG, OCI_INDEX, OCI_MANIFEST, assert_blobs_copied, busybox_context, have_skopeo,
    layout_tag_digest, oci_index_two_platforms, oci_layout_with_random_layers, skopeo, skopeo_ok,
};

#[test]
fn docker_login_build_push_rmi_pull_round_trip() {
    let Some(docker) = Dockerd::start() else { return };
    let (b, pat) = setup("");
    let token = pat.token.clone().unwrap();
    let registry = b.addr.to_string();

    // Wrong credentials are refused; an API token and a password both log in.
    let out = docker.login(&registry, "admin", "not-the-password");
    assert!(!out.status.success(), "a wrong password must not log in");
    let out = docker.login(&registry, "admin", crate::harness::ADMIN_PASSWORD);
    assert!(out.status.success(), "password login: {}", String::from_utf8_lossy(&out.stderr));
    let out = docker.login(&registry, "admin", &token);
    assert!(out.status.success(), "API token login: {}", String::from_utf8_lossy(&out.stderr));

    let ctx = TempDir::new("docker-ctx");
    for (name, extra_mib) in [("app", 0), ("big", 64)] {
        let dir = ctx.path().join(name);
        busybox_context(&dir, extra_mib);
        let reference = format!("{registry}/alpha/{name}:v1");
        docker.build(&dir, &reference);
        let id = docker.image_id(&reference);
        docker.ok(&["push", &reference]);
        let pushed_digest = docker.ok(&["image", "inspect", "--format", "{{index .RepoDigests 0}}", &reference]);
        docker.ok(&["rmi", &reference]);
        assert!(!docker.docker(&["image", "inspect", &reference]).status.success(), "the image is gone locally");
        docker.ok(&["pull", &reference]);
        assert_eq!(docker.image_id(&reference), id, "{name}: image id after pull");
        let pulled_digest = docker.ok(&["image", "inspect", "--format", "{{index .RepoDigests 0}}", &reference]);
        assert_eq!(pulled_digest.trim(), pushed_digest.trim(), "{name}: repo digest after pull");
        // The registry serves the manifest docker pushed, under the same digest.
        let digest = pushed_digest.trim().rsplit('@').next().unwrap().to_string();
        let r = pat.get(&format!("/v2/alpha/{name}/manifests/v1"));
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    }
}

#[test]
fn skopeo_copies_both_ways_byte_identical_including_a_two_platform_index() {
    if !have_skopeo() {
        return;
    }
    let (b, pat) = setup("");
    let creds = format!("admin:{}", pat.token.as_deref().unwrap());
    let tmp = TempDir::new("skopeo");
    let host = b.addr.to_string();

    let src = oci_layout_with_random_layers(&tmp.path().join("src"), &[2 << 20, 70_001, 1]);
    let dest = format!("docker://{host}/alpha/random:v1");
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:{LAYOUT_TAG}", src.display()),
        &dest,
    ]);
    let back = tmp.path().join("back");
    skopeo_ok(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &dest,
        &format!("oci:{}:{LAYOUT_TAG}", back.display()),
    ]);
    assert_blobs_copied(&src, &back);
    assert_eq!(layout_tag_digest(&back, LAYOUT_TAG), layout_tag_digest(&src, LAYOUT_TAG));
    let raw: Value =
        serde_json::from_str(&skopeo_ok(&["inspect", "--tls-verify=false", "--creds", &creds, "--raw", &dest]))
            .unwrap();
    assert_eq!(raw["mediaType"], OCI_MANIFEST);
    let info: Value =
        serde_json::from_str(&skopeo_ok(&["inspect", "--tls-verify=false", "--creds", &creds, &dest])).unwrap();
    assert_eq!(info["RepoTags"], serde_json::json!(["v1"]));
    assert_eq!(info["Digest"], layout_tag_digest(&src, LAYOUT_TAG).as_str());

    let multi = oci_index_two_platforms(&tmp.path().join("multi"));
    let dest = format!("docker://{host}/alpha/multi:{MULTI_TAG}");
    skopeo_ok(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:{MULTI_TAG}", multi.display()),
        &dest,
    ]);
    let back = tmp.path().join("multi-back");
    skopeo_ok(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &dest,
        &format!("oci:{}:{MULTI_TAG}", back.display()),
    ]);
    assert_blobs_copied(&multi, &back);
    assert_eq!(
        layout_tag_digest(&back, MULTI_TAG),
        layout_tag_digest(&multi, MULTI_TAG),
        "the index round-trips byte for byte"
    );
    let raw: Value =
        serde_json::from_str(&skopeo_ok(&["inspect", "--tls-verify=false", "--creds", &creds, "--raw", &dest]))
            .unwrap();
    assert_eq!(raw["mediaType"], OCI_INDEX);
    assert_eq!(raw["manifests"].as_array().map(Vec::len), Some(2));

    // Without credentials skopeo is refused.
    let out = skopeo(&["inspect", "--tls-verify=false", "--no-creds", &dest]);
    assert!(!out.status.success());
}
