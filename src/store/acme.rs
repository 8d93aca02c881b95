//! ACME accounts (one per directory) and the certificates issued per host. Private
//! keys arrive here sealed (`crate::secrets`); nothing in this file sees them in
//! the clear.

use rusqlite::{Connection, OptionalExtension, params};

use super::Result;

/// A sealed ACME account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub directory_url: String,
    /// `AccountCredentials` as JSON, sealed.
    pub credentials: String,
    pub key_id: String,
    pub created_at: String,
}

pub fn account(c: &Connection, directory_url: &str) -> Result<Option<Account>> {
    Ok(c.prepare_cached(
        "SELECT directory_url, credentials, key_id, created_at FROM acme_accounts WHERE directory_url = ?1",
    )?
    .query_row([directory_url], |r| {
        Ok(Account { directory_url: r.get(0)?, credentials: r.get(1)?, key_id: r.get(2)?, created_at: r.get(3)? })
    })
    .optional()?)
}

/// Stores (or replaces: a key that can no longer be opened is replaced by a new
/// account) the account for its directory.
pub fn put_account(c: &Connection, a: &Account) -> Result<()> {
    c.execute(
        "INSERT INTO acme_accounts (directory_url, credentials, key_id, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (directory_url) DO UPDATE SET credentials = ?2, key_id = ?3, created_at = ?4",
        params![a.directory_url, a.credentials, a.key_id, a.created_at],
    )?;
    Ok(())
}

/// A certificate issued for a host, with its sealed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub chain_pem: String,
    pub key_sealed: String,
    pub key_id: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub issuer: String,
    pub issued_at: String,
}

/// A host's row: the last attempt's outcome and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    pub host: String,
    /// `issued` or `error`.
    pub state: String,
    pub issued: Option<Issued>,
    pub error: Option<String>,
    pub failures: u32,
    pub next_attempt_at: Option<String>,
    pub updated_at: String,
}

const COLUMNS: &str = "host, state, chain_pem, key_sealed, key_id, serial, not_before, not_after, issuer, issued_at, \
                       error, failures, next_attempt_at, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRow> {
    let chain: Option<String> = r.get(2)?;
    let key: Option<String> = r.get(3)?;
    let issued = match (chain, key) {
        (Some(chain_pem), Some(key_sealed)) => Some(Issued {
            chain_pem,
            key_sealed,
            key_id: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            serial: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
            not_before: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
            not_after: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
            issuer: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
            issued_at: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(CertRow {
        host: r.get(0)?,
        state: r.get(1)?,
        issued,
        error: r.get(10)?,
        failures: r.get(11)?,
        next_attempt_at: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

/// Every host's row, by host.
pub fn all(c: &Connection) -> Result<Vec<CertRow>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM certificates ORDER BY host"))?;
    let rows = stmt.query_map([], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn get(c: &Connection, host: &str) -> Result<Option<CertRow>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM certificates WHERE host = ?1"))?
        .query_row([host], row)
        .optional()?)
}

/// Records a successful issuance: the new certificate replaces the old one and the
/// error count starts again.
pub fn put_issued(c: &Connection, host: &str, issued: &Issued, now: &str) -> Result<()> {
    c.execute(
        "INSERT INTO certificates (host, state, chain_pem, key_sealed, key_id, serial, not_before, not_after, issuer,
                                   issued_at, error, failures, next_attempt_at, updated_at)
         VALUES (?1, 'issued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, 0, NULL, ?10)
         ON CONFLICT (host) DO UPDATE SET state = 'issued', chain_pem = ?2, key_sealed = ?3, key_id = ?4, serial = ?5,
             not_before = ?6, not_after = ?7, issuer = ?8, issued_at = ?9, error = NULL, failures = 0,
             next_attempt_at = NULL, updated_at = ?10",
        params![
            host,
            issued.chain_pem,
            issued.key_sealed,
            issued.key_id,
            issued.serial,
            issued.not_before,
            issued.not_after,
            issued.issuer,
            issued.issued_at,
            now
        ],
    )?;
    Ok(())
}

/// Records a failed attempt; a certificate issued before stays.
pub fn put_error(
    c: &Connection,
    host: &str,
    error: &str,
    failures: u32,
    next_attempt_at: &str,
    now: &str,
) -> Result<()> {
    c.execute(
        "INSERT INTO certificates (host, state, error, failures, next_attempt_at, updated_at)
         VALUES (?1, 'error', ?2, ?3, ?4, ?5)
         ON CONFLICT (host) DO UPDATE SET state = 'error', error = ?2, failures = ?3, next_attempt_at = ?4,
             updated_at = ?5",
        params![host, error, failures, next_attempt_at, now],
    )?;
    Ok(())
}

/// Forgets a host (its certificate expired after it left the routing table).
pub fn delete(c: &Connection, host: &str) -> Result<bool> {
    Ok(c.execute("DELETE FROM certificates WHERE host = ?1", [host])? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (crate::store::Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(crate::ids::new_id("acmestore"));
        std::fs::create_dir_all(&dir).unwrap();
        (crate::store::Store::open(&dir.join("state.db")).unwrap(), dir)
    }

    fn issued(serial: &str) -> Issued {
        Issued {
            chain_pem: "chain".into(),
            key_sealed: "age:sealed".into(),
            key_id: "k1".into(),
            serial: serial.into(),
            not_before: "2025-01-01T00:00:00Z".into(),
            not_after: "2025-04-01T00:00:00Z".into(),
            issuer: "CN=test".into(),
            issued_at: "2025-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn an_error_keeps_the_certificate_and_a_success_clears_the_error() {
        let (s, dir) = db();
        s.read_blocking(|c| {
            assert!(get(c, "a.test")?.is_none());
            Ok(())
        })
        .unwrap();
        s.write_blocking(|c| put_error(c, "a.test", "refused", 1, "2025-01-01T00:01:00Z", "t0")).unwrap();
        let r = s.read_blocking(|c| get(c, "a.test")).unwrap().unwrap();
        assert_eq!((r.state.as_str(), r.issued.is_none(), r.failures), ("error", true, 1));
        s.write_blocking(|c| put_issued(c, "a.test", &issued("01"), "t1")).unwrap();
        let r = s.read_blocking(|c| get(c, "a.test")).unwrap().unwrap();
        assert_eq!((r.state.as_str(), r.error.as_deref(), r.failures), ("issued", None, 0));
        assert_eq!(r.issued.as_ref().map(|i| i.serial.as_str()), Some("01"));
        s.write_blocking(|c| put_error(c, "a.test", "again", 1, "2025-01-01T00:02:00Z", "t2")).unwrap();
        let r = s.read_blocking(|c| get(c, "a.test")).unwrap().unwrap();
        assert_eq!(r.state, "error");
        assert_eq!(r.issued.map(|i| i.serial), Some("01".to_string()), "the old certificate stays");
        assert_eq!(s.read_blocking(all).unwrap().len(), 1);
        assert!(s.write_blocking(|c| delete(c, "a.test")).unwrap());
        assert!(s.read_blocking(all).unwrap().is_empty());
        s.write_blocking(|c| {
            put_account(
                c,
                &Account {
                    directory_url: "https://x/dir".into(),
                    credentials: "age:a".into(),
                    key_id: "k".into(),
                    created_at: "t".into(),
                },
            )
        })
        .unwrap();
        let a = s.read_blocking(|c| account(c, "https://x/dir")).unwrap().unwrap();
        assert_eq!(a.credentials, "age:a");
        assert!(s.read_blocking(|c| account(c, "https://y/dir")).unwrap().is_none());
        s.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
