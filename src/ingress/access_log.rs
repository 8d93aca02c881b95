//! The recent requests of each service, for `GET /v1/services/{id}/requests`.
//!
//! A bounded ring per service id, in memory only: the last [`PER_SERVICE`] requests
//! the ingress routed to the service, whatever their outcome (a replica's answer, a
//! 502 or a 503). Paths are kept without their query string (which often carries
//! tokens) and cut at [`MAX_PATH`] bytes, so a service's ring stays under a megabyte.
//! The rings are lost on restart; the daemon's own log has what matters longer.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use utoipa::ToSchema;

/// Entries kept per service.
pub const PER_SERVICE: usize = 1000;
/// Longest path kept, in bytes.
pub const MAX_PATH: usize = 512;
/// Status recorded when the client went away before the answer started (as nginx logs it).
pub const CLIENT_CLOSED: u16 = 499;

/// One request the ingress routed to a service.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccessEntry {
    /// When the request arrived.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: time::OffsetDateTime,
    pub method: String,
    /// The path, without the query string, cut at 512 bytes.
    pub path: String,
    /// The status sent to the client (499: the client went away first).
    pub status: u16,
    /// From the request's arrival to the end of the response body.
    pub duration_ms: u64,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// The client's address.
    #[schema(value_type = String)]
    pub client: IpAddr,
    /// The replica that answered, when one was reached.
    pub replica_id: Option<String>,
    /// Its address.
    #[schema(value_type = Option<String>)]
    pub upstream: Option<SocketAddr>,
}

fn rfc3339<S: serde::Serializer>(t: &time::OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::ids::format_time(*t))
}

/// Cuts `path` to at most [`MAX_PATH`] bytes on a character boundary.
pub fn clip_path(path: &str) -> String {
    if path.len() <= MAX_PATH {
        return path.to_string();
    }
    let mut end = MAX_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

type Ring = Arc<Mutex<VecDeque<AccessEntry>>>;

/// The rings of every service that had requests.
pub struct AccessLog {
    rings: RwLock<HashMap<String, Ring>>,
    capacity: usize,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::new(PER_SERVICE)
    }
}

impl AccessLog {
    pub fn new(capacity: usize) -> Self {
        AccessLog { rings: RwLock::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// Adds an entry to a service's ring, dropping its oldest when full.
    pub fn record(&self, service_id: &str, entry: AccessEntry) {
        let ring = self.rings.read().unwrap_or_else(|e| e.into_inner()).get(service_id).cloned();
        let ring = match ring {
            Some(r) => r,
            None => {
                self.rings.write().unwrap_or_else(|e| e.into_inner()).entry(service_id.to_string()).or_default().clone()
            }
        };
        let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// A service's most recent entries, newest first, at most `limit`.
    pub fn recent(&self, service_id: &str, limit: usize) -> Vec<AccessEntry> {
        let Some(ring) = self.rings.read().unwrap_or_else(|e| e.into_inner()).get(service_id).cloned() else {
            return Vec::new();
        };
        let ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().rev().take(limit).cloned().collect()
    }

    /// Drops a service's ring (the service was deleted).
    pub fn forget(&self, service_id: &str) {
        self.rings.write().unwrap_or_else(|e| e.into_inner()).remove(service_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: u16, path: &str) -> AccessEntry {
        AccessEntry {
            at: time::OffsetDateTime::UNIX_EPOCH,
            method: "GET".into(),
            path: clip_path(path),
            status,
            duration_ms: 1,
            bytes: 2,
            client: IpAddr::from([127, 0, 0, 1]),
            replica_id: None,
            upstream: None,
        }
    }

    #[test]
    fn rings_are_bounded_per_service_and_read_newest_first() {
        let log = AccessLog::new(3);
        for i in 0..5u16 {
            log.record("svc_a", entry(200 + i, "/"));
        }
        log.record("svc_b", entry(404, "/b"));
        let a: Vec<u16> = log.recent("svc_a", 10).iter().map(|e| e.status).collect();
        assert_eq!(a, vec![204, 203, 202], "the oldest two were dropped");
        assert_eq!(log.recent("svc_a", 1).len(), 1);
        assert_eq!(log.recent("svc_b", 10)[0].path, "/b");
        assert!(log.recent("svc_c", 10).is_empty());
        log.forget("svc_a");
        assert!(log.recent("svc_a", 10).is_empty());
        let json = serde_json::to_value(&log.recent("svc_b", 1)[0]).unwrap();
        assert_eq!(json["at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["client"], "127.0.0.1");
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let long = format!("/{}", "é".repeat(400));
        let cut = clip_path(&long);
        assert!(cut.len() <= MAX_PATH && long.starts_with(&cut), "{}", cut.len());
        assert_eq!(clip_path("/short"), "/short");
    }
}
