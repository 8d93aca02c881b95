//! Replicas: the engine's record of every container it runs.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Result;

/// A replica as the engine records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Replica {
    pub id: String,
    pub project_id: String,
    pub service: String,
    /// `starting`, `running`, `exited`, `stopped`, `failed` or `crash_loop`.
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: i64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The replica's address on its project network, if attached.
    pub address: Option<String>,
    #[serde(skip)]
    pub next_restart_at: Option<i64>,
    #[serde(skip)]
    pub window_start: Option<i64>,
    #[serde(skip)]
    pub window_restarts: i64,
}

const COLUMNS: &str = "id, project_id, service, state, pid, restarts, exit_code, signal, oom_killed, error, created_at,
    started_at, finished_at, next_restart_at, window_start, window_restarts, address";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Replica> {
    Ok(Replica {
        id: r.get(0)?,
        project_id: r.get(1)?,
        service: r.get(2)?,
        state: r.get(3)?,
        pid: r.get(4)?,
        restarts: r.get(5)?,
        exit_code: r.get(6)?,
        signal: r.get(7)?,
        oom_killed: r.get(8)?,
        error: r.get(9)?,
        created_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        next_restart_at: r.get(13)?,
        window_start: r.get(14)?,
        window_restarts: r.get(15)?,
        address: r.get(16)?,
    })
}

pub fn insert(c: &Connection, r: &Replica, config: &str) -> Result<()> {
    c.execute(
        "INSERT INTO replicas (id, project_id, service, config, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![r.id, r.project_id, r.service, config, r.state, r.created_at],
    )?;
    Ok(())
}

pub fn get(c: &Connection, id: &str) -> Result<Option<Replica>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM replicas WHERE id = ?1"))?.query_row([id], row).optional()?)
}

pub fn config(c: &Connection, id: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT config FROM replicas WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?)
}

pub fn list(c: &Connection) -> Result<Vec<Replica>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM replicas ORDER BY id"))?
        .query_map([], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// How many replicas are in each state (states with none are absent).
pub fn count_by_state(c: &Connection) -> Result<Vec<(String, i64)>> {
    Ok(c.prepare_cached("SELECT state, count(*) FROM replicas GROUP BY state ORDER BY state")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The image manifests replicas run from (`root.image.manifest` of their config),
/// whatever their state: a stopped replica may be started again.
pub fn image_manifests(c: &Connection) -> Result<Vec<String>> {
    Ok(c.prepare_cached(
        "SELECT DISTINCT json_extract(config, '$.root.image.manifest') FROM replicas
         WHERE json_extract(config, '$.root.image.manifest') IS NOT NULL",
    )?
    .query_map([], |r| r.get(0))?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Writes every mutable field of the replica.
pub fn update(c: &Connection, r: &Replica) -> Result<()> {
    c.execute(
        "UPDATE replicas SET state = ?2, pid = ?3, restarts = ?4, exit_code = ?5, signal = ?6, oom_killed = ?7,
            error = ?8, started_at = ?9, finished_at = ?10, next_restart_at = ?11, window_start = ?12,
            window_restarts = ?13, address = ?14 WHERE id = ?1",
        params![
            r.id,
            r.state,
            r.pid,
            r.restarts,
            r.exit_code,
            r.signal,
            r.oom_killed,
            r.error,
            r.started_at,
            r.finished_at,
            r.next_restart_at,
            r.window_start,
            r.window_restarts,
            r.address
        ],
    )?;
    Ok(())
}

pub fn delete(c: &Connection, id: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM replicas WHERE id = ?1", [id])? > 0)
}
