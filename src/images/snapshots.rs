//! Unpacked layers on disk, one directory per compressed layer digest.
//!
//! Layout under `<data_dir>/images/snapshots/`:
//! - `<64 hex>/`: a complete snapshot, the overlayfs lowerdir for that layer.
//! - `flat-<64 hex>/`: several layers merged into one, for images with more layers
//!   than one overlay mount can name ([`SnapshotStore::lowers`]); the hex is a hash
//!   of the layer digests, bottom first.
//! - `<name>.tmp-<16 hex>/`: an unpack or a merge in progress, or left by a crash.
//!
//! A snapshot appears only by `renameat2(RENAME_NOREPLACE)` of a fully unpacked,
//! diff_id-verified, `syncfs`ed directory, so a half-unpacked tree is never used,
//! even after a power cut. Callers in one process that ask for the same digest
//! at once are serialised and the later ones reuse the first one's work; were
//! two unpacks to race anyway, the loser finds the winner's directory in place,
//! deletes its own and uses the winner's. Snapshots are never written after the
//! rename: overlayfs only reads lowerdirs, and berth never hands one out as an
//! upperdir. Removal renames the snapshot away first, so it too is atomic.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::digest_hex;
use super::error::ImageError;
use super::fs;
use super::unpack::{Compression, Limits, unpack_layer};

const TMP_MARK: &str = ".tmp-";
/// Directory name prefix of flattened snapshots (`flat-<64 hex>`).
const FLAT_PREFIX: &str = "flat-";

/// What [`SnapshotStore::gc`] deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Digests of the snapshots removed.
    pub removed: Vec<String>,
    /// Unfinished unpack directories removed.
    pub stale_tmp: usize,
}

#[derive(Debug)]
pub struct SnapshotStore {
    root: PathBuf,
    limits: Limits,
    /// Digests being unpacked by this process, each with the lock its callers share.
    in_flight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A sha256 hex, as [`crate::oci::Digest`] has it (layer snapshots and flattened
/// chains are both named by one).
fn is_snapshot_name(name: &str) -> bool {
    crate::oci::Digest::parse(&format!("sha256:{name}")).is_ok()
}

fn remove_tree(path: &Path) -> io::Result<()> {
    // std's remove_dir_all works through directory fds and never follows symlinks.
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn discard(path: &Path) {
    if let Err(e) = remove_tree(path) {
        tracing::warn!(path = %path.display(), error = %e, "could not remove an unfinished snapshot");
    }
}

fn tmp_name(hex: &str) -> String {
    format!("{hex}{TMP_MARK}{:016x}", rand::random::<u64>())
}

impl SnapshotStore {
    /// A store rooted at `root` (`<data_dir>/images/snapshots`) with default limits.
    pub fn new(root: PathBuf) -> Self {
        Self::with_limits(root, Limits::default())
    }

    pub fn with_limits(root: PathBuf, limits: Limits) -> Self {
        Self { root, limits, in_flight: Mutex::new(HashMap::new()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where the snapshot of a layer digest lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.root.join(digest_hex("layer digest", digest)?))
    }

    /// The snapshot directory if the layer is unpacked.
    pub fn get(&self, digest: &str) -> Result<Option<PathBuf>, ImageError> {
        Ok(self.existing(digest_hex("layer digest", digest)?))
    }

    /// The snapshot of layer `digest` (`sha256:<hex>` of the compressed blob),
    /// unpacking it from `open_blob` if it is not there yet. `media_type` must be a
    /// layer type (the bytes' magic numbers decide the decompressor). With
    /// `expected_diff_id`, an unpacked stream with another digest is refused and
    /// leaves nothing behind.
    pub fn ensure(
        &self,
        digest: &str,
        media_type: &str,
        expected_diff_id: Option<&str>,
        open_blob: impl FnOnce() -> io::Result<File>,
    ) -> Result<PathBuf, ImageError> {
        let hex = digest_hex("layer digest", digest)?;
        let declared = Compression::from_media_type(media_type).ok_or_else(|| ImageError::UnsupportedMediaType {
            digest: digest.to_string(),
            media_type: media_type.to_string(),
        })?;
        if let Some(d) = expected_diff_id {
            digest_hex("diff_id", d)?;
        }
        self.single_flight(hex, || self.get(digest), || self.unpack(digest, hex, declared, expected_diff_id, open_blob))
    }

    /// Runs `make` unless `existing` finds the result, with callers in this process
    /// that ask for the same `name` at once serialised: the later ones find the
    /// first one's result.
    fn single_flight(
        &self,
        name: &str,
        existing: impl Fn() -> Result<Option<PathBuf>, ImageError>,
        make: impl FnOnce() -> Result<PathBuf, ImageError>,
    ) -> Result<PathBuf, ImageError> {
        if let Some(path) = existing()? {
            return Ok(path);
        }
        let lock =
            self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default().clone();
        let result = {
            let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
            match existing() {
                Ok(Some(path)) => Ok(path),
                Ok(None) => make(),
                Err(e) => Err(e),
            }
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody else is waiting for this name.
        if Arc::strong_count(&lock) == 2 {
            in_flight.remove(name);
        }
        result
    }

    /// A complete directory named `name` in the root, if there is one.
    fn existing(&self, name: &str) -> Option<PathBuf> {
        let path = self.root.join(name);
        path.symlink_metadata().is_ok_and(|m| m.is_dir()).then_some(path)
    }

    /// Syncs the finished `tmp` and renames it to `name`; when another process
    /// got there first, its identical result is used and `tmp` is discarded.
    fn commit(&self, tmp: &Path, name: &str) -> Result<PathBuf, ImageError> {
        let synced = fs::open_dir_path(tmp).and_then(|dir| fs::syncfs(dir.as_fd()));
        if let Err(e) = synced {
            discard(tmp);
            return Err(ImageError::io("sync", tmp, e));
        }
        let target = self.root.join(name);
        match fs::rename_noreplace(tmp, &target) {
            Ok(()) => {
                File::open(&self.root)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| ImageError::io("fsync", &self.root, e))?;
                Ok(target)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                // Another process finished the same work first; its result is
                // identical by construction.
                discard(tmp);
                Ok(target)
            }
            Err(e) => {
                discard(tmp);
                Err(ImageError::io("rename into place", &target, e))
            }
        }
    }

    /// One snapshot holding what the overlay of `digests` (unpacked layers, bottom
    /// first) shows, made once per list of digests (see [`super::flatten`]).
    /// Its id, for [`Self::gc`]'s keep set, is `flat:<hex>` of its directory name.
    pub fn flatten(&self, digests: &[&str]) -> Result<PathBuf, ImageError> {
        let mut chain = Sha256::new();
        chain.update(b"berth flattened snapshot v1\n");
        let mut layers = Vec::with_capacity(digests.len());
        for d in digests {
            chain.update(digest_hex("layer digest", d)?);
            chain.update(b"\n");
            let path = self.get(d)?.ok_or_else(|| {
                ImageError::io("flatten", self.path(d).unwrap_or_default(), io::ErrorKind::NotFound.into())
            })?;
            layers.push(path);
        }
        let name = format!("{FLAT_PREFIX}{:x}", chain.finalize());
        self.single_flight(
            &name,
            || Ok(self.existing(&name)),
            || {
                let tmp = self.root.join(format!("{name}{TMP_MARK}{:016x}", rand::random::<u64>()));
                std::fs::create_dir(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
                match super::flatten::merge(&layers, &tmp) {
                    Ok(stats) => {
                        tracing::info!(layers = layers.len(), linked = stats.linked, "flattened layers");
                        self.commit(&tmp, &name)
                    }
                    Err(e) => {
                        discard(&tmp);
                        Err(e)
                    }
                }
            },
        )
    }

    /// The overlay lowerdirs, topmost first, for an image whose layers (`digests`,
    /// bottom first) are all unpacked: their snapshots when the paths joined with
    /// `:` take at most `budget` bytes, otherwise as many top layers as fit plus
    /// one flattened snapshot of all the layers below them.
    ///
    /// A layer listed more than once (the same bytes at two depths) is mounted once,
    /// at its topmost place: that copy decides every path the layer holds, so the
    /// lower copies change nothing, and overlayfs refuses the same directory twice.
    pub fn lowers(&self, digests: &[&str], budget: usize) -> Result<Vec<PathBuf>, ImageError> {
        let mut seen = HashSet::new();
        let mut unique: Vec<&str> = digests.iter().rev().copied().filter(|d| seen.insert(*d)).collect();
        unique.reverse();
        let digests = unique.as_slice();
        let paths = digests.iter().map(|d| self.path(d)).collect::<Result<Vec<_>, _>>()?;
        let cost = |p: &PathBuf| p.as_os_str().len() + 1;
        if paths.iter().map(cost).sum::<usize>() <= budget + 1 {
            return Ok(paths.into_iter().rev().collect());
        }
        let flat_cost = self.root.as_os_str().len() + 1 + FLAT_PREFIX.len() + 64;
        let mut keep = 0;
        let mut used = flat_cost;
        for p in paths.iter().rev() {
            if used + cost(p) > budget {
                break;
            }
            used += cost(p);
            keep += 1;
        }
        if flat_cost > budget {
            return Err(ImageError::Unsupported {
                entry: self.root.display().to_string(),
                what: format!("a snapshot path longer than the {budget}-byte overlay budget"),
            });
        }
        let split = digests.len() - keep;
        let flat = self.flatten(&digests[..split])?;
        Ok(paths[split..].iter().rev().cloned().chain([flat]).collect())
    }

    fn unpack(
        &self,
        digest: &str,
        hex: &str,
        declared: Compression,
        expected_diff_id: Option<&str>,
        open_blob: impl FnOnce() -> io::Result<File>,
    ) -> Result<PathBuf, ImageError> {
        std::fs::create_dir_all(&self.root).map_err(|e| ImageError::io("create", &self.root, e))?;
        let tmp = self.root.join(tmp_name(hex));
        std::fs::create_dir(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
        let layer_error =
            |source: ImageError| ImageError::Layer { digest: digest.to_string(), source: Box::new(source) };
        let unpacked = (|| {
            let blob = open_blob().map_err(|source| layer_error(ImageError::Read { source }))?;
            let stats = unpack_layer(blob, &tmp, &self.limits).map_err(layer_error)?;
            if stats.compression != declared {
                tracing::debug!(
                    digest,
                    declared = declared.as_str(),
                    found = stats.compression.as_str(),
                    "layer media type disagrees with its bytes; used what the bytes say"
                );
            }
            if let Some(expected) = expected_diff_id.filter(|e| **e != stats.diff_id) {
                return Err(ImageError::DiffIdMismatch {
                    digest: digest.to_string(),
                    expected: expected.to_string(),
                    actual: stats.diff_id,
                });
            }
            tracing::info!(digest, entries = stats.entries, bytes = stats.bytes, "unpacked layer");
            Ok(())
        })();
        if let Err(e) = unpacked {
            discard(&tmp);
            return Err(e);
        }
        self.commit(&tmp, hex)
    }

    /// Deletes a layer's snapshot; false if there was none. The directory is
    /// renamed away first so no reader sees it half deleted.
    pub fn remove(&self, digest: &str) -> Result<bool, ImageError> {
        self.remove_dir(digest_hex("layer digest", digest)?)
    }

    fn remove_dir(&self, name: &str) -> Result<bool, ImageError> {
        let path = self.root.join(name);
        let doomed = self.root.join(tmp_name(name));
        match std::fs::rename(&path, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ImageError::io("remove", &path, e)),
        }
        remove_tree(&doomed).map_err(|e| ImageError::io("remove", &doomed, e))?;
        Ok(true)
    }

    /// Digests (`sha256:<hex>`) of every complete snapshot.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let mut out: Vec<String> = self
            .entries()?
            .into_iter()
            .filter(|(name, is_dir)| *is_dir && is_snapshot_name(name))
            .map(|(name, _)| format!("sha256:{name}"))
            .collect();
        out.sort();
        Ok(out)
    }

    /// (name, is a directory) of everything in the root; none if it does not exist.
    fn entries(&self) -> Result<Vec<(String, bool)>, ImageError> {
        let read = match std::fs::read_dir(&self.root) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("list", &self.root, e)),
        };
        let mut out = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| ImageError::io("list", &self.root, e))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if let Some(name) = entry.file_name().to_str() {
                out.push((name.to_string(), is_dir));
            }
        }
        Ok(out)
    }

    /// Deletes every snapshot whose digest is not in `keep` (`sha256:<hex>`
    /// strings, `flat:<hex>` for flattened ones), and unfinished unpack directories. Digests being unpacked right
    /// now are left alone; deciding that no container still uses a snapshot is
    /// the caller's job.
    pub fn gc(&self, keep: &HashSet<String>) -> Result<GcReport, ImageError> {
        let (busy, entries) = {
            let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let busy: HashSet<String> = in_flight.keys().cloned().collect();
            // Listed under the lock: a temp dir made after this is not in the list.
            (busy, self.entries()?)
        };
        let mut report = GcReport::default();
        for (name, _) in entries {
            if let Some((hex, _)) = name.split_once(TMP_MARK) {
                if busy.contains(hex) {
                    continue;
                }
                let path = self.root.join(&name);
                remove_tree(&path).map_err(|e| ImageError::io("remove", &path, e))?;
                report.stale_tmp += 1;
            } else if is_snapshot_name(&name) && !busy.contains(&name) {
                let digest = format!("sha256:{name}");
                if !keep.contains(&digest) && self.remove(&digest)? {
                    report.removed.push(digest);
                }
            } else if let Some(hex) = name.strip_prefix(FLAT_PREFIX).filter(|h| is_snapshot_name(h)) {
                let id = format!("flat:{hex}");
                if !busy.contains(&name) && !keep.contains(&id) && self.remove_dir(&name)? {
                    report.removed.push(id);
                }
            }
        }
        report.removed.sort();
        Ok(report)
    }
}
