//! `GET /v2/<name>/tags/list` and `GET /v2/<name>/referrers/<digest>`.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Call, digest, param, set};
use crate::registry::error::{RegistryError, RegistryResult};
use crate::registry::manifests::OCI_INDEX;

/// Tags in lexical order, paginated with `n` and `last` and a `Link` to the next page.
pub(super) async fn list(call: &Call<'_>, q: &[(String, String)]) -> RegistryResult<Response> {
    let repo = call.existing().await?;
    let n = param(q, "n")
        .map(|n| n.parse::<u32>().map(|n| n.min(10_000)))
        .transpose()
        .map_err(|_| RegistryError::Unsupported("n must be a non-negative integer".into()))?;
    let last = param(q, "last").map(str::to_string);
    let (tags, more) = call.state.registry.tags(&repo, last, n).await?;
    let mut resp = axum::Json(json!({"name": call.name, "tags": tags})).into_response();
    if let (true, Some(n), Some(last)) = (more, n, tags.last()) {
        let next: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        set(resp.headers_mut(), header::LINK, &format!("</v2/{}/tags/list?{next}>; rel=\"next\"", call.name));
    }
    Ok(resp)
}

/// The manifests whose subject is `d`, as an image index, optionally filtered by
/// `artifactType`.
pub(super) async fn referrers(call: &Call<'_>, d: &str, q: &[(String, String)]) -> RegistryResult<Response> {
    let d = digest(d)?;
    let repo = call.existing().await?;
    let filter = param(q, "artifactType").map(str::to_string);
    let rows = call.state.registry.referrers(&repo, &d).await?;
    let manifests: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| filter.as_ref().is_none_or(|f| r.artifact_type.as_ref() == Some(f)))
        .map(|r| {
            let mut v = json!({"mediaType": r.media_type, "digest": r.digest, "size": r.size});
            if let Some(a) = &r.artifact_type {
                v["artifactType"] = json!(a);
            }
            if let Some(a) = r.annotations.as_deref().and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok()) {
                v["annotations"] = a;
            }
            v
        })
        .collect();
    let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    let mut resp = Response::new(Body::from(body.to_string()));
    set(resp.headers_mut(), header::CONTENT_TYPE, OCI_INDEX);
    if filter.is_some() {
        set(resp.headers_mut(), "oci-filters-applied", "artifactType");
    }
    Ok(resp)
}
