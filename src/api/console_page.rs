//! The browser console page at `/console/` (adr/035): plain HTML, JS and CSS plus
//! xterm.js's published files, embedded in the binary so the page needs nothing
//! from the network but this listener.
//!
//! The page is public (it holds no data; everything it shows comes from `/v1` with
//! the caller's token). Every answer carries a strict Content-Security-Policy (scripts
//! and connections only from this origin, no framing), `nosniff` and no referrer.
//! Files are revalidated on every load (`no-cache` with a strong ETag: the SHA-256
//! of the embedded bytes), so a browser never runs a page older than the daemon
//! it talks to, and an unchanged file costs a 304.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Where the page lives; `/console` redirects here.
pub const PREFIX: &str = "/console/";

/// xterm.js's DOM renderer writes its cell dimensions and theme into `<style>`
/// elements it creates at run time, which `style-src 'self'` refuses (checked in
/// chromium: the terminal loses its font and colours). So `<style>` elements may be
/// inline (`style-src-elem`) while style attributes in markup may not; scripts stay
/// `'self'` only. `connect-src 'self'` covers the same-origin WebSocket (`ws:` or
/// `wss:` to this host and port).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     style-src-elem 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self'; font-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

struct Asset {
    /// Path below [`PREFIX`]; the empty path is the page itself.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("../../assets/console/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const SVG: &str = "image/svg+xml";

static ASSETS: &[Asset] = &[
    asset!("", "index.html", HTML),
    asset!("console.js", "console.js", JS),
    asset!("console.css", "console.css", CSS),
    asset!("favicon.svg", "favicon.svg", SVG),
    asset!("vendor/xterm/lib/xterm.js", "vendor/xterm/lib/xterm.js", JS),
    asset!("vendor/xterm/css/xterm.css", "vendor/xterm/css/xterm.css", CSS),
    asset!("vendor/xterm/LICENSE", "vendor/xterm/LICENSE", TEXT),
    asset!("vendor/addon-fit/lib/addon-fit.js", "vendor/addon-fit/lib/addon-fit.js", JS),
    asset!("vendor/addon-fit/LICENSE", "vendor/addon-fit/LICENSE", TEXT),
    asset!("vendor/README.md", "vendor/README.md", TEXT),
];

/// Strong ETags of [`ASSETS`], in the same order, computed on first use.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                // Hex between quotes is always a valid header value.
                HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"\""))
            })
            .collect()
    })
}

const REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");
const X_FRAME_OPTIONS: HeaderName = HeaderName::from_static("x-frame-options");

/// The headers every answer under `/console` carries, errors included.
fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t.as_bytes() == etag.as_bytes())
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return secure(ApiError::not_found(format!("no console file {path}")).into_response());
    };
    let (asset, etag) = (&ASSETS[index], &etags()[index]);
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let response = if matches(request, etag) {
        (StatusCode::NOT_MODIFIED, [cache, (header::ETAG, etag.clone())]).into_response()
    } else {
        let content_type = (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        ([content_type, cache, (header::ETAG, etag.clone())], asset.body).into_response()
    };
    secure(response)
}

/// `/console` without the slash: the page's relative links need the directory form.
#[utoipa::path(get, operation_id = "console_page_redirect", path = "/console", tag = "console",
    responses((status = 308, description = "to `/console/`", headers(("location" = String)))))]
pub async fn redirect() -> Response {
    secure((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, HeaderValue::from_static(PREFIX))]).into_response())
}

/// The console page: log in, pick a replica, get a terminal in it.
#[utoipa::path(get, operation_id = "console_page", path = "/console/", tag = "console",
    responses((status = 200, description = "the page", content_type = "text/html", body = String),
        (status = 304, description = "unchanged since the `If-None-Match` ETag")))]
pub async fn page(request: HeaderMap) -> Response {
    serve("", &request)
}

/// A file the page loads: its script and style sheet, and xterm.js's files.
#[utoipa::path(get, operation_id = "console_page_file", path = "/console/{file}", tag = "console",
    params(("file" = String, Path, description = "e.g. `console.js`, `vendor/xterm/lib/xterm.js`")),
    responses((status = 200, description = "the file (JavaScript, CSS or text)", body = String),
        (status = 304, description = "unchanged since the `If-None-Match` ETag"),
        (status = 404, body = super::error::ErrorBody)))]
pub async fn file(Path(file): Path<String>, request: HeaderMap) -> Response {
    serve(&file, &request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_once_with_its_type() {
        let mut seen = std::collections::HashSet::new();
        for a in ASSETS {
            assert!(seen.insert(a.path), "{} twice", a.path);
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            let want = match a.path.rsplit_once('.').map(|(_, ext)| ext) {
                _ if a.path.is_empty() => HTML,
                Some("js") => JS,
                Some("css") => CSS,
                Some("svg") => SVG,
                _ => TEXT,
            };
            assert_eq!(a.content_type, want, "{}", a.path);
        }
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        let mut refs = 0;
        for attr in ["src=\"", "href=\""] {
            for (i, _) in page.match_indices(attr) {
                let rest = &page[i + attr.len()..];
                let target = &rest[..rest.find('"').unwrap()];
                assert!(ASSETS.iter().any(|a| a.path == target), "index.html loads {target}, which is not embedded");
                refs += 1;
            }
        }
        assert!(refs >= 5, "index.html references {refs} files");
    }

    #[test]
    fn etag_is_revalidated_and_unknown_files_are_404() {
        let ok = serve("console.js", &HeaderMap::new());
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], JS);
        assert_eq!(ok.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(ok.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let etag = ok.headers()[header::ETAG].clone();

        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\", W/\"x\""));
        assert_eq!(serve("console.js", &request).status(), StatusCode::OK);
        request.insert(header::IF_NONE_MATCH, etag.clone());
        let not_modified = serve("console.js", &request);
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(not_modified.headers()[header::ETAG], etag);
        // Another file's ETag is not this one's.
        assert_eq!(serve("console.css", &request).status(), StatusCode::OK);

        for path in ["nope.js", "../Cargo.toml", "vendor", "vendor/xterm/lib/xterm.js.map", "index.html"] {
            let r = serve(path, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        }
    }
}
