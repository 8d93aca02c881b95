//! OCI formats: digests, image manifests, indexes and image configs.
//!
//! Purpose: the one place berth reads these documents. The registry asks it what a
//! pushed manifest references (blobs, child manifests, subject), how it is typed
//! (media type, artifactType) and annotated; the engine asks it which layers to
//! unpack and how to run the image (Entrypoint, Cmd, Env, User, WorkingDir,
//! ExposedPorts, diff_ids). Both get the same answer from the same bytes.
//!
//! Design:
//! - Built on `oci_spec::image` (`ImageManifest`, `ImageIndex`, `Descriptor`,
//!   `ImageConfiguration`, `Digest`). Docker's schema 2 manifest and manifest list
//!   have the OCI shapes, so one parse serves both; the media type decides which
//!   shape is read.
//! - [`Digest`] is the one digest type: the OCI grammar as oci-spec checks it,
//!   narrowed to sha256, the only algorithm stored. A well-formed digest of another
//!   algorithm is [`DigestError::UnsupportedAlgorithm`], anything else `Malformed`.
//! - A descriptor must carry `mediaType`, `digest` and `size`, as the image spec
//!   requires (adr/012); a document that reads as both an image and an index is
//!   refused. Unknown fields are ignored, as the spec asks.
//! - Where oci-spec 0.7 is stricter than the spec, the JSON is completed before the
//!   typed parse: a missing or `null` `layers` (Go's encoding of an empty list) is an
//!   empty list, a missing `history` in a config is empty.
//! - Nothing here does I/O: callers hand in bytes. Manifests are stored
//!   byte-for-byte as pushed; the parse only reads them.
//!
//! Limits: sha256 only; no Docker schema 1; a bare string where the spec wants a
//! list (`"Cmd": "sh"`) is refused; 4 MiB per document; 128 layers to run an image.

mod config;
mod digest;
mod manifest;

pub use config::{ExposedPort, ImageConfig, MAX_CONFIG_BYTES, PortProtocol};
pub use digest::{Digest, DigestError};
pub use manifest::{
    Blob, DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, ImageManifest, MAX_LAYERS, MAX_MANIFEST_BYTES, Manifest,
    OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct FormatError {
    /// `manifest`, `image config` or `image`.
    pub what: &'static str,
    pub reason: String,
}

#[cfg(test)]
mod tests;
