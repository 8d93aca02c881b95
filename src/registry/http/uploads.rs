//! `/v2/<name>/blobs/uploads/…`: starting, appending to, finishing and cancelling
//! blob uploads, and cross-repository mounts.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Call, Need, authorize, digest, param, query, set};
use crate::registry::error::{RegistryError, RegistryResult};
use crate::registry::names::Digest;

/// `POST …/blobs/uploads/`: a mount (`?mount=&from=`), a monolithic upload
/// (`?digest=`), or a new session.
pub(super) async fn start(call: &Call<'_>, req: Request) -> RegistryResult<Response> {
    let reg = &call.state.registry;
    let q = query(&req);
    let repo = reg.repo_for_push(&call.name, &call.project).await?;
    match (param(&q, "mount"), param(&q, "from")) {
        (Some(mount), Some(from)) => {
            let d = digest(mount)?;
            // Mounting needs pull rights on the source; without them this falls back
            // to a normal upload, as the spec allows.
            if authorize(call.state, &call.principal, from, Need::Pull).await.is_ok() {
                if let Some(from_repo) = reg.repo(from).await? {
                    if reg.mount(&repo, &from_repo, &d).await? {
                        return Ok(created(&call.name, &d));
                    }
                }
            }
        }
        // Without `from`, a blob any repository of the same project holds is mounted
        // (the spec's optional automatic content discovery).
        (Some(mount), None) => {
            let d = digest(mount)?;
            if reg.mount_from_project(&repo, &d).await? {
                return Ok(created(&call.name, &d));
            }
        }
        _ => {}
    }
    if let Some(d) = param(&q, "digest") {
        let d = digest(d)?;
        let id = reg.start_upload(&repo).await?;
        reg.finish(&repo, &id, &d, req.into_body()).await?;
        return Ok(created(&call.name, &d));
    }
    let id = reg.start_upload(&repo).await?;
    Ok(session(StatusCode::ACCEPTED, &call.name, &id, 0))
}

/// `GET …/blobs/uploads/<id>`: how much has arrived.
pub(super) async fn status(call: &Call<'_>, id: &str) -> RegistryResult<Response> {
    let repo = call.existing().await?;
    let offset = call.state.registry.upload_offset(&repo, id).await?;
    Ok(session(StatusCode::NO_CONTENT, &call.name, id, offset))
}

/// `PATCH …/blobs/uploads/<id>`: one more chunk.
pub(super) async fn patch(call: &Call<'_>, id: &str, req: Request) -> RegistryResult<Response> {
    let repo = call.existing().await?;
    let start = content_range_start(req.headers())?;
    let offset = call.state.registry.patch(&repo, id, start, req.into_body()).await?;
    Ok(session(StatusCode::ACCEPTED, &call.name, id, offset))
}

/// `PUT …/blobs/uploads/<id>?digest=`: the last chunk (if any), then the commit.
pub(super) async fn finish(call: &Call<'_>, id: &str, req: Request) -> RegistryResult<Response> {
    let reg = &call.state.registry;
    let repo = call.existing().await?;
    let q = query(&req);
    let d = digest(
        param(&q, "digest").ok_or_else(|| RegistryError::DigestInvalid("finishing an upload needs ?digest=".into()))?,
    )?;
    let start = content_range_start(req.headers())?;
    let body = req.into_body();
    if let Some(start) = start {
        reg.patch(&repo, id, Some(start), body).await?;
        reg.finish(&repo, id, &d, Body::empty()).await?;
    } else {
        reg.finish(&repo, id, &d, body).await?;
    }
    Ok(created(&call.name, &d))
}

/// `DELETE …/blobs/uploads/<id>`.
pub(super) async fn cancel(call: &Call<'_>, id: &str) -> RegistryResult<Response> {
    let repo = call.existing().await?;
    call.state.registry.cancel(&repo, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn session(status: StatusCode, name: &str, id: &str, offset: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{name}/blobs/uploads/{id}"));
    set(h, header::RANGE, &format!("0-{}", offset.saturating_sub(1)));
    set(h, "docker-upload-uuid", id);
    set(h, header::CONTENT_LENGTH, "0");
    resp
}

fn created(name: &str, d: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{name}/blobs/{d}"));
    set(h, "docker-content-digest", &d.to_string());
    set(h, header::CONTENT_LENGTH, "0");
    resp
}

/// The start of an upload chunk's `Content-Range`. The distribution spec writes it
/// `<start>-<end>` (not HTTP's `bytes <start>-<end>/<size>`, which no range crate
/// parses for requests); the HTTP form is tolerated too.
fn content_range_start(h: &HeaderMap) -> RegistryResult<Option<u64>> {
    let Some(v) = h.get(header::CONTENT_RANGE) else { return Ok(None) };
    let v = v.to_str().unwrap_or("").trim();
    let v = v.strip_prefix("bytes").map(|r| r.trim_start_matches([' ', '='])).unwrap_or(v);
    let bad = || RegistryError::RangeInvalid(format!("Content-Range {v:?} is not <start>-<end>"));
    let (start, end) = v.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.split('/').next().unwrap_or("").trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(bad());
    }
    Ok(Some(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(content_range_start(&h).unwrap(), Some(0));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 100-199/*"));
        assert_eq!(content_range_start(&h).unwrap(), Some(100));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("nonsense"));
        assert!(content_range_start(&h).is_err());
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("9-1"));
        assert!(content_range_start(&h).is_err());
    }
}
