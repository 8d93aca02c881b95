//! Projects and their members.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Page, PageQuery, Result, StoreError, conflict_on_unique};
use crate::auth::Role;

/// Resource limits for a whole project (a ceiling over all its containers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Environment shared by every service of the project.
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub created_at: String,
    pub updated_at: String,
}

/// Decodes a JSON column; a value that does not parse is an error, never an empty default.
fn json_column<T: serde::de::DeserializeOwned>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

fn row_project(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        env: json_column(r, 3)?,
        limits: json_column(r, 4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

const COLUMNS: &str = "p.id, p.name, p.description, p.env, p.limits, p.created_at, p.updated_at";

fn json(v: &impl Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn insert(c: &Connection, p: &Project) -> Result<()> {
    c.execute(
        "INSERT INTO projects (id, name, description, env, limits, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![p.id, p.name, p.description, json(&p.env)?, json(&p.limits)?, p.created_at, p.updated_at],
    )
    .map_err(|e| conflict_on_unique(e, || format!("a project named {} already exists", p.name)))?;
    Ok(())
}

pub fn get(c: &Connection, id: &str) -> Result<Option<Project>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM projects p WHERE p.id = ?1"))?
        .query_row([id], row_project)
        .optional()?)
}

/// The project with this name.
pub fn id_by_name(c: &Connection, name: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT id FROM projects WHERE name = ?1")?.query_row([name], |r| r.get(0)).optional()?)
}

/// Every project (super-admins see all).
pub fn list_all(c: &Connection, page: &PageQuery) -> Result<Page<Project>> {
    let mut stmt =
        c.prepare_cached(&format!("SELECT {COLUMNS} FROM projects p WHERE p.id > ?1 ORDER BY p.id LIMIT ?2"))?;
    let rows = stmt
        .query_map(params![page.after.as_deref().unwrap_or(""), page.limit + 1], row_project)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// The projects `user_id` is a member of.
pub fn list_for_user(c: &Connection, user_id: &str, page: &PageQuery) -> Result<Page<Project>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM members m JOIN projects p ON p.id = m.project_id
         WHERE m.user_id = ?1 AND m.project_id > ?2 ORDER BY m.project_id LIMIT ?3"
    ))?;
    let rows = stmt
        .query_map(params![user_id, page.after.as_deref().unwrap_or(""), page.limit + 1], row_project)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// Fields a PUT may change; `None` keeps the current value.
pub struct ProjectUpdate {
    pub description: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub limits: Option<Limits>,
    pub updated_at: String,
}

pub fn update(c: &Connection, id: &str, u: ProjectUpdate) -> Result<Project> {
    let mut p = get(c, id)?.ok_or_else(|| StoreError::NotFound(format!("project {id} not found")))?;
    if let Some(d) = u.description {
        p.description = d;
    }
    if let Some(e) = u.env {
        p.env = e;
    }
    if let Some(l) = u.limits {
        p.limits = l;
    }
    p.updated_at = u.updated_at;
    c.execute(
        "UPDATE projects SET description = ?2, env = ?3, limits = ?4, updated_at = ?5 WHERE id = ?1",
        params![p.id, p.description, json(&p.env)?, json(&p.limits)?, p.updated_at],
    )?;
    Ok(p)
}

/// Tables whose rows belong to a project and keep it from being deleted. Each later
/// subsystem (services, jobs, repositories) adds its table here.
const DEPENDENTS: &[(&str, &str)] = &[("repositories", "registry repositories"), ("services", "services")];

/// Deletes an empty project (members go with it); 409 while anything still lives in it.
pub fn delete(c: &Connection, id: &str) -> Result<()> {
    if get(c, id)?.is_none() {
        return Err(StoreError::NotFound(format!("project {id} not found")));
    }
    for (table, what) in DEPENDENTS {
        let n: i64 = c.query_row(&format!("SELECT count(*) FROM {table} WHERE project_id = ?1"), [id], |r| r.get(0))?;
        if n > 0 {
            return Err(StoreError::Conflict(format!("project {id} still has {n} {what}; delete them first")));
        }
    }
    c.execute("DELETE FROM projects WHERE id = ?1", [id])?;
    Ok(())
}

/// The user's role in the project, if they are a member.
pub fn role_of(c: &Connection, project_id: &str, user_id: &str) -> Result<Option<Role>> {
    let role: Option<String> = c
        .prepare_cached("SELECT role FROM members WHERE project_id = ?1 AND user_id = ?2")?
        .query_row([project_id, user_id], |r| r.get(0))
        .optional()?;
    role.map(|r| Role::parse(&r).ok_or_else(|| StoreError::Corrupt(format!("role {r}")))).transpose()
}

pub fn exists(c: &Connection, project_id: &str) -> Result<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM projects WHERE id = ?1")?.exists([project_id])?)
}

/// The user's highest role in any project.
pub fn highest_role(c: &Connection, user_id: &str) -> Result<Option<Role>> {
    let roles = c
        .prepare_cached("SELECT DISTINCT role FROM members WHERE user_id = ?1")?
        .query_map([user_id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(roles.iter().filter_map(|r| Role::parse(r)).max())
}

/// Projects where the user holds at least `min`.
pub fn project_ids_with_role(c: &Connection, user_id: &str, min: Role) -> Result<Vec<String>> {
    let rows = c
        .prepare_cached("SELECT project_id, role FROM members WHERE user_id = ?1")?
        .query_map([user_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().filter(|(_, r)| Role::parse(r).is_some_and(|r| r >= min)).map(|(p, _)| p).collect())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Membership {
    pub project_id: String,
    pub project_name: String,
    pub role: Role,
}

pub fn memberships(c: &Connection, user_id: &str) -> Result<Vec<Membership>> {
    let rows = c
        .prepare_cached(
            "SELECT m.project_id, p.name, m.role FROM members m JOIN projects p ON p.id = m.project_id
             WHERE m.user_id = ?1 ORDER BY p.name",
        )?
        .query_map([user_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(project_id, project_name, role)| {
            let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?;
            Ok(Membership { project_id, project_name, role })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Member {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub created_at: String,
}

fn row_member(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_member((user_id, username, role, created_at): (String, String, String, String)) -> Result<Member> {
    let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?;
    Ok(Member { user_id, username, role, created_at })
}

pub fn list_members(c: &Connection, project_id: &str, page: &PageQuery) -> Result<Page<Member>> {
    let rows = c
        .prepare_cached(
            "SELECT m.user_id, u.username, m.role, m.created_at FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.project_id = ?1 AND m.user_id > ?2 ORDER BY m.user_id LIMIT ?3",
        )?
        .query_map(params![project_id, page.after.as_deref().unwrap_or(""), page.limit + 1], row_member)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let rows = rows.into_iter().map(to_member).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// Adds the user to the project or changes their role; true when newly added.
pub fn upsert_member(c: &Connection, project_id: &str, user_id: &str, role: Role, now: &str) -> Result<(Member, bool)> {
    let existed = role_of(c, project_id, user_id)?.is_some();
    c.execute(
        "INSERT INTO members (project_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(project_id, user_id) DO UPDATE SET role = excluded.role",
        params![project_id, user_id, role.as_str(), now],
    )?;
    let row = c
        .prepare_cached(
            "SELECT m.user_id, u.username, m.role, m.created_at FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.project_id = ?1 AND m.user_id = ?2",
        )?
        .query_row([project_id, user_id], row_member)?;
    Ok((to_member(row)?, !existed))
}

pub fn remove_member(c: &Connection, project_id: &str, user_id: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM members WHERE project_id = ?1 AND user_id = ?2", [project_id, user_id])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_corrupt_json_column_is_an_error_not_an_empty_default() {
        let (store, dir) = crate::store::test_store();
        let p = Project {
            id: "prj_1".into(),
            name: "alpha".into(),
            description: String::new(),
            env: BTreeMap::from([("A".to_string(), "1".to_string())]),
            limits: Limits::default(),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        store.write(move |c| insert(c, &p)).await.unwrap();
        assert_eq!(store.read(|c| get(c, "prj_1")).await.unwrap().unwrap().env["A"], "1");
        store
            .write(|c| {
                c.execute("UPDATE projects SET env = '{not json' WHERE id = 'prj_1'", [])?;
                Ok(())
            })
            .await
            .unwrap();
        assert!(store.read(|c| get(c, "prj_1")).await.is_err());
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
