//! Custom domains: a hostname attached to a service, its verification token and
//! where its ownership check stands (adr/027). A hostname has one owner on the whole
//! node (a UNIQUE column, so two projects racing for one name get one 201 and one
//! 409); rows go with their service (`ON DELETE CASCADE`).

use rusqlite::{Connection, OptionalExtension, params};

use super::{Page, PageQuery, Result, StoreError, conflict_on_unique};

/// A domain as stored. `status` is `pending`, `verified` or `error`; `issued` is
/// what the API says of a verified domain whose certificate is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRow {
    pub id: String,
    pub service_id: String,
    pub project_id: String,
    pub hostname: String,
    pub status: String,
    pub verification_token: String,
    pub error: Option<String>,
    pub created_at: String,
    pub verified_at: Option<String>,
}

const COLUMNS: &str = "d.id, d.service_id, d.project_id, d.hostname, d.status, d.verification_token, d.error, d.created_at, d.verified_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DomainRow> {
    Ok(DomainRow {
        id: r.get(0)?,
        service_id: r.get(1)?,
        project_id: r.get(2)?,
        hostname: r.get(3)?,
        status: r.get(4)?,
        verification_token: r.get(5)?,
        error: r.get(6)?,
        created_at: r.get(7)?,
        verified_at: r.get(8)?,
    })
}

/// Adds a domain; 409 when the hostname is taken by any service of any project.
pub fn insert(c: &Connection, d: &DomainRow) -> Result<()> {
    c.execute(
        "INSERT INTO domains (id, service_id, project_id, hostname, status, verification_token, error, created_at,
            verified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            d.id,
            d.service_id,
            d.project_id,
            d.hostname,
            d.status,
            d.verification_token,
            d.error,
            d.created_at,
            d.verified_at
        ],
    )
    .map_err(|e| conflict_on_unique(e, || format!("domain {} is already attached to a service", d.hostname)))?;
    Ok(())
}

/// The service's domain `id` (`None` when it does not exist or belongs to another
/// service: ids in the path are checked against each other).
pub fn get(c: &Connection, service_id: &str, id: &str) -> Result<Option<DomainRow>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM domains d WHERE d.id = ?1 AND d.service_id = ?2"))?
        .query_row([id, service_id], row)
        .optional()?)
}

/// The service's domains in id order, a page at a time.
pub fn list(c: &Connection, service_id: &str, page: &PageQuery) -> Result<Page<DomainRow>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM domains d WHERE d.service_id = ?1 AND d.id > ?2 ORDER BY d.id LIMIT ?3"
        ))?
        .query_map(params![service_id, page.after.as_deref().unwrap_or(""), page.limit + 1], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// Every domain of the service (deleting the service, showing it).
pub fn of_service(c: &Connection, service_id: &str) -> Result<Vec<DomainRow>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM domains d WHERE d.service_id = ?1 ORDER BY d.id"))?
        .query_map([service_id], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Every domain (start-up: the challenge answers and the routes come back).
pub fn all(c: &Connection) -> Result<Vec<DomainRow>> {
    Ok(c.prepare_cached(&format!("SELECT {COLUMNS} FROM domains d ORDER BY d.id"))?
        .query_map([], row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The hostnames the service is routed at besides its default one: its verified
/// domains.
pub fn routed(c: &Connection, service_id: &str) -> Result<Vec<String>> {
    Ok(c.prepare_cached(
        "SELECT hostname FROM domains WHERE service_id = ?1 AND status = 'verified' ORDER BY hostname",
    )?
    .query_map([service_id], |r| r.get(0))?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Records a verification's outcome: `verified` (with the time, kept from the first
/// success on) or `error` with what went wrong. Returns the row as it now is.
pub fn record_check(
    c: &Connection,
    service_id: &str,
    id: &str,
    outcome: std::result::Result<(), &str>,
    now: &str,
) -> Result<DomainRow> {
    let n = match outcome {
        Ok(()) => c.execute(
            "UPDATE domains SET status = 'verified', error = NULL, verified_at = coalesce(verified_at, ?3)
             WHERE id = ?1 AND service_id = ?2",
            params![id, service_id, now],
        )?,
        Err(why) => c.execute(
            "UPDATE domains SET status = 'error', error = ?3, verified_at = NULL WHERE id = ?1 AND service_id = ?2",
            params![id, service_id, why],
        )?,
    };
    if n == 0 {
        return Err(StoreError::NotFound(format!("domain {id} not found")));
    }
    get(c, service_id, id)?.ok_or_else(|| StoreError::NotFound(format!("domain {id} not found")))
}

/// Deletes the service's domain `id`; returns what it was.
pub fn delete(c: &Connection, service_id: &str, id: &str) -> Result<DomainRow> {
    let d = get(c, service_id, id)?.ok_or_else(|| StoreError::NotFound(format!("domain {id} not found")))?;
    c.execute("DELETE FROM domains WHERE id = ?1", [id])?;
    Ok(d)
}

/// Each service's name and its project's name, by service id (labels for
/// `GET /v1/ingress/routes`).
pub fn service_names(c: &Connection) -> Result<Vec<(String, String, String)>> {
    Ok(c.prepare_cached("SELECT s.id, s.name, p.name FROM services s JOIN projects p ON p.id = s.project_id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::projects::{Limits, Project};
    use crate::store::services::ServiceRow;

    fn domain(id: &str, service: &str, hostname: &str) -> DomainRow {
        DomainRow {
            id: id.into(),
            service_id: service.into(),
            project_id: "prj_1".into(),
            hostname: hostname.into(),
            status: "pending".into(),
            verification_token: "t".repeat(64),
            error: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            verified_at: None,
        }
    }

    #[tokio::test]
    async fn hostnames_are_unique_checks_are_recorded_and_rows_go_with_their_service() {
        let (store, dir) = crate::store::test_store();
        store
            .write(|c| {
                let now = "2026-01-01T00:00:00Z".to_string();
                crate::store::projects::insert(
                    c,
                    &Project {
                        id: "prj_1".into(),
                        name: "alpha".into(),
                        description: String::new(),
                        env: Default::default(),
                        limits: Limits::default(),
                        created_at: now.clone(),
                        updated_at: now.clone(),
                    },
                )?;
                for (id, name) in [("svc_1", "web"), ("svc_2", "api")] {
                    crate::store::services::insert(
                        c,
                        &ServiceRow {
                            id: id.into(),
                            project_id: "prj_1".into(),
                            name: name.into(),
                            spec: "{}".into(),
                            desired: "running".into(),
                            current_deployment_id: None,
                            follow: None,
                            created_at: now.clone(),
                            updated_at: now.clone(),
                        },
                    )?;
                }
                insert(c, &domain("dom_1", "svc_1", "app.test"))?;
                insert(c, &domain("dom_2", "svc_1", "www.app.test"))
            })
            .await
            .unwrap();
        let dup = store.write(|c| insert(c, &domain("dom_3", "svc_2", "app.test"))).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        assert_eq!(store.read(|c| get(c, "svc_2", "dom_1")).await.unwrap(), None, "another service's domain");
        let d = store.write(|c| record_check(c, "svc_1", "dom_1", Err("answered 404"), "t1")).await.unwrap();
        assert_eq!((d.status.as_str(), d.error.as_deref(), d.verified_at), ("error", Some("answered 404"), None));
        assert!(store.read(|c| routed(c, "svc_1")).await.unwrap().is_empty());
        let d = store.write(|c| record_check(c, "svc_1", "dom_1", Ok(()), "t2")).await.unwrap();
        assert_eq!((d.status.as_str(), d.error, d.verified_at.as_deref()), ("verified", None, Some("t2")));
        let d = store.write(|c| record_check(c, "svc_1", "dom_1", Ok(()), "t3")).await.unwrap();
        assert_eq!(d.verified_at.as_deref(), Some("t2"), "re-verifying keeps the first time");
        assert_eq!(store.read(|c| routed(c, "svc_1")).await.unwrap(), vec!["app.test".to_string()]);
        let page = store.read(|c| list(c, "svc_1", &PageQuery { limit: 1, after: None })).await.unwrap();
        assert_eq!((page.rows.len(), page.has_more), (1, true));
        let gone = store.write(|c| delete(c, "svc_1", "dom_2")).await.unwrap();
        assert_eq!(gone.hostname, "www.app.test");
        assert!(matches!(store.write(|c| delete(c, "svc_1", "dom_2")).await, Err(StoreError::NotFound(_))));
        store.write(|c| crate::store::services::delete(c, "svc_1")).await.unwrap();
        assert!(store.read(all).await.unwrap().is_empty(), "the service's domains went with it");
        store.write(|c| insert(c, &domain("dom_4", "svc_2", "app.test"))).await.unwrap();
        assert_eq!(store.read(|c| of_service(c, "svc_2")).await.unwrap().len(), 1, "the name is free again");
        store.close();
        let _ = std::fs::remove_dir_all(dir);
    }
}
