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
            "mediaType": m.media_type(),
            "digest": digest.to_string(),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": BASE_REF},
        }],
    });
    write(&dir.join("index.json"), index.to_string().as_bytes())?;
    write(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(digest)
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
