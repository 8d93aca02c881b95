//! From a pushed image to what a replica runs: the manifest (an index resolves to
//! its linux/amd64 entry), the config, and each layer unpacked once into a snapshot
//! straight from the registry's blob files, checked against the config's diff_ids;
//! an image with more layers than one overlay mount names has its bottom layers
//! flattened into one snapshot.

use std::path::PathBuf;

use crate::images::config::{ImageConfig, ImageManifest};
use crate::images::snapshots::SnapshotStore;
use crate::registry::blobs::BlobStore;
use crate::registry::names::Digest;

use super::EngineError;

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub config: ImageConfig,
    /// Layer snapshots, topmost first (overlayfs `lowerdir` order).
    pub layers: Vec<PathBuf>,
}

fn image_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Image(e.to_string())
}

fn blob_bytes(blobs: &BlobStore, digest: &str, max: u64) -> Result<Vec<u8>, EngineError> {
    let d = Digest::parse(digest).map_err(|_| image_err(format!("{digest} is not a sha256 digest")))?;
    blobs.read_small(&d, max).map_err(image_err)
}

/// Picks the manifest to run from a manifest or an index.
fn single_platform(blobs: &BlobStore, bytes: Vec<u8>) -> Result<Vec<u8>, EngineError> {
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(image_err)?;
    let Some(list) = v["manifests"].as_array() else { return Ok(bytes) };
    let pick = list
        .iter()
        .find(|m| {
            m["platform"]["os"] == "linux"
                && m["platform"]["architecture"]
                    == std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64")
        })
        .or_else(|| list.iter().find(|m| m["platform"].is_null()))
        .ok_or_else(|| image_err("the image index has no entry for this machine's platform"))?;
    let digest = pick["digest"].as_str().ok_or_else(|| image_err("an index entry has no digest"))?;
    blob_bytes(blobs, digest, crate::registry::manifests::MAX_MANIFEST_BYTES as u64)
}

/// Every blob an image needs to run again: the manifest (and the index entry picked
/// for this machine), the config and the layers. What cannot be read is skipped:
/// the caller keeps what it can name.
pub fn referenced_blobs(blobs: &BlobStore, manifest_digest: &str) -> Vec<String> {
    let mut out = vec![manifest_digest.to_string()];
    let max = crate::registry::manifests::MAX_MANIFEST_BYTES as u64;
    let Ok(top) = blob_bytes(blobs, manifest_digest, max) else { return out };
    let Ok(picked) = single_platform(blobs, top.clone()) else { return out };
    if picked != top {
        out.push(crate::registry::names::Digest::of(&picked).to_string());
    }
    if let Ok(m) = ImageManifest::parse(&picked) {
        out.push(m.config.digest.clone());
        out.extend(m.layers.iter().map(|l| l.descriptor.digest.clone()));
    }
    out
}

/// Parses the manifest and config and makes sure every layer is unpacked.
pub fn prepare(blobs: &BlobStore, snapshots: &SnapshotStore, manifest: Vec<u8>) -> Result<Prepared, EngineError> {
    let manifest = single_platform(blobs, manifest)?;
    let manifest = ImageManifest::parse(&manifest).map_err(image_err)?;
    let config = ImageConfig::parse(&blob_bytes(blobs, &manifest.config.digest, 16 << 20)?).map_err(image_err)?;
    let mut digests = Vec::new();
    for (layer, diff_id) in manifest.layers_with_diff_ids(&config).map_err(image_err)? {
        let d = &layer.descriptor;
        let digest = Digest::parse(&d.digest).map_err(|_| image_err(format!("{} is not a sha256 digest", d.digest)))?;
        let path = blobs.blob_path(&digest);
        snapshots.ensure(&d.digest, &d.media_type, Some(diff_id), || std::fs::File::open(&path)).map_err(image_err)?;
        digests.push(d.digest.as_str());
    }
    let layers = snapshots.lowers(&digests, crate::runtime::rootfs::LOWERDIR_BUDGET).map_err(image_err)?;
    Ok(Prepared { config, layers })
}
