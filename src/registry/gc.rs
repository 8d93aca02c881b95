//! Online garbage collection: mark from tags, sweep with a grace period.
//!
//! The database half runs as one write transaction (`store::registry::gc_sweep`).
//! Files are deleted afterwards while `gc_lock` is held exclusively, so no blob
//! commit can re-create a file between the sweep deciding it is dead and its
//! deletion. Anything younger than the grace period is kept: the blobs of a push in
//! flight are linked but not yet referenced by a manifest, and the grace period is
//! what keeps them. Files with no database row (a crash between rename and commit)
//! and upload directories with no session are reclaimed once older than the grace
//! period and the upload TTL respectively.

use std::path::Path;
use std::time::{Instant, SystemTime};

use super::Registry;
use super::error::RegistryResult;
use super::names::Digest;
use crate::store::registry::{self as sql, GcReport};

/// Runs one collection and records its report.
pub async fn run(reg: &Registry) -> RegistryResult<GcReport> {
    let started = Instant::now();
    let _exclusive = reg.gc_lock.write().await;
    let now = crate::ids::unix_now();
    let cutoff = now - reg.gc_grace.as_secs() as i64;
    let upload_cutoff = now - reg.upload_ttl.as_secs() as i64;
    let sweep = reg.store.write(move |c| sql::gc_sweep(c, cutoff, upload_cutoff)).await?;
    let known = reg.store.read(sql::known_files).await?;
    let blobs = reg.blobs.clone();
    let grace = reg.gc_grace;
    let upload_ttl = reg.upload_ttl;
    let (blobs_deleted, bytes_freed, uploads_purged) = super::blocking(move || {
        let mut deleted = 0i64;
        let mut freed = 0i64;
        for (digest, size) in &sweep.blobs {
            if let Ok(d) = Digest::parse(digest) {
                if remove(&blobs.blob_path(&d)) {
                    deleted += 1;
                    freed += size;
                }
            }
        }
        let mut purged = sweep.uploads.len() as i64;
        for id in &sweep.uploads {
            blobs.remove_upload(id);
        }
        // Orphans: files the database never learnt about.
        let (known_blobs, known_uploads) = known;
        for prefix in read_dir(&blobs.blobs_dir()) {
            for file in read_dir(&prefix) {
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                let digest = format!("sha256:{name}");
                if !known_blobs.contains(&digest) && older_than(&file, grace) {
                    let size = std::fs::metadata(&file).map(|m| m.len() as i64).unwrap_or(0);
                    if remove(&file) {
                        deleted += 1;
                        freed += size;
                    }
                }
            }
        }
        for dir in read_dir(&blobs.uploads_dir()) {
            let id = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !known_uploads.contains(&id) && older_than(&dir, upload_ttl) {
                blobs.remove_upload(&id);
                purged += 1;
            }
        }
        (deleted, freed, purged)
    })
    .await?;
    let report = GcReport {
        finished_at: crate::ids::now_rfc3339(),
        duration_ms: started.elapsed().as_millis() as i64,
        manifests_deleted: sweep.manifests_deleted,
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
