//! Services' push webhooks (the repository and branch a push deploys, the sealed
//! secret) and the deliveries already acted on. The secret arrives here sealed;
//! this module never sees plaintext.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;

/// A service's webhook, as stored.
#[derive(Debug, Clone)]
pub struct WebhookRow {
    pub service_id: String,
    pub repo_url: String,
    pub branch: String,
    pub dockerfile: Option<String>,
    /// `age:…`, never plaintext.
    pub secret_sealed: String,
    /// The host key that sealed the secret.
    pub sealed_by: String,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "service_id, repo_url, branch, dockerfile, secret_sealed, sealed_by, created_at, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookRow> {
    Ok(WebhookRow {
        service_id: r.get(0)?,
        repo_url: r.get(1)?,
        branch: r.get(2)?,
        dockerfile: r.get(3)?,
        secret_sealed: r.get(4)?,
        sealed_by: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

pub fn get(c: &Connection, service_id: &str) -> Result<Option<WebhookRow>> {
    Ok(c.query_row(&format!("SELECT {COLUMNS} FROM webhooks WHERE service_id = ?1"), [service_id], row).optional()?)
}

/// Sets the webhook of `row.service_id`, replacing one there (its `created_at`
/// kept). Whether one was replaced.
pub fn put(c: &Connection, w: &WebhookRow) -> Result<(WebhookRow, bool)> {
    let replaced = get(c, &w.service_id)?.is_some();
    c.execute(
        &format!(
            "INSERT INTO webhooks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (service_id) DO UPDATE SET repo_url = excluded.repo_url, branch = excluded.branch,
               dockerfile = excluded.dockerfile, secret_sealed = excluded.secret_sealed,
               sealed_by = excluded.sealed_by, updated_at = excluded.updated_at"
        ),
        params![
            w.service_id,
            w.repo_url,
            w.branch,
            w.dockerfile,
            w.secret_sealed,
            w.sealed_by,
            w.created_at,
            w.updated_at
        ],
    )?;
    let stored = get(c, &w.service_id)?.unwrap_or_else(|| w.clone());
    Ok((stored, replaced))
}

/// Turns the webhook off (its deliveries are forgotten too). Whether there was one.
pub fn delete(c: &Connection, service_id: &str) -> Result<bool> {
    c.execute("DELETE FROM webhook_deliveries WHERE service_id = ?1", [service_id])?;
    Ok(c.execute("DELETE FROM webhooks WHERE service_id = ?1", [service_id])? > 0)
}

/// Records the deliveries `keys` of `service_id` as acted on, unless one of them
/// already is (a replay): then nothing is recorded and the answer is false.
/// Deliveries received before `forget_before` are forgotten first. The store's one
/// writer runs this whole, so two copies of one delivery cannot both pass.
pub fn claim(c: &Connection, service_id: &str, keys: &[String], now: &str, forget_before: &str) -> Result<bool> {
    c.execute("DELETE FROM webhook_deliveries WHERE received_at < ?1", [forget_before])?;
    for k in keys {
        let seen: Option<i64> = c
            .query_row(
                "SELECT 1 FROM webhook_deliveries WHERE service_id = ?1 AND delivery = ?2",
                params![service_id, k],
                |r| r.get(0),
            )
            .optional()?;
        if seen.is_some() {
            return Ok(false);
        }
    }
    for k in keys {
        c.execute(
            "INSERT INTO webhook_deliveries (service_id, delivery, received_at) VALUES (?1, ?2, ?3)",
            params![service_id, k, now],
        )?;
    }
    Ok(true)
}

/// Forgets deliveries claimed for an action that did not happen, so the sender's
/// retry is not taken for a replay.
pub fn release(c: &Connection, service_id: &str, keys: &[String]) -> Result<()> {
    for k in keys {
        c.execute("DELETE FROM webhook_deliveries WHERE service_id = ?1 AND delivery = ?2", params![service_id, k])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deliveries_are_claimed_once_and_forgotten_after_their_time() {
        let (store, dir) = crate::store::test_store();
        let claim_at = |keys: Vec<String>, now: &'static str, before: &'static str| {
            let s = store.clone();
            async move { s.write(move |c| claim(c, "svc_1", &keys, now, before)).await.unwrap() }
        };
        let one = vec!["d1".to_string(), "sha256:aa".to_string()];
        assert!(claim_at(one.clone(), "2026-01-01T00:00:00Z", "2025-12-01T00:00:00Z").await);
        assert!(!claim_at(one.clone(), "2026-01-01T00:00:01Z", "2025-12-01T00:00:00Z").await);
        // Another delivery id with the same body is a replay too.
        assert!(!claim_at(vec!["d2".into(), "sha256:aa".into()], "2026-01-01T00:00:02Z", "2025-12-01T00:00:00Z").await);
        // Nothing of the refused claim was recorded.
        assert!(claim_at(vec!["d2".into(), "sha256:bb".into()], "2026-01-01T00:00:03Z", "2025-12-01T00:00:00Z").await);
        // Released claims may be made again.
        let keys = one.clone();
        store.write(move |c| release(c, "svc_1", &keys)).await.unwrap();
        assert!(claim_at(one.clone(), "2026-01-01T00:00:04Z", "2025-12-01T00:00:00Z").await);
        // Past their time, deliveries are forgotten.
        assert!(claim_at(one, "2026-03-01T00:00:00Z", "2026-02-01T00:00:00Z").await);
        store.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}
