//! IPAM state in berth's own database: the network module's [`Ipam`] over
//! `store::ipam`, run through the store's single writer.

use crate::runtime::network::ipam::{Ipam, IpamError, Lease};
use crate::store::Store;
use crate::store::ipam::{self as sql, LeaseRow};

/// [`Ipam`] over the store. Its methods block: callers are on blocking threads
/// already (they run `ip` and `nft`).
pub struct StoreIpam {
    store: Store,
}

fn lease(r: LeaseRow) -> Lease {
    Lease { container_id: r.container_id, project_id: r.project_id, service: r.service, host: r.host }
}

impl StoreIpam {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Whether any container holds an address (recovery is only needed then).
    pub fn has_leases(&self) -> Result<bool, IpamError> {
        Ok(self.store.read_blocking(sql::has_leases)?)
    }
}

impl Ipam for StoreIpam {
    fn subnet(&self, project_id: &str) -> Result<Option<u32>, IpamError> {
        Ok(self.store.read_blocking(|c| sql::subnet(c, project_id))?)
    }

    fn allocate_subnet(&self, project_id: &str, count: u32) -> Result<Option<u32>, IpamError> {
        let p = project_id.to_string();
        Ok(self.store.write_blocking(move |c| sql::allocate_subnet(c, &p, count))?)
    }

    fn subnets(&self) -> Result<Vec<(String, u32)>, IpamError> {
        Ok(self.store.read_blocking(sql::subnets)?)
    }

    fn release_subnet(&self, project_id: &str) -> Result<(), IpamError> {
        let p = project_id.to_string();
        Ok(self.store.write_blocking(move |c| sql::release_subnet(c, &p))?)
    }

    fn lease(&self, container_id: &str) -> Result<Option<Lease>, IpamError> {
        Ok(self.store.read_blocking(|c| sql::lease(c, container_id))?.map(lease))
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
        Ok(self.store.write_blocking(move |c| sql::allocate_address(c, &p, &id, &s, first, last))?.map(lease))
    }

    fn leases(&self, project_id: &str) -> Result<Vec<Lease>, IpamError> {
        Ok(self.store.read_blocking(|c| sql::leases(c, project_id))?.into_iter().map(lease).collect())
    }

    fn release_address(&self, container_id: &str) -> Result<(), IpamError> {
        let id = container_id.to_string();
        Ok(self.store.write_blocking(move |c| sql::release_address(c, &id))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::network::ipam::conformance;

    #[test]
    fn store_ipam_keeps_the_rules() {
        let (store, dir) = crate::store::test_store();
        let ipam = StoreIpam::new(store.clone());
        assert!(!ipam.has_leases().unwrap());
        conformance(&ipam);
        assert!(ipam.has_leases().unwrap(), "prj_c's lease is left");
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn leases_survive_reopening() {
        let (store, dir) = crate::store::test_store();
        let ipam = StoreIpam::new(store.clone());
        assert_eq!(ipam.allocate_subnet("prj_a", 8).unwrap(), Some(0));
        assert_eq!(ipam.allocate_address("prj_a", "rep_1", "web", 2, 254).unwrap().map(|l| l.host), Some(2));
        store.close();

        let store = crate::store::Store::open(&dir.join("state.db")).unwrap();
        let ipam = StoreIpam::new(store.clone());
        assert_eq!(ipam.subnet("prj_a").unwrap(), Some(0));
        let l = ipam.lease("rep_1").unwrap().unwrap();
        assert_eq!((l.project_id.as_str(), l.service.as_str(), l.host), ("prj_a", "web", 2));
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
