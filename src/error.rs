//! Error policy.
//!
//! - Each subsystem has one `thiserror` enum (`StoreError`, `ApiError`, `AuthError`, …);
//!   `anyhow` is used only in `main` and throw-away tools.
//! - I/O errors carry what they touched (a path, a socket address).
//! - The HTTP status of an error is decided in exactly one place per protocol, by an
//!   exhaustive `match` with no `_` arm: `api/error.rs` for `/v1`.
//! - A 5xx body says nothing internal: the cause is logged with the request id and the
//!   client sees `internal` and the id to quote.
//! - Messages are lowercase with no trailing period.

use std::path::PathBuf;

/// An I/O error with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self { op, path: path.into(), source }
    }
}
