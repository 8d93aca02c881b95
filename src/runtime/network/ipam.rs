//! Address management: which project holds which subnet of the pool, which
//! container holds which address of its project's subnet.
//!
//! The state is berth's (it must survive restarts and reboots), so the daemon keeps
//! it in SQLite: `engine::ipam::StoreIpam` implements [`Ipam`] over the store, whose
//! `store::ipam` holds the schema and the queries. [`MemIpam`] keeps the same rules
//! in memory for tests and benchmarks that need no database.
//!
//! Subnets and addresses are indexes: subnet `k` is the pool's `k`-th project-sized
//! block, address `h` is the `h`-th address of the subnet. Both are handed out
//! lowest-free-first; reuse is harmless because MACs derive from addresses.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

/// The rules every implementation keeps; each implementation's tests run it.
#[cfg(test)]
pub(crate) fn conformance(ipam: &dyn Ipam) {
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

    let names: Vec<(String, u32)> = ipam.leases("prj_a").unwrap().into_iter().map(|l| (l.service, l.host)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_ipam_keeps_the_rules() {
        conformance(&MemIpam::new());
    }
}
