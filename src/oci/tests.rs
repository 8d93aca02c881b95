use serde_json::{Value, json};

use super::*;

fn d(n: u8) -> String {
    Digest::of(&[n]).to_string()
}

fn desc(media_type: &str, digest: &str, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

const LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn image_doc(config: Value, layers: Vec<Value>) -> Value {
    json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers})
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn reason(r: Result<Manifest, FormatError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn image_manifest_references() {
    let doc = image_doc(desc(OCI_CONFIG, &d(1), 2), vec![desc(LAYER_GZ, &d(2), 3)]);
    let m = Manifest::parse(&bytes(&doc), Some(OCI_MANIFEST)).unwrap();
    assert_eq!(m.media_type(), OCI_MANIFEST);
    assert!(!m.is_index());
    assert_eq!(m.blobs(), [Digest::of(&[1]), Digest::of(&[2])]);
    assert!(m.children().is_empty());
    assert_eq!(m.subject(), None);
    assert_eq!(m.artifact_type().as_deref(), Some(OCI_CONFIG), "an OCI manifest's artifact type is its config's");
    assert_eq!(m.annotations_json(), None);
    let image = m.image().unwrap();
    assert_eq!(image.config, Blob { digest: Digest::of(&[1]), media_type: OCI_CONFIG.into(), size: 2 });
    assert_eq!(image.layers, [Blob { digest: Digest::of(&[2]), media_type: LAYER_GZ.into(), size: 3 }]);
}

#[test]
fn artifact_manifest_with_subject() {
    let doc = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": desc("application/vnd.oci.empty.v1+json", &d(1), 2), "layers": [],
        "subject": desc(OCI_MANIFEST, &d(9), 100),
        "annotations": {"org.z": "last", "org.a": "first"}});
    let m = Manifest::parse(&bytes(&doc), None).unwrap();
    assert_eq!(m.subject(), Some(&Digest::of(&[9])));
    assert_eq!(m.artifact_type().as_deref(), Some("application/vnd.example.sig"));
    assert_eq!(m.annotations_json().as_deref(), Some(r#"{"org.a":"first","org.z":"last"}"#));
    assert_eq!(m.blobs(), [Digest::of(&[1])], "the subject is not a blob it needs");
    let e = m.image().unwrap_err().to_string();
    assert!(e.contains("not an image config"), "an artifact is not run: {e}");

    // The subject is held to the same rules as any descriptor.
    let mut bad = doc.clone();
    bad["subject"]["digest"] = json!("sha256:nope");
    assert!(reason(Manifest::parse(&bytes(&bad), None)).contains("subject"));
    bad["subject"] = json!({"digest": d(9), "size": 100});
    assert!(reason(Manifest::parse(&bytes(&bad), None)).contains("mediaType"));

    // An index can have a subject and an artifactType too.
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.food.stand",
        "manifests": [desc(OCI_MANIFEST, &d(3), 10)], "subject": desc(OCI_MANIFEST, &d(9), 100)});
    let m = Manifest::parse(&bytes(&idx), Some(OCI_INDEX)).unwrap();
    assert_eq!(
        (m.subject(), m.artifact_type().as_deref()),
        (Some(&Digest::of(&[9])), Some("application/vnd.food.stand"))
    );
    assert_eq!(m.children(), [Digest::of(&[3])]);
}

/// The one rule for descriptors without `mediaType`: refused, by the registry's
/// path and the engine's alike, wherever the descriptor sits.
#[test]
fn descriptor_without_media_type_is_refused_everywhere() {
    let no_type = json!({"digest": d(2), "size": 3});
    let cases = [
        ("layers[0]", image_doc(desc(OCI_CONFIG, &d(1), 2), vec![no_type.clone()])),
        ("config", image_doc(no_type.clone(), vec![])),
        ("manifests[0]", json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [no_type.clone()]})),
    ];
    for (path, doc) in cases {
        let body = bytes(&doc);
        let pushed = reason(Manifest::parse(&body, None));
        assert!(pushed.contains(path) && pushed.contains("mediaType"), "{path}: {pushed}");
        assert!(ImageManifest::parse(&body).is_err(), "{path}: the engine accepted what the registry refuses");
    }
}

#[test]
fn digests_in_descriptors() {
    let with_layer_digest = |digest: &str| {
        bytes(&image_doc(desc(OCI_CONFIG, &d(1), 2), vec![json!({"mediaType": LAYER_GZ, "digest": digest, "size": 3})]))
    };
    let upper = d(1).to_uppercase();
    for wrong_shape in ["sha256:abc", "sha256:../../etc", "nocolon", "sha256:", upper.as_str()] {
        let e = reason(Manifest::parse(&with_layer_digest(wrong_shape), None));
        assert!(e.contains("layers[0]"), "{wrong_shape}: {e}");
        assert!(ImageManifest::parse(&with_layer_digest(wrong_shape)).is_err());
    }
    let sha512 = format!("sha512:{}", "a".repeat(128));
    let e = reason(Manifest::parse(&with_layer_digest(&sha512), None));
    assert!(e.contains("layers[0]") && e.contains("sha512 is not supported"), "{e}");
    assert!(ImageManifest::parse(&with_layer_digest(&sha512)).is_err());
}

#[test]
fn index_with_platforms() {
    let entry = |n: u8, platform: Option<(&str, &str)>| {
        let mut v = desc(OCI_MANIFEST, &d(n), 10);
        if let Some((os, arch)) = platform {
            v["platform"] = json!({"os": os, "architecture": arch});
        }
        v
    };
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        entry(1, Some(("linux", "arm64"))), entry(2, None), entry(3, Some(("linux", "amd64"))),
        entry(4, Some(("windows", "amd64")))]});
    let m = Manifest::parse(&bytes(&idx), None).unwrap();
    assert!(m.is_index());
    assert_eq!(m.children().len(), 4);
    assert!(m.blobs().is_empty());
    assert_eq!(m.platform_entry("linux", "amd64"), Some(&Digest::of(&[3])));
    assert_eq!(m.platform_entry("linux", "arm64"), Some(&Digest::of(&[1])));
    assert_eq!(m.platform_entry("linux", "s390x"), Some(&Digest::of(&[2])), "the entry without a platform");
    let e = m.image().unwrap_err().to_string();
    assert!(e.contains("index"), "{e}");
    assert!(ImageManifest::parse(&bytes(&idx)).is_err());

    let only_platforms = json!({"schemaVersion": 2, "manifests": [entry(1, Some(("linux", "arm64")))]});
    let m = Manifest::parse(&bytes(&only_platforms), None).unwrap();
    assert_eq!(m.media_type(), OCI_INDEX, "the shape tells an index");
    assert_eq!(m.platform_entry("linux", "amd64"), None);

    // A platform needs its os and architecture, as the spec says.
    let mut bad = idx.clone();
    bad["manifests"][0]["platform"] = json!({"os": "linux"});
    assert!(reason(Manifest::parse(&bytes(&bad), None)).contains("manifests[0].platform"));
}

#[test]
fn docker_manifest_and_list() {
    let image = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, &d(1), 7), "layers": [desc(DOCKER_LAYER, &d(2), 9)]});
    let m = Manifest::parse(&bytes(&image), Some(DOCKER_MANIFEST)).unwrap();
    assert_eq!(m.media_type(), DOCKER_MANIFEST);
    assert_eq!(m.artifact_type(), None, "only OCI manifests take the config type as artifact type");
    assert_eq!(m.blobs().len(), 2);
    let run = ImageManifest::parse(&bytes(&image)).unwrap();
    assert_eq!((run.config.media_type.as_str(), run.layers[0].media_type.as_str()), (DOCKER_CONFIG, DOCKER_LAYER));

    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": d(5), "size": 500,
         "platform": {"architecture": "amd64", "os": "linux", "variant": "v3", "features": ["sse4"]}}]});
    let m = Manifest::parse(&bytes(&list), None).unwrap();
    assert_eq!(m.media_type(), DOCKER_LIST);
    assert_eq!(m.children(), [Digest::of(&[5])]);
    assert_eq!(m.platform_entry("linux", "amd64"), Some(&Digest::of(&[5])));
}

#[test]
fn media_type_agreement_and_shape() {
    let idx = bytes(&json!({"schemaVersion": 2, "manifests": [desc(OCI_MANIFEST, &d(1), 1)]}));
    assert_eq!(Manifest::parse(&idx, None).unwrap().media_type(), OCI_INDEX);
    assert!(Manifest::parse(&idx, Some(OCI_MANIFEST)).is_err(), "declared as a manifest, shaped as an index");
    let img = bytes(&image_doc(desc(OCI_CONFIG, &d(1), 2), vec![]));
    assert!(reason(Manifest::parse(&img, Some(OCI_INDEX))).contains("does not match"));
    // Both shapes at once (CVE-2021-41190).
    let both = json!({"schemaVersion": 2, "config": desc(OCI_CONFIG, &d(1), 2), "layers": [],
        "manifests": [desc(OCI_MANIFEST, &d(2), 1)]});
    assert!(reason(Manifest::parse(&bytes(&both), None)).contains("cannot have a config"), "read as an index");
    assert!(reason(Manifest::parse(&bytes(&both), Some(OCI_MANIFEST))).contains("cannot list manifests"));
    let mut both_as_index = both.clone();
    both_as_index["mediaType"] = json!(DOCKER_LIST);
    assert!(reason(Manifest::parse(&bytes(&both_as_index), None)).contains("cannot have a config"));

    let bads: [&[u8]; 8] = [
        b"{",
        b"[]",
        br#"{"schemaVersion":1}"#,
        br#"{"schemaVersion":"2"}"#,
        br#"{"schemaVersion":2}"#,
        br#"{"schemaVersion":2,"mediaType":"application/x-weird"}"#,
        br#"{"schemaVersion":2,"mediaType":7,"config":{}}"#,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
    ];
    for bad in bads {
        assert!(Manifest::parse(bad, None).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    let negative =
        image_doc(desc(OCI_CONFIG, &d(1), 2), vec![json!({"mediaType": LAYER_GZ, "digest": d(2), "size": -1})]);
    assert!(reason(Manifest::parse(&bytes(&negative), None)).contains("layers[0].size"));
    let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert!(reason(Manifest::parse(&huge, None)).contains("over"));
}

#[test]
fn what_clients_send_is_accepted() {
    // The conformance suite: no top-level mediaType (the Content-Type says it),
    // descriptors with `data` and an unknown field set to null.
    let config =
        json!({"mediaType": OCI_CONFIG, "digest": d(1), "size": 2, "data": "e30=", "newUnspecifiedField": null});
    let doc = json!({"schemaVersion": 2, "config": config, "layers": []});
    let m = Manifest::parse(&bytes(&doc), Some(OCI_MANIFEST)).unwrap();
    assert_eq!(m.blobs(), [Digest::of(&[1])]);
    // Go encodes an empty layer list as null; distribution accepts it missing.
    for layers in [Some(Value::Null), None] {
        let mut doc = image_doc(desc(OCI_CONFIG, &d(1), 2), vec![]);
        match layers {
            Some(v) => doc["layers"] = v,
            None => {
                doc.as_object_mut().unwrap().remove("layers");
            }
        }
        assert_eq!(Manifest::parse(&bytes(&doc), None).unwrap().blobs().len(), 1);
    }
    // A foreign layer is described, not stored here.
    let mut foreign = desc(DOCKER_LAYER, &d(3), 5);
    foreign["urls"] = json!(["https://example.com/layer"]);
    let doc = image_doc(desc(OCI_CONFIG, &d(1), 2), vec![desc(LAYER_GZ, &d(2), 3), foreign]);
    assert_eq!(Manifest::parse(&bytes(&doc), None).unwrap().blobs(), [Digest::of(&[1]), Digest::of(&[2])]);
}

#[test]
fn image_rules() {
    let over = (0..=MAX_LAYERS as u8).map(|n| desc(LAYER_GZ, &d(n), 1)).collect();
    let e = ImageManifest::parse(&bytes(&image_doc(desc(OCI_CONFIG, &d(1), 2), over))).unwrap_err();
    assert!(e.to_string().contains("over the cap"), "{e}");
    let octet = image_doc(desc("application/octet-stream", &d(1), 2), vec![]);
    assert!(ImageManifest::parse(&bytes(&octet)).is_err());
}

const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn config_json(run: &str) -> String {
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{run},"rootfs":{{"type":"layers","diff_ids":["{DIGEST_A}"]}}}}"#
    )
}

#[test]
fn parses_a_docker_config() {
    let json = config_json(
        r#"{"Entrypoint":["/docker-entrypoint.sh"],"Cmd":["nginx","-g","daemon off;"],
            "Env":["PATH=/usr/bin","A=b=c"],"WorkingDir":"/srv","User":"101:101",
            "ExposedPorts":{"80/tcp":{},"53/udp":{},"8080":{}},"Labels":{"x":"y"},"StopSignal":"SIGQUIT",
            "Healthcheck":{"Test":["CMD","true"]},"OnBuild":null}"#,
    );
    let c = ImageConfig::parse(json.as_bytes()).unwrap();
    assert_eq!((c.architecture.as_str(), c.os.as_str()), ("amd64", "linux"));
    assert_eq!(c.entrypoint, ["/docker-entrypoint.sh"]);
    assert_eq!(c.cmd, ["nginx", "-g", "daemon off;"]);
    assert_eq!(c.env, ["PATH=/usr/bin", "A=b=c"]);
    assert_eq!(c.working_dir.as_deref(), Some("/srv"));
    assert_eq!(c.user.as_deref(), Some("101:101"));
    assert_eq!(c.diff_ids, [Digest::parse(DIGEST_A).unwrap()]);
    assert_eq!(
        c.exposed_ports,
        [
            ExposedPort { port: 53, protocol: PortProtocol::Udp },
            ExposedPort { port: 80, protocol: PortProtocol::Tcp },
            ExposedPort { port: 8080, protocol: PortProtocol::Tcp },
        ]
    );
    assert_eq!(c.command(None).unwrap(), ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]);
    let over = vec!["sh".to_string()];
    assert_eq!(c.command(Some(&over)).unwrap(), ["/docker-entrypoint.sh", "sh"]);
}

#[test]
fn config_nulls_and_missing_fields() {
    let c = ImageConfig::parse(config_json(r#"{"Entrypoint":null,"Cmd":["/bin/sh"],"Env":null}"#).as_bytes()).unwrap();
    assert_eq!(c.command(None).unwrap(), ["/bin/sh"]);
    assert!(c.env.is_empty());
    let c = ImageConfig::parse(config_json("null").as_bytes()).unwrap();
    assert_eq!(c.command(None), None);
    let over = vec!["/app".to_string()];
    assert_eq!(c.command(Some(&over)).unwrap(), ["/app"]);
    assert_eq!(c.command(Some(&[])), None);
    let c =
        ImageConfig::parse(config_json(r#"{"Entrypoint":[],"Cmd":[],"WorkingDir":"","User":""}"#).as_bytes()).unwrap();
    assert_eq!(c.command(None), None);
    assert_eq!((c.working_dir, c.user), (None, None));
    // `history` is optional in the spec (present or null here, absent above).
    let with_history = r#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
        "history":[{"created_by":"x","empty_layer":true}]}"#;
    assert_eq!(ImageConfig::parse(with_history.as_bytes()).unwrap().architecture, "arm64");
    let null_history =
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"history":null}"#;
    assert!(ImageConfig::parse(null_history.as_bytes()).unwrap().diff_ids.is_empty());
}

#[test]
fn refuses_bad_configs() {
    for bad in [
        "{}".to_string(),
        "not json".to_string(),
        "[]".to_string(),
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:xyz"]}}"#.to_string(),
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"other","diff_ids":[]}}"#.to_string(),
        r#"{"architecture":"amd64","os":"linux"}"#.to_string(),
        r#"{"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_string(),
        config_json(r#"{"Cmd":"/bin/sh"}"#),
        config_json(r#"{"ExposedPorts":{"http":{}}}"#),
        config_json(r#"{"ExposedPorts":{"80/quic":{}}}"#),
        config_json(r#"{"ExposedPorts":{"70000/tcp":{}}}"#),
        config_json(r#"{"ExposedPorts":{"0/tcp":{}}}"#),
    ] {
        assert!(ImageConfig::parse(bad.as_bytes()).is_err(), "{bad}");
    }
    let e = ImageConfig::parse(config_json(r#"{"Cmd":"/bin/sh"}"#).as_bytes()).unwrap_err().to_string();
    assert!(e.contains("config.Cmd"), "the error names the field: {e}");
}

#[test]
fn layers_pair_with_diff_ids() {
    let doc = image_doc(desc(OCI_CONFIG, &d(1), 2), vec![desc(LAYER_GZ, &d(2), 3)]);
    let m = ImageManifest::parse(&bytes(&doc)).unwrap();
    let config = ImageConfig::parse(config_json("{}").as_bytes()).unwrap();
    let pairs = m.layers_with_diff_ids(&config).unwrap();
    assert_eq!((&pairs[0].0.digest, pairs[0].1), (&Digest::of(&[2]), &Digest::parse(DIGEST_A).unwrap()));
    let two = image_doc(desc(OCI_CONFIG, &d(1), 2), vec![desc(LAYER_GZ, &d(2), 3), desc(LAYER_GZ, &d(3), 3)]);
    assert!(ImageManifest::parse(&bytes(&two)).unwrap().layers_with_diff_ids(&config).is_err());
}
