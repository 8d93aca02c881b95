//! Copies of the database for `berth admin backup`, and the checks `restore` runs
//! on a copy before it becomes anybody's state.
//!
//! A copy is made with `VACUUM INTO` from a read-only connection: one read
//! transaction, so it is a consistent snapshot while the daemon keeps writing (WAL
//! readers never block the writer), and the result is one self-contained file.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{Result, StoreError, known_schema_version, open_reader, refuse_newer, schema_version};

/// What a snapshot holds that the backup needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotFacts {
    pub schema_version: i64,
    /// Every blob the registry knows, with its size, in digest order.
    pub blobs: Vec<(String, i64)>,
    /// Every manifest digest (manifests are blobs too, and the only copy of their bytes).
    pub manifests: BTreeSet<String>,
    pub users: i64,
    pub projects: i64,
}

/// Writes a consistent copy of the live database `db` to `dest` (which must not
/// exist yet), then readies it to be restored: upload sessions are dropped (their
/// data files are not part of a backup, so a restored node must not offer to
/// resume them) and the copy is left in rollback-journal mode, one file.
pub fn snapshot(db: &Path, dest: &Path) -> Result<SnapshotFacts> {
    let dest_str = dest.to_str().ok_or_else(|| StoreError::Corrupt(format!("{} is not UTF-8", dest.display())))?;
    {
        let live = open_reader(db)?;
        refuse_newer(&live)?;
        live.execute("VACUUM INTO ?1", [dest_str])?;
    }
    let copy = Connection::open(dest).map_err(|source| StoreError::Open { path: dest.into(), source })?;
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    copy.execute("DELETE FROM uploads", [])?;
    let blobs = copy
        .prepare("SELECT digest, size FROM blobs ORDER BY digest")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let manifests = copy
        .prepare("SELECT DISTINCT digest FROM manifests")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<BTreeSet<String>>>()?;
    let users = copy.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    let projects = copy.query_row("SELECT count(*) FROM projects", [], |r| r.get(0))?;
    Ok(SnapshotFacts { schema_version: schema_version(&copy)?, blobs, manifests, users, projects })
}

/// Checks a restored copy before it is put in place: SQLite's own consistency check
/// passes and its schema is one this binary can run. Returns the schema version.
pub fn check_copy(path: &Path) -> Result<i64> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| StoreError::Open { path: path.into(), source })?;
    let verdict: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt(format!("the database copy fails its consistency check: {verdict}")));
    }
    let found = schema_version(&c)?;
    let known = known_schema_version();
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_taken_during_writes_is_consistent_and_forgets_uploads() {
        let (store, dir) = super::super::test_store();
        store
            .write(|c| {
                c.execute(
                    "INSERT INTO projects (id, name, created_at, updated_at) VALUES ('prj_a', 'alpha', 'now', 'now')",
                    [],
                )?;
                c.execute(
                    "INSERT INTO repositories (id, name, project_id, created_at) VALUES (1, 'alpha/x', 'prj_a', 0)",
                    [],
                )?;
                c.execute("INSERT INTO blobs (digest, size, created_at) VALUES ('sha256:aa', 3, 0)", [])?;
                c.execute("INSERT INTO uploads (id, repo_id, started_at, updated_at) VALUES ('upl_1', 1, 0, 0)", [])?;
                Ok(())
            })
            .await
            .unwrap();
        // Writers keep committing while the copy is taken.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    store
                        .write(move |c| {
                            c.execute("INSERT INTO meta (key, value) VALUES (?1, 'x')", [format!("k{i}")])?;
                            Ok(())
                        })
                        .await
                        .unwrap();
                }
            })
        };
        let dest = dir.join("copy.db");
        let db = store.path().to_path_buf();
        let d = dest.clone();
        let facts = tokio::task::spawn_blocking(move || snapshot(&db, &d)).await.unwrap().unwrap();
        writer.await.unwrap();
        assert_eq!(facts.blobs, vec![("sha256:aa".to_string(), 3)]);
        assert_eq!((facts.projects, facts.schema_version), (1, known_schema_version()));
        assert_eq!(check_copy(&dest).unwrap(), known_schema_version());
        assert!(!dir.join("copy.db-wal").exists());
        let copy = Store::open(&dest).unwrap();
        let uploads: i64 =
            copy.read(|c| Ok(c.query_row("SELECT count(*) FROM uploads", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(uploads, 0);
        copy.close();
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_copy_is_refused() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("backuptest"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        assert!(check_copy(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    use super::super::Store;
}
