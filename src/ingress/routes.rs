//! The live routing table: host → service → healthy backends, swapped atomically.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

/// Where one host's requests go.
#[derive(Debug)]
pub struct Route {
    pub host: String,
    pub service_id: String,
    pub project_id: String,
    /// Healthy replicas; empty means the service exists but cannot answer (503).
    pub backends: Vec<Backend>,
    /// Round-robin position.
    next: AtomicUsize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub replica_id: String,
    pub addr: SocketAddr,
}

impl Route {
    pub fn new(host: String, service_id: String, project_id: String, backends: Vec<Backend>) -> Route {
        Route { host, service_id, project_id, backends, next: AtomicUsize::new(0) }
    }

    /// The next backend in round-robin order, `None` when there is none.
    pub fn pick(&self) -> Option<&Backend> {
        if self.backends.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends.get(i)
    }
}

/// Host names are matched without port and case-insensitively.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim().trim_end_matches('.');
    let without_port = match h.rsplit_once(':') {
        // `[::1]:8080` or `name:8080`; a bare IPv6 address has more colons.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => h,
    };
    without_port.to_ascii_lowercase()
}

/// The table the proxy reads and deployments write. Readers take a snapshot
/// (`lookup`) without locking; writers replace one service's routes at a time.
#[derive(Default)]
pub struct RoutingTable {
    routes: ArcSwap<HashMap<String, Arc<Route>>>,
    /// Serializes writers (readers never wait).
    write: std::sync::Mutex<()>,
}

impl RoutingTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The route for a request's `Host`, if any.
    pub fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.routes.load().get(&normalize_host(host)).cloned()
    }

    /// Points every host in `hosts` at `backends` for `service_id`, and removes the
    /// service's other hosts, in one swap.
    pub fn set_service(&self, service_id: &str, project_id: &str, hosts: &[String], backends: Vec<Backend>) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: HashMap<String, Arc<Route>> = self
            .routes
            .load()
            .iter()
            .filter(|(_, r)| r.service_id != service_id)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for host in hosts {
            let host = normalize_host(host);
            let route = Route::new(host.clone(), service_id.into(), project_id.into(), backends.clone());
            next.insert(host, Arc::new(route));
        }
        self.routes.store(Arc::new(next));
    }

    /// Removes every host of a service.
    pub fn remove_service(&self, service_id: &str) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let next: HashMap<String, Arc<Route>> = self
            .routes
            .load()
            .iter()
            .filter(|(_, r)| r.service_id != service_id)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.routes.store(Arc::new(next));
    }

    /// Every routed host name, sorted (the certificate worker's list).
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.routes.load().keys().cloned().collect();
        v.sort();
        v
    }

    /// Every route, sorted by host (for `GET /v1/ingress/routes`).
    pub fn snapshot(&self) -> Vec<Arc<Route>> {
        let mut v: Vec<Arc<Route>> = self.routes.load().values().cloned().collect();
        v.sort_by(|a, b| a.host.cmp(&b.host));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: &str, port: u16) -> Backend {
        Backend { replica_id: id.into(), addr: SocketAddr::from(([10, 0, 0, 1], port)) }
    }

    #[test]
    fn hosts_route_to_their_service_round_robin_and_switch_in_one_step() {
        let t = RoutingTable::new();
        t.set_service("svc_1", "prj_1", &["web.alpha.localhost".into()], vec![b("r1", 1), b("r2", 2)]);
        let r = t.lookup("WEB.alpha.localhost:8080").unwrap();
        let picks: Vec<u16> = (0..4).map(|_| r.pick().unwrap().addr.port()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
        assert!(t.lookup("other.alpha.localhost").is_none());
        // A rollout swaps the whole set; a snapshot taken before keeps the old one.
        let before = t.lookup("web.alpha.localhost").unwrap();
        t.set_service("svc_1", "prj_1", &["web.alpha.localhost".into(), "www.example.com".into()], vec![b("r3", 3)]);
        assert_eq!(before.backends.len(), 2);
        assert_eq!(t.lookup("web.alpha.localhost").unwrap().pick().unwrap().replica_id, "r3");
        assert_eq!(t.lookup("www.example.com.").unwrap().service_id, "svc_1");
        // A service with no healthy replica stays routed, with nothing to pick.
        t.set_service("svc_1", "prj_1", &["web.alpha.localhost".into()], vec![]);
        assert!(t.lookup("web.alpha.localhost").unwrap().pick().is_none());
        assert!(t.lookup("www.example.com").is_none(), "hosts the service no longer has are gone");
        t.set_service("svc_2", "prj_1", &["b.example.com".into(), "a.example.com".into()], vec![]);
        assert_eq!(t.hosts(), vec!["a.example.com", "b.example.com", "web.alpha.localhost"]);
        t.remove_service("svc_1");
        t.remove_service("svc_2");
        assert!(t.snapshot().is_empty());
        assert!(t.hosts().is_empty());
    }

    #[test]
    fn host_headers_normalize() {
        assert_eq!(normalize_host("Web.Alpha.localhost:8080"), "web.alpha.localhost");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("::1"), "::1");
    }
}
