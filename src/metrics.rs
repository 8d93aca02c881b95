//! Prometheus metrics, served as `GET /metrics` on the API listener (adr/025).
//!
//! Two kinds of figures:
//! - **Counted as things happen**: API (`/v1`) and registry (`/v2`) requests by
//!   method, route template and status class, with a latency histogram per method
//!   and route; ingress requests by status class with a latency histogram;
//!   deployments finished by outcome. The request path pays a lookup in a family
//!   (a read lock and a hash of three short labels) and atomic adds; the labels are
//!   `&'static str` from fixed sets (the route table's templates, the `/v2`
//!   endpoint templates, five status classes, a few methods), so a request never
//!   allocates here and no label can grow without bound. Raw paths, ids and service
//!   names are never labels.
//! - **Read at scrape time** ([`Snapshot`]): replicas by state, registry and
//!   layer-cache sizes, the state dir's size and its filesystem, the process's
//!   resident memory and uptime. The caller gathers them (one store read, a cached
//!   directory walk) and [`Metrics::render`] encodes them beside the counters.
//!
//! Latencies are measured to the response head: a streamed body (a blob download, a
//! log stream) is not in the API and registry figures. The ingress's figure runs
//! to the end of the response body, as its access log does.
//!
//! Output is the Prometheus text format 0.0.4 (`prometheus-client`'s encoder).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Request latency buckets, in seconds: half a millisecond to ten seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The states a replica can be recorded in (`store::replicas::Replica::state`):
/// each is reported, at 0 when no replica is in it, so a state emptied shows as 0.
pub const REPLICA_STATES: &[&str] = &["starting", "running", "exited", "stopped", "failed", "crash_loop"];

/// How a deployment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It went live.
    Live,
    Failed,
    Cancelled,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Live, Outcome::Failed, Outcome::Cancelled];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Live => "live",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// How a job run can end (`store::jobs::RunRow::status`): each is reported, at 0
/// until a run ends so.
pub const RUN_ENDINGS: &[&str] = &["succeeded", "failed", "timed_out", "cancelled", "skipped"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    status: &'static str,
}

/// Which family a request on the API listener is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `/v1`, `/healthz`, `/metrics`.
    Api,
    /// `/v2`.
    Registry,
}

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Requests of one protocol: a counter and a latency histogram.
struct Requests {
    total: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Requests {
    fn new() -> Requests {
        Requests { total: Family::default(), duration: Family::new_with_constructor(latency_histogram) }
    }

    fn record(&self, method: &'static str, route: &'static str, status: u16, elapsed: Duration) {
        self.total.get_or_create(&RequestLabels { method, route, status: status_class(status) }).inc();
        self.duration.get_or_create(&RouteLabels { method, route }).observe(elapsed.as_secs_f64());
    }
}

/// Every counter and histogram of the daemon, and the registry they are encoded from.
pub struct Metrics {
    registry: Registry,
    api: Requests,
    v2: Requests,
    ingress_total: Family<StatusLabels, Counter>,
    ingress_duration: Histogram,
    deployments: Family<OutcomeLabels, Counter>,
    job_runs: Family<RunLabels, Counter>,
    started: Instant,
    started_at: SystemTime,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let api = Requests::new();
        let v2 = Requests::new();
        let ingress_total = Family::<StatusLabels, Counter>::default();
        let ingress_duration = latency_histogram();
        let deployments = Family::<OutcomeLabels, Counter>::default();
        // Every outcome shows from the start, at 0, so a rate over it is defined.
        for o in Outcome::ALL {
            let _ = deployments.get_or_create(&OutcomeLabels { outcome: o.as_str() });
        }
        registry.register(
            "berth_api_requests",
            "Requests to /v1 (and /healthz, /metrics) by method, route template and status class",
            api.total.clone(),
        );
        registry.register(
            "berth_api_request_duration_seconds",
            "Time from a /v1 request's arrival to its response head",
            api.duration.clone(),
        );
        registry.register(
            "berth_registry_requests",
            "Requests to the /v2 registry by method, endpoint template and status class",
            v2.total.clone(),
        );
        registry.register(
            "berth_registry_request_duration_seconds",
            "Time from a /v2 request's arrival to its response head",
            v2.duration.clone(),
        );
        registry.register(
            "berth_ingress_requests",
            "Requests the ingress answered, by status class (499 when the client went away: 4xx)",
            ingress_total.clone(),
        );
        registry.register(
            "berth_ingress_request_duration_seconds",
            "Time from an ingress request's arrival to the end of its response body",
            ingress_duration.clone(),
        );
        registry.register("berth_deployments_finished", "Deployments finished, by outcome", deployments.clone());
        let job_runs = Family::<RunLabels, Counter>::default();
        for status in RUN_ENDINGS {
            let _ = job_runs.get_or_create(&RunLabels { status });
        }
        registry.register("berth_job_runs_finished", "Job runs ended (or skipped), by status", job_runs.clone());
        Metrics {
            registry,
            api,
            v2,
            ingress_total,
            ingress_duration,
            deployments,
            job_runs,
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }

    /// Counts a request on the API listener. `route` is a template or [`UNMATCHED`].
    pub fn request(
        &self,
        protocol: Protocol,
        method: &axum::http::Method,
        route: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let requests = match protocol {
            Protocol::Api => &self.api,
            Protocol::Registry => &self.v2,
        };
        requests.record(method_label(method), route, status, elapsed);
    }

    /// Counts a request the ingress answered.
    pub fn ingress_request(&self, status: u16, elapsed: Duration) {
        self.ingress_total.get_or_create(&StatusLabels { status: status_class(status) }).inc();
        self.ingress_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a deployment that ended.
    /// Counts a job run that ended with `status` (one of [`RUN_ENDINGS`]; any other
    /// is not counted).
    pub fn job_run_finished(&self, status: &str) {
        if let Some(status) = RUN_ENDINGS.iter().find(|s| **s == status) {
            self.job_runs.get_or_create(&RunLabels { status }).inc();
        }
    }

    pub fn deployment_finished(&self, outcome: Outcome) {
        self.deployments.get_or_create(&OutcomeLabels { outcome: outcome.as_str() }).inc();
    }

    /// How long the daemon has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The text exposition: the counters, then the scrape-time figures.
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        let mut scraped = Registry::default();
        scraped.register_collector(Box::new(Scraped { snapshot: snapshot.clone(), metrics: self.times() }));
        prometheus_client::encoding::prometheus_text::encode(&mut out, &scraped)?;
        Ok(out)
    }

    fn times(&self) -> Times {
        Times {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            start_time_seconds: self
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }
}

/// The status class label of a status code.
fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// The method label: the standard methods by name, anything else as `OTHER`, so a
/// client cannot add series by inventing methods.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Figures read at scrape time, gathered by the caller.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Replicas per state (`store::replicas`); `None` on a node that runs no containers.
    pub replicas: Option<Vec<(String, u64)>>,
    pub registry_repositories: u64,
    pub registry_blobs: u64,
    pub registry_blob_bytes: u64,
    pub registry_uploads: u64,
    pub cache_blobs: u64,
    pub cache_bytes: u64,
    /// Bytes the files under the state dir take on disk (its own filesystem only).
    pub state_dir_bytes: u64,
    pub filesystem_size_bytes: u64,
    pub filesystem_avail_bytes: u64,
    /// The daemon's resident set.
    pub resident_memory_bytes: u64,
}

#[derive(Debug, Clone)]
struct Times {
    uptime_seconds: f64,
    start_time_seconds: f64,
}

#[derive(Debug)]
struct Scraped {
    snapshot: Snapshot,
    metrics: Times,
}

fn gauge<N: EncodeGaugeValue>(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: N) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Scraped {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.snapshot;
        let mut replicas: Vec<(&str, u64)> = REPLICA_STATES.iter().map(|s| (*s, 0)).collect();
        if let Some(counted) = &s.replicas {
            for (state, n) in counted {
                match replicas.iter_mut().find(|(k, _)| k == state) {
                    Some(slot) => slot.1 = *n,
                    None => replicas.push((state.as_str(), *n)),
                }
            }
            let mut family = enc.encode_descriptor(
                "berth_replicas",
                "Replicas (containers) the engine records, by state",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in replicas {
                let labels = [("state", state)];
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(&mut enc, "berth_registry_repositories", "Repositories in the hosted registry", s.registry_repositories)?;
        gauge(&mut enc, "berth_registry_blobs", "Blobs in the hosted registry", s.registry_blobs)?;
        gauge(&mut enc, "berth_registry_blob_bytes", "Bytes of the hosted registry's blobs", s.registry_blob_bytes)?;
        gauge(
            &mut enc,
            "berth_registry_uploads_in_progress",
            "Blob uploads started and not finished",
            s.registry_uploads,
        )?;
        gauge(&mut enc, "berth_layer_cache_blobs", "Blobs in the layer cache of external images", s.cache_blobs)?;
        gauge(&mut enc, "berth_layer_cache_bytes", "Bytes of the layer cache of external images", s.cache_bytes)?;
        gauge(
            &mut enc,
            "berth_state_dir_bytes",
            "Bytes the files under the state dir take on disk (refreshed at most once a minute)",
            s.state_dir_bytes,
        )?;
        gauge(
            &mut enc,
            "berth_state_filesystem_size_bytes",
            "Size of the filesystem holding the state dir",
            s.filesystem_size_bytes,
        )?;
        gauge(
            &mut enc,
            "berth_state_filesystem_avail_bytes",
            "Bytes available to berth on the filesystem holding the state dir",
            s.filesystem_avail_bytes,
        )?;
        gauge(&mut enc, "berth_uptime_seconds", "Seconds since the daemon started", self.metrics.uptime_seconds)?;
        gauge(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            self.metrics.start_time_seconds,
        )?;
        gauge(&mut enc, "process_resident_memory_bytes", "Resident memory size in bytes", s.resident_memory_bytes)?;
        let mut info =
            enc.encode_descriptor("berth_build_info", "The running version, as a label", None, MetricType::Gauge)?;
        ConstGauge::new(1u64).encode(info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

/// The resident set of this process, from `VmRSS` in `/proc/self/status` (0 when
/// unreadable).
pub fn resident_memory_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Bytes the files under `dir` take on disk, without leaving its filesystem or
/// following symlinks (containers' mounts and bind mounts are not counted twice).
pub fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else { return 0 };
    let dev = root.dev();
    let mut total = root.blocks() * 512;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

/// [`disk_usage`] of one directory, walked at most once per `max_age`: a scrape
/// every few seconds does not walk a large state dir every time.
pub struct CachedDiskUsage {
    dir: std::path::PathBuf,
    max_age: Duration,
    last: std::sync::Mutex<Option<(Instant, u64)>>,
    walking: tokio::sync::Mutex<()>,
}

impl CachedDiskUsage {
    pub fn new(dir: std::path::PathBuf, max_age: Duration) -> CachedDiskUsage {
        CachedDiskUsage { dir, max_age, last: std::sync::Mutex::new(None), walking: tokio::sync::Mutex::new(()) }
    }

    fn fresh(&self) -> Option<u64> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.filter(|(at, _)| at.elapsed() < self.max_age).map(|(_, v)| v)
    }

    /// The size, walking the directory on a blocking thread when the last walk is
    /// too old (concurrent scrapes wait for one walk).
    pub async fn get(self: &Arc<Self>) -> u64 {
        if let Some(v) = self.fresh() {
            return v;
        }
        let _walking = self.walking.lock().await;
        if let Some(v) = self.fresh() {
            return v;
        }
        let dir = self.dir.clone();
        let v = tokio::task::spawn_blocking(move || disk_usage(&dir)).await.unwrap_or(0);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn requests_are_counted_by_template_and_status_class() {
        let m = Metrics::new();
        let get = axum::http::Method::GET;
        for status in [200, 201, 404] {
            m.request(Protocol::Api, &get, "/v1/projects/{id}", status, Duration::from_millis(3));
        }
        m.request(Protocol::Registry, &axum::http::Method::from_bytes(b"BREW").unwrap(), "/v2/", 401, Duration::ZERO);
        m.ingress_request(499, Duration::from_millis(1));
        m.deployment_finished(Outcome::Live);
        let text = m.render(&Snapshot::default()).unwrap();
        assert!(
            text.contains(r#"berth_api_requests_total{method="GET",route="/v1/projects/{id}",status="2xx"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"berth_api_requests_total{method="GET",route="/v1/projects/{id}",status="4xx"} 1"#));
        assert!(text.contains(
            r#"berth_api_request_duration_seconds_bucket{method="GET",route="/v1/projects/{id}",le="0.005"} 3"#
        ));
        assert!(text.contains(
            r#"berth_api_request_duration_seconds_bucket{method="GET",route="/v1/projects/{id}",le="0.0025"} 0"#
        ));
        assert!(text.contains(r#"berth_registry_requests_total{method="OTHER",route="/v2/",status="4xx"} 1"#));
        assert!(text.contains(r#"berth_ingress_requests_total{status="4xx"} 1"#));
        assert!(text.contains(r#"berth_deployments_finished_total{outcome="live"} 1"#));
        assert!(text.contains(r#"berth_deployments_finished_total{outcome="cancelled"} 0"#));
        m.job_run_finished("timed_out");
        m.job_run_finished("running");
        let text = m.render(&Snapshot::default()).unwrap();
        assert!(text.contains(r#"berth_job_runs_finished_total{status="timed_out"} 1"#), "{text}");
        assert!(text.contains(r#"berth_job_runs_finished_total{status="skipped"} 0"#), "{text}");
        assert!(!text.contains(r#"status="running""#), "{text}");
        // A node that runs no containers reports none.
        assert!(line(&text, "berth_replicas").is_none(), "{text}");
    }

    #[test]
    fn scraped_figures_are_rendered_with_every_replica_state() {
        let m = Metrics::new();
        let snapshot = Snapshot {
            replicas: Some(vec![("running".into(), 3), ("paused".into(), 1)]),
            registry_blobs: 7,
            cache_bytes: 1 << 20,
            resident_memory_bytes: resident_memory_bytes(),
            ..Default::default()
        };
        let text = m.render(&snapshot).unwrap();
        assert_eq!(line(&text, r#"berth_replicas{state="running"}"#), Some(r#"berth_replicas{state="running"} 3"#));
        assert_eq!(line(&text, r#"berth_replicas{state="exited"}"#), Some(r#"berth_replicas{state="exited"} 0"#));
        assert_eq!(line(&text, r#"berth_replicas{state="paused"}"#), Some(r#"berth_replicas{state="paused"} 1"#));
        assert_eq!(line(&text, "berth_registry_blobs "), Some("berth_registry_blobs 7"));
        assert_eq!(line(&text, "berth_layer_cache_bytes "), Some("berth_layer_cache_bytes 1048576"));
        let rss: f64 =
            line(&text, "process_resident_memory_bytes ").unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        assert!(rss > 1e6, "{rss}");
        assert!(text.contains("# TYPE berth_build_info gauge"));
    }

    #[test]
    fn disk_usage_counts_files_below_the_dir() {
        let dir = std::env::temp_dir().join(format!("berth-metrics-du-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let before = disk_usage(&dir);
        std::fs::write(dir.join("a/b/f"), vec![1u8; 256 * 1024]).unwrap();
        let after = disk_usage(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(after >= before + 256 * 1024, "{before} -> {after}");
    }
}
