//! Merging a stack of layer snapshots into one directory, for images with more
//! layers than a single overlay mount can name.
//!
//! The snapshots are in overlayfs form already (whiteouts are 0/0 character
//! devices, opaque directories carry `trusted.overlay.opaque=y`), so merging them
//! bottom to top is what overlayfs itself would show: a whiteout removes what the
//! layers below had under that name, an opaque directory replaces the lower
//! directory's contents, any other entry replaces a lower one of the same name,
//! and directories merge, taking the metadata of the topmost layer that has them.
//!
//! Files and symlinks are hard-linked from their snapshot, not copied: snapshots
//! are never written after they are complete, so sharing the inode shares content,
//! owner, mode, times and xattrs (file capabilities included), and files
//! hard-linked to each other inside a layer stay so. Directories are made afresh
//! with the owner, mode, mtime and xattrs of the layer that wins. The result holds
//! no whiteouts or opaque markers: nothing lies below it.
//!
//! Every step is an `*at` call on directory fds opened without following links
//! (see [`super::fs`]), the same discipline as the unpacker's.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::error::ImageError;
use super::fs::{self, Timestamp};

/// Directories nested deeper than this are refused rather than merged.
pub const MAX_DEPTH: usize = 256;

/// Prefix of the overlayfs xattrs that only mean something between layers.
const OVERLAY_XATTRS: &[u8] = b"trusted.overlay.";

/// What a merge did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeStats {
    /// Files and symlinks linked in.
    pub linked: u64,
    /// Directories made.
    pub dirs: u64,
    /// Entries removed by a whiteout or an opaque directory of a higher layer.
    pub removed: u64,
}

struct Merge<'a> {
    stats: MergeStats,
    /// The snapshot being merged, for error messages.
    layer: &'a Path,
}

fn io_err(layer: &Path, rel: &str, op: &'static str, e: std::io::Error) -> ImageError {
    ImageError::io(op, layer.join(rel), e)
}

fn is_opaque(dir: BorrowedFd<'_>) -> std::io::Result<bool> {
    Ok(fs::fxattrs(dir)?.iter().any(|(n, v)| n.as_bytes() == b"trusted.overlay.opaque" && v == b"y"))
}

fn mtime(st: &fs::Stat) -> Timestamp {
    Timestamp { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 }
}

/// Merges `layers` (bottom first) into `dest`, an existing empty directory.
pub fn merge(layers: &[PathBuf], dest: &Path) -> Result<MergeStats, ImageError> {
    let dst = fs::open_dir_path(dest).map_err(|e| ImageError::io("open", dest, e))?;
    let mut stats = MergeStats::default();
    for layer in layers {
        let src = fs::open_dir_path(layer).map_err(|e| ImageError::io("open", layer, e))?;
        let st = fs::stat_at(src.as_fd(), c".").map_err(|e| ImageError::io("inspect", layer, e))?;
        let mut m = Merge { stats: std::mem::take(&mut stats), layer };
        if is_opaque(src.as_fd()).map_err(|e| ImageError::io("read xattrs of", layer, e))? {
            m.clear(dst.as_fd(), "")?;
        }
        m.dir(src.as_fd(), dst.as_fd(), "", 0)?;
        m.copy_dir_meta(src.as_fd(), dst.as_fd(), &st, "")?;
        stats = m.stats;
    }
    Ok(stats)
}

impl Merge<'_> {
    /// Empties `dir` (the merged copy of `rel`).
    fn clear(&mut self, dir: BorrowedFd<'_>, rel: &str) -> Result<(), ImageError> {
        let names = fs::read_dir_names(dir).map_err(|e| io_err(self.layer, rel, "list merged", e))?;
        for name in names {
            fs::remove_all_at(dir, &name).map_err(|e| io_err(self.layer, rel, "remove merged", e))?;
            self.stats.removed += 1;
        }
        Ok(())
    }

    /// Merges the contents of `src` into `dst`.
    fn dir(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &str, depth: usize) -> Result<(), ImageError> {
        if depth >= MAX_DEPTH {
            return Err(ImageError::Unsupported {
                entry: rel.to_string(),
                what: format!("flattening directories nested more than {MAX_DEPTH} deep"),
            });
        }
        let names = fs::read_dir_names(src).map_err(|e| io_err(self.layer, rel, "list", e))?;
        for name in names {
            let child = match rel {
                "" => name.to_string_lossy().into_owned(),
                _ => format!("{rel}/{}", name.to_string_lossy()),
            };
            self.entry(src, dst, &name, &child, depth)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &CStr,
        rel: &str,
        depth: usize,
    ) -> Result<(), ImageError> {
        let st = fs::stat_at(src, name).map_err(|e| io_err(self.layer, rel, "inspect", e))?;
        let below = match fs::stat_at(dst, name) {
            Ok(b) => Some(b),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => return Err(io_err(self.layer, rel, "inspect merged", e)),
        };
        if fs::is_whiteout(&st) {
            if below.is_some() {
                fs::remove_all_at(dst, name).map_err(|e| io_err(self.layer, rel, "remove merged", e))?;
                self.stats.removed += 1;
            }
            return Ok(());
        }
        if !fs::is_dir(&st) {
            if below.is_some() {
                fs::remove_all_at(dst, name).map_err(|e| io_err(self.layer, rel, "replace merged", e))?;
            }
            fs::link_at(src, name, dst, name).map_err(|e| io_err(self.layer, rel, "link", e))?;
            self.stats.linked += 1;
            return Ok(());
        }
        let sub = fs::open_dir_at(src, name).map_err(|e| io_err(self.layer, rel, "open", e))?;
        match below {
            Some(b) if fs::is_dir(&b) => {
                if is_opaque(sub.as_fd()).map_err(|e| io_err(self.layer, rel, "read xattrs of", e))? {
                    let merged = fs::open_dir_at(dst, name).map_err(|e| io_err(self.layer, rel, "open merged", e))?;
                    self.clear(merged.as_fd(), rel)?;
                }
            }
            Some(_) => {
                fs::unlink_at(dst, name, false).map_err(|e| io_err(self.layer, rel, "replace merged", e))?;
                self.mkdir(dst, name, rel)?;
            }
            None => self.mkdir(dst, name, rel)?,
        }
        let merged = fs::open_dir_at(dst, name).map_err(|e| io_err(self.layer, rel, "open merged", e))?;
        self.dir(sub.as_fd(), merged.as_fd(), rel, depth + 1)?;
        self.copy_dir_meta(sub.as_fd(), merged.as_fd(), &st, rel)
    }

    fn mkdir(&mut self, dst: BorrowedFd<'_>, name: &CStr, rel: &str) -> Result<(), ImageError> {
        fs::mkdir_at(dst, name, 0o700).map_err(|e| io_err(self.layer, rel, "create merged", e))?;
        self.stats.dirs += 1;
        Ok(())
    }

    /// Gives the merged directory the owner, mode, xattrs and mtime of `src`
    /// (after its contents, so their creation does not bump the mtime).
    fn copy_dir_meta(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        st: &fs::Stat,
        rel: &str,
    ) -> Result<(), ImageError> {
        let err = |op, e| io_err(self.layer, rel, op, e);
        for (name, _) in fs::fxattrs(dst).map_err(|e| err("read merged xattrs of", e))? {
            fs::fremovexattr(dst, &name).map_err(|e| err("remove merged xattr of", e))?;
        }
        for (name, value) in fs::fxattrs(src).map_err(|e| err("read xattrs of", e))? {
            if !name.as_bytes().starts_with(OVERLAY_XATTRS) {
                fs::fsetxattr(dst, &name, &value).map_err(|e| err("set merged xattr of", e))?;
            }
        }
        fs::fchown(dst, st.st_uid, st.st_gid).map_err(|e| err("chown merged", e))?;
        fs::fchmod(dst, st.st_mode & 0o7777).map_err(|e| err("chmod merged", e))?;
        fs::futimens(dst, mtime(st)).map_err(|e| err("set mtime of merged", e))
    }
}
