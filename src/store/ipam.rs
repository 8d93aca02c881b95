//! IPAM: which project holds which subnet of the network pool, which container
//! holds which address of its project's subnet (`net_subnets`, `net_leases`).
//!
//! Subnets and addresses are indexes: subnet `k` is the pool's `k`-th project-sized
//! block, address `h` is the `h`-th address of the subnet. Both are handed out
//! lowest-free-first. There is no foreign key to `projects`: a project's subnet is
//! freed by the network module once its bridge is gone, never by a cascade that
//! would leave the bridge holding addresses IPAM thinks are free.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Result, StoreError};

/// One container's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub container_id: String,
    pub project_id: String,
    pub service: String,
    /// Index of the address inside the project's subnet.
    pub host: u32,
}

pub fn subnet(c: &Connection, project_id: &str) -> Result<Option<u32>> {
    Ok(c.prepare_cached("SELECT idx FROM net_subnets WHERE project_id = ?1")?
        .query_row([project_id], |r| r.get(0))
        .optional()?)
}

/// The project's subnet index, allocating the lowest free index below `count` if it
/// has none; `None` when all `count` are taken.
pub fn allocate_subnet(c: &Connection, project_id: &str, count: u32) -> Result<Option<u32>> {
    if let Some(idx) = subnet(c, project_id)? {
        return Ok(Some(idx));
    }
    // The lowest free index is 0 or one past a taken one.
    let free: Option<u32> = c
        .prepare_cached(
            "SELECT MIN(n) FROM (SELECT 0 AS n UNION ALL SELECT idx + 1 FROM net_subnets)
             WHERE n < ?1 AND n NOT IN (SELECT idx FROM net_subnets)",
        )?
        .query_row([count], |r| r.get(0))?;
    if let Some(idx) = free {
        c.prepare_cached("INSERT INTO net_subnets (project_id, idx) VALUES (?1, ?2)")?
            .execute(params![project_id, idx])?;
    }
    Ok(free)
}

/// Every project holding a subnet, with its index, by index.
pub fn subnets(c: &Connection) -> Result<Vec<(String, u32)>> {
    Ok(c.prepare_cached("SELECT project_id, idx FROM net_subnets ORDER BY idx")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Frees the project's subnet and its leases; the leases are deleted explicitly, so
/// it holds whether or not the cascade runs.
pub fn release_subnet(c: &Connection, project_id: &str) -> Result<()> {
    c.prepare_cached("DELETE FROM net_leases WHERE project_id = ?1")?.execute([project_id])?;
    c.prepare_cached("DELETE FROM net_subnets WHERE project_id = ?1")?.execute([project_id])?;
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRow> {
    Ok(LeaseRow { container_id: r.get(0)?, project_id: r.get(1)?, service: r.get(2)?, host: r.get(3)? })
}

pub fn lease(c: &Connection, container_id: &str) -> Result<Option<LeaseRow>> {
    Ok(c.prepare_cached("SELECT container_id, project_id, service, host FROM net_leases WHERE container_id = ?1")?
        .query_row([container_id], row)
        .optional()?)
}

/// A new lease on the lowest free host index in `first..=last` of the project's
/// subnet; `None` when the range is full, `NotFound` when the project holds no
/// subnet. The container's existing lease is returned unchanged if it holds one.
pub fn allocate_address(
    c: &Connection,
    project_id: &str,
    container_id: &str,
    service: &str,
    first: u32,
    last: u32,
) -> Result<Option<LeaseRow>> {
    if let Some(l) = lease(c, container_id)? {
        return Ok(Some(l));
    }
    if subnet(c, project_id)?.is_none() {
        return Err(StoreError::NotFound(format!("project {project_id} holds no subnet")));
    }
    let free: Option<u32> = c
        .prepare_cached(
            "SELECT MIN(n) FROM (SELECT ?2 AS n UNION ALL SELECT host + 1 FROM net_leases WHERE project_id = ?1)
             WHERE n >= ?2 AND n <= ?3
               AND n NOT IN (SELECT host FROM net_leases WHERE project_id = ?1)",
        )?
        .query_row(params![project_id, first, last], |r| r.get(0))?;
    let Some(host) = free else { return Ok(None) };
    c.prepare_cached("INSERT INTO net_leases (container_id, project_id, service, host) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![container_id, project_id, service, host])?;
    Ok(Some(LeaseRow {
        container_id: container_id.to_string(),
        project_id: project_id.to_string(),
        service: service.to_string(),
        host,
    }))
}

/// The project's leases, by service then host index.
pub fn leases(c: &Connection, project_id: &str) -> Result<Vec<LeaseRow>> {
    Ok(c.prepare_cached(
        "SELECT container_id, project_id, service, host FROM net_leases WHERE project_id = ?1
         ORDER BY service, host",
    )?
    .query_map([project_id], row)?
    .collect::<rusqlite::Result<_>>()?)
}

/// Whether any container holds an address.
pub fn has_leases(c: &Connection) -> Result<bool> {
    Ok(c.prepare_cached("SELECT EXISTS (SELECT 1 FROM net_leases)")?.query_row([], |r| r.get(0))?)
}

pub fn release_address(c: &Connection, container_id: &str) -> Result<()> {
    c.prepare_cached("DELETE FROM net_leases WHERE container_id = ?1")?.execute([container_id])?;
    Ok(())
}
