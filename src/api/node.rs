//! `/v1/node`: what this machine is and how it is doing.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::runtime::host::{CgroupVersion, Live};

#[derive(Serialize, ToSchema)]
pub struct Node {
    pub version: &'static str,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    #[serde(flatten)]
    pub live: Live,
    pub cgroup_version: CgroupVersion,
    /// `null` when runc is not installed.
    pub runc_version: Option<String>,
    pub control_domain: Option<String>,
    pub apps_domain: String,
    /// Whether `Upload` and `Git` deployments can be built here (buildah found).
    pub builder: crate::build::builder::BuilderInfo,
}

/// Host figures, cgroup version, runc version and whether a builder is here.
#[utoipa::path(get, operation_id = "node_get_node", path = "/v1/node", tag = "node",
    responses((status = 200, body = Node), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_node(State(state): State<AppState>) -> ApiResult<Json<Node>> {
    let dir = state.config.data_dir.clone();
    let live =
        tokio::task::spawn_blocking(move || crate::runtime::host::live(&dir)).await.map_err(ApiError::internal)?;
    Ok(Json(Node {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
        live,
        cgroup_version: state.host.cgroup,
        runc_version: state.host.runc_version.clone(),
        control_domain: state.config.ingress.control_domain.clone(),
        apps_domain: state.config.ingress.apps_domain.clone(),
        builder: state.builder.info(),
    }))
}
