//! `/v1/oci/cache`: the layer cache of images pulled from external registries.

use axum::Json;
use axum::extract::State;
use axum::response::{Extension, IntoResponse};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::AuditNote;
use crate::images::remote::{CacheError, CacheGcReport, CacheStatus};

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Store(e) => e.into(),
            e @ CacheError::Internal(_) => ApiError::internal(e),
        }
    }
}

/// The cache's size (node-wide figures, no image names), its cap and the last GC.
#[utoipa::path(get, operation_id = "oci_cache_status", path = "/v1/oci/cache/status", tag = "registry",
    responses((status = 200, body = CacheStatus)),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>) -> ApiResult<Json<CacheStatus>> {
    Ok(Json(crate::images::remote::cache::status(&state.registry, state.config.cache.max_bytes).await?))
}

/// Evicts least recently used cached images until the cache is within
/// `[cache] max_bytes`; what services run and what was used within the registry's
/// grace period stay, and so do files a hosted repository links.
#[utoipa::path(post, operation_id = "oci_cache_gc", path = "/v1/oci/cache/gc", tag = "registry",
    responses((status = 200, body = CacheGcReport), (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn gc(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let report = state.collect_cache_garbage().await?;
    Ok((Extension(AuditNote { target: Some("oci-cache".into()), ..Default::default() }), Json(report)))
}
