//! Projects and their members, and the version that says which state a project
//! list was read in.
//!
//! Lists of projects are read far more often than projects or memberships change,
//! so callers may keep rendered pages ([`PageCache`]) as long as the state they were
//! read in is still the latest. That is decided exactly, never by age:
//! - every function here that changes a project or a membership (and
//!   `users::delete`, whose memberships go with the user) calls `lists_changed`
//!   inside its transaction: it takes the next number from the database's
//!   [`ListClock`] (in memory) and stores it in `meta` in the same transaction;
//! - [`list_page`] reads the stored number and the page in one read transaction,
//!   so the number says exactly which committed state the page shows;
//! - a page may be kept only when its number is the clock's latest, and served
//!   only while it still is. A change bumps the clock *before* it commits, so from
//!   that moment no kept page is served and no page read before the commit can be
//!   kept (its number is older than the clock). A change that rolls back leaves the
//!   clock ahead of the database: nothing is kept until the next committed change,
//!   which costs reads, never correctness.
//!
//! Decision and alternatives: `adr/017-api-hot-path.md`. A test scans the sources
//! for writes to these tables that do not call `lists_changed`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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
    lists_changed(c)
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

/// Whose list: every project (super-admins) or the projects a user is a member of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Viewer {
    All,
    Member(String),
}

/// A page of a project list and the list version it was read at.
pub struct Listed {
    pub page: Page<Project>,
    pub stamp: ListStamp,
}

/// Which state a page was read in: made only by [`list_page`].
pub struct ListStamp {
    /// The version stored with the state the page shows; `None` when the stored
    /// value is unreadable (the page is still right, but cannot be kept).
    version: Option<u64>,
    clock: ListClock,
}

/// A page of `viewer`'s project list, read in one transaction with the list version.
pub fn list_page(c: &Connection, viewer: &Viewer, q: &PageQuery) -> Result<Listed> {
    let tx = c.unchecked_transaction()?;
    let version = match super::auth::meta_get(&tx, LIST_VERSION_KEY)? {
        None => Some(0),
        Some(v) => v.parse::<u64>().ok(),
    };
    let page = match viewer {
        Viewer::All => list_all(&tx, q)?,
        Viewer::Member(user_id) => list_for_user(&tx, user_id, q)?,
    };
    tx.commit()?;
    Ok(Listed { page, stamp: ListStamp { version, clock: ListClock::of(c) } })
}

/// `meta` key of the list version: the clock's number of the last committed change.
const LIST_VERSION_KEY: &str = "project_lists_version";

/// The numbers of changes to what project lists show, one clock per database file
/// (in memory: the `meta` row is what ties a read to a number).
#[derive(Debug, Clone)]
pub struct ListClock(Arc<AtomicU64>);

static CLOCKS: Mutex<Vec<(String, ListClock)>> = Mutex::new(Vec::new());

impl ListClock {
    /// The clock of the database `c` is a connection to.
    pub fn of(c: &Connection) -> ListClock {
        let file = c.path().unwrap_or_default();
        let mut clocks = CLOCKS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, clock)) = clocks.iter().find(|(f, _)| f == file) {
            return clock.clone();
        }
        let clock = ListClock(Arc::new(AtomicU64::new(0)));
        clocks.push((file.to_string(), clock.clone()));
        clock
    }

    /// The number of the latest change, committed or still in its transaction.
    pub fn latest(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Whether a page read at `version` shows the latest state: no change has been
    /// started since. A database last changed by an earlier run of the daemon is
    /// ahead of a new clock; the clock takes its number (only upwards, and only if
    /// no change moved it meanwhile, so a change in flight still wins).
    pub fn is_latest(&self, version: u64) -> bool {
        let latest = self.latest();
        if latest < version {
            return self.0.compare_exchange(latest, version, Ordering::AcqRel, Ordering::Acquire).is_ok();
        }
        latest == version
    }
}

/// Records, inside the caller's transaction, that what project lists show has
/// changed: the clock moves first (no kept page is served from now on), then the
/// new number is stored with the change.
pub(crate) fn lists_changed(c: &Connection) -> Result<()> {
    let clock = ListClock::of(c);
    let stored = super::auth::meta_get(c, LIST_VERSION_KEY)?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let next = stored.max(clock.latest()) + 1;
    clock.0.fetch_max(next, Ordering::AcqRel);
    super::auth::meta_set(c, LIST_VERSION_KEY, &next.to_string())
}

/// Which page of whose list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub viewer: Viewer,
    pub limit: u32,
    pub after: Option<String>,
}

/// Pages of project lists as the caller rendered them (`V`), kept while the state
/// they show is the latest (see the module header). Bounded in bytes: when full,
/// new pages are served but not kept until a change empties it.
pub struct PageCache<V> {
    clock: OnceLock<ListClock>,
    pages: Mutex<Pages<V>>,
    max_bytes: usize,
}

struct Pages<V> {
    /// The list version every kept page was read at.
    version: u64,
    bytes: usize,
    map: HashMap<PageKey, (V, usize)>,
}

impl<V: Clone> PageCache<V> {
    pub fn new(max_bytes: usize) -> Self {
        PageCache {
            clock: OnceLock::new(),
            pages: Mutex::new(Pages { version: 0, bytes: 0, map: HashMap::new() }),
            max_bytes,
        }
    }

    /// The kept page for `key`, if it still shows the latest state.
    pub fn get(&self, key: &PageKey) -> Option<V> {
        let latest = self.clock.get()?.latest();
        let pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if pages.version != latest {
            return None;
        }
        pages.map.get(key).map(|(v, _)| v.clone())
    }

    /// Keeps `value` (`size` bytes), the rendering for `key` of a page read at
    /// `stamp`, if that page shows the latest state.
    pub fn keep(&self, key: PageKey, stamp: &ListStamp, value: V, size: usize) {
        let Some(version) = stamp.version else { return };
        let clock = self.clock.get_or_init(|| stamp.clock.clone());
        if !clock.is_latest(version) {
            return;
        }
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if pages.version != version {
            if pages.version > version {
                return;
            }
            pages.map.clear();
            pages.bytes = 0;
            pages.version = version;
        }
        if pages.bytes + size > self.max_bytes {
            return;
        }
        pages.bytes += size;
        if let Some((_, old)) = pages.map.insert(key, (value, size)) {
            pages.bytes -= old;
        }
    }

    /// Pages kept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.pages.lock().unwrap_or_else(|e| e.into_inner()).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    lists_changed(c)?;
    Ok(p)
}

/// Tables whose rows belong to a project and keep it from being deleted. Each later
/// subsystem (services, jobs, repositories) adds its table here.
const DEPENDENTS: &[(&str, &str)] =
    &[("repositories", "registry repositories"), ("services", "services"), ("jobs", "jobs")];

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
    lists_changed(c)
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
/// The projects whose rows a user's lists show: `None` (all of them) for a
/// super-admin, else those the user has at least Viewer in.
pub fn visible_project_ids(c: &Connection, user_id: &str, super_admin: bool) -> Result<Option<Vec<String>>> {
    if super_admin { Ok(None) } else { project_ids_with_role(c, user_id, Role::Viewer).map(Some) }
}

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
    lists_changed(c)?;
    Ok((to_member(row)?, !existed))
}

pub fn remove_member(c: &Connection, project_id: &str, user_id: &str) -> Result<bool> {
    let removed = c.execute("DELETE FROM members WHERE project_id = ?1 AND user_id = ?2", [project_id, user_id])? > 0;
    if removed {
        lists_changed(c)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(id: &str, name: &str) -> Project {
        Project {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            env: BTreeMap::new(),
            limits: Limits::default(),
            created_at: "t".into(),
            updated_at: "t".into(),
        }
    }

    fn user(id: &str) -> crate::store::users::User {
        crate::store::users::User { id: id.into(), username: id.into(), super_admin: false, created_at: "t".into() }
    }

    fn first_page() -> PageQuery {
        PageQuery { limit: 20, after: None }
    }

    /// Reads `viewer`'s first page through `cache` the way the API does: the kept
    /// page if there is one, else from the store (keeping it when it is current).
    /// Returns the project names and whether the page came from the cache.
    async fn names(
        store: &crate::store::Store,
        cache: &PageCache<Vec<String>>,
        viewer: &Viewer,
    ) -> (Vec<String>, bool) {
        let key = PageKey { viewer: viewer.clone(), limit: 20, after: None };
        if let Some(hit) = cache.get(&key) {
            return (hit, true);
        }
        let v = viewer.clone();
        let listed = store.read(move |c| list_page(c, &v, &first_page())).await.unwrap();
        let names: Vec<String> = listed.page.rows.iter().map(|p| p.name.clone()).collect();
        cache.keep(key, &listed.stamp, names.clone(), 1);
        (names, false)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kept_pages_are_served_until_any_change_and_never_after() {
        let (store, dir) = crate::store::test_store();
        let cache = PageCache::new(1 << 20);
        let bob = Viewer::Member("usr_bob".into());
        store
            .write(|c| {
                insert(c, &project("prj_1", "alpha"))?;
                crate::store::users::insert(c, &user("usr_bob"), "x")?;
                crate::store::users::insert(c, &user("usr_eve"), "x")?;
                upsert_member(c, "prj_1", "usr_bob", Role::Viewer, "t")?;
                Ok(())
            })
            .await
            .unwrap();
        // Read, read again (now from the cache), change, read: the change shows at once.
        let s = &store;
        let read = |v: &Viewer| {
            let v = v.clone();
            let cache = &cache;
            async move { names(s, cache, &v).await }
        };
        assert_eq!(read(&Viewer::All).await, (vec!["alpha".to_string()], false));
        assert_eq!(read(&Viewer::All).await, (vec!["alpha".to_string()], true));
        assert_eq!(read(&bob).await, (vec!["alpha".to_string()], false));
        assert_eq!(read(&bob).await, (vec!["alpha".to_string()], true));

        store.write(|c| insert(c, &project("prj_2", "beta"))).await.unwrap();
        assert_eq!(read(&Viewer::All).await, (vec!["alpha".to_string(), "beta".to_string()], false));
        assert_eq!(read(&bob).await, (vec!["alpha".to_string()], false), "every kept page went");
        assert!(read(&bob).await.1);

        store.write(|c| upsert_member(c, "prj_2", "usr_bob", Role::Admin, "t").map(|_| ())).await.unwrap();
        assert_eq!(read(&bob).await.0, ["alpha", "beta"]);
        // A role change alone shows in no list, but is a change all the same.
        assert!(read(&bob).await.1);
        store.write(|c| upsert_member(c, "prj_2", "usr_bob", Role::Viewer, "t").map(|_| ())).await.unwrap();
        assert!(!read(&bob).await.1);

        store.write(|c| remove_member(c, "prj_1", "usr_bob").map(|_| ())).await.unwrap();
        assert_eq!(read(&bob).await.0, ["beta"]);

        let update = ProjectUpdate { description: None, env: None, limits: None, updated_at: "t2".into() };
        read(&Viewer::All).await;
        assert!(read(&Viewer::All).await.1);
        store.write(move |c| update_then_check(c, update)).await.unwrap();
        assert!(!read(&Viewer::All).await.1, "an update is a change");

        store.write(|c| delete(c, "prj_1")).await.unwrap();
        assert_eq!(read(&Viewer::All).await.0, ["beta"]);

        // A user's deletion takes their memberships with it.
        store.write(|c| upsert_member(c, "prj_2", "usr_eve", Role::Viewer, "t").map(|_| ())).await.unwrap();
        let eve = Viewer::Member("usr_eve".into());
        read(&eve).await;
        assert_eq!(read(&eve).await, (vec!["beta".to_string()], true));
        store.write(|c| crate::store::users::delete(c, "usr_eve")).await.unwrap();
        assert_eq!(read(&eve).await, (Vec::<String>::new(), false));

        // Removing a membership that does not exist changes nothing.
        read(&bob).await;
        assert!(!store.write(|c| remove_member(c, "prj_2", "usr_nobody")).await.unwrap());
        assert!(read(&bob).await.1);

        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn update_then_check(c: &Connection, u: ProjectUpdate) -> Result<()> {
        let p = update(c, "prj_1", u)?;
        assert_eq!(p.updated_at, "t2");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_read_while_a_change_is_in_flight_is_not_kept() {
        let (store, dir) = crate::store::test_store();
        let cache = PageCache::new(1 << 20);
        store.write(|c| insert(c, &project("prj_1", "alpha"))).await.unwrap();
        assert!(!names(&store, &cache, &Viewer::All).await.1);
        assert!(names(&store, &cache, &Viewer::All).await.1);
        // A change that has run its SQL but not committed: hold the writer there.
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(move |c| {
                        insert(c, &project("prj_2", "beta"))?;
                        started_tx.send(()).unwrap();
                        held.recv().unwrap();
                        Ok(())
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started.recv().unwrap()).await.unwrap();
        // The kept page is no longer served, and the page read now (without beta,
        // which is not committed) is served but not kept.
        assert_eq!(names(&store, &cache, &Viewer::All).await, (vec!["alpha".to_string()], false));
        assert_eq!(names(&store, &cache, &Viewer::All).await, (vec!["alpha".to_string()], false));
        release.send(()).unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(names(&store, &cache, &Viewer::All).await, (vec!["alpha".to_string(), "beta".to_string()], false));
        assert!(names(&store, &cache, &Viewer::All).await.1);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_that_rolls_back_stops_keeping_until_the_next_commit() {
        let (store, dir) = crate::store::test_store();
        let cache = PageCache::new(1 << 20);
        store.write(|c| insert(c, &project("prj_1", "alpha"))).await.unwrap();
        names(&store, &cache, &Viewer::All).await;
        // The insert runs, then the job fails: its savepoint is rolled back.
        let failed = store
            .write(|c| {
                insert(c, &project("prj_2", "beta"))?;
                Err::<(), _>(StoreError::Conflict("no".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(names(&store, &cache, &Viewer::All).await, (vec!["alpha".to_string()], false));
        assert!(!names(&store, &cache, &Viewer::All).await.1, "the clock is ahead of the database");
        // A duplicate name fails inside `insert`, before it marks a change.
        let dup = store.write(|c| insert(c, &project("prj_3", "alpha"))).await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))));
        store.write(|c| insert(c, &project("prj_2", "beta"))).await.unwrap();
        assert_eq!(names(&store, &cache, &Viewer::All).await, (vec!["alpha".to_string(), "beta".to_string()], false));
        assert!(names(&store, &cache, &Viewer::All).await.1);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_new_clock_takes_the_number_an_earlier_run_stored_but_never_goes_back() {
        let clock = ListClock(Arc::new(AtomicU64::new(0)));
        assert!(clock.is_latest(7));
        assert_eq!(clock.latest(), 7);
        assert!(!clock.is_latest(5));
        assert_eq!(clock.latest(), 7);
        clock.0.fetch_max(8, Ordering::AcqRel);
        assert!(!clock.is_latest(7), "a change in flight wins");
    }

    /// Every function outside tests that writes to `projects` or `members` (or
    /// deletes users, whose memberships cascade) marks the change: a write that did
    /// not would leave kept list pages served after it.
    #[test]
    fn every_write_to_what_lists_show_marks_a_change() {
        const WRITES: &[&str] = &[
            "insert into projects",
            "insert or replace into projects",
            "update projects",
            "delete from projects",
            "insert into members",
            "insert or replace into members",
            "update members",
            "delete from members",
            "delete from users",
        ];
        fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    sources(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        let mut files = Vec::new();
        sources(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let starts_fn = |line: &str| {
            let t = line.trim_start();
            ["fn ", "pub fn ", "pub(crate) fn ", "async fn ", "pub async fn ", "pub(crate) async fn "]
                .iter()
                .any(|p| t.starts_with(p))
        };
        let mut unmarked = Vec::new();
        let mut writers = 0;
        for (path, text) in &files {
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let mut chunks: Vec<Vec<&str>> = vec![Vec::new()];
            for line in code.lines() {
                if starts_fn(line) {
                    chunks.push(Vec::new());
                }
                chunks.last_mut().unwrap().push(line);
            }
            for chunk in chunks {
                let body = chunk.join(" ").to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ");
                if WRITES.iter().any(|w| body.contains(w)) {
                    writers += 1;
                    if !body.contains("lists_changed(") {
                        unmarked.push(format!("{path}: {}", chunk.first().map_or("", |l| l.trim())));
                    }
                }
            }
        }
        assert!(writers >= 6, "the scan found only {writers} writers; is it still reading the sources?");
        assert!(unmarked.is_empty(), "writes that do not call lists_changed: {unmarked:#?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_is_bounded_in_bytes() {
        let (store, dir) = crate::store::test_store();
        store.write(|c| insert(c, &project("prj_1", "alpha"))).await.unwrap();
        let cache = PageCache::new(100);
        let listed = store.read(|c| list_page(c, &Viewer::All, &first_page())).await.unwrap();
        for limit in 1..=20 {
            let key = PageKey { viewer: Viewer::All, limit, after: None };
            cache.keep(key, &listed.stamp, limit, 10);
        }
        assert_eq!(cache.len(), 10);
        assert_eq!(cache.get(&PageKey { viewer: Viewer::All, limit: 10, after: None }), Some(10));
        assert_eq!(cache.get(&PageKey { viewer: Viewer::All, limit: 11, after: None }), None);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

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
