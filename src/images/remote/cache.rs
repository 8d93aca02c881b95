//! The layer cache: what external pulls keep in the blob store, and its collection.
//!
//! Every blob a pull fetched or found (manifests, config, layers) has a row in
//! `oci_cache` with the time it was last used; a pull uses all of an image's blobs,
//! and [`touch_image`] marks an image used again (a deployment that runs it without
//! pulling, a rollback). Registry GC never deletes a cached blob.
//!
//! [`gc`] evicts least recently used images until the cache is within its cap: an
//! image manifest leaves with its config and layers, an index with its entries, and
//! a blob no cached manifest names (what a failed pull left) on its own. It never
//! evicts a blob in the pinned set (what services run), an image used within the
//! grace period (a pull whose deployment has not started its replicas yet), or a
//! layer another cached image still has; and it never deletes a file a hosted
//! repository links: that blob only leaves the cache. The eviction and the deletions
//! run under the registry's collection lock, so no pull or push commits a blob that
//! is being deleted, and a blob used after it was picked is kept.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::oci::{Digest, MAX_MANIFEST_BYTES, Manifest};
use crate::registry::Registry;
use crate::store::cache::{self as sql, CacheEntry, Evicted};

pub use crate::store::cache::{CacheGcReport, CacheTotals};

/// What a cached blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
    Config,
    Layer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Index => "index",
            Kind::Manifest => "manifest",
            Kind::Config => "config",
            Kind::Layer => "layer",
        }
    }
}

/// A row to record.
pub(super) fn entry(digest: &Digest, size: u64, kind: Kind) -> CacheEntry {
    CacheEntry { digest: digest.to_string(), size: size.min(i64::MAX as u64) as i64, kind: kind.as_str() }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cache collection: {0}")]
    Internal(String),
}

/// The cache as `GET /v1/oci/cache/status` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CacheStatus {
    #[serde(flatten)]
    pub totals: CacheTotals,
    /// The cap cache GC works to (`[cache] max_bytes`).
    pub max_bytes: u64,
    pub last_gc: Option<CacheGcReport>,
}

pub async fn status(registry: &Registry, max_bytes: u64) -> Result<CacheStatus, CacheError> {
    let (totals, last_gc) = registry.store().read(|c| Ok((sql::totals(c)?, sql::last_gc(c)?))).await?;
    Ok(CacheStatus { totals, max_bytes, last_gc })
}

/// Marks an image used now: its manifest, the platform entry of an index, its config
/// and layers (those that are cached; a pushed image's blobs are not).
pub async fn touch_image(registry: &Registry, manifest: &Digest) -> Result<usize, CacheError> {
    let blobs = registry.blobs.clone();
    let start = manifest.clone();
    let digests = tokio::task::spawn_blocking(move || {
        let read = |d: &Digest| {
            blobs.read_small(d, MAX_MANIFEST_BYTES as u64).ok().and_then(|b| Manifest::parse(&b, None).ok())
        };
        let mut out = vec![start.to_string()];
        let mut current = read(&start);
        if let Some(index) = current.as_ref().filter(|m| m.is_index()) {
            let (os, arch) = super::platform();
            let entry = index.platform_entry(os, arch).cloned();
            current = entry.as_ref().and_then(read);
            out.extend(entry.map(|e| e.to_string()));
        }
        out.extend(current.iter().flat_map(|m| m.blobs().iter().map(ToString::to_string)));
        out
    })
    .await
    .map_err(|e| CacheError::Internal(e.to_string()))?;
    Ok(registry.store().write(move |c| sql::touch(c, &digests, crate::ids::unix_now())).await?)
}

/// Evicts least recently used cached images until the cache holds at most
/// `max_bytes`, keeping `pinned` digests and anything used within `grace`; records
/// and returns the report.
pub async fn gc(
    registry: &Registry,
    pinned: &HashSet<String>,
    max_bytes: u64,
    grace: Duration,
) -> Result<CacheGcReport, CacheError> {
    let started = Instant::now();
    let cap = max_bytes.min(i64::MAX as u64) as i64;
    let recent_after = crate::ids::unix_now() - grace.as_secs().min(i64::MAX as u64) as i64;
    let store = registry.store();
    let rows = store.read(sql::by_last_use).await?;
    let before: i64 = rows.iter().map(|r| r.size).sum();
    let mut report = CacheGcReport { max_bytes: cap, bytes_before: before, ..Default::default() };
    let chosen = if before > cap {
        let blobs = registry.blobs.clone();
        let units = tokio::task::spawn_blocking(move || units(&blobs, rows))
            .await
            .map_err(|e| CacheError::Internal(e.to_string()))?;
        plan(units, before, cap, pinned, recent_after, &mut report)
    } else {
        Vec::new()
    };
    if !chosen.is_empty() {
        let _exclusive = registry.hold_collection().await;
        let outcomes = store
            .write(move |c| {
                chosen
                    .into_iter()
                    .map(|r| Ok((sql::evict(c, &r.digest, r.last_used_at)?, r)))
                    .collect::<crate::store::Result<Vec<_>>>()
            })
            .await?;
        let blobs = registry.blobs.clone();
        let (evicted, linked, freed) = tokio::task::spawn_blocking(move || {
            let (mut evicted, mut linked, mut freed) = (0i64, 0i64, 0i64);
            for (outcome, r) in &outcomes {
                match outcome {
                    Evicted::Skipped => {}
                    Evicted::RowOnly => {
                        evicted += 1;
                        linked += 1;
                    }
                    Evicted::File => {
                        evicted += 1;
                        let Ok(d) = Digest::parse(&r.digest) else { continue };
                        let path = blobs.blob_path(&d);
                        match std::fs::remove_file(&path) {
                            Ok(()) => freed += r.size,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "could not delete a cached blob")
                            }
                        }
                    }
                }
            }
            (evicted, linked, freed)
        })
        .await
        .map_err(|e| CacheError::Internal(e.to_string()))?;
        report.blobs_evicted = evicted;
        report.blobs_kept_linked = linked;
        report.bytes_freed = freed;
    }
    report.bytes_after = store.read(sql::totals).await?.bytes;
    report.over_cap = report.bytes_after > cap;
    report.finished_at = crate::ids::now_rfc3339();
    report.duration_ms = started.elapsed().as_millis() as i64;
    let r = report.clone();
    store.write(move |c| sql::record_gc(c, &r)).await?;
    tracing::info!(
        evicted = report.blobs_evicted,
        freed = report.bytes_freed,
        before = report.bytes_before,
        after = report.bytes_after,
        cap = report.max_bytes,
        pinned = report.skipped_pinned,
        recent = report.skipped_recent,
        "layer cache collection finished"
    );
    Ok(report)
}

/// Blobs that leave the cache together: an image manifest with its config and
/// layers, an index with its entries, or a lone blob no cached manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unit {
    /// When its manifest (or the lone blob) was last used: a layer another image
    /// shares may have been used later, the image itself was not.
    pub last_used_at: i64,
    pub blobs: Vec<sql::CachedBlob>,
}

/// Groups cached blobs into [`Unit`]s, reading each cached manifest from the store
/// (blocking), least recently used first. A blob two images share is in both.
pub(super) fn units(blobs: &crate::registry::blobs::BlobStore, rows: Vec<sql::CachedBlob>) -> Vec<Unit> {
    let by_digest: std::collections::HashMap<String, sql::CachedBlob> =
        rows.iter().map(|r| (r.digest.clone(), r.clone())).collect();
    let mut grouped = HashSet::new();
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.kind == "index" || r.kind == "manifest") {
        let refs = Digest::parse(&r.digest)
            .ok()
            .and_then(|d| blobs.read_small(&d, MAX_MANIFEST_BYTES as u64).ok())
            .and_then(|b| Manifest::parse(&b, None).ok())
            .map(|m| m.blobs().iter().chain(m.children()).map(ToString::to_string).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut members = vec![r.clone()];
        members.extend(refs.iter().filter_map(|d| by_digest.get(d)).filter(|b| b.digest != r.digest).cloned());
        grouped.extend(members.iter().map(|b| b.digest.clone()));
        out.push(members);
    }
    out.extend(rows.into_iter().filter(|r| !grouped.contains(&r.digest)).map(|r| vec![r]));
    let mut units: Vec<Unit> =
        out.into_iter().map(|blobs| Unit { last_used_at: blobs[0].last_used_at, blobs }).collect();
    units.sort_by(|a, b| a.last_used_at.cmp(&b.last_used_at).then_with(|| a.blobs[0].digest.cmp(&b.blobs[0].digest)));
    units
}

/// Which blobs to evict: whole units, least recently used first, until `total`
/// is within `cap`. A unit used after `recent_after` stays; a pinned blob stays; a
/// blob shared with a unit that stays, stays.
pub(super) fn plan(
    units: Vec<Unit>,
    total: i64,
    cap: i64,
    pinned: &HashSet<String>,
    recent_after: i64,
    report: &mut CacheGcReport,
) -> Vec<sql::CachedBlob> {
    let mut holders: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for u in &units {
        for b in &u.blobs {
            *holders.entry(b.digest.as_str()).or_default() += 1;
        }
    }
    let mut left = total;
    let mut chosen: Vec<sql::CachedBlob> = Vec::new();
    for u in &units {
        if left <= cap {
            break;
        }
        if u.last_used_at > recent_after {
            report.skipped_recent += 1;
            continue;
        }
        for b in &u.blobs {
            let Some(n) = holders.get_mut(b.digest.as_str()) else { continue };
            *n -= 1;
            if *n > 0 {
                continue;
            }
            if pinned.contains(&b.digest) {
                report.skipped_pinned += 1;
                continue;
            }
            left -= b.size;
            chosen.push(b.clone());
        }
    }
    chosen
}
