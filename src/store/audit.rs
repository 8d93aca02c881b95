//! The audit log: one row per successful mutating request.

use rusqlite::{Connection, params};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Page, PageQuery, Result};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: String,
    /// The acting user, when known.
    pub actor_id: Option<String>,
    pub actor_name: Option<String>,
    /// The API token used, if the call was made with one.
    pub token_id: Option<String>,
    /// Method and route, e.g. `POST /v1/projects`.
    pub action: String,
    /// The resource acted on (the request path, or the id created).
    pub target: String,
    pub project_id: Option<String>,
    pub source_addr: String,
    pub request_id: String,
    pub status: u16,
}

pub fn insert(c: &Connection, e: &AuditEntry) -> Result<()> {
    c.execute(
        "INSERT INTO audit (id, at, actor_id, actor_name, token_id, action, target, project_id, source_addr, request_id, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            e.id, e.at, e.actor_id, e.actor_name, e.token_id, e.action, e.target, e.project_id, e.source_addr,
            e.request_id, e.status
        ],
    )?;
    Ok(())
}

/// Which entries a caller may read: all of them, or only those of some projects.
pub enum Visibility {
    All,
    Projects(Vec<String>),
}

/// Newest first; the cursor is the last id seen.
pub fn list(c: &Connection, vis: &Visibility, project_id: Option<&str>, page: &PageQuery) -> Result<Page<AuditEntry>> {
    let mut sql = String::from(
        "SELECT id, at, actor_id, actor_name, token_id, action, target, project_id, source_addr, request_id, status
         FROM audit WHERE id < ?1",
    );
    let mut args: Vec<String> = vec![page.after.clone().unwrap_or_else(|| "\u{10ffff}".into())];
    if let Visibility::Projects(ids) = vis {
        if ids.is_empty() {
            return Ok(Page { rows: vec![], has_more: false });
        }
        sql.push_str(" AND project_id IN (");
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            args.push(id.clone());
            sql.push_str(&format!("?{}", args.len()));
        }
        sql.push(')');
    }
    if let Some(p) = project_id {
        args.push(p.to_string());
        sql.push_str(&format!(" AND project_id = ?{}", args.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", page.limit + 1));
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                actor_id: r.get(2)?,
                actor_name: r.get(3)?,
                token_id: r.get(4)?,
                action: r.get(5)?,
                target: r.get(6)?,
                project_id: r.get(7)?,
                source_addr: r.get(8)?,
                request_id: r.get(9)?,
                status: r.get(10)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}
