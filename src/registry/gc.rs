//! Online garbage collection: mark from tags, sweep with a grace period.
//!
//! - The database half runs as one write transaction (`store::registry::gc_sweep`).
//!   Blobs that replicas run from are *pinned* by the caller and never collected,
//!   even when no tag or manifest holds them any more: a replica must be able to
//!   rebuild its root filesystem after a host reboot.
//! - `gc_lock` is held exclusively only while deciding and deleting: during the
//!   sweep and the deletion of the files it chose, and for each batch of orphan
//!   files (files with no database row) while that batch is re-checked and deleted.
//!   Listing the blob directories, which is the slow part, holds no lock, so pushes
//!   go on during a collection and wait at most for one short step.
//! - Anything younger than the grace period is kept: the blobs of a push in flight
//!   are linked but not yet referenced by a manifest, and the grace period is what
//!   keeps them. Orphan files (a crash between rename and commit) and upload
//!   directories with no session are reclaimed once older than the grace period and
//!   the upload TTL respectively.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::Registry;
use super::error::RegistryResult;
use super::names::Digest;
use crate::store::registry::{self as sql, GcReport};

/// Orphan files re-checked and deleted per hold of the lock.
const ORPHAN_BATCH: usize = 256;

impl Registry {
    /// Held (shared) by anything else that makes a blob file appear and records it,
    /// as blob commits do: external pulls into the layer cache. No collection can
    /// then delete the file between its rename and its row.
    pub async fn hold_commits(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock.read().await
    }

    /// Held (exclusively) by another collector while it decides and deletes blob
    /// files: the layer cache's eviction.
    pub async fn hold_collection(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gc_lock.write().await
    }
}

/// Runs one collection, keeping the `pinned` blob digests whatever references them,
/// and records its report.
pub async fn run(reg: &Registry, pinned: &HashSet<String>) -> RegistryResult<GcReport> {
    let started = Instant::now();
    let now = crate::ids::unix_now();
    let cutoff = now - reg.gc_grace.as_secs() as i64;
    let upload_cutoff = now - reg.upload_ttl.as_secs() as i64;
    let (mut blobs_deleted, mut bytes_freed, mut uploads_purged, manifests_deleted) = {
        let _exclusive = reg.gc_lock.write().await;
        let keep = pinned.clone();
        let sweep = reg.store.write(move |c| sql::gc_sweep(c, cutoff, upload_cutoff, &keep)).await?;
        reg.forget_uploads(&sweep.uploads);
        let purged = sweep.uploads.len() as i64;
        let manifests_deleted = sweep.manifests_deleted;
        let blobs = reg.blobs.clone();
        let (deleted, freed) = super::blocking(move || {
            let (mut deleted, mut freed) = (0i64, 0i64);
            for (digest, size) in &sweep.blobs {
                if let Ok(d) = Digest::parse(digest) {
                    if remove(&blobs.blob_path(&d)) {
                        deleted += 1;
                        freed += size;
                    }
                }
            }
            for id in &sweep.uploads {
                blobs.remove_upload(id);
            }
            (deleted, freed)
        })
        .await?;
        (deleted, freed, purged, manifests_deleted)
    };
    // Orphans: files the database never learnt about. Listed without the lock, then
    // re-checked against the database batch by batch under it.
    let blobs = reg.blobs.clone();
    let (grace, upload_ttl) = (reg.gc_grace, reg.upload_ttl);
    let (blob_candidates, upload_candidates) = super::blocking(move || {
        let mut files = Vec::new();
        for prefix in read_dir(&blobs.blobs_dir()) {
            for file in read_dir(&prefix) {
                if older_than(&file, grace) {
                    files.push(file);
                }
            }
        }
        let dirs: Vec<PathBuf> =
            read_dir(&blobs.uploads_dir()).into_iter().filter(|d| older_than(d, upload_ttl)).collect();
        (files, dirs)
    })
    .await?;
    for batch in blob_candidates.chunks(ORPHAN_BATCH) {
        let named: Vec<(PathBuf, String)> = batch
            .iter()
            .filter_map(|f| {
                let name = f.file_name()?.to_str()?;
                Some((f.clone(), format!("sha256:{name}")))
            })
            .filter(|(_, d)| !pinned.contains(d))
            .collect();
        let _exclusive = reg.gc_lock.write().await;
        let digests: Vec<String> = named.iter().map(|(_, d)| d.clone()).collect();
        let known = reg.store.read(move |c| sql::known_blobs(c, &digests)).await?;
        let (deleted, freed) = super::blocking(move || {
            let (mut deleted, mut freed) = (0i64, 0i64);
            for (file, digest) in named.iter().filter(|(_, d)| !known.contains(d)) {
                let size = std::fs::metadata(file).map(|m| m.len() as i64).unwrap_or(0);
                if remove(file) {
                    tracing::debug!(digest, "orphan blob file removed");
                    deleted += 1;
                    freed += size;
                }
            }
            (deleted, freed)
        })
        .await?;
        blobs_deleted += deleted;
        bytes_freed += freed;
    }
    for batch in upload_candidates.chunks(ORPHAN_BATCH) {
        let ids: Vec<String> = batch.iter().filter_map(|d| d.file_name()?.to_str().map(str::to_string)).collect();
        let _exclusive = reg.gc_lock.write().await;
        let lookup = ids.clone();
        let known = reg.store.read(move |c| sql::known_uploads(c, &lookup)).await?;
        let blobs = reg.blobs.clone();
        uploads_purged += super::blocking(move || {
            let mut purged = 0i64;
            for id in ids.iter().filter(|id| !known.contains(*id)) {
                blobs.remove_upload(id);
                purged += 1;
            }
            purged
        })
        .await?;
    }
    let report = GcReport {
        finished_at: crate::ids::now_rfc3339(),
        duration_ms: started.elapsed().as_millis() as i64,
        manifests_deleted,
        blobs_deleted,
        bytes_freed,
        uploads_purged,
    };
    let r = report.clone();
    reg.store.write(move |c| sql::record_gc(c, &r)).await?;
    tracing::info!(
        manifests = report.manifests_deleted,
        blobs = report.blobs_deleted,
        bytes = report.bytes_freed,
        uploads = report.uploads_purged,
        pinned = pinned.len(),
        ms = report.duration_ms,
        "registry garbage collection finished"
    );
    Ok(report)
}

fn read_dir(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

fn older_than(path: &Path, age: std::time::Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|elapsed| elapsed >= age)
}

fn remove(path: &Path) -> bool {
    match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not delete a blob");
            false
        }
    }
}
