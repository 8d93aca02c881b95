//! OCI image layouts on both sides of buildah: a base image of the blob store
//! written out as a layout (hard links, no copy) for `FROM oci:…`, and the layout
//! buildah pushes read back into the hosted registry, every blob checked against its
//! digest.

use std::path::{Path, PathBuf};

use crate::oci::Digest;
use crate::oci::Manifest;
use crate::registry::blobs::BlobStore;
use crate::registry::manifests::MAX_MANIFEST_BYTES;

/// The name a layout's one image goes by (`oci:<dir>:base`).
pub const BASE_REF: &str = "base";

fn io(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

/// Writes the image `manifest` (an index picks this machine's platform) of the
/// blob store as an OCI layout in `dir`; returns the image manifest's digest.
pub fn export(blobs: &BlobStore, manifest: &str, dir: &Path) -> Result<Digest, String> {
    let read = |d: &Digest| -> Result<(Vec<u8>, Manifest), String> {
        let bytes = blobs.read_small(d, MAX_MANIFEST_BYTES as u64).map_err(|e| format!("manifest {d}: {e}"))?;
        let m = Manifest::parse(&bytes, None).map_err(|e| format!("manifest {d}: {e}"))?;
        Ok((bytes, m))
    };
    let mut digest = Digest::parse(manifest).map_err(|e| format!("{manifest}: {e}"))?;
    let (mut bytes, mut m) = read(&digest)?;
    if m.is_index() {
        let arch = crate::engine::image::architecture();
        digest = m
            .platform_entry("linux", arch)
            .cloned()
            .ok_or_else(|| format!("image {manifest} has no entry for linux/{arch}"))?;
        (bytes, m) = read(&digest)?;
    }
    let store = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&store).map_err(|e| io("create", &store, e))?;
    // An OCI layout lists OCI manifests only (buildah skips any other entry): a
    // Docker schema 2 image, what `docker push` sends, is described again in OCI
    // terms. Its config and layers are the same bytes, so only the manifest changes.
    let mut media_type = m.media_type().to_string();
    if media_type == DOCKER_MANIFEST {
        bytes = as_oci_manifest(&bytes)?;
        digest = Digest::of(&bytes);
        media_type = OCI_MANIFEST.to_string();
        write(&store.join(digest.hex()), &bytes)?;
    }
    for d in std::iter::once(&digest).chain(m.blobs()) {
        let from = blobs.blob_path(d);
        let to = store.join(d.hex());
        if to.exists() {
            continue;
        }
        // A link keeps the content even if a collection drops the blob meanwhile;
        // across filesystems it is a copy.
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(|e| io("copy", &from, e))?;
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": BASE_REF},
        }],
    });
    write(&dir.join("index.json"), index.to_string().as_bytes())?;
    write(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(digest)
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A Docker schema 2 manifest as an OCI image manifest of the same config and layers.
fn as_oci_manifest(docker: &[u8]) -> Result<Vec<u8>, String> {
    let mut v: serde_json::Value =
        serde_json::from_slice(docker).map_err(|e| format!("the base's Docker manifest: {e}"))?;
    v["mediaType"] = OCI_MANIFEST.into();
    v["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    if let Some(layers) = v["layers"].as_array_mut() {
        for l in layers {
            let oci = match l["mediaType"].as_str().unwrap_or_default() {
                "application/vnd.docker.image.rootfs.diff.tar.gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.docker.image.rootfs.diff.tar.zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
                "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                }
                other => {
                    return Err(format!("the base has a layer of type {other:?}, which an OCI image cannot carry"));
                }
            };
            l["mediaType"] = oci.into();
        }
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

fn write(p: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(p, bytes).map_err(|e| io("write", p, e))
}

/// The image a layout holds (its first manifest): media type, bytes, and the path
/// of each blob it needs.
pub struct Pushed {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub blobs: Vec<(Digest, PathBuf)>,
}

/// Reads the one image of the layout buildah pushed into `dir`.
pub fn read(dir: &Path) -> Result<Pushed, String> {
    let index_path = dir.join("index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).map_err(|e| io("read", &index_path, e))?)
            .map_err(|e| io("parse", &index_path, std::io::Error::other(e)))?;
    let entry = index["manifests"].get(0).ok_or("the built image's layout lists no manifest")?;
    let digest = entry["digest"]
        .as_str()
        .and_then(|d| Digest::parse(d).ok())
        .ok_or("the built image's layout names no manifest digest")?;
    let blob = |d: &Digest| dir.join("blobs").join("sha256").join(d.hex());
    let path = blob(&digest);
    let manifest = std::fs::read(&path).map_err(|e| io("read", &path, e))?;
    if Digest::of(&manifest) != digest {
        return Err(format!("the built manifest does not have digest {digest}"));
    }
    let parsed = Manifest::parse(&manifest, entry["mediaType"].as_str()).map_err(|e| format!("built manifest: {e}"))?;
    if parsed.is_index() {
        return Err("the built image is an index, not an image".into());
    }
    let blobs = parsed.blobs().iter().map(|d| (d.clone(), blob(d))).collect();
    Ok(Pushed { media_type: parsed.media_type().to_string(), manifest, blobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_manifest_becomes_an_oci_one_of_the_same_blobs() {
        let config = format!("sha256:{}", "a".repeat(64));
        let layer = format!("sha256:{}", "b".repeat(64));
        let docker = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 10, "digest": config},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 20, "digest": layer}],
        });
        let oci = as_oci_manifest(docker.to_string().as_bytes()).unwrap();
        let m = Manifest::parse(&oci, None).unwrap();
        assert_eq!(m.media_type(), OCI_MANIFEST);
        let v: serde_json::Value = serde_json::from_slice(&oci).unwrap();
        assert_eq!(v["config"]["digest"], config.as_str());
        assert_eq!(v["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
        assert_eq!(v["layers"][0]["digest"], layer.as_str());
        assert_eq!(v["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");

        let mut odd = docker.clone();
        odd["layers"][0]["mediaType"] = "application/x-floppy".into();
        assert!(as_oci_manifest(odd.to_string().as_bytes()).unwrap_err().contains("floppy"));
    }
}
