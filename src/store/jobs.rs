//! Jobs, their runs and the runs' logs. A job's settings are one JSON document
//! (`spec`, read and written by `engine::jobs`) beside the columns the scheduler
//! looks things up by.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Page, PageQuery, Result, StoreError, conflict_on_unique};

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// The settings, JSON (secret env values sealed).
    pub spec: String,
    /// The cron expression, when scheduled.
    pub schedule: Option<String>,
    /// Unix second up to which fire times have been handled.
    pub schedule_cursor: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub job_id: String,
    pub project_id: String,
    /// `schedule`, `manual`, `catch_up` or `retry`.
    pub trigger: String,
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out`, `cancelled` or `skipped`.
    pub status: String,
    pub attempt: i64,
    pub scheduled_for: Option<String>,
    pub replica_id: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// Statuses of a run that has not ended.
pub const ACTIVE: &[&str] = &["queued", "running"];

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq)]
pub struct RunLogLine {
    pub time: String,
    pub stream: String,
    pub line: String,
}

const JOB_COLUMNS: &str = "id, project_id, name, spec, schedule, schedule_cursor, created_at, updated_at";

fn job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        spec: r.get(3)?,
        schedule: r.get(4)?,
        schedule_cursor: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

const RUN_COLUMNS: &str = "id, job_id, project_id, trigger, status, attempt, scheduled_for, replica_id, exit_code,
    signal, error, created_at, started_at, finished_at";

fn run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        job_id: r.get(1)?,
        project_id: r.get(2)?,
        trigger: r.get(3)?,
        status: r.get(4)?,
        attempt: r.get(5)?,
        scheduled_for: r.get(6)?,
        replica_id: r.get(7)?,
        exit_code: r.get(8)?,
        signal: r.get(9)?,
        error: r.get(10)?,
        created_at: r.get(11)?,
        started_at: r.get(12)?,
        finished_at: r.get(13)?,
    })
}

fn taken(name: &str) -> String {
    format!("a job named {name} already exists in this project")
}

pub fn insert(c: &Connection, j: &JobRow) -> Result<()> {
    c.execute(
        &format!("INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![j.id, j.project_id, j.name, j.spec, j.schedule, j.schedule_cursor, j.created_at, j.updated_at],
    )
    .map_err(|e| conflict_on_unique(e, || taken(&j.name)))?;
    Ok(())
}

pub fn get(c: &Connection, id: &str) -> Result<Option<JobRow>> {
    Ok(c.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?.query_row([id], job).optional()?)
}

/// The job's project, for the access check of `/v1/jobs/{id}` routes.
pub fn project_of(c: &Connection, id: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT project_id FROM jobs WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?)
}

/// Jobs in the given projects (all when `None`), optionally one project only, in id order.
pub fn list(
    c: &Connection,
    projects: Option<&[String]>,
    project: Option<&str>,
    page: &PageQuery,
) -> Result<Page<JobRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE id > ?1 AND (?2 IS NULL OR project_id = ?2)
         AND (?3 IS NULL OR project_id IN (SELECT value FROM json_each(?3))) ORDER BY id LIMIT ?4"
    ))?;
    let visible = projects.map(|p| serde_json::Value::from(p.to_vec()).to_string());
    let rows = stmt
        .query_map(params![page.after.as_deref().unwrap_or(""), project, visible, page.limit + 1], job)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// Every job with a schedule (the scheduler, start-up).
pub fn scheduled(c: &Connection) -> Result<Vec<JobRow>> {
    Ok(c.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE schedule IS NOT NULL ORDER BY id"))?
        .query_map([], job)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Writes a job's name, settings and schedule (its cursor included).
pub fn update(c: &Connection, j: &JobRow) -> Result<()> {
    let n = c
        .execute(
            "UPDATE jobs SET name = ?2, spec = ?3, schedule = ?4, schedule_cursor = ?5, updated_at = ?6 WHERE id = ?1",
            params![j.id, j.name, j.spec, j.schedule, j.schedule_cursor, j.updated_at],
        )
        .map_err(|e| conflict_on_unique(e, || taken(&j.name)))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("job {} not found", j.id)));
    }
    Ok(())
}

/// Moves the schedule's cursor forward (never back).
pub fn advance_cursor(c: &Connection, id: &str, cursor: i64) -> Result<()> {
    c.execute(
        "UPDATE jobs SET schedule_cursor = max(coalesce(schedule_cursor, 0), ?2) WHERE id = ?1",
        params![id, cursor],
    )?;
    Ok(())
}

/// Deletes a job with its runs and their logs.
pub fn delete(c: &Connection, id: &str) -> Result<()> {
    if c.execute("DELETE FROM jobs WHERE id = ?1", [id])? == 0 {
        return Err(StoreError::NotFound(format!("job {id} not found")));
    }
    Ok(())
}

pub fn insert_run(c: &Connection, r: &RunRow) -> Result<()> {
    c.execute(
        &format!(
            "INSERT INTO job_runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ),
        params![
            r.id,
            r.job_id,
            r.project_id,
            r.trigger,
            r.status,
            r.attempt,
            r.scheduled_for,
            r.replica_id,
            r.exit_code,
            r.signal,
            r.error,
            r.created_at,
            r.started_at,
            r.finished_at
        ],
    )?;
    Ok(())
}

pub fn get_run(c: &Connection, id: &str) -> Result<Option<RunRow>> {
    Ok(c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE id = ?1"))?
        .query_row([id], run)
        .optional()?)
}

/// Writes what a run's progress changes; a run deleted meanwhile (its job went) is
/// left gone.
pub fn update_run(c: &Connection, r: &RunRow) -> Result<()> {
    c.execute(
        "UPDATE job_runs SET status = ?2, replica_id = ?3, exit_code = ?4, signal = ?5, error = ?6, started_at = ?7,
            finished_at = ?8 WHERE id = ?1",
        params![r.id, r.status, r.replica_id, r.exit_code, r.signal, r.error, r.started_at, r.finished_at],
    )?;
    Ok(())
}

/// A job's runs, newest first, optionally of one status.
pub fn list_runs(c: &Connection, job_id: &str, status: Option<&str>, page: &PageQuery) -> Result<Page<RunRow>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = ?1 AND id < ?2 AND (?3 IS NULL OR status = ?3)
             ORDER BY id DESC LIMIT ?4"
        ))?
        .query_map(params![job_id, page.after.as_deref().unwrap_or("\u{10ffff}"), status, page.limit + 1], run)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// The job's newest run.
pub fn last_run(c: &Connection, job_id: &str) -> Result<Option<RunRow>> {
    Ok(c.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE job_id = ?1 ORDER BY id DESC LIMIT 1"))?
        .query_row([job_id], run)
        .optional()?)
}

/// Every run not yet ended (start-up recovery).
pub fn active_runs(c: &Connection) -> Result<Vec<RunRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM job_runs WHERE status IN ('queued', 'running') ORDER BY id"
    ))?
    .query_map([], run)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Replicas made for job runs, with their run: `(replica, run)`.
pub fn run_replicas(c: &Connection) -> Result<Vec<(String, String)>> {
    Ok(c.prepare_cached(
        "SELECT id, json_extract(config, '$.job_run') FROM replicas WHERE json_extract(config, '$.job_run') IS NOT NULL
         ORDER BY id",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Stores a run's log (replacing what it held).
pub fn set_logs(c: &Connection, run_id: &str, lines: &[RunLogLine]) -> Result<()> {
    c.execute("DELETE FROM job_run_logs WHERE run_id = ?1", [run_id])?;
    let mut stmt =
        c.prepare_cached("INSERT INTO job_run_logs (run_id, seq, time, stream, line) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for (seq, l) in lines.iter().enumerate() {
        stmt.execute(params![run_id, seq as i64, l.time, l.stream, l.line])?;
    }
    Ok(())
}

/// A run's stored log, oldest first.
pub fn logs(c: &Connection, run_id: &str) -> Result<Vec<RunLogLine>> {
    Ok(c.prepare_cached("SELECT time, stream, line FROM job_run_logs WHERE run_id = ?1 ORDER BY seq")?
        .query_map([run_id], |r| Ok(RunLogLine { time: r.get(0)?, stream: r.get(1)?, line: r.get(2)? }))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Deletes the job's ended runs (and their logs) beyond the newest `keep` runs;
/// runs still going are never taken. Returns how many went.
pub fn prune_runs(c: &Connection, job_id: &str, keep: u32) -> Result<usize> {
    Ok(c.execute(
        "DELETE FROM job_runs WHERE job_id = ?1 AND status NOT IN ('queued', 'running') AND id NOT IN
            (SELECT id FROM job_runs WHERE job_id = ?1 ORDER BY id DESC LIMIT ?2)",
        params![job_id, keep],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_row(project: &str, name: &str) -> JobRow {
        JobRow {
            id: crate::ids::new_id("job"),
            project_id: project.into(),
            name: name.into(),
            spec: "{}".into(),
            schedule: Some("* * * * * *".into()),
            schedule_cursor: Some(100),
            created_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    fn run_row(job: &JobRow, status: &str) -> RunRow {
        RunRow {
            id: crate::ids::new_id("run"),
            job_id: job.id.clone(),
            project_id: job.project_id.clone(),
            trigger: "manual".into(),
            status: status.into(),
            attempt: 1,
            scheduled_for: None,
            replica_id: None,
            exit_code: None,
            signal: None,
            error: None,
            created_at: "t".into(),
            started_at: None,
            finished_at: None,
        }
    }

    #[tokio::test]
    async fn names_are_unique_per_project_cursors_only_advance_and_pruning_keeps_the_newest_and_the_active() {
        let (store, _dir) = crate::store::test_store();
        let p = crate::store::projects::Project {
            id: "prj_1".into(),
            name: "alpha".into(),
            description: String::new(),
            env: Default::default(),
            limits: Default::default(),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        store.write(move |c| crate::store::projects::insert(c, &p)).await.unwrap();
        let j = job_row("prj_1", "nightly");
        let j2 = j.clone();
        store.write(move |c| insert(c, &j2)).await.unwrap();
        let dup = job_row("prj_1", "nightly");
        assert!(matches!(store.write(move |c| insert(c, &dup)).await, Err(StoreError::Conflict(_))));
        let id = j.id.clone();
        store.write(move |c| advance_cursor(c, &id, 50)).await.unwrap();
        let id = j.id.clone();
        assert_eq!(store.read(move |c| get(c, &id)).await.unwrap().unwrap().schedule_cursor, Some(100));
        let id = j.id.clone();
        store.write(move |c| advance_cursor(c, &id, 150)).await.unwrap();
        let id = j.id.clone();
        assert_eq!(store.read(move |c| get(c, &id)).await.unwrap().unwrap().schedule_cursor, Some(150));

        // The oldest run is still going: pruning to 2 keeps it and the 2 newest.
        let mut ids = Vec::new();
        for status in ["running", "failed", "succeeded", "skipped", "succeeded"] {
            let r = run_row(&j, status);
            ids.push(r.id.clone());
            store.write(move |c| insert_run(c, &r)).await.unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let first = ids[1].clone();
        let lines = vec![RunLogLine { time: "t".into(), stream: "stdout".into(), line: "hi".into() }];
        store.write(move |c| set_logs(c, &first, &lines)).await.unwrap();
        let id = j.id.clone();
        assert_eq!(store.write(move |c| prune_runs(c, &id, 2)).await.unwrap(), 2);
        let id = j.id.clone();
        let q = PageQuery { limit: 10, after: None };
        let left: Vec<String> =
            store.read(move |c| list_runs(c, &id, None, &q)).await.unwrap().rows.into_iter().map(|r| r.id).collect();
        assert_eq!(left, vec![ids[4].clone(), ids[3].clone(), ids[0].clone()]);
        let first = ids[1].clone();
        assert!(store.read(move |c| logs(c, &first)).await.unwrap().is_empty(), "a pruned run's log goes with it");
        let id = j.id.clone();
        store.write(move |c| delete(c, &id)).await.unwrap();
        assert!(store.read(active_runs).await.unwrap().is_empty(), "runs go with their job");
    }
}
