//! The recent requests of each service, for `GET /v1/services/{id}/requests`.
//!
//! A bounded ring per service id, in memory only: the last [`PER_SERVICE`] requests
//! the ingress routed to the service, whatever their outcome (a replica's answer, a
//! 502 or a 503). Paths are kept without their query string (which often carries
//! tokens) and cut at [`MAX_PATH`] bytes, so a service's ring stays under a megabyte.
//! The rings are lost on restart; the daemon's own log has what matters longer.
//!
//! Beside each ring, counters since the daemon started (requests and response bytes
//! by status class) feed the service's metrics ([`AccessLog::stats`]), with latency
//! percentiles over the entries in the ring.

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

/// One service's recent entries and running totals.
#[derive(Default)]
struct Book {
    ring: VecDeque<AccessEntry>,
    /// Requests by status class: 1xx..5xx (anything else counts as 5xx).
    by_class: [u64; 5],
    bytes: u64,
}

type Ring = Arc<Mutex<Book>>;

/// A service's request figures, for `GET /v1/services/{id}/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct RequestStats {
    /// Requests routed to the service since the daemon started.
    pub total: u64,
    pub status_1xx: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    /// Response body bytes sent for them.
    pub bytes: u64,
    /// How many recent requests the latency figures are taken over (the access log's ring).
    pub recent: u64,
    pub latency_p50_ms: u64,
    pub latency_p95_ms: u64,
    pub latency_p99_ms: u64,
    pub latency_max_ms: u64,
}

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
        let mut book = ring.lock().unwrap_or_else(|e| e.into_inner());
        let class = usize::from(entry.status / 100).clamp(1, 5) - 1;
        book.by_class[class] += 1;
        book.bytes += entry.bytes;
        if book.ring.len() >= self.capacity {
            book.ring.pop_front();
        }
        book.ring.push_back(entry);
    }

    /// A service's request counts and recent latency percentiles.
    pub fn stats(&self, service_id: &str) -> RequestStats {
        let Some(ring) = self.rings.read().unwrap_or_else(|e| e.into_inner()).get(service_id).cloned() else {
            return RequestStats::default();
        };
        let (by_class, bytes, mut durations) = {
            let book = ring.lock().unwrap_or_else(|e| e.into_inner());
            (book.by_class, book.bytes, book.ring.iter().map(|e| e.duration_ms).collect::<Vec<u64>>())
        };
        durations.sort_unstable();
        let at = |q: usize| match durations.len() {
            0 => 0,
            n => durations[((n * q).div_ceil(100)).clamp(1, n) - 1],
        };
        RequestStats {
            total: by_class.iter().sum(),
            status_1xx: by_class[0],
            status_2xx: by_class[1],
            status_3xx: by_class[2],
            status_4xx: by_class[3],
            status_5xx: by_class[4],
            bytes,
            recent: durations.len() as u64,
            latency_p50_ms: at(50),
            latency_p95_ms: at(95),
            latency_p99_ms: at(99),
            latency_max_ms: durations.last().copied().unwrap_or(0),
        }
    }

    /// A service's most recent entries, newest first, at most `limit`.
    pub fn recent(&self, service_id: &str, limit: usize) -> Vec<AccessEntry> {
        let Some(ring) = self.rings.read().unwrap_or_else(|e| e.into_inner()).get(service_id).cloned() else {
            return Vec::new();
        };
        let book = ring.lock().unwrap_or_else(|e| e.into_inner());
        book.ring.iter().rev().take(limit).cloned().collect()
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
    fn stats_count_every_request_and_take_percentiles_over_the_ring() {
        let log = AccessLog::new(100);
        assert_eq!(log.stats("svc_a"), RequestStats::default());
        for i in 1..=200u64 {
            let mut e = entry(if i % 10 == 0 { 502 } else { 200 }, "/");
            e.duration_ms = i;
            log.record("svc_a", e);
        }
        log.record("svc_a", entry(101, "/ws"));
        let s = log.stats("svc_a");
        assert_eq!((s.total, s.status_1xx, s.status_2xx, s.status_5xx), (201, 1, 180, 20));
        assert_eq!(s.bytes, 201 * 2);
        // The ring holds the last 100: durations 102..=200 and the upgrade's 1 ms.
        assert_eq!(s.recent, 100);
        assert_eq!((s.latency_p50_ms, s.latency_p99_ms, s.latency_max_ms), (150, 199, 200));
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let long = format!("/{}", "é".repeat(400));
        let cut = clip_path(&long);
        assert!(cut.len() <= MAX_PATH && long.starts_with(&cut), "{}", cut.len());
        assert_eq!(clip_path("/short"), "/short");
    }
}
