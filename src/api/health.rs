//! Liveness.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: &'static str,
}

/// Liveness probe.
#[utoipa::path(get, operation_id = "health_healthz", path = "/healthz", tag = "node", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}
