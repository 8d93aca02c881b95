//! Deployments: a persisted state machine per rollout (`queued → pulling →
//! starting → live | failed | cancelled`, `superseded` once a later one is live),
//! each with a log of numbered lines; and which replicas belong to which service
//! and deployment (read from the replicas' stored configuration).

use rusqlite::{Connection, OptionalExtension, params};

use super::{Page, PageQuery, Result, StoreError};

/// States a deployment is still moving through.
pub const IN_FLIGHT: &[&str] = &["queued", "building", "pulling", "starting"];

/// A deployment as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRow {
    pub id: String,
    pub service_id: String,
    pub project_id: String,
    /// The source as asked for, JSON.
    pub source: String,
    pub status: String,
    pub image_digest: Option<String>,
    pub error: Option<String>,
    /// The deployment whose image this one redeploys.
    pub rollback_of: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

const COLUMNS: &str =
    "id, service_id, project_id, source, status, image_digest, error, rollback_of, created_at, started_at, finished_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeploymentRow> {
    Ok(DeploymentRow {
        id: r.get(0)?,
        service_id: r.get(1)?,
        project_id: r.get(2)?,
        source: r.get(3)?,
        status: r.get(4)?,
        image_digest: r.get(5)?,
        error: r.get(6)?,
        rollback_of: r.get(7)?,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

/// Records a new deployment; 409 while another of the same service is in flight.
pub fn insert(c: &Connection, d: &DeploymentRow) -> Result<()> {
    if super::services::project_of(c, &d.service_id)?.is_none() {
        return Err(StoreError::NotFound(format!("service {} not found", d.service_id)));
    }
    if let Some(other) = in_flight(c, &d.service_id)? {
        return Err(StoreError::Conflict(format!(
            "a deployment of service {} is already in progress ({other}); wait for it or cancel it",
            d.service_id
        )));
    }
    c.execute(
        &format!("INSERT INTO deployments ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            d.id,
            d.service_id,
            d.project_id,
            d.source,
            d.status,
            d.image_digest,
            d.error,
            d.rollback_of,
            d.created_at,
            d.started_at,
            d.finished_at
        ],
    )?;
    Ok(())
}

pub fn get(c: &Connection, id: &str) -> Result<Option<DeploymentRow>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM deployments WHERE id = ?1"))?
        .query_row([id], row)
        .optional()?)
}

/// The deployment's project, for the access check of `/v1/deployments/{id}` routes.
pub fn project_of(c: &Connection, id: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT project_id FROM deployments WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// A service's deployments, newest first.
pub fn list_for_service(c: &Connection, service_id: &str, page: &PageQuery) -> Result<Page<DeploymentRow>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM deployments WHERE service_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
        ))?
        .query_map(params![service_id, page.after.as_deref().unwrap_or("\u{10ffff}"), page.limit + 1], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// The id of the service's deployment in flight, if any.
pub fn in_flight(c: &Connection, service_id: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached(
        "SELECT id FROM deployments WHERE service_id = ?1 AND status IN ('queued', 'building', 'pulling', 'starting')",
    )?
    .query_row([service_id], |r| r.get(0))
    .optional()?)
}

/// Every deployment in flight (start-up recovery).
pub fn all_in_flight(c: &Connection) -> Result<Vec<DeploymentRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM deployments WHERE status IN ('queued', 'building', 'pulling', 'starting') ORDER BY id"
    ))?
    .query_map([], row)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Moves an in-flight deployment on; false when it is no longer in flight (it was
/// cancelled meanwhile, say), in which case nothing changes.
pub fn advance(c: &Connection, id: &str, status: &str, now: &str) -> Result<bool> {
    Ok(c.execute(
        "UPDATE deployments SET status = ?2, started_at = coalesce(started_at, ?3)
         WHERE id = ?1 AND status IN ('queued', 'building', 'pulling', 'starting')",
        params![id, status, now],
    )? > 0)
}

/// Ends an in-flight deployment as `failed` or `cancelled`; false when it had ended already.
pub fn finish(c: &Connection, id: &str, status: &str, error: Option<&str>, now: &str) -> Result<bool> {
    Ok(c.execute(
        "UPDATE deployments SET status = ?2, error = ?3, finished_at = ?4
         WHERE id = ?1 AND status IN ('queued', 'building', 'pulling', 'starting')",
        params![id, status, error, now],
    )? > 0)
}

/// Records the image a deployment runs.
pub fn set_digest(c: &Connection, id: &str, digest: &str) -> Result<()> {
    c.execute("UPDATE deployments SET image_digest = ?2 WHERE id = ?1", params![id, digest])?;
    Ok(())
}

/// Makes an in-flight deployment its service's live one in one step: the previous
/// live deployment becomes `superseded`. False (and nothing changed) when the
/// deployment is no longer in flight.
pub fn go_live(c: &Connection, id: &str, now: &str) -> Result<bool> {
    let Some(d) = get(c, id)? else { return Ok(false) };
    if !IN_FLIGHT.contains(&d.status.as_str()) {
        return Ok(false);
    }
    c.execute(
        "UPDATE deployments SET status = 'superseded' WHERE service_id = ?1 AND status = 'live' AND id != ?2",
        params![d.service_id, id],
    )?;
    c.execute("UPDATE deployments SET status = 'live', finished_at = ?2 WHERE id = ?1", params![id, now])?;
    c.execute(
        "UPDATE services SET current_deployment_id = ?2, updated_at = ?3 WHERE id = ?1",
        params![d.service_id, id, now],
    )?;
    Ok(true)
}

/// Appends a line to a deployment's log; returns its sequence number (from 1).
pub fn log(c: &Connection, id: &str, at: &str, line: &str) -> Result<i64> {
    let seq: i64 = c
        .prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM deployment_logs WHERE deployment_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    c.execute(
        "INSERT INTO deployment_logs (deployment_id, seq, at, line) VALUES (?1, ?2, ?3, ?4)",
        params![id, seq, at, line],
    )?;
    Ok(seq)
}

/// One line of a deployment's log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub seq: i64,
    pub at: String,
    pub line: String,
}

/// Up to `limit` lines after `after`, in order.
pub fn log_after(c: &Connection, id: &str, after: i64, limit: u32) -> Result<Vec<LogRow>> {
    Ok(c.prepare_cached(
        "SELECT seq, at, line FROM deployment_logs WHERE deployment_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?
    .query_map(params![id, after, limit], |r| Ok(LogRow { seq: r.get(0)?, at: r.get(1)?, line: r.get(2)? }))?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Image manifests that deployments which may run again (live, superseded) name:
/// registry GC keeps them, so a rollback finds its image.
pub fn rollback_digests(c: &Connection) -> Result<Vec<String>> {
    Ok(c.prepare_cached(
        "SELECT DISTINCT image_digest FROM deployments
         WHERE image_digest IS NOT NULL AND status IN ('live', 'superseded')",
    )?
    .query_map([], |r| r.get(0))?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A replica that belongs to a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub replica_id: String,
    pub service_id: String,
    pub deployment_id: Option<String>,
}

fn member(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member { replica_id: r.get(0)?, service_id: r.get(1)?, deployment_id: r.get(2)? })
}

/// The replicas of a service (by the ids its replicas were created with), in id order.
pub fn members_of_service(c: &Connection, service_id: &str) -> Result<Vec<Member>> {
    Ok(c.prepare_cached(
        "SELECT id, json_extract(config, '$.service_id'), json_extract(config, '$.deployment_id') FROM replicas
         WHERE json_extract(config, '$.service_id') = ?1 ORDER BY id",
    )?
    .query_map([service_id], member)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Every replica that belongs to some service.
pub fn all_members(c: &Connection) -> Result<Vec<Member>> {
    Ok(c.prepare_cached(
        "SELECT id, json_extract(config, '$.service_id'), json_extract(config, '$.deployment_id') FROM replicas
         WHERE json_extract(config, '$.service_id') IS NOT NULL ORDER BY id",
    )?
    .query_map([], member)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}
