//! A project's registry credentials and Git deploy key. The secret parts arrive
//! here already sealed (`crate::secrets`); this module never sees plaintext.
//! Every lookup is scoped by project, so a credential of another project is simply
//! not found.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Page, PageQuery, Result, StoreError, conflict_on_unique};

/// One login to an external registry, as stored.
#[derive(Debug, Clone)]
pub struct RegistryRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// Normalized registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub server: String,
    pub username: String,
    /// `age:…`, never plaintext.
    pub password_sealed: String,
    /// The host key that sealed the password ([`crate::secrets::Sealer::key_id`]).
    pub sealed_by: String,
    pub created_at: String,
    pub updated_at: String,
}

const REGISTRY_COLUMNS: &str =
    "id, project_id, name, server, username, password_sealed, sealed_by, created_at, updated_at";

fn row_registry(r: &rusqlite::Row<'_>) -> rusqlite::Result<RegistryRow> {
    Ok(RegistryRow {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        server: r.get(3)?,
        username: r.get(4)?,
        password_sealed: r.get(5)?,
        sealed_by: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

fn name_taken(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("a registry credential named {name} already exists in this project")
}

pub fn insert_registry(c: &Connection, row: &RegistryRow) -> Result<()> {
    c.execute(
        &format!("INSERT INTO registry_credentials ({REGISTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            row.id,
            row.project_id,
            row.name,
            row.server,
            row.username,
            row.password_sealed,
            row.sealed_by,
            row.created_at,
            row.updated_at
        ],
    )
    .map_err(|e| conflict_on_unique(e, name_taken(&row.name)))?;
    Ok(())
}

/// The credential `id` of `project_id`; `None` for an unknown id or another project's.
pub fn get_registry(c: &Connection, project_id: &str, id: &str) -> Result<Option<RegistryRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {REGISTRY_COLUMNS} FROM registry_credentials WHERE project_id = ?1 AND id = ?2"
    ))?
    .query_row([project_id, id], row_registry)
    .optional()?)
}

pub fn list_registries(c: &Connection, project_id: &str, page: &PageQuery) -> Result<Page<RegistryRow>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT {REGISTRY_COLUMNS} FROM registry_credentials
             WHERE project_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ))?
        .query_map(params![project_id, page.after.as_deref().unwrap_or(""), page.limit + 1], row_registry)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit))
}

/// The project's credentials for one (normalized) registry host, oldest first.
pub fn registries_for_server(c: &Connection, project_id: &str, server: &str) -> Result<Vec<RegistryRow>> {
    Ok(c.prepare_cached(&format!(
        "SELECT {REGISTRY_COLUMNS} FROM registry_credentials WHERE project_id = ?1 AND server = ?2 ORDER BY id"
    ))?
    .query_map([project_id, server], row_registry)?
    .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Fields a PUT may change; `None` keeps the current value. The password comes sealed.
#[derive(Default)]
pub struct RegistryUpdate {
    pub name: Option<String>,
    pub server: Option<String>,
    pub username: Option<String>,
    /// `(password_sealed, sealed_by)`.
    pub password: Option<(String, String)>,
    pub updated_at: String,
}

/// Applies `u` to the credential; `check` sees the old and new row before anything is
/// written and may refuse the change (its error comes back as the inner `Err`, with
/// nothing written).
pub fn update_registry<E>(
    c: &Connection,
    project_id: &str,
    id: &str,
    u: RegistryUpdate,
    check: impl FnOnce(&RegistryRow, &RegistryRow) -> std::result::Result<(), E>,
) -> Result<std::result::Result<RegistryRow, E>> {
    let old = get_registry(c, project_id, id)?
        .ok_or_else(|| StoreError::NotFound(format!("registry credential {id} not found")))?;
    let mut row = old.clone();
    if let Some(n) = u.name {
        row.name = n;
    }
    if let Some(s) = u.server {
        row.server = s;
    }
    if let Some(n) = u.username {
        row.username = n;
    }
    if let Some((sealed, by)) = u.password {
        row.password_sealed = sealed;
        row.sealed_by = by;
    }
    row.updated_at = u.updated_at;
    if let Err(e) = check(&old, &row) {
        return Ok(Err(e));
    }
    c.execute(
        "UPDATE registry_credentials SET name = ?3, server = ?4, username = ?5, password_sealed = ?6,
         sealed_by = ?7, updated_at = ?8 WHERE project_id = ?1 AND id = ?2",
        params![project_id, id, row.name, row.server, row.username, row.password_sealed, row.sealed_by, row.updated_at],
    )
    .map_err(|e| conflict_on_unique(e, name_taken(&row.name)))?;
    Ok(Ok(row))
}

/// Deletes the credential; the removed row (for the audit note), `None` when there was none.
pub fn delete_registry(c: &Connection, project_id: &str, id: &str) -> Result<Option<RegistryRow>> {
    let row = get_registry(c, project_id, id)?;
    if row.is_some() {
        c.execute("DELETE FROM registry_credentials WHERE project_id = ?1 AND id = ?2", [project_id, id])?;
    }
    Ok(row)
}

/// A project's Git deploy key, as stored.
#[derive(Debug, Clone)]
pub struct GitKeyRow {
    pub project_id: String,
    pub name: String,
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, …
    pub key_type: String,
    /// `SHA256:…` of the public key, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// `age:…`, never plaintext.
    pub private_key_sealed: String,
    pub known_hosts: Option<String>,
    pub sealed_by: String,
    pub created_at: String,
    pub updated_at: String,
}

const GIT_COLUMNS: &str =
    "project_id, name, key_type, fingerprint, private_key_sealed, known_hosts, sealed_by, created_at, updated_at";

fn row_git(r: &rusqlite::Row<'_>) -> rusqlite::Result<GitKeyRow> {
    Ok(GitKeyRow {
        project_id: r.get(0)?,
        name: r.get(1)?,
        key_type: r.get(2)?,
        fingerprint: r.get(3)?,
        private_key_sealed: r.get(4)?,
        known_hosts: r.get(5)?,
        sealed_by: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

pub fn get_git(c: &Connection, project_id: &str) -> Result<Option<GitKeyRow>> {
    Ok(c.prepare_cached(&format!("SELECT {GIT_COLUMNS} FROM git_credentials WHERE project_id = ?1"))?
        .query_row([project_id], row_git)
        .optional()?)
}

/// Sets the project's deploy key, replacing any earlier one (which keeps its
/// `created_at`); the stored row and whether it replaced one.
pub fn put_git(c: &Connection, row: &GitKeyRow) -> Result<(GitKeyRow, bool)> {
    let replaced = get_git(c, &row.project_id)?.is_some();
    c.execute(
        &format!(
            "INSERT INTO git_credentials ({GIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(project_id) DO UPDATE SET name = excluded.name, key_type = excluded.key_type,
             fingerprint = excluded.fingerprint, private_key_sealed = excluded.private_key_sealed,
             known_hosts = excluded.known_hosts, sealed_by = excluded.sealed_by, updated_at = excluded.updated_at"
        ),
        params![
            row.project_id,
            row.name,
            row.key_type,
            row.fingerprint,
            row.private_key_sealed,
            row.known_hosts,
            row.sealed_by,
            row.created_at,
            row.updated_at
        ],
    )?;
    let stored = get_git(c, &row.project_id)?
        .ok_or_else(|| StoreError::Corrupt(format!("git key of {} vanished", row.project_id)))?;
    Ok((stored, replaced))
}

/// Removes the project's deploy key; the removed row, `None` when there was none.
pub fn delete_git(c: &Connection, project_id: &str) -> Result<Option<GitKeyRow>> {
    let row = get_git(c, project_id)?;
    if row.is_some() {
        c.execute("DELETE FROM git_credentials WHERE project_id = ?1", [project_id])?;
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(c: &Connection, id: &str, name: &str) {
        let p = crate::store::projects::Project {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            env: Default::default(),
            limits: Default::default(),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        crate::store::projects::insert(c, &p).unwrap();
    }

    fn reg(id: &str, project_id: &str, name: &str, server: &str) -> RegistryRow {
        RegistryRow {
            id: id.into(),
            project_id: project_id.into(),
            name: name.into(),
            server: server.into(),
            username: "u".into(),
            password_sealed: "age:AAAA".into(),
            sealed_by: "k1".into(),
            created_at: "t0".into(),
            updated_at: "t0".into(),
        }
    }

    #[tokio::test]
    async fn credentials_are_scoped_to_their_project_and_go_with_it() {
        let (store, dir) = crate::store::test_store();
        store
            .write(|c| {
                project(c, "prj_a", "a");
                project(c, "prj_b", "b");
                insert_registry(c, &reg("reg_1", "prj_a", "hub", "docker.io"))?;
                insert_registry(c, &reg("reg_2", "prj_a", "gh", "ghcr.io"))?;
                insert_registry(c, &reg("reg_3", "prj_b", "hub", "docker.io"))?;
                Ok(())
            })
            .await
            .unwrap();
        // The same name in another project is fine; twice in one project is a conflict.
        let dup = store.write(|c| insert_registry(c, &reg("reg_4", "prj_a", "hub", "quay.io"))).await;
        assert!(matches!(dup, Err(StoreError::Conflict(m)) if m.contains("hub")));
        // Plaintext is refused by the table itself.
        let plain = store
            .write(|c| {
                let mut r = reg("reg_5", "prj_a", "plain", "quay.io");
                r.password_sealed = "hunter2".into();
                insert_registry(c, &r)
            })
            .await;
        assert!(matches!(plain, Err(StoreError::Sqlite(_))), "{plain:?}");

        assert!(store.read(|c| get_registry(c, "prj_b", "reg_1")).await.unwrap().is_none());
        assert_eq!(store.read(|c| get_registry(c, "prj_a", "reg_1")).await.unwrap().unwrap().name, "hub");
        let page = store.read(|c| list_registries(c, "prj_a", &PageQuery { limit: 1, after: None })).await.unwrap();
        assert_eq!((page.rows.len(), page.has_more, page.rows[0].id.as_str()), (1, true, "reg_1"));
        let page = store
            .read(|c| list_registries(c, "prj_a", &PageQuery { limit: 5, after: Some("reg_1".into()) }))
            .await
            .unwrap();
        assert_eq!(page.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["reg_2"]);
        let hub = store.read(|c| registries_for_server(c, "prj_b", "docker.io")).await.unwrap();
        assert_eq!(hub.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["reg_3"]);

        // Update: another project's id is not found; a rename onto a taken name conflicts;
        // the check hook can refuse.
        let u = || RegistryUpdate { username: Some("v".into()), updated_at: "t1".into(), ..Default::default() };
        let other = store.write(move |c| update_registry(c, "prj_b", "reg_1", u(), |_, _| Ok::<_, ()>(()))).await;
        assert!(matches!(other, Err(StoreError::NotFound(_))));
        let taken = store
            .write(|c| {
                let u = RegistryUpdate { name: Some("gh".into()), updated_at: "t1".into(), ..Default::default() };
                update_registry(c, "prj_a", "reg_1", u, |_, _| Ok::<_, ()>(()))
            })
            .await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))));
        let refused = store.write(move |c| update_registry(c, "prj_a", "reg_1", u(), |_, _| Err("no"))).await;
        assert!(matches!(refused, Ok(Err("no"))));
        assert_eq!(store.read(|c| get_registry(c, "prj_a", "reg_1")).await.unwrap().unwrap().username, "u");
        let row = store
            .write(|c| {
                let u = RegistryUpdate {
                    password: Some(("age:BBBB".into(), "k2".into())),
                    updated_at: "t2".into(),
                    ..Default::default()
                };
                update_registry(c, "prj_a", "reg_1", u, |old, new| {
                    assert_eq!((old.sealed_by.as_str(), new.sealed_by.as_str()), ("k1", "k2"));
                    Ok::<_, ()>(())
                })
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (row.username.as_str(), row.password_sealed.as_str(), row.updated_at.as_str()),
            ("u", "age:BBBB", "t2")
        );

        assert!(store.write(|c| delete_registry(c, "prj_b", "reg_2")).await.unwrap().is_none());
        assert_eq!(store.write(|c| delete_registry(c, "prj_a", "reg_2")).await.unwrap().unwrap().name, "gh");

        // Git: one per project, replaced in place.
        let key = |name: &str, at: &str| GitKeyRow {
            project_id: "prj_a".into(),
            name: name.into(),
            key_type: "ssh-ed25519".into(),
            fingerprint: "SHA256:x".into(),
            private_key_sealed: "age:CCCC".into(),
            known_hosts: None,
            sealed_by: "k1".into(),
            created_at: at.into(),
            updated_at: at.into(),
        };
        let (k1, k2) = (key("first", "t0"), key("second", "t5"));
        let (_, replaced) = store.write(move |c| put_git(c, &k1)).await.unwrap();
        assert!(!replaced);
        let (row, replaced) = store.write(move |c| put_git(c, &k2)).await.unwrap();
        assert!(replaced);
        assert_eq!((row.name.as_str(), row.created_at.as_str(), row.updated_at.as_str()), ("second", "t0", "t5"));
        assert!(store.read(|c| get_git(c, "prj_b")).await.unwrap().is_none());

        // Deleting the project takes its credentials along.
        store.write(|c| crate::store::projects::delete(c, "prj_a")).await.unwrap();
        assert!(store.read(|c| get_registry(c, "prj_a", "reg_1")).await.unwrap().is_none());
        assert!(store.read(|c| get_git(c, "prj_a")).await.unwrap().is_none());
        assert!(store.read(|c| get_registry(c, "prj_b", "reg_3")).await.unwrap().is_some());
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
