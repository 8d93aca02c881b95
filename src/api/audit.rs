//! The audit log, filtered to what the caller administers.

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::error::ApiResult;
use super::extract::{Caller, ListParams, Paginated};
use crate::auth::Role;
use crate::store::audit::{AuditEntry, Visibility};

/// Audit entries, newest first: all of them for super-admins, those of the projects
/// you administer otherwise. Filter with `?project_id=`.
#[utoipa::path(get, operation_id = "audit_list", path = "/v1/audit", tag = "audit",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query),
        ("project_id" = Option<String>, Query)),
    responses((status = 200, body = Paginated<AuditEntry>), (status = 403, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    params: ListParams,
) -> ApiResult<Json<Paginated<AuditEntry>>> {
    let q = params.page_query();
    let project = params.filter("project_id").map(str::to_string);
    let (uid, all) = (p.user.id.clone(), p.user.super_admin);
    let page = state
        .store
        .read(move |c| {
            let vis = if all {
                Visibility::All
            } else {
                Visibility::Projects(crate::store::projects::project_ids_with_role(c, &uid, Role::Admin)?)
            };
            crate::store::audit::list(c, &vis, project.as_deref(), &q)
        })
        .await?;
    Ok(Json(Paginated::from_page(page, |e| &e.id)))
}
