//! Errors of the image side: parsing image configs and manifests, unpacking layers,
//! managing snapshots. Each variant names what it touched (a path, an archive entry,
//! a digest). Entry names come from untrusted archives, so they are printed with
//! `{:?}`: control characters in a hostile name cannot forge log lines.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation on berth's own directories failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Writing one archive entry into the snapshot failed.
    #[error("layer entry {entry:?}: {op}: {source}")]
    Entry {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The layer blob could not be read.
    #[error("reading the layer blob: {source}")]
    Read {
        #[source]
        source: io::Error,
    },

    /// The layer bytes are not a readable (compressed) tar stream.
    #[error("layer is not a valid archive: {reason}")]
    Malformed { reason: String },

    /// The entry's name or a parent on its way leaves the snapshot root, or goes
    /// through something that is not a real directory (such as a symlink).
    #[error("layer entry {entry:?} is refused: {reason}")]
    UnsafePath { entry: String, reason: String },

    /// A hardlink whose target is not an existing file inside the snapshot.
    #[error("layer entry {entry:?} is refused: hardlink target {target:?} {reason}")]
    BadHardlink { entry: String, target: String, reason: &'static str },

    /// Device nodes, fifos and other entry kinds a layer must not carry.
    #[error("layer entry {entry:?} is refused: {kind} entries are not allowed in a layer")]
    ForbiddenEntry { entry: String, kind: &'static str },

    /// Valid tar, but a feature berth does not unpack (sparse files).
    #[error("layer entry {entry:?} is refused: {what} is not supported")]
    Unsupported { entry: String, what: String },

    #[error("layer is refused: it has more than {limit} entries")]
    TooManyEntries { limit: u64 },

    #[error("layer entry {entry:?} is refused: it declares {size} bytes, over the {limit}-byte cap per entry")]
    EntryTooLarge { entry: String, size: u64, limit: u64 },

    #[error("layer entry {entry:?} is refused: it brings the layer to {total} bytes, over the {limit}-byte cap")]
    LayerTooLarge { entry: String, total: u64, limit: u64 },

    #[error("layer {digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { digest: String, media_type: String },

    #[error("layer {digest} unpacks to diff_id {actual}, but the image config says {expected}")]
    DiffIdMismatch { digest: String, expected: String, actual: String },

    #[error("{what} {value:?} is not a sha256 digest")]
    InvalidDigest { what: &'static str, value: String },

    /// Unpacking a layer failed; the cause says where.
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: Box<ImageError>,
    },
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io { op, path: path.into(), source }
    }

    pub(crate) fn entry(entry: &str, op: &'static str, source: io::Error) -> Self {
        ImageError::Entry { entry: entry.to_string(), op, source }
    }

    pub(crate) fn unsafe_path(entry: &str, reason: impl Into<String>) -> Self {
        ImageError::UnsafePath { entry: entry.to_string(), reason: reason.into() }
    }

    /// The innermost error, looking through [`ImageError::Layer`].
    pub fn root_cause(&self) -> &ImageError {
        match self {
            ImageError::Layer { source, .. } => source.root_cause(),
            other => other,
        }
    }
}
