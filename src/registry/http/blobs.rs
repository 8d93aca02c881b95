//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`: blob bodies, whole or one range.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Call, digest, set};
use crate::registry::error::{RegistryError, RegistryResult};
use crate::registry::names::Digest;

pub(super) async fn get(call: &Call<'_>, d: &str, range: Option<&str>, head: bool) -> RegistryResult<Response> {
    let d = digest(d)?;
    let repo = call.existing().await?;
    let size = call
        .state
        .registry
        .blob_size(&repo, &d)
        .await?
        .ok_or_else(|| RegistryError::BlobUnknown(format!("blob {d} is not in {}", call.name)))?;
    let range = match range {
        None => None,
        Some(text) => Some(parse_range(text, size).ok_or_else(|| {
            RegistryError::RangeInvalid(format!("range {text:?} cannot be served from {size} bytes"))
        })?),
    };
    let (status, start, len) = match range {
        None => (StatusCode::OK, 0, size),
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
    };
    let body = if head || len == 0 { Body::empty() } else { call.state.registry.blobs.stream(&d, start, len).await? };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::CONTENT_LENGTH, &len.to_string());
    set(h, "docker-content-digest", &d.to_string());
    set(h, header::ETAG, &format!("\"{d}\""));
    set(h, header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        set(h, header::CONTENT_RANGE, &format!("bytes {start}-{}/{size}", start + len - 1));
    }
    Ok(resp)
}

pub(super) async fn delete(call: &Call<'_>, d: &str) -> RegistryResult<Response> {
    let d: Digest = digest(d)?;
    let repo = call.existing().await?;
    call.state.registry.delete_blob(&repo, &d).await?;
    call.audit("DELETE /v2/{repository}/blobs/{digest}", format!("{}@{d}", call.name), StatusCode::ACCEPTED).await;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// One `Range` (RFC 9110: `bytes=a-b`, `bytes=a-` or `bytes=-n`) against a blob of
/// `size` bytes, as inclusive offsets; `None` when it cannot be served. Several
/// ranges in one header are refused (no multipart answers).
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let one = std::num::NonZeroUsize::MIN;
    let parsed = http_range_header::parse_range_header_with_max_ranges(value, one).ok()?;
    let ranges = parsed.validate(size).ok()?;
    match ranges.as_slice() {
        [r] => Some((*r.start(), *r.end())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("bytes=0-1", 0), None);
    }
}
