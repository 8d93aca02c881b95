//! Registry metadata: repositories, blob links, manifests, tags, uploads.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Page, PageQuery, Result, StoreError};

#[derive(Debug, Clone)]
pub struct Repo {
    pub id: i64,
    pub name: String,
    pub project_id: String,
}

pub fn repo_get(c: &Connection, name: &str) -> Result<Option<Repo>> {
    Ok(c.prepare_cached("SELECT id, name, project_id FROM repositories WHERE name = ?1")?
        .query_row([name], |r| Ok(Repo { id: r.get(0)?, name: r.get(1)?, project_id: r.get(2)? }))
        .optional()?)
}

/// The repository, created on first push.
pub fn repo_ensure(c: &Connection, name: &str, project_id: &str, now: i64) -> Result<Repo> {
    c.execute(
        "INSERT INTO repositories (name, project_id, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
        params![name, project_id, now],
    )?;
    repo_get(c, name)?.ok_or_else(|| StoreError::Corrupt(format!("repository {name} vanished")))
}

/// Size of a blob if it is linked into the repository.
pub fn linked_blob_size(c: &Connection, repo_id: i64, digest: &str) -> Result<Option<i64>> {
    Ok(c.prepare_cached(
        "SELECT b.size FROM repo_blobs l JOIN blobs b ON b.digest = l.digest WHERE l.repo_id = ?1 AND l.digest = ?2",
    )?
    .query_row(params![repo_id, digest], |r| r.get(0))
    .optional()?)
}

pub fn blob_size(c: &Connection, digest: &str) -> Result<Option<i64>> {
    Ok(c.prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?.query_row([digest], |r| r.get(0)).optional()?)
}

/// Records a stored blob and links it into the repository (refreshing the link time).
pub fn blob_commit(c: &Connection, repo_id: i64, digest: &str, size: i64, now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(digest) DO NOTHING",
        params![digest, size, now],
    )?;
    link_blob(c, repo_id, digest, now)
}

/// Whether any repository of `project_id` links the blob.
pub fn project_has_blob(c: &Connection, project_id: &str, digest: &str) -> Result<bool> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM repo_blobs l JOIN repositories r ON r.id = l.repo_id
         WHERE r.project_id = ?1 AND l.digest = ?2 LIMIT 1",
    )?
    .exists(params![project_id, digest])?)
}

pub fn link_blob(c: &Connection, repo_id: i64, digest: &str, now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO repo_blobs (repo_id, digest, linked_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(repo_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
        params![repo_id, digest, now],
    )?;
    Ok(())
}

pub fn unlink_blob(c: &Connection, repo_id: i64, digest: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM repo_blobs WHERE repo_id = ?1 AND digest = ?2", params![repo_id, digest])? > 0)
}

/// A stored manifest's metadata.
#[derive(Debug, Clone)]
pub struct ManifestRow {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    pub subject: Option<String>,
    /// JSON object text.
    pub annotations: Option<String>,
}

fn row_manifest(r: &rusqlite::Row<'_>) -> rusqlite::Result<ManifestRow> {
    Ok(ManifestRow {
        digest: r.get(0)?,
        media_type: r.get(1)?,
        size: r.get(2)?,
        artifact_type: r.get(3)?,
        subject: r.get(4)?,
        annotations: r.get(5)?,
    })
}

pub fn manifest_by_digest(c: &Connection, repo_id: i64, digest: &str) -> Result<Option<ManifestRow>> {
    Ok(c.prepare_cached(
        "SELECT digest, media_type, size, artifact_type, subject, annotations FROM manifests
         WHERE repo_id = ?1 AND digest = ?2",
    )?
    .query_row(params![repo_id, digest], row_manifest)
    .optional()?)
}

pub fn manifest_by_tag(c: &Connection, repo_id: i64, tag: &str) -> Result<Option<ManifestRow>> {
    Ok(c.prepare_cached(
        "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.subject, m.annotations
         FROM tags t JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
         WHERE t.repo_id = ?1 AND t.name = ?2",
    )?
    .query_row(params![repo_id, tag], row_manifest)
    .optional()?)
}

/// What a manifest points at.
pub struct ManifestRef<'a> {
    pub child: &'a str,
    pub manifest: bool,
}

/// Stores a manifest's metadata and references and moves `tag` to it. The caller has
/// checked that every referenced blob and child manifest exists in the repository.
pub fn manifest_put(
    c: &Connection,
    repo_id: i64,
    m: &ManifestRow,
    refs: &[ManifestRef<'_>],
    tag: Option<&str>,
    now: i64,
) -> Result<()> {
    c.execute(
        "INSERT INTO manifests (repo_id, digest, media_type, size, artifact_type, subject, annotations, pushed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(repo_id, digest) DO UPDATE SET pushed_at = excluded.pushed_at",
        params![repo_id, m.digest, m.media_type, m.size, m.artifact_type, m.subject, m.annotations, now],
    )?;
    let mut stmt = c.prepare_cached(
        "INSERT INTO manifest_refs (repo_id, manifest, child, kind) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )?;
    for r in refs {
        stmt.execute(params![repo_id, m.digest, r.child, if r.manifest { "manifest" } else { "blob" }])?;
    }
    if let Some(tag) = tag {
        c.execute(
            "INSERT INTO tags (repo_id, name, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(repo_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            params![repo_id, tag, m.digest, now],
        )?;
    }
    Ok(())
}

/// Which of `digests` are manifests of the repository.
pub fn manifests_present(c: &Connection, repo_id: i64, digest: &str) -> Result<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM manifests WHERE repo_id = ?1 AND digest = ?2")?
        .exists(params![repo_id, digest])?)
}

/// Deletes a manifest and the tags pointing at it.
pub fn manifest_delete(c: &Connection, repo_id: i64, digest: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM manifests WHERE repo_id = ?1 AND digest = ?2", params![repo_id, digest])? > 0)
}

pub fn tag_delete(c: &Connection, repo_id: i64, tag: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2", params![repo_id, tag])? > 0)
}

/// Tags in lexical order after `last`, at most `n` (plus whether more follow).
pub fn tags_list(c: &Connection, repo_id: i64, last: Option<&str>, n: Option<u32>) -> Result<(Vec<String>, bool)> {
    let limit = n.map(|n| i64::from(n) + 1).unwrap_or(-1);
    let mut tags = c
        .prepare_cached("SELECT name FROM tags WHERE repo_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3")?
        .query_map(params![repo_id, last.unwrap_or(""), limit], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let more = n.is_some_and(|n| tags.len() > n as usize);
    if let Some(n) = n {
        tags.truncate(n as usize);
    }
    Ok((tags, more))
}

/// Manifests of the repository whose subject is `digest`.
pub fn referrers(c: &Connection, repo_id: i64, digest: &str) -> Result<Vec<ManifestRow>> {
    Ok(c.prepare_cached(
        "SELECT digest, media_type, size, artifact_type, subject, annotations FROM manifests
         WHERE repo_id = ?1 AND subject = ?2 ORDER BY digest",
    )?
    .query_map(params![repo_id, digest], row_manifest)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn upload_insert(c: &Connection, id: &str, repo_id: i64, now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO uploads (id, repo_id, started_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
        params![id, repo_id, now],
    )?;
    Ok(())
}

/// Upload sessions open in a project's repositories.
pub fn open_uploads_in_project(c: &Connection, project_id: &str) -> Result<i64> {
    Ok(c.prepare_cached(
        "SELECT count(*) FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE r.project_id = ?1",
    )?
    .query_row([project_id], |r| r.get(0))?)
}

/// The repository an upload belongs to.
pub fn upload_repo(c: &Connection, id: &str) -> Result<Option<i64>> {
    Ok(c.prepare_cached("SELECT repo_id FROM uploads WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?)
}

pub fn upload_touch(c: &Connection, id: &str, now: i64) -> Result<()> {
    c.execute("UPDATE uploads SET updated_at = ?2 WHERE id = ?1", params![id, now])?;
    Ok(())
}

pub fn upload_delete(c: &Connection, id: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM uploads WHERE id = ?1", [id])? > 0)
}

/// A repository as `/v1/registry/repositories` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RepositoryInfo {
    pub name: String,
    pub project_id: String,
    pub tags: i64,
    pub manifests: i64,
    /// Sum of the sizes of the blobs linked into the repository.
    pub size_bytes: i64,
    pub created_at: String,
}

/// A page of repositories in name order: every one when `member` is `None`, else
/// those of the projects where that user has a role.
pub fn repositories_page(c: &Connection, member: Option<&str>, page: &PageQuery) -> Result<Page<RepositoryInfo>> {
    let mut stmt = c.prepare_cached(
        "SELECT r.name, r.project_id, r.created_at,
            (SELECT count(*) FROM tags t WHERE t.repo_id = r.id),
            (SELECT count(*) FROM manifests m WHERE m.repo_id = r.id),
            (SELECT coalesce(sum(b.size), 0) FROM repo_blobs l JOIN blobs b ON b.digest = l.digest WHERE l.repo_id = r.id)
         FROM repositories r
         WHERE r.name > ?1
           AND (?2 IS NULL OR r.project_id IN (SELECT project_id FROM members WHERE user_id = ?2))
         ORDER BY r.name LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![page.after.as_deref().unwrap_or(""), member, page.limit + 1], |r| {
            let created: i64 = r.get(2)?;
            Ok(RepositoryInfo {
                name: r.get(0)?,
                project_id: r.get(1)?,
                created_at: time::OffsetDateTime::from_unix_timestamp(created)
                    .map(crate::ids::format_time)
                    .unwrap_or_default(),
                tags: r.get(3)?,
                manifests: r.get(4)?,
                size_bytes: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Counts {
    pub repositories: i64,
    pub blobs: i64,
    pub blob_bytes: i64,
    pub uploads_in_progress: i64,
}

/// The same figures for the projects where `user_id` has a role: their
/// repositories, the distinct blobs linked into them, and their open uploads.
pub fn counts_for_member(c: &Connection, user_id: &str) -> Result<Counts> {
    Ok(c.query_row(
        "WITH mine AS (SELECT r.id FROM repositories r
                       JOIN members m ON m.project_id = r.project_id AND m.user_id = ?1),
              linked AS (SELECT DISTINCT l.digest FROM repo_blobs l WHERE l.repo_id IN (SELECT id FROM mine))
         SELECT (SELECT count(*) FROM mine),
                (SELECT count(*) FROM linked),
                (SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN (SELECT digest FROM linked)),
                (SELECT count(*) FROM uploads u WHERE u.repo_id IN (SELECT id FROM mine))",
        [user_id],
        |r| {
            Ok(Counts {
                repositories: r.get(0)?,
                blobs: r.get(1)?,
                blob_bytes: r.get(2)?,
                uploads_in_progress: r.get(3)?,
            })
        },
    )?)
}

pub fn counts(c: &Connection) -> Result<Counts> {
    Ok(c.query_row(
        "SELECT (SELECT count(*) FROM repositories), (SELECT count(*) FROM blobs),
                (SELECT coalesce(sum(size), 0) FROM blobs), (SELECT count(*) FROM uploads)",
        [],
        |r| {
            Ok(Counts {
                repositories: r.get(0)?,
                blobs: r.get(1)?,
                blob_bytes: r.get(2)?,
                uploads_in_progress: r.get(3)?,
            })
        },
    )?)
}

/// The last garbage collection's report.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct GcReport {
    pub finished_at: String,
    pub duration_ms: i64,
    pub manifests_deleted: i64,
    pub blobs_deleted: i64,
    pub bytes_freed: i64,
    pub uploads_purged: i64,
}

pub fn last_gc(c: &Connection) -> Result<Option<GcReport>> {
    Ok(c.query_row(
        "SELECT finished_at, duration_ms, manifests_deleted, blobs_deleted, bytes_freed, uploads_purged
         FROM registry_gc WHERE id = 1",
        [],
        |r| {
            Ok(GcReport {
                finished_at: r.get(0)?,
                duration_ms: r.get(1)?,
                manifests_deleted: r.get(2)?,
                blobs_deleted: r.get(3)?,
                bytes_freed: r.get(4)?,
                uploads_purged: r.get(5)?,
            })
        },
    )
    .optional()?)
}

pub fn record_gc(c: &Connection, g: &GcReport) -> Result<()> {
    c.execute(
        "INSERT INTO registry_gc (id, finished_at, duration_ms, manifests_deleted, blobs_deleted, bytes_freed, uploads_purged)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(id) DO UPDATE SET finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
           manifests_deleted = excluded.manifests_deleted, blobs_deleted = excluded.blobs_deleted,
           bytes_freed = excluded.bytes_freed, uploads_purged = excluded.uploads_purged",
        params![g.finished_at, g.duration_ms, g.manifests_deleted, g.blobs_deleted, g.bytes_freed, g.uploads_purged],
    )?;
    Ok(())
}

/// What a GC sweep removed from the database; the caller deletes the files.
#[derive(Debug, Default)]
pub struct Sweep {
    pub manifests_deleted: i64,
    pub blobs: Vec<(String, i64)>,
    pub uploads: Vec<String>,
}

/// The database half of garbage collection, in one transaction:
/// 1. live manifests: tagged ones, those pushed after `cutoff`, and, transitively,
///    the children of live indexes and the referrers of live manifests; delete the rest;
/// 2. drop blob links older than `cutoff` that no remaining manifest of that
///    repository references;
/// 3. delete blobs older than `cutoff` that no repository links any more;
/// 4. forget uploads idle since `upload_cutoff`.
pub fn gc_sweep(
    c: &Connection,
    cutoff: i64,
    upload_cutoff: i64,
    pinned: &std::collections::HashSet<String>,
) -> Result<Sweep> {
    let manifests_deleted = c.execute(
        "WITH RECURSIVE live(repo_id, digest) AS (
             SELECT repo_id, digest FROM tags
             UNION SELECT repo_id, digest FROM manifests WHERE pushed_at > ?1
             UNION SELECT r.repo_id, r.child FROM manifest_refs r
                   JOIN live l ON r.repo_id = l.repo_id AND r.manifest = l.digest WHERE r.kind = 'manifest'
             UNION SELECT m.repo_id, m.digest FROM manifests m
                   JOIN live l ON m.repo_id = l.repo_id AND m.subject = l.digest
         )
         DELETE FROM manifests WHERE (repo_id, digest) NOT IN (SELECT repo_id, digest FROM live)",
        [cutoff],
    )? as i64;
    c.execute(
        "DELETE FROM repo_blobs WHERE linked_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo_id = repo_blobs.repo_id AND r.child = repo_blobs.digest)
           AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo_id = repo_blobs.repo_id AND m.digest = repo_blobs.digest)",
        [cutoff],
    )?;
    let blobs = c
        .prepare(
            "SELECT digest, size FROM blobs WHERE created_at <= ?1
               AND NOT EXISTS (SELECT 1 FROM repo_blobs l WHERE l.digest = blobs.digest)
               AND NOT EXISTS (SELECT 1 FROM oci_cache k WHERE k.digest = blobs.digest)",
        )?
        .query_map([cutoff], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .filter(|r| r.as_ref().map_or(true, |(d, _)| !pinned.contains(d)))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut del = c.prepare("DELETE FROM blobs WHERE digest = ?1")?;
    for (d, _) in &blobs {
        del.execute([d])?;
    }
    let uploads = c
        .prepare("SELECT id FROM uploads WHERE updated_at <= ?1")?
        .query_map([upload_cutoff], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut del = c.prepare("DELETE FROM uploads WHERE id = ?1")?;
    for u in &uploads {
        del.execute([u])?;
    }
    Ok(Sweep { manifests_deleted, blobs, uploads })
}

/// Which of `digests` the database knows as blobs (for the orphan scan).
pub fn known_blobs(c: &Connection, digests: &[String]) -> Result<std::collections::HashSet<String>> {
    let mut stmt = c.prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")?;
    let mut known = std::collections::HashSet::new();
    for d in digests {
        if stmt.exists([d])? {
            known.insert(d.clone());
        }
    }
    Ok(known)
}

/// Which of `ids` the database knows as upload sessions (for the orphan scan).
pub fn known_uploads(c: &Connection, ids: &[String]) -> Result<std::collections::HashSet<String>> {
    let mut stmt = c.prepare_cached("SELECT 1 FROM uploads WHERE id = ?1")?;
    let mut known = std::collections::HashSet::new();
    for id in ids {
        if stmt.exists([id])? {
            known.insert(id.clone());
        }
    }
    Ok(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(digest: &str) -> ManifestRow {
        ManifestRow {
            digest: digest.into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 10,
            artifact_type: None,
            subject: None,
            annotations: None,
        }
    }

    /// Repository `alpha/app` (at t=0): manifest `m:tagged` (tag v1) using blobs
    /// `b:shared` and `b:one`; untagged manifest `m:old` using `b:shared` and
    /// `b:old`; a referrer `m:sig` of `m:tagged`; an index `m:index` (tag multi)
    /// whose child `m:child` uses `b:child`; a loose blob `b:loose`; an upload.
    fn fixture(c: &Connection) -> Result<i64> {
        let p = crate::store::projects::Project {
            id: "prj_1".into(),
            name: "alpha".into(),
            description: String::new(),
            env: Default::default(),
            limits: Default::default(),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        crate::store::projects::insert(c, &p)?;
        let repo = repo_ensure(c, "alpha/app", "prj_1", 0)?.id;
        for b in ["b:shared", "b:one", "b:old", "b:child", "b:loose"] {
            blob_commit(c, repo, b, 100, 0)?;
        }
        let blob = |child| ManifestRef { child, manifest: false };
        manifest_put(c, repo, &manifest("m:tagged"), &[blob("b:shared"), blob("b:one")], Some("v1"), 0)?;
        manifest_put(c, repo, &manifest("m:old"), &[blob("b:shared"), blob("b:old")], None, 0)?;
        let sig = ManifestRow { subject: Some("m:tagged".into()), ..manifest("m:sig") };
        manifest_put(c, repo, &sig, &[], None, 0)?;
        manifest_put(c, repo, &manifest("m:child"), &[blob("b:child")], None, 0)?;
        manifest_put(
            c,
            repo,
            &manifest("m:index"),
            &[ManifestRef { child: "m:child", manifest: true }],
            Some("multi"),
            0,
        )?;
        for m in ["m:tagged", "m:old", "m:sig", "m:child", "m:index"] {
            blob_commit(c, repo, m, 10, 0)?;
        }
        upload_insert(c, "upl_1", repo, 0)?;
        Ok(repo)
    }

    fn deleted(s: &Sweep) -> Vec<&str> {
        let mut v: Vec<&str> = s.blobs.iter().map(|(d, _)| d.as_str()).collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn gc_sweeps_exactly_the_unreferenced_and_keeps_what_is_young_or_pinned() {
        let (store, dir) = crate::store::test_store();
        let repo = store.write(fixture).await.unwrap();
        // A blob an external pull brought in, linked by no repository: the layer
        // cache holds it, so registry GC leaves it alone whatever its age.
        let cached = crate::store::cache::CacheEntry { digest: "b:cached".into(), size: 50, kind: "layer" };
        store.write(move |c| crate::store::cache::record(c, &[cached], "r.io/a:1", 0)).await.unwrap();
        // Everything is younger than the cutoff: nothing goes.
        let s = store.write(|c| gc_sweep(c, -1, -1, &Default::default())).await.unwrap();
        assert_eq!((s.manifests_deleted, s.blobs.len(), s.uploads.len()), (0, 0, 0));
        // Past the grace period: the untagged manifest and what only it used, the loose
        // blob, the idle upload; tagged images, their referrers and index children stay.
        let pinned: std::collections::HashSet<String> = ["b:loose".to_string()].into();
        let s = store.write(move |c| gc_sweep(c, 10, 10, &pinned)).await.unwrap();
        assert_eq!(s.manifests_deleted, 1);
        assert_eq!(deleted(&s), vec!["b:old", "m:old"], "b:loose is pinned, b:shared is still used");
        assert_eq!(s.uploads, vec!["upl_1".to_string()]);
        let (kept, known) = store
            .read(move |c| {
                let kept: Vec<bool> = ["m:tagged", "m:sig", "m:child", "m:index"]
                    .iter()
                    .map(|m| manifests_present(c, repo, m))
                    .collect::<Result<_>>()?;
                Ok((kept, known_blobs(c, &["b:shared".into(), "b:old".into(), "b:loose".into()])?))
            })
            .await
            .unwrap();
        assert!(kept.iter().all(|k| *k), "{kept:?}");
        assert!(known.contains("b:shared") && known.contains("b:loose") && !known.contains("b:old"), "{known:?}");
        // Untagging the index frees its child and the child's blob on the next run.
        store.write(move |c| tag_delete(c, repo, "multi")).await.unwrap();
        let s = store.write(|c| gc_sweep(c, 10, 10, &Default::default())).await.unwrap();
        assert_eq!(s.manifests_deleted, 2);
        assert_eq!(deleted(&s), vec!["b:child", "b:loose", "m:child", "m:index"], "b:cached is in the layer cache");
        assert!(store.read(|c| known_blobs(c, &["b:cached".into()])).await.unwrap().contains("b:cached"));
        // Out of the cache, it is an unlinked old blob like any other.
        store.write(|c| Ok(c.execute("DELETE FROM oci_cache WHERE digest = 'b:cached'", [])?)).await.unwrap();
        let s = store.write(|c| gc_sweep(c, 10, 10, &Default::default())).await.unwrap();
        assert_eq!(deleted(&s), vec!["b:cached"]);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
