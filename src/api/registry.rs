//! `/v1/registry`: the hosted registry seen from the management API.

use axum::Json;
use axum::extract::State;
use axum::response::{Extension, IntoResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AuditNote, Caller};
use crate::auth::Role;
use crate::store::registry::{Counts, GcReport, RepositoryInfo};

/// Repositories in the projects you can see.
#[utoipa::path(get, operation_id = "registry_repositories", path = "/v1/registry/repositories", tag = "registry",
    responses((status = 200, body = Vec<RepositoryInfo>)),
    security(("bearer" = [])))]
pub async fn repositories(State(state): State<AppState>, Caller(p): Caller) -> ApiResult<Json<Vec<RepositoryInfo>>> {
    let (uid, all) = (p.user.id.clone(), p.user.super_admin);
    Ok(Json(
        state
            .store
            .read(move |c| {
                let visible = if all {
                    None
                } else {
                    Some(crate::store::projects::project_ids_with_role(c, &uid, Role::Viewer)?)
                };
                crate::store::registry::repositories(c, visible.as_deref())
            })
            .await?,
    ))
}

#[derive(Serialize, ToSchema)]
pub struct RegistryStatus {
    #[serde(flatten)]
    pub counts: Counts,
    /// Bytes the blob files take on disk.
    pub disk_usage_bytes: u64,
    pub gc_grace_seconds: u64,
    pub last_gc: Option<GcReport>,
}

/// Disk usage, blob count and the last garbage collection.
#[utoipa::path(get, operation_id = "registry_status", path = "/v1/registry/status", tag = "registry",
    responses((status = 200, body = RegistryStatus)),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>) -> ApiResult<Json<RegistryStatus>> {
    let (counts, last_gc) =
        state.store.read(|c| Ok((crate::store::registry::counts(c)?, crate::store::registry::last_gc(c)?))).await?;
    let dir = state.registry.blobs.blobs_dir();
    let disk_usage_bytes = tokio::task::spawn_blocking(move || disk_usage(&dir)).await.map_err(ApiError::internal)?;
    Ok(Json(RegistryStatus { counts, disk_usage_bytes, gc_grace_seconds: state.registry.gc_grace.as_secs(), last_gc }))
}

fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for prefix in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
            total += f.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
        }
    }
    total
}

/// Runs garbage collection now and reports what it removed.
#[utoipa::path(post, operation_id = "registry_gc", path = "/v1/registry/gc", tag = "registry",
    responses((status = 200, body = GcReport), (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn gc(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let report = crate::registry::gc::run(&state.registry).await.map_err(ApiError::internal)?;
    Ok((Extension(AuditNote { target: Some("registry".into()), ..Default::default() }), Json(report)))
}
