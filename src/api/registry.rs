//! `/v1/registry`: the hosted registry seen from the management API.

use axum::Json;
use axum::extract::State;
use axum::response::{Extension, IntoResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AuditNote, Caller, ListParams, Paginated};
use crate::store::registry::{Counts, GcReport, RepositoryInfo};

/// Repositories in the projects you can see, in name order.
#[utoipa::path(get, operation_id = "registry_repositories", path = "/v1/registry/repositories", tag = "registry",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<RepositoryInfo>)),
    security(("bearer" = [])))]
pub async fn repositories(
    State(state): State<AppState>,
    Caller(p): Caller,
    params: ListParams,
) -> ApiResult<Json<Paginated<RepositoryInfo>>> {
    let member = (!p.user.super_admin).then(|| p.user.id.clone());
    let q = params.page_query();
    let page = state.store.read(move |c| crate::store::registry::repositories_page(c, member.as_deref(), &q)).await?;
    Ok(Json(Paginated::from_page(page, |r| &r.name)))
}

#[derive(Serialize, ToSchema)]
pub struct RegistryStatus {
    /// `node` for a super-admin (every project), `projects` for a member (the
    /// projects you belong to).
    pub scope: &'static str,
    #[serde(flatten)]
    pub counts: Counts,
    /// Bytes the blob files take on disk (node-wide; super-admins only).
    pub disk_usage_bytes: Option<u64>,
    pub gc_grace_seconds: u64,
    pub last_gc: Option<GcReport>,
}

/// Registry figures: node-wide for super-admins, for your projects otherwise.
#[utoipa::path(get, operation_id = "registry_status", path = "/v1/registry/status", tag = "registry",
    responses((status = 200, body = RegistryStatus)),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>, Caller(p): Caller) -> ApiResult<Json<RegistryStatus>> {
    let node = p.user.super_admin;
    let uid = p.user.id.clone();
    let (counts, last_gc) = state
        .store
        .read(move |c| {
            let counts = if node {
                crate::store::registry::counts(c)?
            } else {
                crate::store::registry::counts_for_member(c, &uid)?
            };
            Ok((counts, crate::store::registry::last_gc(c)?))
        })
        .await?;
    let disk_usage_bytes = if node {
        let dir = state.registry.blobs.blobs_dir();
        Some(tokio::task::spawn_blocking(move || disk_usage(&dir)).await.map_err(ApiError::internal)?)
    } else {
        None
    };
    Ok(Json(RegistryStatus {
        scope: if node { "node" } else { "projects" },
        counts,
        disk_usage_bytes,
        gc_grace_seconds: state.registry.gc_grace.as_secs(),
        last_gc,
    }))
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
    let report = state.collect_garbage().await.map_err(ApiError::internal)?;
    Ok((Extension(AuditNote { target: Some("registry".into()), ..Default::default() }), Json(report)))
}
