//! `GET /metrics`: the daemon's Prometheus metrics (see `crate::metrics`, adr/025).
//!
//! Super-admins only, with a token holding `metrics:read` (a super-admin's token
//! narrowed to that scope is what a Prometheus server should hold). A request from
//! loopback gets no exception: the ingress and any reverse proxy on the host forward
//! outside clients over loopback, so the source address cannot tell a local scraper
//! from the internet.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::metrics::Snapshot;

/// The metrics in the Prometheus text format (0.0.4).
#[utoipa::path(get, operation_id = "metrics_scrape", path = "/metrics", tag = "node",
    responses((status = 200, description = "the Prometheus text exposition format", content_type = "text/plain"),
        (status = 401, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn scrape(State(state): State<AppState>) -> ApiResult<Response> {
    let containers = state.engine.is_some();
    let (replicas, registry, cache) = state
        .store
        .read(move |c| {
            let replicas = if containers { Some(crate::store::replicas::count_by_state(c)?) } else { None };
            Ok((replicas, crate::store::registry::counts(c)?, crate::store::cache::totals(c)?))
        })
        .await?;
    let state_dir_bytes = state.state_dir_usage.get().await;
    let dir = state.config.data_dir.clone();
    let (disk, resident_memory_bytes) = tokio::task::spawn_blocking(move || {
        (crate::runtime::host::statvfs(&dir), crate::metrics::resident_memory_bytes())
    })
    .await
    .map_err(ApiError::internal)?;
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    let snapshot = Snapshot {
        replicas: replicas.map(|r| r.into_iter().map(|(state, n)| (state, count(n))).collect()),
        registry_repositories: count(registry.repositories),
        registry_blobs: count(registry.blobs),
        registry_blob_bytes: count(registry.blob_bytes),
        registry_uploads: count(registry.uploads_in_progress),
        cache_blobs: count(cache.blobs),
        cache_bytes: count(cache.bytes),
        state_dir_bytes,
        filesystem_size_bytes: disk.total_bytes,
        filesystem_avail_bytes: disk.available_bytes,
        resident_memory_bytes,
    };
    let text = state.gate.metrics.render(&snapshot).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}
