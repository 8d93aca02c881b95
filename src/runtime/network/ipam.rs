//! Address management: which project holds which subnet of the pool, which
//! container holds which address of its project's subnet.
//!
//! The state is berth's (it must survive restarts and reboots), so it lives in
//! SQLite behind the [`Ipam`] trait: [`sql`] holds the schema and the queries, to be
//! run inside the store's writer; [`MemIpam`] keeps the same rules in memory for
//! tests; [`ConnIpam`] runs [`sql`] on a connection of its own for tools and tests.
//!
//! Subnets and addresses are indexes: subnet `k` is the pool's `k`-th project-sized
//! block, address `h` is the `h`-th address of the subnet. Both are handed out
//! lowest-free-first; reuse is harmless because MACs derive from addresses.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rusqlite::Connection;

/// What an [`Ipam`] implementation fails with (the store's error, usually).
pub type IpamError = Box<dyn std::error::Error + Send + Sync>;

/// One container's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub container_id: String,
    pub project_id: String,
    /// The service whose name resolves to this address inside the project.
    pub service: String,
    /// Index of the address inside the project's subnet.
    pub host: u32,
}

/// Persistent address state. Calls block (they may wait for a commit); callers are
/// on blocking threads already, since the network work around them runs commands.
pub trait Ipam: Send + Sync {
    /// The project's subnet index, if it holds one.
    fn subnet(&self, project_id: &str) -> Result<Option<u32>, IpamError>;
    /// The project's subnet index, allocating the lowest free index below `count` if it
    /// has none; `None` when all `count` are taken.
    fn allocate_subnet(&self, project_id: &str, count: u32) -> Result<Option<u32>, IpamError>;
    /// Every project holding a subnet, with its index, by index.
    fn subnets(&self) -> Result<Vec<(String, u32)>, IpamError>;
    /// Frees the project's subnet and every lease in it; a project without one is fine.
    fn release_subnet(&self, project_id: &str) -> Result<(), IpamError>;
    /// The container's lease.
    fn lease(&self, container_id: &str) -> Result<Option<Lease>, IpamError>;
    /// A new lease on the lowest free host index in `first..=last` of the project's
    /// subnet, which must exist; `None` when the range is full. Returns the
    /// container's existing lease unchanged if it holds one.
    fn allocate_address(
        &self,
        project_id: &str,
        container_id: &str,
        service: &str,
        first: u32,
        last: u32,
    ) -> Result<Option<Lease>, IpamError>;
    /// The project's leases, by service then host index.
    fn leases(&self, project_id: &str) -> Result<Vec<Lease>, IpamError>;
    /// Frees the container's lease; a container without one is fine.
    fn release_address(&self, container_id: &str) -> Result<(), IpamError>;
}

/// The schema and queries behind the SQLite implementation.
///
/// Each function is one step of a transaction: run it inside `Store::write` (or, for
/// reads, `Store::read_blocking`). There is no foreign key to `projects`: a project's
/// subnet is freed by `Networks::remove_project` once its bridge is gone, never by a
/// cascade that would leave the bridge holding addresses IPAM thinks are free.
pub mod sql {
    use rusqlite::{Connection, OptionalExtension, params};

    use super::Lease;

    /// The tables, as a migration.
    pub const MIGRATION: &str = "\
-- IPAM: project subnets and container addresses (runtime::network::ipam).
CREATE TABLE net_subnets (
    project_id TEXT PRIMARY KEY,
    idx        INTEGER NOT NULL UNIQUE
) STRICT;

CREATE TABLE net_leases (
    container_id TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES net_subnets(project_id) ON DELETE CASCADE,
    service      TEXT NOT NULL,
    host         INTEGER NOT NULL,
    UNIQUE (project_id, host)
) STRICT;
";

    pub fn subnet(conn: &Connection, project_id: &str) -> rusqlite::Result<Option<u32>> {
        conn.prepare_cached("SELECT idx FROM net_subnets WHERE project_id = ?1")?
            .query_row([project_id], |r| r.get(0))
            .optional()
    }

    pub fn allocate_subnet(conn: &Connection, project_id: &str, count: u32) -> rusqlite::Result<Option<u32>> {
        if let Some(idx) = subnet(conn, project_id)? {
            return Ok(Some(idx));
        }
        // The lowest free index is 0 or one past a taken one.
        let free: Option<u32> = conn
            .prepare_cached(
                "SELECT MIN(n) FROM (SELECT 0 AS n UNION ALL SELECT idx + 1 FROM net_subnets)
                 WHERE n < ?1 AND n NOT IN (SELECT idx FROM net_subnets)",
            )?
            .query_row([count], |r| r.get(0))?;
        if let Some(idx) = free {
            conn.prepare_cached("INSERT INTO net_subnets (project_id, idx) VALUES (?1, ?2)")?
                .execute(params![project_id, idx])?;
        }
        Ok(free)
    }

    pub fn subnets(conn: &Connection) -> rusqlite::Result<Vec<(String, u32)>> {
        conn.prepare_cached("SELECT project_id, idx FROM net_subnets ORDER BY idx")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// Deletes the leases explicitly as well, so it holds without `foreign_keys=ON`.
    pub fn release_subnet(conn: &Connection, project_id: &str) -> rusqlite::Result<()> {
        conn.prepare_cached("DELETE FROM net_leases WHERE project_id = ?1")?.execute([project_id])?;
        conn.prepare_cached("DELETE FROM net_subnets WHERE project_id = ?1")?.execute([project_id])?;
        Ok(())
    }

    fn row_lease(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
        Ok(Lease { container_id: r.get(0)?, project_id: r.get(1)?, service: r.get(2)?, host: r.get(3)? })
    }

    pub fn lease(conn: &Connection, container_id: &str) -> rusqlite::Result<Option<Lease>> {
        conn.prepare_cached("SELECT container_id, project_id, service, host FROM net_leases WHERE container_id = ?1")?
            .query_row([container_id], row_lease)
            .optional()
    }

    pub fn allocate_address(
        conn: &Connection,
        project_id: &str,
        container_id: &str,
        service: &str,
        first: u32,
        last: u32,
    ) -> rusqlite::Result<Option<Lease>> {
        if let Some(l) = lease(conn, container_id)? {
            return Ok(Some(l));
        }
        if subnet(conn, project_id)?.is_none() {
            // What the foreign key would say, whether or not `foreign_keys` is on.
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                Some(format!("project {project_id} holds no subnet")),
            ));
        }
        let free: Option<u32> = conn
            .prepare_cached(
                "SELECT MIN(n) FROM (SELECT ?2 AS n UNION ALL SELECT host + 1 FROM net_leases WHERE project_id = ?1)
                 WHERE n >= ?2 AND n <= ?3
                   AND n NOT IN (SELECT host FROM net_leases WHERE project_id = ?1)",
            )?
            .query_row(params![project_id, first, last], |r| r.get(0))?;
        let Some(host) = free else { return Ok(None) };
        conn.prepare_cached(
            "INSERT INTO net_leases (container_id, project_id, service, host) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![container_id, project_id, service, host])?;
        Ok(Some(Lease {
            container_id: container_id.to_string(),
            project_id: project_id.to_string(),
            service: service.to_string(),
            host,
        }))
    }

    pub fn leases(conn: &Connection, project_id: &str) -> rusqlite::Result<Vec<Lease>> {
        conn.prepare_cached(
            "SELECT container_id, project_id, service, host FROM net_leases WHERE project_id = ?1
             ORDER BY service, host",
        )?
        .query_map([project_id], row_lease)?
        .collect()
    }

    pub fn release_address(conn: &Connection, container_id: &str) -> rusqlite::Result<()> {
        conn.prepare_cached("DELETE FROM net_leases WHERE container_id = ?1")?.execute([container_id])?;
        Ok(())
    }
}

/// [`sql`] on a connection of its own, one call at a time. The daemon does not use
/// it (its writes go through the store's single writer); tools and tests do.
pub struct ConnIpam {
    conn: Mutex<Connection>,
}

impl ConnIpam {
    /// Wraps `conn`, creating the tables if they are missing.
    pub fn new(conn: Connection) -> rusqlite::Result<Self> {
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'net_subnets')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            conn.execute_batch(sql::MIGRATION)?;
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, IpamError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

impl Ipam for ConnIpam {
    fn subnet(&self, project_id: &str) -> Result<Option<u32>, IpamError> {
        self.with(|c| sql::subnet(c, project_id))
    }
    fn allocate_subnet(&self, project_id: &str, count: u32) -> Result<Option<u32>, IpamError> {
        self.with(|c| sql::allocate_subnet(c, project_id, count))
    }
    fn subnets(&self) -> Result<Vec<(String, u32)>, IpamError> {
        self.with(sql::subnets)
    }
    fn release_subnet(&self, project_id: &str) -> Result<(), IpamError> {
        self.with(|c| sql::release_subnet(c, project_id))
    }
    fn lease(&self, container_id: &str) -> Result<Option<Lease>, IpamError> {
        self.with(|c| sql::lease(c, container_id))
    }
    fn allocate_address(
        &self,
        project_id: &str,
        container_id: &str,
        service: &str,
        first: u32,
        last: u32,
    ) -> Result<Option<Lease>, IpamError> {
        self.with(|c| sql::allocate_address(c, project_id, container_id, service, first, last))
    }
    fn leases(&self, project_id: &str) -> Result<Vec<Lease>, IpamError> {
        self.with(|c| sql::leases(c, project_id))
    }
    fn release_address(&self, container_id: &str) -> Result<(), IpamError> {
        self.with(|c| sql::release_address(c, container_id))
    }
}

/// The same rules in memory.
#[derive(Default)]
pub struct MemIpam {
    state: Mutex<MemState>,
}

#[derive(Default)]
struct MemState {
    subnets: BTreeMap<String, u32>,
    leases: BTreeMap<String, Lease>,
}

impl MemIpam {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ipam for MemIpam {
    fn subnet(&self, project_id: &str) -> Result<Option<u32>, IpamError> {
        Ok(self.state().subnets.get(project_id).copied())
    }

    fn allocate_subnet(&self, project_id: &str, count: u32) -> Result<Option<u32>, IpamError> {
        let mut s = self.state();
        if let Some(idx) = s.subnets.get(project_id) {
            return Ok(Some(*idx));
        }
        let free = (0..count).find(|i| !s.subnets.values().any(|v| v == i));
        if let Some(idx) = free {
            s.subnets.insert(project_id.to_string(), idx);
        }
        Ok(free)
    }

    fn subnets(&self) -> Result<Vec<(String, u32)>, IpamError> {
        let mut all: Vec<(String, u32)> = self.state().subnets.iter().map(|(p, i)| (p.clone(), *i)).collect();
        all.sort_by_key(|(_, i)| *i);
        Ok(all)
    }

    fn release_subnet(&self, project_id: &str) -> Result<(), IpamError> {
        let mut s = self.state();
        s.subnets.remove(project_id);
        s.leases.retain(|_, l| l.project_id != project_id);
        Ok(())
    }

    fn lease(&self, container_id: &str) -> Result<Option<Lease>, IpamError> {
        Ok(self.state().leases.get(container_id).cloned())
    }

    fn allocate_address(
        &self,
        project_id: &str,
        container_id: &str,
        service: &str,
        first: u32,
        last: u32,
    ) -> Result<Option<Lease>, IpamError> {
        let mut s = self.state();
        if let Some(l) = s.leases.get(container_id) {
            return Ok(Some(l.clone()));
        }
        if !s.subnets.contains_key(project_id) {
            return Err(format!("project {project_id} holds no subnet").into());
        }
        let taken = |h: u32| s.leases.values().any(|l| l.project_id == project_id && l.host == h);
        let Some(host) = (first..=last).find(|h| !taken(*h)) else { return Ok(None) };
        let lease = Lease {
            container_id: container_id.to_string(),
            project_id: project_id.to_string(),
            service: service.to_string(),
            host,
        };
        s.leases.insert(container_id.to_string(), lease.clone());
        Ok(Some(lease))
    }

    fn leases(&self, project_id: &str) -> Result<Vec<Lease>, IpamError> {
        let mut all: Vec<Lease> =
            self.state().leases.values().filter(|l| l.project_id == project_id).cloned().collect();
        all.sort_by(|a, b| (&a.service, a.host).cmp(&(&b.service, b.host)));
        Ok(all)
    }

    fn release_address(&self, container_id: &str) -> Result<(), IpamError> {
        self.state().leases.remove(container_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules every implementation keeps.
    fn conformance(ipam: &dyn Ipam) {
        // Subnets: idempotent per project, lowest free first, `None` when full.
        assert_eq!(ipam.allocate_subnet("prj_a", 3).unwrap(), Some(0));
        assert_eq!(ipam.allocate_subnet("prj_a", 3).unwrap(), Some(0));
        assert_eq!(ipam.allocate_subnet("prj_b", 3).unwrap(), Some(1));
        assert_eq!(ipam.allocate_subnet("prj_c", 3).unwrap(), Some(2));
        assert_eq!(ipam.allocate_subnet("prj_d", 3).unwrap(), None);
        assert_eq!(ipam.subnet("prj_d").unwrap(), None);
        ipam.release_subnet("prj_b").unwrap();
        ipam.release_subnet("prj_b").unwrap();
        assert_eq!(ipam.allocate_subnet("prj_d", 3).unwrap(), Some(1));
        assert_eq!(
            ipam.subnets().unwrap(),
            vec![("prj_a".to_string(), 0), ("prj_d".to_string(), 1), ("prj_c".to_string(), 2)]
        );

        // Addresses: idempotent per container, lowest free in range, `None` when full.
        let host = |c: &str, s: &str| ipam.allocate_address("prj_a", c, s, 2, 4).unwrap().map(|l| l.host);
        assert_eq!(host("rep_1", "web"), Some(2));
        assert_eq!(host("rep_2", "web"), Some(3));
        assert_eq!(host("rep_1", "web"), Some(2));
        assert_eq!(host("rep_3", "api"), Some(4));
        assert_eq!(host("rep_4", "api"), None);
        assert_eq!(ipam.lease("rep_4").unwrap(), None);
        // Another project's range is its own.
        assert_eq!(ipam.allocate_address("prj_c", "rep_9", "web", 2, 4).unwrap().map(|l| l.host), Some(2));
        // A project without a subnet cannot lease.
        assert!(ipam.allocate_address("prj_zz", "rep_8", "web", 2, 4).is_err());

        let names: Vec<(String, u32)> =
            ipam.leases("prj_a").unwrap().into_iter().map(|l| (l.service, l.host)).collect();
        assert_eq!(names, vec![("api".into(), 4), ("web".into(), 2), ("web".into(), 3)]);
        let l = ipam.lease("rep_2").unwrap().unwrap();
        assert_eq!((l.project_id.as_str(), l.service.as_str(), l.host), ("prj_a", "web", 3));

        ipam.release_address("rep_1").unwrap();
        ipam.release_address("rep_1").unwrap();
        assert_eq!(host("rep_5", "web"), Some(2));

        // Releasing a subnet frees its leases.
        ipam.release_subnet("prj_a").unwrap();
        assert!(ipam.leases("prj_a").unwrap().is_empty());
        assert_eq!(ipam.lease("rep_2").unwrap(), None);
        assert_eq!(ipam.leases("prj_c").unwrap().len(), 1);
    }

    #[test]
    fn memory_ipam_keeps_the_rules() {
        conformance(&MemIpam::new());
    }

    #[test]
    fn sqlite_ipam_keeps_the_rules() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conformance(&ConnIpam::new(conn).unwrap());
        // Without foreign keys, releasing a subnet still frees its leases.
        conformance(&ConnIpam::new(Connection::open_in_memory().unwrap()).unwrap());
    }

    #[test]
    fn sqlite_ipam_survives_reopening() {
        let path = std::env::temp_dir().join(format!("{}.db", crate::ids::new_id("ipamtest")));
        {
            let ipam = ConnIpam::new(Connection::open(&path).unwrap()).unwrap();
            ipam.allocate_subnet("prj_a", 8).unwrap();
            ipam.allocate_address("prj_a", "rep_1", "web", 2, 254).unwrap();
        }
        let ipam = ConnIpam::new(Connection::open(&path).unwrap()).unwrap();
        assert_eq!(ipam.subnet("prj_a").unwrap(), Some(0));
        assert_eq!(ipam.lease("rep_1").unwrap().map(|l| l.host), Some(2));
        drop(ipam);
        std::fs::remove_file(&path).unwrap();
    }
}
