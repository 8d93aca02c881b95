//! `/v1/builds/status`: the builder, the build queue and build storage.

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::error::ApiResult;
use crate::build::builder::BuildStatus;

/// Whether builds can run here (buildah's version), builds running and waiting,
/// and the size of build storage against `[build] storage_max_bytes` (measured
/// after each build; storage past the limit is emptied once no build runs).
#[utoipa::path(get, operation_id = "builds_status", path = "/v1/builds/status", tag = "deployments",
    responses((status = 200, body = BuildStatus), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>) -> ApiResult<Json<BuildStatus>> {
    Ok(Json(state.builder.status()))
}
