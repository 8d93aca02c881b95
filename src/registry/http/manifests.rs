//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Call, parse_reference, set};
use crate::registry::error::{RegistryError, RegistryResult};
use crate::registry::manifests::MAX_MANIFEST_BYTES;
use crate::registry::names::Reference;

pub(super) async fn get(call: &Call<'_>, reference: &str, head: bool) -> RegistryResult<Response> {
    let reference = match parse_reference(reference) {
        Ok(r) => r,
        Err(RegistryError::ManifestInvalid(msg)) => return Err(RegistryError::ManifestUnknown(msg)),
        Err(e) => return Err(e),
    };
    let reg = &call.state.registry;
    let repo = call.existing().await?;
    let row = reg.manifest_row(&repo, &reference).await?;
    let body = if head { Vec::new() } else { reg.manifest_bytes(&row).await? };
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, &row.media_type);
    set(h, header::CONTENT_LENGTH, &row.size.to_string());
    set(h, "docker-content-digest", &row.digest);
    set(h, header::ETAG, &format!("\"{}\"", row.digest));
    Ok(resp)
}

/// Stores a manifest and records the push in the audit log (once per manifest, with
/// the pusher and the project, however many chunks the blobs took).
pub(super) async fn put(call: &Call<'_>, reference: &str, req: Request) -> RegistryResult<Response> {
    let reference = parse_reference(reference)?;
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = crate::http::body::read_limited(req.into_body(), MAX_MANIFEST_BYTES).await.map_err(|e| match e {
        crate::http::body::BodyError::TooLarge(_) => {
            RegistryError::TooLarge(format!("manifests are limited to {MAX_MANIFEST_BYTES} bytes"))
        }
        crate::http::body::BodyError::Broken(m) => RegistryError::ManifestInvalid(m),
        e @ crate::http::body::BodyError::TimedOut => e.into(),
    })?;
    let reg = &call.state.registry;
    let repo = reg.repo_for_push(&call.name, &call.project).await?;
    let (d, subject) = reg.put_manifest(&repo, &reference, content_type.as_deref(), body.to_vec()).await?;
    let target = match &reference {
        Reference::Tag(t) => format!("{}:{t}@{d}", call.name),
        Reference::Digest(_) => format!("{}@{d}", call.name),
    };
    call.audit("PUT /v2/{repository}/manifests/{reference}", target, StatusCode::CREATED).await;
    if let Reference::Tag(tag) = &reference {
        // Services that follow this tag deploy it (the workers listen).
        call.state.announce_push(crate::state::Pushed {
            repository: call.name.clone(),
            tag: tag.clone(),
            digest: d.to_string(),
        });
    }
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    set(h, header::LOCATION, &format!("/v2/{}/manifests/{d}", call.name));
    set(h, "docker-content-digest", &d.to_string());
    if let Some(s) = subject {
        set(h, "oci-subject", &s.to_string());
    }
    Ok(resp)
}

pub(super) async fn delete(call: &Call<'_>, reference: &str) -> RegistryResult<Response> {
    let reference = parse_reference(reference)?;
    let repo = call.existing().await?;
    call.state.registry.delete_manifest(&repo, &reference).await?;
    let target = match &reference {
        Reference::Tag(t) => format!("{}:{t}", call.name),
        Reference::Digest(d) => format!("{}@{d}", call.name),
    };
    call.audit("DELETE /v2/{repository}/manifests/{reference}", target, StatusCode::ACCEPTED).await;
    Ok(StatusCode::ACCEPTED.into_response())
}
