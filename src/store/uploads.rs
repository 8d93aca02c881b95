//! Uploaded build contexts (adr/032): one row per file under `<data_dir>/uploads`.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub id: String,
    pub service_id: String,
    pub project_id: String,
    pub bytes: u64,
    pub unpacked_bytes: u64,
    pub entries: u64,
    pub compression: String,
    pub created_at: String,
    pub used_at: Option<String>,
}

const COLUMNS: &str = "id, service_id, project_id, bytes, unpacked_bytes, entries, compression, created_at, used_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UploadRow> {
    Ok(UploadRow {
        id: r.get(0)?,
        service_id: r.get(1)?,
        project_id: r.get(2)?,
        bytes: r.get(3)?,
        unpacked_bytes: r.get(4)?,
        entries: r.get(5)?,
        compression: r.get(6)?,
        created_at: r.get(7)?,
        used_at: r.get(8)?,
    })
}

pub fn insert(c: &Connection, u: &UploadRow) -> Result<()> {
    c.execute(
        &format!("INSERT INTO build_uploads ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            u.id,
            u.service_id,
            u.project_id,
            u.bytes,
            u.unpacked_bytes,
            u.entries,
            u.compression,
            u.created_at,
            u.used_at
        ],
    )?;
    Ok(())
}

/// Upload `id` of `service_id`; `None` for an upload of another service too.
pub fn get(c: &Connection, service_id: &str, id: &str) -> Result<Option<UploadRow>> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM build_uploads WHERE id = ?1 AND service_id = ?2"),
        params![id, service_id],
        row,
    )
    .optional()?)
}

/// How many uploads `service_id` holds.
pub fn count_for_service(c: &Connection, service_id: &str) -> Result<u64> {
    Ok(c.query_row("SELECT COUNT(*) FROM build_uploads WHERE service_id = ?1", params![service_id], |r| r.get(0))?)
}

pub fn mark_used(c: &Connection, id: &str, at: &str) -> Result<()> {
    c.execute("UPDATE build_uploads SET used_at = ?2 WHERE id = ?1", params![id, at])?;
    Ok(())
}

/// Deletes the uploads created and last used before `before` (RFC 3339, as stored)
/// and returns their ids.
pub fn delete_expired(c: &Connection, before: &str) -> Result<Vec<String>> {
    let mut stmt = c.prepare(
        "DELETE FROM build_uploads WHERE created_at < ?1 AND (used_at IS NULL OR used_at < ?1) RETURNING id",
    )?;
    let ids = stmt.query_map(params![before], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

/// Every upload id held (to sweep files whose row went with its service).
pub fn ids(c: &Connection) -> Result<std::collections::HashSet<String>> {
    let mut stmt = c.prepare("SELECT id FROM build_uploads")?;
    let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}
