//! Services: a project's apps. The settings are one JSON document (`spec`, read and
//! written by `engine::service`), beside the columns the store looks things up by.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Page, PageQuery, Result, StoreError, conflict_on_unique};

/// A service as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// The settings, JSON (secret env values sealed).
    pub spec: String,
    /// `running` or `stopped`: whether its replicas should run.
    pub desired: String,
    pub current_deployment_id: Option<String>,
    /// `(repository, tag)` whose pushes deploy the service.
    pub follow: Option<(String, String)>,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "s.id, s.project_id, s.name, s.spec, s.desired, s.current_deployment_id, s.follow_repository,
    s.follow_tag, s.created_at, s.updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ServiceRow> {
    let repository: Option<String> = r.get(6)?;
    let tag: Option<String> = r.get(7)?;
    Ok(ServiceRow {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        spec: r.get(3)?,
        desired: r.get(4)?,
        current_deployment_id: r.get(5)?,
        follow: repository.zip(tag),
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

pub fn insert(c: &Connection, s: &ServiceRow) -> Result<()> {
    let (repository, tag) = s.follow.clone().unzip();
    c.execute(
        "INSERT INTO services (id, project_id, name, spec, desired, current_deployment_id, follow_repository,
            follow_tag, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            s.id,
            s.project_id,
            s.name,
            s.spec,
            s.desired,
            s.current_deployment_id,
            repository,
            tag,
            s.created_at,
            s.updated_at
        ],
    )
    .map_err(|e| conflict_on_unique(e, || format!("a service named {} already exists in this project", s.name)))?;
    Ok(())
}

pub fn get(c: &Connection, id: &str) -> Result<Option<ServiceRow>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM services s WHERE s.id = ?1"))?
        .query_row([id], row)
        .optional()?)
}

/// The service's project, for the access check of `/v1/services/{id}` routes.
pub fn project_of(c: &Connection, id: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT project_id FROM services WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()?)
}

/// Services in the given projects (all when `None`), optionally one project only,
/// in id order.
pub fn list(
    c: &Connection,
    projects: Option<&[String]>,
    project: Option<&str>,
    page: &PageQuery,
) -> Result<Page<ServiceRow>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM services s WHERE s.id > ?1 AND (?2 IS NULL OR s.project_id = ?2)
         AND (?3 IS NULL OR s.project_id IN (SELECT value FROM json_each(?3))) ORDER BY s.id LIMIT ?4"
    ))?;
    let visible = projects.map(|p| serde_json::Value::from(p.to_vec()).to_string());
    let rows = stmt
        .query_map(params![page.after.as_deref().unwrap_or(""), project, visible, page.limit + 1], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// Every service (start-up recovery, workers).
pub fn all(c: &Connection) -> Result<Vec<ServiceRow>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM services s ORDER BY s.id"))?
        .query_map([], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The services following `repository:tag`.
pub fn following(c: &Connection, repository: &str, tag: &str) -> Result<Vec<ServiceRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM services s WHERE s.follow_repository = ?1 AND s.follow_tag = ?2 ORDER BY s.id"
    ))?
    .query_map([repository, tag], row)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Writes the settings, name, desired state and follow of a service.
pub fn update(c: &Connection, s: &ServiceRow) -> Result<()> {
    let (repository, tag) = s.follow.clone().unzip();
    let n = c
        .execute(
            "UPDATE services SET name = ?2, spec = ?3, desired = ?4, follow_repository = ?5, follow_tag = ?6,
                updated_at = ?7 WHERE id = ?1",
            params![s.id, s.name, s.spec, s.desired, repository, tag, s.updated_at],
        )
        .map_err(|e| conflict_on_unique(e, || format!("a service named {} already exists in this project", s.name)))?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("service {} not found", s.id)));
    }
    Ok(())
}

pub fn set_desired(c: &Connection, id: &str, desired: &str, now: &str) -> Result<()> {
    if c.execute("UPDATE services SET desired = ?2, updated_at = ?3 WHERE id = ?1", params![id, desired, now])? == 0 {
        return Err(StoreError::NotFound(format!("service {id} not found")));
    }
    Ok(())
}

/// Deletes a service with its deployments and their logs; 409 while a deployment
/// of it is in flight.
pub fn delete(c: &Connection, id: &str) -> Result<()> {
    if get(c, id)?.is_none() {
        return Err(StoreError::NotFound(format!("service {id} not found")));
    }
    if let Some(d) = super::deployments::in_flight(c, id)? {
        return Err(StoreError::Conflict(format!(
            "service {id} has a deployment in progress ({d}); cancel it first with POST /v1/deployments/{d}/cancel"
        )));
    }
    c.execute("DELETE FROM services WHERE id = ?1", [id])?;
    Ok(())
}

/// Every service id (start-up: volumes of deleted services go).
pub fn ids(c: &Connection) -> Result<Vec<String>> {
    Ok(c.prepare_cached("SELECT id FROM services")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The project's name (for default hostnames).
pub fn project_name(c: &Connection, project_id: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT name FROM projects WHERE id = ?1")?.query_row([project_id], |r| r.get(0)).optional()?)
}
