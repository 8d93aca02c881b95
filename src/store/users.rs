//! Users.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Page, PageQuery, Result, StoreError, conflict_on_unique};

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: String,
    pub username: String,
    pub super_admin: bool,
    pub created_at: String,
}

fn row_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User { id: r.get(0)?, username: r.get(1)?, super_admin: r.get(2)?, created_at: r.get(3)? })
}

pub fn insert(c: &Connection, user: &User, password_hash: &str) -> Result<()> {
    c.execute(
        "INSERT INTO users (id, username, password_hash, super_admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![user.id, user.username, password_hash, user.super_admin, user.created_at],
    )
    .map_err(|e| conflict_on_unique(e, || format!("username {} is taken", user.username)))?;
    Ok(())
}

pub fn get(c: &Connection, id: &str) -> Result<Option<User>> {
    Ok(c.prepare_cached("SELECT id, username, super_admin, created_at FROM users WHERE id = ?1")?
        .query_row([id], row_user)
        .optional()?)
}

/// The user and their password hash, for login.
pub fn by_username_with_hash(c: &Connection, username: &str) -> Result<Option<(User, String)>> {
    Ok(c.prepare_cached("SELECT id, username, super_admin, created_at, password_hash FROM users WHERE username = ?1")?
        .query_row([username], |r| Ok((row_user(r)?, r.get(4)?)))
        .optional()?)
}

pub fn by_username(c: &Connection, username: &str) -> Result<Option<User>> {
    Ok(by_username_with_hash(c, username)?.map(|(u, _)| u))
}

/// Replaces a user's password hash; false when there is no such user.
pub fn set_password_hash(c: &Connection, id: &str, password_hash: &str) -> Result<bool> {
    Ok(c.execute("UPDATE users SET password_hash = ?2 WHERE id = ?1", params![id, password_hash])? == 1)
}

pub fn count(c: &Connection) -> Result<i64> {
    Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
}

pub fn list(c: &Connection, page: &PageQuery) -> Result<Page<User>> {
    let mut stmt =
        c.prepare_cached("SELECT id, username, super_admin, created_at FROM users WHERE id > ?1 ORDER BY id LIMIT ?2")?;
    let rows = stmt
        .query_map(params![page.after.as_deref().unwrap_or(""), page.limit + 1], row_user)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// Deletes a user with their sessions, tokens and memberships. The last super-admin
/// cannot be deleted: nobody could administer the node afterwards.
pub fn delete(c: &Connection, id: &str) -> Result<()> {
    let user = get(c, id)?.ok_or_else(|| StoreError::NotFound(format!("user {id} not found")))?;
    if user.super_admin {
        let admins: i64 = c.query_row("SELECT count(*) FROM users WHERE super_admin = 1", [], |r| r.get(0))?;
        if admins <= 1 {
            return Err(StoreError::Conflict(format!(
                "user {id} is the last super-admin; make another user super-admin first"
            )));
        }
    }
    c.execute("DELETE FROM users WHERE id = ?1", [id])?;
    // Their memberships went with them (ON DELETE CASCADE).
    super::projects::lists_changed(c)
}
