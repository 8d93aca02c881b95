//! Images: unpacking OCI layers into read-only snapshots, safely, and pulling images
//! from external registries ([`remote`]: the client and the layer cache, adr/019).
//!
//! Purpose: turn an image's layer blobs (from the registry's blob store, where
//! pushes and pulls both put them) into directories overlayfs can stack as
//! lowerdirs, once per layer digest. Manifests and image configs are read by
//! [`crate::oci`], the parser the registry uses too.
//!
//! Design:
//! - [`unpack::unpack_layer`] streams one layer (gzip, zstd or plain tar, told
//!   apart by magic bytes, not by the media type alone) into a directory:
//!   decompression and the diff_id hash run on their own thread, the tar parse and
//!   file writes on the caller's, as `tar -xzf` pipes `gzip -d` into `tar`.
//! - Layers are hostile input. Every entry is created with `*at` calls relative to
//!   a directory fd reached by opening one component at a time with
//!   `O_NOFOLLOW | O_DIRECTORY` from the snapshot root, so nothing is written
//!   through a symlink, including one the same archive planted earlier. Names with
//!   `..` are refused; a leading `/` is dropped (the name is taken as relative to
//!   the layer root, as Docker and containerd do). Hardlinks must name a file
//!   already in the layer, found by the same walk. Device nodes, fifos and sparse
//!   files are refused; entry count, per-entry and total sizes are capped
//!   ([`unpack::Limits`]) before any byte is written; GNU long names and PAX headers
//!   are parsed here under their own caps.
//! - OCI whiteouts become overlayfs whiteouts: `.wh.name` turns into a 0/0
//!   character device `name` (the only `mknod` berth makes) and `.wh..wh..opq`
//!   sets `trusted.overlay.opaque=y` on its directory. Both need root
//!   (`CAP_MKNOD`, `CAP_SYS_ADMIN` for `trusted.*`), which berth runs as.
//! - Ownership, modes (setuid bits included: images legitimately ship setuid
//!   binaries and containers run with `no_new_privs`), mtimes, `user.*` xattrs and
//!   file capabilities are restored; directories get theirs after their contents.
//! - [`snapshots::SnapshotStore`] unpacks into a temp dir, verifies the diff_id,
//!   `syncfs`es, and renames into place atomically; see its module doc.
//!
//! Limits: no sparse files; no device nodes or fifos; hardlinks only within one
//! layer; entries of 8 GiB and over (whose size only a PAX record can carry) are
//! refused unless the caps are raised; xattrs other than `user.*` and
//! `security.capability` are dropped; a layer whose parent path runs through a
//! symlink in the same archive is refused rather than resolved; zstd frames may
//! use libzstd's default maximum window (128 MiB of memory per unpack).

pub mod error;
pub mod flatten;
mod fs;
pub mod remote;
pub mod snapshots;
pub mod unpack;

#[cfg(test)]
mod tests;

pub use error::ImageError;
pub use snapshots::SnapshotStore;
pub use unpack::{Compression, Limits, UnpackStats, unpack_layer};

/// The hex part of a `sha256:<64 lowercase hex>` digest, as [`crate::oci::Digest`]
/// validates it; anything else is refused, which also keeps digests safe to use as
/// file names.
pub(crate) fn digest_hex<'a>(what: &'static str, digest: &'a str) -> Result<&'a str, ImageError> {
    crate::oci::Digest::parse(digest)
        .ok()
        .and(digest.strip_prefix("sha256:"))
        .ok_or_else(|| ImageError::InvalidDigest { what, value: digest.to_string() })
}
