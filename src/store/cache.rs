//! The layer cache's rows: what external pulls brought into the blob store, when it
//! was last used, and the last cache GC. A cached blob also has a `blobs` row, so the
//! registry's orphan scan knows the file; `gc_sweep` keeps any blob with a cache row.
//! Times are unix seconds, compared against ages like the registry's.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use super::Result;

/// One cached blob to record.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub digest: String,
    pub size: i64,
    /// `index`, `manifest`, `config` or `layer`.
    pub kind: &'static str,
}

/// Records pulled (or found and reused) blobs: their `blobs` rows if missing, and
/// cache rows, used now.
pub fn record(c: &Connection, rows: &[CacheEntry], source: &str, now: i64) -> Result<()> {
    let mut blob =
        c.prepare_cached("INSERT INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING")?;
    let mut cache = c.prepare_cached(
        "INSERT INTO oci_cache (digest, size, kind, source, pulled_at, last_used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT(digest) DO UPDATE SET last_used_at = excluded.last_used_at, source = excluded.source",
    )?;
    for r in rows {
        blob.execute(params![r.digest, r.size, now])?;
        cache.execute(params![r.digest, r.size, r.kind, source, now])?;
    }
    Ok(())
}

/// The image (index or manifest) last pulled for `source` (a canonical reference),
/// for a build whose base registry cannot be reached.
pub fn image_for_source(c: &Connection, source: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached(
        "SELECT digest FROM oci_cache WHERE source = ?1 AND kind IN ('index', 'manifest')
         ORDER BY kind = 'index' DESC, last_used_at DESC LIMIT 1",
    )?
    .query_row([source], |r| r.get(0))
    .optional()?)
}

/// Marks cached blobs used now (a deployment runs them); others are ignored.
/// Returns how many were cached.
pub fn touch(c: &Connection, digests: &[String], now: i64) -> Result<usize> {
    let mut stmt = c.prepare_cached("UPDATE oci_cache SET last_used_at = ?2 WHERE digest = ?1")?;
    let mut n = 0;
    for d in digests {
        n += stmt.execute(params![d, now])?;
    }
    Ok(n)
}

/// A cached blob as eviction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBlob {
    pub digest: String,
    pub size: i64,
    /// `index`, `manifest`, `config` or `layer`.
    pub kind: String,
    pub last_used_at: i64,
}

/// Every cached blob, least recently used first.
pub fn by_last_use(c: &Connection) -> Result<Vec<CachedBlob>> {
    let mut stmt = c.prepare("SELECT digest, size, kind, last_used_at FROM oci_cache ORDER BY last_used_at, digest")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(CachedBlob { digest: r.get(0)?, size: r.get(1)?, kind: r.get(2)?, last_used_at: r.get(3)? })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The cache's size.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CacheTotals {
    /// Bytes of every cached blob (manifests, configs, layers).
    pub bytes: i64,
    pub blobs: i64,
    /// Manifests and indexes among them.
    pub manifests: i64,
}

pub fn totals(c: &Connection) -> Result<CacheTotals> {
    Ok(c.query_row(
        "SELECT coalesce(sum(size), 0), count(*), count(*) FILTER (WHERE kind IN ('index', 'manifest')) FROM oci_cache",
        [],
        |r| Ok(CacheTotals { bytes: r.get(0)?, blobs: r.get(1)?, manifests: r.get(2)? }),
    )?)
}

/// What evicting one cached blob came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Used since it was picked (or already gone): kept.
    Skipped,
    /// A hosted repository links it: only the cache row went, the file stays.
    RowOnly,
    /// Nothing else holds it: its rows went, and the caller deletes the file.
    File,
}

/// Drops a cached blob if it was not used after `seen_last_used`, and its `blobs`
/// row too when no repository links it.
pub fn evict(c: &Connection, digest: &str, seen_last_used: i64) -> Result<Evicted> {
    let gone =
        c.execute("DELETE FROM oci_cache WHERE digest = ?1 AND last_used_at <= ?2", params![digest, seen_last_used])?;
    if gone == 0 {
        return Ok(Evicted::Skipped);
    }
    let linked = c.prepare_cached("SELECT 1 FROM repo_blobs WHERE digest = ?1")?.exists([digest])?;
    if linked {
        return Ok(Evicted::RowOnly);
    }
    c.execute("DELETE FROM blobs WHERE digest = ?1", [digest])?;
    Ok(Evicted::File)
}

/// Which of `digests` are cached.
pub fn cached(c: &Connection, digests: &[String]) -> Result<std::collections::HashSet<String>> {
    let mut stmt = c.prepare_cached("SELECT 1 FROM oci_cache WHERE digest = ?1")?;
    let mut out = std::collections::HashSet::new();
    for d in digests {
        if stmt.exists([d])? {
            out.insert(d.clone());
        }
    }
    Ok(out)
}

/// The last cache GC.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CacheGcReport {
    pub finished_at: String,
    pub duration_ms: i64,
    /// The cap it worked to (`[cache] max_bytes`).
    pub max_bytes: i64,
    pub bytes_before: i64,
    pub bytes_after: i64,
    /// Cached blobs dropped from the cache.
    pub blobs_evicted: i64,
    /// Of those, how many stayed on disk because a hosted repository links them.
    pub blobs_kept_linked: i64,
    /// Bytes whose files were deleted.
    pub bytes_freed: i64,
    /// Blobs of evicted images kept because a service runs them.
    pub skipped_pinned: i64,
    /// Images passed over because they were used within the grace period.
    pub skipped_recent: i64,
    /// Whether the cache is still over its cap (what is left is in use or recent).
    pub over_cap: bool,
}

pub fn record_gc(c: &Connection, g: &CacheGcReport) -> Result<()> {
    c.execute(
        "INSERT INTO oci_cache_gc (id, finished_at, duration_ms, max_bytes, bytes_before, bytes_after, blobs_evicted,
                                   blobs_kept_linked, bytes_freed, skipped_pinned, skipped_recent, over_cap)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT(id) DO UPDATE SET finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
           max_bytes = excluded.max_bytes, bytes_before = excluded.bytes_before, bytes_after = excluded.bytes_after,
           blobs_evicted = excluded.blobs_evicted, blobs_kept_linked = excluded.blobs_kept_linked,
           bytes_freed = excluded.bytes_freed, skipped_pinned = excluded.skipped_pinned,
           skipped_recent = excluded.skipped_recent, over_cap = excluded.over_cap",
        params![
            g.finished_at,
            g.duration_ms,
            g.max_bytes,
            g.bytes_before,
            g.bytes_after,
            g.blobs_evicted,
            g.blobs_kept_linked,
            g.bytes_freed,
            g.skipped_pinned,
            g.skipped_recent,
            g.over_cap,
        ],
    )?;
    Ok(())
}

pub fn last_gc(c: &Connection) -> Result<Option<CacheGcReport>> {
    Ok(c.query_row(
        "SELECT finished_at, duration_ms, max_bytes, bytes_before, bytes_after, blobs_evicted, blobs_kept_linked,
                bytes_freed, skipped_pinned, skipped_recent, over_cap
         FROM oci_cache_gc WHERE id = 1",
        [],
        |r| {
            Ok(CacheGcReport {
                finished_at: r.get(0)?,
                duration_ms: r.get(1)?,
                max_bytes: r.get(2)?,
                bytes_before: r.get(3)?,
                bytes_after: r.get(4)?,
                blobs_evicted: r.get(5)?,
                blobs_kept_linked: r.get(6)?,
                bytes_freed: r.get(7)?,
                skipped_pinned: r.get(8)?,
                skipped_recent: r.get(9)?,
                over_cap: r.get(10)?,
            })
        },
    )
    .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(d: &str, size: i64, kind: &'static str) -> CacheEntry {
        CacheEntry { digest: d.into(), size, kind }
    }

    #[tokio::test]
    async fn record_touch_evict() {
        let (store, dir) = crate::store::test_store();
        store
            .write(|c| {
                record(
                    c,
                    &[entry("b:m", 10, "manifest"), entry("b:l1", 100, "layer"), entry("b:l2", 200, "layer")],
                    "r.io/a:1",
                    5,
                )?;
                record(c, &[entry("b:l2", 200, "layer")], "r.io/b:1", 7)?;
                Ok(())
            })
            .await
            .unwrap();
        let (t, lru) = store.read(|c| Ok((totals(c)?, by_last_use(c)?))).await.unwrap();
        assert_eq!((t.bytes, t.blobs, t.manifests), (310, 3, 1));
        let order: Vec<(&str, i64)> = lru.iter().map(|b| (b.digest.as_str(), b.last_used_at)).collect();
        assert_eq!(order, vec![("b:l1", 5), ("b:m", 5), ("b:l2", 7)], "re-recording touches");
        assert_eq!(store.write(|c| touch(c, &["b:l1".into(), "b:unknown".into()], 9)).await.unwrap(), 1);
        // b:m is linked by a hosted repository: only its cache row goes.
        store
            .write(|c| {
                let p = crate::store::projects::Project {
                    id: "prj_1".into(),
                    name: "p".into(),
                    description: String::new(),
                    env: Default::default(),
                    limits: Default::default(),
                    created_at: "t".into(),
                    updated_at: "t".into(),
                };
                crate::store::projects::insert(c, &p)?;
                let repo = crate::store::registry::repo_ensure(c, "p/a", "prj_1", 1)?;
                crate::store::registry::link_blob(c, repo.id, "b:m", 1)?;
                Ok(())
            })
            .await
            .unwrap();
        let outcomes = store
            .write(|c| Ok((evict(c, "b:l1", 5)?, evict(c, "b:m", 5)?, evict(c, "b:l2", 7)?, evict(c, "b:l2", 7)?)))
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            (Evicted::Skipped, Evicted::RowOnly, Evicted::File, Evicted::Skipped),
            "b:l1 was used since"
        );
        let (known, cached_now) = store
            .read(|c| {
                let all = ["b:m".to_string(), "b:l1".into(), "b:l2".into()];
                Ok((crate::store::registry::known_blobs(c, &all)?, cached(c, &all)?))
            })
            .await
            .unwrap();
        assert!(known.contains("b:m") && known.contains("b:l1") && !known.contains("b:l2"), "{known:?}");
        assert_eq!(cached_now, ["b:l1".to_string()].into());
        let report = CacheGcReport { finished_at: "now".into(), max_bytes: 5, over_cap: true, ..Default::default() };
        let r = report.clone();
        store.write(move |c| record_gc(c, &r)).await.unwrap();
        let last = store.read(last_gc).await.unwrap().unwrap();
        assert_eq!((last.finished_at.as_str(), last.max_bytes, last.over_cap), ("now", 5, true));
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
