//! From a pushed image to what a replica runs: the manifest (an index resolves to
//! its entry for this machine's platform), the config, and each layer unpacked once
//! into a snapshot straight from the registry's blob files, checked against the
//! config's diff_ids; an image with more layers than one overlay mount names has its
//! bottom layers flattened into one snapshot. Every document is read by
//! [`crate::oci`], the parser the registry checked the push with.

use std::path::PathBuf;

use crate::images::Compression;
use crate::images::snapshots::SnapshotStore;
use crate::oci::{ImageConfig, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Manifest};
use crate::registry::blobs::BlobStore;

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

/// This machine's platform, as GOARCH names it.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Every blob an image needs to run again: the manifest (and the index entry picked
/// for this machine), the config and the layers. What cannot be read is skipped:
/// the caller keeps what it can name.
pub fn referenced_blobs(blobs: &BlobStore, manifest_digest: &str) -> Vec<String> {
    let mut out = vec![manifest_digest.to_string()];
    let read = |d: &crate::oci::Digest| {
        blobs.read_small(d, MAX_MANIFEST_BYTES as u64).ok().and_then(|b| Manifest::parse(&b, None).ok())
    };
    let Some(mut manifest) = crate::oci::Digest::parse(manifest_digest).ok().as_ref().and_then(read) else {
        return out;
    };
    if manifest.is_index() {
        let Some(entry) = manifest.platform_entry("linux", architecture()).cloned() else { return out };
        out.push(entry.to_string());
        let Some(m) = read(&entry) else { return out };
        manifest = m;
    }
    out.extend(manifest.blobs().iter().map(ToString::to_string));
    out
}

/// Parses the manifest and config and makes sure every layer is unpacked.
pub fn prepare(blobs: &BlobStore, snapshots: &SnapshotStore, manifest: Vec<u8>) -> Result<Prepared, EngineError> {
    let mut manifest = Manifest::parse(&manifest, None).map_err(image_err)?;
    if manifest.is_index() {
        let entry = manifest
            .platform_entry("linux", architecture())
            .ok_or_else(|| image_err("the image index has no entry for this machine's platform"))?;
        let bytes = blobs.read_small(entry, MAX_MANIFEST_BYTES as u64).map_err(image_err)?;
        manifest = Manifest::parse(&bytes, None).map_err(image_err)?;
    }
    let image = manifest.image().map_err(image_err)?;
    // Refuse an unknown layer type before unpacking any layer.
    if let Some(l) = image.layers.iter().find(|l| Compression::from_media_type(&l.media_type).is_none()) {
        return Err(image_err(format!("layer {}: unsupported media type {:?}", l.digest, l.media_type)));
    }
    let config_bytes = blobs.read_small(&image.config.digest, MAX_CONFIG_BYTES as u64).map_err(image_err)?;
    let config = ImageConfig::parse(&config_bytes).map_err(image_err)?;
    let mut digests = Vec::new();
    for (layer, diff_id) in image.layers_with_diff_ids(&config).map_err(image_err)? {
        let path = blobs.blob_path(&layer.digest);
        let digest = layer.digest.to_string();
        snapshots
            .ensure(&digest, &layer.media_type, Some(&diff_id.to_string()), || std::fs::File::open(&path))
            .map_err(image_err)?;
        digests.push(digest);
    }
    let digests: Vec<&str> = digests.iter().map(String::as_str).collect();
    let layers = snapshots.lowers(&digests, crate::runtime::rootfs::LOWERDIR_BUDGET).map_err(image_err)?;
    Ok(Prepared { config, layers })
}
