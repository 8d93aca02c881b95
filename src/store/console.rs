//! Console tickets (adr/034): only their hashes are kept, and each is taken once.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;

/// A ticket as minted: who may open which replica's console, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: String,
    pub user_id: String,
    pub token_id: Option<String>,
    pub service_id: String,
    pub project_id: String,
    pub replica_id: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: i64,
}

pub fn insert(c: &Connection, t: &Ticket, secret_hash: &[u8]) -> Result<()> {
    // Spent and expired tickets are no use to anyone: each mint sweeps them.
    c.execute("DELETE FROM console_tickets WHERE expires_at < ?1", params![crate::ids::unix_now()])?;
    c.execute(
        "INSERT INTO console_tickets (id, secret_hash, user_id, token_id, service_id, project_id, replica_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            t.id,
            secret_hash,
            t.user_id,
            t.token_id,
            t.service_id,
            t.project_id,
            t.replica_id,
            t.created_at,
            t.expires_at
        ],
    )?;
    Ok(())
}

/// Why a presented ticket is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No ticket has this hash (never minted, or purged).
    Unknown,
    Used,
    Expired,
}

/// Takes the ticket with this hash: marks it used and returns it, if it is unused
/// and not expired at `now` (Unix seconds). One statement decides, so two sockets
/// presenting the same ticket at once cannot both have it.
pub fn redeem(c: &Connection, secret_hash: &[u8], now: i64) -> Result<std::result::Result<Ticket, Refused>> {
    let taken = c
        .query_row(
            "UPDATE console_tickets SET used_at = ?3
             WHERE secret_hash = ?1 AND used_at IS NULL AND expires_at >= ?2
             RETURNING id, user_id, token_id, service_id, project_id, replica_id, created_at, expires_at",
            params![secret_hash, now, crate::ids::now_rfc3339()],
            |r| {
                Ok(Ticket {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    token_id: r.get(2)?,
                    service_id: r.get(3)?,
                    project_id: r.get(4)?,
                    replica_id: r.get(5)?,
                    created_at: r.get(6)?,
                    expires_at: r.get(7)?,
                })
            },
        )
        .optional()?;
    if let Some(t) = taken {
        return Ok(Ok(t));
    }
    let why = c
        .query_row(
            "SELECT used_at IS NOT NULL FROM console_tickets WHERE secret_hash = ?1",
            params![secret_hash],
            |r| r.get::<_, bool>(0),
        )
        .optional()?;
    Ok(Err(match why {
        None => Refused::Unknown,
        Some(true) => Refused::Used,
        Some(false) => Refused::Expired,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ticket_is_taken_once_and_not_after_it_expires() {
        let (store, dir) = crate::store::test_store();
        let now = crate::ids::unix_now();
        let outcome = store
            .write(move |c| {
                c.execute_batch(
                    "INSERT INTO users (id, username, password_hash, super_admin, created_at) VALUES ('usr_1', 'u', 'x', 0, 'now');
                     INSERT INTO projects (id, name, created_at, updated_at) VALUES ('prj_1', 'p', 'now', 'now');
                     INSERT INTO services (id, project_id, name, spec, desired, created_at, updated_at)
                         VALUES ('svc_1', 'prj_1', 's', '{}', 'running', 'now', 'now');",
                )?;
                let ticket = |id: &str| Ticket {
                    id: id.into(),
                    user_id: "usr_1".into(),
                    token_id: None,
                    service_id: "svc_1".into(),
                    project_id: "prj_1".into(),
                    replica_id: "rep_1".into(),
                    created_at: "now".into(),
                    expires_at: now + 30,
                };
                insert(c, &ticket("cot_1"), b"one")?;
                insert(c, &ticket("cot_2"), b"two")?;
                let id = |r: std::result::Result<Ticket, Refused>| r.map(|t| t.id);
                Ok([
                    id(redeem(c, b"one", now)?),
                    id(redeem(c, b"one", now)?),
                    id(redeem(c, b"two", now + 31)?),
                    id(redeem(c, b"three", now)?),
                    id(redeem(c, b"two", now + 30)?),
                ])
            })
            .await
            .unwrap();
        assert_eq!(
            outcome,
            [
                Ok("cot_1".to_string()),
                Err(Refused::Used),
                Err(Refused::Expired),
                Err(Refused::Unknown),
                Ok("cot_2".to_string())
            ]
        );
        store.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}
