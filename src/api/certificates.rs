//! `POST /v1/ingress/routes/{host}/renew`: a forced ACME renewal of one routed host
//! (or of the control domain). Authorization (the host's project role, or
//! super-admin for the control domain) is decided by the route table's
//! `Access::Host`; this handler only hands the host to the renewal worker.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::ingress::acme::CertificateStatus;
use crate::ingress::routes::normalize_host;

/// A renewal handed to the worker.
#[derive(Serialize, ToSchema)]
pub struct Renewal {
    pub host: String,
    /// The certificate as it is now; the worker replaces it shortly (watch
    /// `certificate` in `GET /v1/ingress/routes`). `null` when none was issued yet.
    pub certificate: Option<CertificateStatus>,
}

/// Issues a new certificate for the host now, skipping any backoff. 202: the
/// renewal worker does it next (the served certificate is swapped without dropping
/// a connection). 409 when ACME is off on this node or the name cannot get a
/// certificate (`localhost` names, IP addresses).
#[utoipa::path(post, operation_id = "ingress_renew", path = "/v1/ingress/routes/{host}/renew", tag = "ingress",
    params(("host" = String, Path, description = "a routed host name, or the control domain")),
    responses((status = 202, body = Renewal), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn renew(State(state): State<AppState>, Path(host): Path<String>) -> ApiResult<impl IntoResponse> {
    let host = normalize_host(&host);
    if !state.config.acme.enabled {
        return Err(ApiError::conflict("acme is not enabled on this node ([acme] enabled)"));
    }
    if !crate::workers::acme::wanted(&state, &host) {
        return Err(ApiError::conflict(format!(
            "{host} cannot get a certificate from a public CA (localhost names and IP addresses get none)"
        )));
    }
    state.acme.force(&host);
    Ok((StatusCode::ACCEPTED, Json(Renewal { certificate: state.acme.status(&host), host })))
}
