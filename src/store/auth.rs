//! Sessions, API tokens and the `meta` key/value table (bootstrap token hash).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use utoipa::ToSchema;

use super::users::User;
use super::{Page, PageQuery, Result, conflict_on_unique};

/// A login session as its owner sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionInfo {
    pub id: String,
    pub created_at: String,
    pub expires_at: String,
    pub last_used_at: Option<String>,
    pub source_addr: String,
    pub user_agent: String,
    /// True for the session making this request.
    pub current: bool,
}

/// A new session row.
pub struct NewSession<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub secret_hash: &'a [u8],
    pub created_at: &'a str,
    pub expires_at: &'a str,
    pub source_addr: &'a str,
    pub user_agent: &'a str,
}

/// What authentication needs to know about a session or token.
#[derive(Debug, Clone)]
pub struct Credential {
    pub user: User,
    pub secret_hash: Vec<u8>,
    pub expires_at: Option<String>,
    /// `None` for sessions (all scopes); the token's scope names otherwise.
    pub scopes: Option<Vec<String>>,
}

pub fn insert_session(c: &Connection, s: &NewSession<'_>) -> Result<()> {
    c.execute(
        "INSERT INTO sessions (id, user_id, secret_hash, created_at, expires_at, source_addr, user_agent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![s.id, s.user_id, s.secret_hash, s.created_at, s.expires_at, s.source_addr, s.user_agent],
    )?;
    Ok(())
}

pub fn session_credential(c: &Connection, id: &str) -> Result<Option<Credential>> {
    Ok(c.prepare_cached(
        "SELECT u.id, u.username, u.super_admin, u.created_at, s.secret_hash, s.expires_at
         FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
    )?
    .query_row([id], |r| {
        Ok(Credential {
            user: User { id: r.get(0)?, username: r.get(1)?, super_admin: r.get(2)?, created_at: r.get(3)? },
            secret_hash: r.get(4)?,
            expires_at: Some(r.get(5)?),
            scopes: None,
        })
    })
    .optional()?)
}

/// Keeps the user's `keep` most recently used sessions and deletes the rest;
/// returns how many went.
pub fn trim_sessions(c: &Connection, user_id: &str, keep: u32) -> Result<usize> {
    Ok(c.execute(
        "DELETE FROM sessions WHERE user_id = ?1 AND id NOT IN (
             SELECT id FROM sessions WHERE user_id = ?1
             ORDER BY coalesce(last_used_at, created_at) DESC, id DESC LIMIT ?2)",
        params![user_id, keep],
    )?)
}

/// One page of the user's sessions, in id order.
pub fn page_sessions(
    c: &Connection,
    user_id: &str,
    current: Option<&str>,
    page: &PageQuery,
) -> Result<Page<SessionInfo>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, created_at, expires_at, last_used_at, source_addr, user_agent
         FROM sessions WHERE user_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![user_id, page.after.as_deref().unwrap_or(""), page.limit + 1], |r| {
            let id: String = r.get(0)?;
            Ok(SessionInfo {
                current: Some(id.as_str()) == current,
                id,
                created_at: r.get(1)?,
                expires_at: r.get(2)?,
                last_used_at: r.get(3)?,
                source_addr: r.get(4)?,
                user_agent: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// Deletes one of the user's sessions; false if they have no such session.
pub fn delete_session(c: &Connection, user_id: &str, id: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM sessions WHERE id = ?1 AND user_id = ?2", [id, user_id])? > 0)
}

/// Deletes every session of the user except `keep`; returns how many went.
pub fn delete_other_sessions(c: &Connection, user_id: &str, keep: Option<&str>) -> Result<usize> {
    Ok(c.execute("DELETE FROM sessions WHERE user_id = ?1 AND id != ?2", [user_id, keep.unwrap_or("")])?)
}

pub fn touch_session(c: &Connection, id: &str, at: &str) -> Result<()> {
    c.execute("UPDATE sessions SET last_used_at = ?2 WHERE id = ?1", [id, at])?;
    Ok(())
}

pub fn purge_expired_sessions(c: &Connection, now: &str) -> Result<usize> {
    Ok(c.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?)
}

/// An API token as its owner sees it (never the secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// The first characters of the token, enough to recognise it.
    pub prefix: String,
    /// Scope names; `*` means every scope the owner's roles allow.
    pub scopes: Vec<String>,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub created_at: String,
}

fn row_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    let scopes: String = r.get(3)?;
    Ok(ApiToken {
        id: r.get(0)?,
        name: r.get(1)?,
        prefix: r.get(2)?,
        scopes: scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        expires_at: r.get(4)?,
        last_used_at: r.get(5)?,
        created_at: r.get(6)?,
    })
}

/// Stores a new token; `parent` is the token it was minted with, if any (deleting
/// the parent deletes it too).
pub fn insert_token(
    c: &Connection,
    user_id: &str,
    t: &ApiToken,
    secret_hash: &[u8],
    parent: Option<&str>,
) -> Result<()> {
    c.execute(
        "INSERT INTO api_tokens (id, user_id, name, secret_hash, prefix, scopes, expires_at, created_at, parent_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![t.id, user_id, t.name, secret_hash, t.prefix, t.scopes.join(" "), t.expires_at, t.created_at, parent],
    )
    .map_err(|e| conflict_on_unique(e, || format!("you already have a token named {}", t.name)))?;
    Ok(())
}

pub fn token_credential(c: &Connection, id: &str) -> Result<Option<Credential>> {
    Ok(c.prepare_cached(
        "SELECT u.id, u.username, u.super_admin, u.created_at, t.secret_hash, t.expires_at, t.scopes
         FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?1",
    )?
    .query_row([id], |r| {
        let scopes: String = r.get(6)?;
        Ok(Credential {
            user: User { id: r.get(0)?, username: r.get(1)?, super_admin: r.get(2)?, created_at: r.get(3)? },
            secret_hash: r.get(4)?,
            expires_at: r.get(5)?,
            scopes: Some(scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect()),
        })
    })
    .optional()?)
}

pub fn list_tokens(c: &Connection, user_id: &str, page: &PageQuery) -> Result<Page<ApiToken>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, prefix, scopes, expires_at, last_used_at, created_at
         FROM api_tokens WHERE user_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![user_id, page.after.as_deref().unwrap_or(""), page.limit + 1], row_token)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// How many API tokens the user holds.
pub fn count_tokens(c: &Connection, user_id: &str) -> Result<u32> {
    Ok(c.prepare_cached("SELECT count(*) FROM api_tokens WHERE user_id = ?1")?.query_row([user_id], |r| r.get(0))?)
}

/// Revokes (deletes) one of the user's tokens, and every token minted from it;
/// false if they have no such token.
pub fn delete_token(c: &Connection, user_id: &str, id: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM api_tokens WHERE id = ?1 AND user_id = ?2", [id, user_id])? > 0)
}

pub fn touch_token(c: &Connection, id: &str, at: &str) -> Result<()> {
    c.execute("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1", [id, at])?;
    Ok(())
}

pub fn meta_get(c: &Connection, key: &str) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?.query_row([key], |r| r.get(0)).optional()?)
}

pub fn meta_set(c: &Connection, key: &str, value: &str) -> Result<()> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

pub fn meta_delete(c: &Connection, key: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM meta WHERE key = ?1", [key])? > 0)
}

/// Checks `conflict_on_unique` wiring without a full store.
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_names_are_unique_per_user() {
        let (store, dir) = crate::store::test_store();
        store
            .write(|c| {
                let u = User { id: "usr_1".into(), username: "a".into(), super_admin: false, created_at: "t".into() };
                crate::store::users::insert(c, &u, "h")?;
                let t = ApiToken {
                    id: "tok_1".into(),
                    name: "ci".into(),
                    prefix: "p".into(),
                    scopes: vec!["projects:read".into()],
                    expires_at: None,
                    last_used_at: None,
                    created_at: "t".into(),
                };
                insert_token(c, "usr_1", &t, b"h", None)?;
                let again = ApiToken { id: "tok_2".into(), ..t.clone() };
                assert!(matches!(
                    insert_token(c, "usr_1", &again, b"h", None),
                    Err(crate::store::StoreError::Conflict(_))
                ));
                // A child and a grandchild: revoking the parent revokes both.
                let child = ApiToken { id: "tok_3".into(), name: "child".into(), ..t.clone() };
                insert_token(c, "usr_1", &child, b"h", Some("tok_1"))?;
                let grandchild = ApiToken { id: "tok_4".into(), name: "grandchild".into(), ..t };
                insert_token(c, "usr_1", &grandchild, b"h", Some("tok_3"))?;
                assert_eq!(count_tokens(c, "usr_1")?, 3);
                assert!(delete_token(c, "usr_1", "tok_1")?);
                assert_eq!(count_tokens(c, "usr_1")?, 0);
                insert_token(c, "usr_1", &again, b"h", None)?;
                Ok(())
            })
            .await
            .unwrap();
        let cred = store.read(|c| token_credential(c, "tok_2")).await.unwrap().unwrap();
        assert_eq!(cred.scopes.unwrap(), vec!["projects:read".to_string()]);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn sessions_page_trim_and_expire() {
        let (store, dir) = crate::store::test_store();
        store
            .write(|c| {
                let u = User { id: "usr_1".into(), username: "a".into(), super_admin: false, created_at: "t".into() };
                crate::store::users::insert(c, &u, "h")?;
                for i in 0..6 {
                    let id = format!("ses_{i}");
                    let created = format!("2026-01-0{}T00:00:00Z", i + 1);
                    let expires = if i == 0 { "2026-01-01T00:00:01Z" } else { "2099-01-01T00:00:00Z" };
                    insert_session(
                        c,
                        &NewSession {
                            id: &id,
                            user_id: "usr_1",
                            secret_hash: b"h",
                            created_at: &created,
                            expires_at: expires,
                            source_addr: "127.0.0.1",
                            user_agent: "t",
                        },
                    )?;
                }
                // ses_1 was used last: it is the most recently used.
                touch_session(c, "ses_1", "2026-02-01T00:00:00Z")?;
                Ok(())
            })
            .await
            .unwrap();
        // Pages in id order; the current one is marked.
        let q = PageQuery { limit: 4, after: None };
        let page = store.read(move |c| page_sessions(c, "usr_1", Some("ses_2"), &q)).await.unwrap();
        assert!(page.has_more);
        let ids: Vec<&str> = page.rows.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["ses_0", "ses_1", "ses_2", "ses_3"]);
        assert_eq!(page.rows.iter().filter(|s| s.current).count(), 1);
        // Expired ones are purged.
        assert_eq!(store.write(|c| purge_expired_sessions(c, "2026-06-01T00:00:00Z")).await.unwrap(), 1);
        // Keeping three keeps the most recently used: ses_1 (touched), ses_5, ses_4.
        assert_eq!(store.write(|c| trim_sessions(c, "usr_1", 3)).await.unwrap(), 2);
        let q = PageQuery { limit: 10, after: None };
        let page = store.read(move |c| page_sessions(c, "usr_1", None, &q)).await.unwrap();
        let ids: Vec<&str> = page.rows.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["ses_1", "ses_4", "ses_5"]);
        // Revoking the others keeps only the one named.
        assert_eq!(store.write(|c| delete_other_sessions(c, "usr_1", Some("ses_4"))).await.unwrap(), 2);
        assert!(!store.write(|c| delete_session(c, "usr_2", "ses_4")).await.unwrap(), "not another user's");
        assert!(store.write(|c| delete_session(c, "usr_1", "ses_4")).await.unwrap());
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
