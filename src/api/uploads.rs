//! `POST /v1/services/{id}/uploads`: a build context for an `Upload` deployment,
//! streamed to disk and checked to be a safe archive (adr/032). The work is
//! `build::uploads`'.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{Extension, IntoResponse};

use super::AppState;
use super::error::{ApiError, ApiResult, Kind};
use super::extract::AuditNote;
use super::services::service_row;
use crate::build::uploads::{UploadError, UploadInfo};

/// Streams a build context (`tar.zst`, `tar.gz` or plain tar, told apart by its
/// first bytes; any `Content-Type`) to disk and checks it: 413 past
/// `build.max_upload_bytes`, as sent or unpacked; 400 for an archive that is not
/// readable or holds `..` or absolute names, links leaving it, device nodes, fifos or
/// whiteouts; 409 when the service already holds 16 uploads. The answer's
/// `upload_id` goes in a deployment's `{"kind": "Upload"}` source; an upload no build
/// uses expires after `build.upload_ttl_seconds`.
#[utoipa::path(post, operation_id = "uploads_create", path = "/v1/services/{id}/uploads", tag = "services",
    params(("id" = String, Path, description = "service id")),
    request_body(content = Vec<u8>, content_type = "application/zstd",
        description = "the build context: a tar archive, zstd- or gzip-compressed or not"),
    responses((status = 201, body = UploadInfo), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 413, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    let svc = service_row(&state, &id).await?;
    let info = state.uploads.receive(&svc.id, &svc.project_id, req.into_body()).await.map_err(|e| match e {
        UploadError::TooLarge(m) => ApiError::new(Kind::PayloadTooLarge, m),
        UploadError::Refused(m) => ApiError::invalid(m),
        UploadError::TooMany(m) => ApiError::conflict(m),
        UploadError::Io(m) => ApiError::internal(m),
    })?;
    let note = AuditNote {
        target: Some(format!("{} ({} bytes)", info.upload_id, info.bytes)),
        project_id: Some(svc.project_id),
        ..Default::default()
    };
    Ok((StatusCode::CREATED, Extension(note), Json(info)))
}
