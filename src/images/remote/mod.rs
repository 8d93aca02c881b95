//! External images: a client for remote OCI registries that pulls into berth's own
//! content store, and the layer cache that keeps what it pulled.
//!
//! Purpose: `docker.io/library/nginx:1.27` (any fully qualified reference, see
//! [`reference`]) becomes a manifest digest the engine runs exactly like a pushed
//! image (`RootSource::Image { manifest }`): the manifest and every blob it needs
//! land in the registry's [`BlobStore`](crate::registry::blobs::BlobStore), the same
//! files pushed images live in.
//!
//! Design (adr/019):
//! - Transport ([`client`]): hyper's pooled HTTP/1.1 client, TLS by rustls with ring
//!   and the system's CA roots; `[dns] overrides` answer names before the system
//!   resolver; plain HTTP only to a loopback host as written in the reference
//!   (`127.0.0.0/8`, `::1`, `localhost`), and never after a redirect elsewhere.
//!   Timeouts: connect 10 s, response head 30 s, bodies a minimum rate after a grace
//!   and a longest pause. Redirects (blob GETs go to object storage) are followed up
//!   to 5 times, without the `Authorization` header once they leave the host.
//! - Authentication ([`auth`]): anonymous, Basic, and the token flow of Docker Hub and
//!   berth's own `/v2`, tokens kept per repository and user for their lifetime.
//! - Pulling ([`Puller::pull`]): the manifest (by tag, a HEAD first: a digest the store
//!   already has is not fetched again), an index resolved to linux/<this machine's
//!   architecture>, then each missing blob streamed through the blob store's upload
//!   path (hashed while written, fsynced, renamed into place only when the digest and
//!   size match), three at a time. Nothing partial or unverified becomes visible;
//!   a failed pull leaves no upload behind. Manifests are stored last, by digest.
//! - The layer cache ([`cache`]): every blob a pull uses is recorded (`oci_cache`,
//!   with `last_used_at`); registry GC keeps cached blobs; cache GC evicts the least
//!   recently used ones down to `[cache] max_bytes`, never a pinned (in use) or
//!   recently used one, and never a file a hosted repository links.
//!
//! Limits: sha256 only; no Docker schema 1; no foreign (non-distributable) layers;
//! 4 MiB per manifest; blobs up to [`MAX_BLOB_BYTES`]; no HTTP/2; no resuming a blob
//! that broke off (it is fetched again next time); tokens are not persisted.

mod auth;
pub mod cache;
mod client;
mod pull;
pub mod reference;

#[cfg(test)]
mod tests;

use zeroize::Zeroizing;

pub use cache::{CacheError, CacheGcReport, CacheStatus};
pub use pull::{MAX_BLOB_BYTES, Pulled, Puller};
pub use reference::{ImageRef, ReferenceError, is_external};

/// Credentials for a remote registry: a user name and a password or token.
#[derive(Clone)]
pub struct RegistryLogin {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin").field("username", &self.username).field("password", &"***").finish()
    }
}

/// Why a pull failed, classified so a deployment log can say what happened. No
/// variant ever carries a credential or a URL's query string.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// No connection (DNS, refused, TLS) or it broke off.
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    /// 401: no credentials where some are needed, or wrong ones.
    #[error("registry {registry}: {reason}")]
    Unauthorized { registry: String, reason: String },
    /// 403: the credentials are fine but may not pull this.
    #[error("registry {registry} denied access to {repository}")]
    Denied { registry: String, repository: String },
    /// 404: the repository, tag or blob is not there.
    #[error("{what} was not found in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("{what} has digest {actual}, not {expected}: the content is refused")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what} from registry {registry} is larger than {limit} bytes")]
    TooLarge { registry: String, what: String, limit: u64 },
    #[error("registry {registry} was too slow: {what}")]
    Timeout { registry: String, what: String },
    /// Any other status (5xx, 429, …).
    #[error("registry {registry} answered {status} for {what}")]
    Status { registry: String, status: u16, what: String },
    /// An answer that breaks the protocol (a bad redirect, a token answer without a
    /// token, a manifest that does not parse).
    #[error("registry {registry} sent an invalid answer: {reason}")]
    Protocol { registry: String, reason: String },
    /// A well-formed image berth cannot run (no entry for this platform, schema 1,
    /// foreign layers, an unknown layer type).
    #[error("{0}")]
    Unsupported(String),
    #[error("not enough disk space for the pull: {needed} bytes needed, {available} available")]
    NoSpace { needed: u64, available: u64 },
    /// berth's own storage failed.
    #[error("storing the image failed: {0}")]
    Local(String),
}

impl PullError {
    /// A short machine-readable class for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            PullError::InvalidReference(_) => "invalid_reference",
            PullError::Unreachable { .. } => "unreachable",
            PullError::Unauthorized { .. } => "unauthorized",
            PullError::Denied { .. } => "denied",
            PullError::NotFound { .. } => "not_found",
            PullError::DigestMismatch { .. } => "digest_mismatch",
            PullError::TooLarge { .. } => "too_large",
            PullError::Timeout { .. } => "timeout",
            PullError::Status { .. } => "registry_error",
            PullError::Protocol { .. } => "protocol_error",
            PullError::Unsupported(_) => "unsupported",
            PullError::NoSpace { .. } => "no_space",
            PullError::Local(_) => "internal",
        }
    }
}

impl From<crate::store::StoreError> for PullError {
    fn from(e: crate::store::StoreError) -> Self {
        PullError::Local(e.to_string())
    }
}

impl From<crate::error::PathError> for PullError {
    fn from(e: crate::error::PathError) -> Self {
        PullError::Local(e.to_string())
    }
}

/// This machine's platform as OCI names it (GOOS/GOARCH).
pub fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}
