//! IPAM state in berth's own database: the network module's SQL, run through the
//! store's single writer.

use crate::runtime::network::ipam::{Ipam, IpamError, Lease, sql};
use crate::store::{Store, StoreError};

/// [`Ipam`] over the store. Its methods block: callers are on blocking threads
/// already (they run `ip` and `nft`).
pub struct StoreIpam {
    store: Store,
}

impl StoreIpam {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Whether any container holds an address (recovery is only needed then).
    pub fn has_leases(&self) -> Result<bool, IpamError> {
        Ok(self
            .store
            .read_blocking(|c| Ok(c.query_row("SELECT EXISTS (SELECT 1 FROM net_leases)", [], |r| r.get(0))?))?)
    }

    fn read<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>) -> Result<T, IpamError> {
        Ok(self.store.read_blocking(|c| f(c).map_err(StoreError::from))?)
    }

    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, IpamError> {
        Ok(self.store.write_blocking(move |c| f(c).map_err(StoreError::from))?)
    }
}

impl Ipam for StoreIpam {
    fn subnet(&self, project_id: &str) -> Result<Option<u32>, IpamError> {
        self.read(|c| sql::subnet(c, project_id))
    }

    fn allocate_subnet(&self, project_id: &str, count: u32) -> Result<Option<u32>, IpamError> {
        let p = project_id.to_string();
        self.write(move |c| sql::allocate_subnet(c, &p, count))
    }

    fn subnets(&self) -> Result<Vec<(String, u32)>, IpamError> {
        self.read(sql::subnets)
    }

    fn release_subnet(&self, project_id: &str) -> Result<(), IpamError> {
        let p = project_id.to_string();
        self.write(move |c| sql::release_subnet(c, &p))
    }

    fn lease(&self, container_id: &str) -> Result<Option<Lease>, IpamError> {
        self.read(|c| sql::lease(c, container_id))
    }

    fn allocate_address(
        &self,
        project_id: &str,
        container_id: &str,
        service: &str,
        first: u32,
        last: u32,
    ) -> Result<Option<Lease>, IpamError> {
        let (p, id, s) = (project_id.to_string(), container_id.to_string(), service.to_string());
        self.write(move |c| sql::allocate_address(c, &p, &id, &s, first, last))
    }

    fn leases(&self, project_id: &str) -> Result<Vec<Lease>, IpamError> {
        self.read(|c| sql::leases(c, project_id))
    }

    fn release_address(&self, container_id: &str) -> Result<(), IpamError> {
        let id = container_id.to_string();
        self.write(move |c| sql::release_address(c, &id))
    }
}
