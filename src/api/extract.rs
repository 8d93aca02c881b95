//! Extractors and response helpers every `/v1` handler shares: the request context,
//! the authenticated caller, strict JSON bodies, cursor pagination.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Kind};
use crate::auth::Principal;
use crate::store::{Page, PageQuery};

pub use crate::http::{Auth, Ctx};

/// The authenticated caller (the route's access check has already run).
pub struct Caller(pub Arc<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Ctx>().map(|c| &c.auth) {
            Some(Auth::Principal(p)) => Ok(Caller(p.clone())),
            Some(_) => Err(ApiError::new(Kind::MissingToken, "this route needs a bearer token")),
            None => Err(ApiError::internal("request context missing")),
        }
    }
}

/// A JSON request body within the size limit, with unknown fields rejected by the
/// target type's `deny_unknown_fields`. The body is parsed as JSON whatever the
/// `Content-Type` says (curl's `-d` sends a form type); bearer-only auth means a
/// browser cannot forge such a request cross-origin, so leniency costs nothing.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.api.body_limit_bytes;
        let bytes = read_limited(req.into_body(), limit).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads a body of at most `limit` bytes; 413 beyond that, 408 when it is too slow.
pub async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    Ok(crate::http::body::read_limited(body, limit).await?)
}

/// Parses a JSON document into `T` with messages that say where it went wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("request body is empty; expected a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::invalid(format!("request body is not valid JSON: {e}"))
            }
            Category::Data => ApiError::invalid(format!("invalid request body: {e}")),
        }
    })
}

/// `?limit=&cursor=` as every list takes them.
pub struct ListParams {
    pub limit: u32,
    pub cursor: Option<String>,
    /// The other query parameters (filters), decoded.
    pub filters: Vec<(String, String)>,
}

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

impl ListParams {
    pub fn page_query(&self) -> PageQuery {
        PageQuery { limit: self.limit, after: self.cursor.clone() }
    }

    pub fn filter(&self, name: &str) -> Option<&str> {
        self.filters.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut out = ListParams { limit: DEFAULT_LIMIT, cursor: None, filters: Vec::new() };
        for (k, v) in form_pairs(parts.uri.query().unwrap_or("")) {
            match k.as_str() {
                "limit" => {
                    out.limit =
                        v.parse::<u32>().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
                            ApiError::invalid(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                        })?;
                }
                "cursor" => {
                    let decoded = URL_SAFE_NO_PAD
                        .decode(v.as_bytes())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .filter(|s| {
                            s.len() <= 256
                                && !s.contains("..")
                                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./:".contains(&b))
                        })
                        .ok_or_else(|| ApiError::invalid("cursor is not one this server gave out"))?;
                    out.cursor = Some(decoded);
                }
                _ => out.filters.push((k, v)),
            }
        }
        Ok(out)
    }
}

/// Splits and percent-decodes `a=b&c=d` (`application/x-www-form-urlencoded`).
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// A page of a list, as every list endpoint answers.
#[derive(Serialize, ToSchema)]
pub struct Paginated<T> {
    pub data: Vec<T>,
    /// Pass as `?cursor=` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

impl<T> Paginated<T> {
    /// Builds the response from a store page, using `key` to make the cursor.
    pub fn from_page(page: Page<T>, key: impl Fn(&T) -> &str) -> Self {
        let next_cursor = if page.has_more { page.rows.last().map(|r| URL_SAFE_NO_PAD.encode(key(r))) } else { None };
        Paginated { data: page.rows, next_cursor, has_more: page.has_more }
    }
}

/// Attached to a successful mutation's response to enrich its audit entry.
#[derive(Clone, Default)]
pub struct AuditNote {
    /// The resource created or acted on, when the path does not name it.
    pub target: Option<String>,
    pub project_id: Option<String>,
    /// The actor, for calls made without a principal (login, bootstrap).
    pub actor: Option<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            form_pairs("a=b%20c&d=%zz&e=1+2&f"),
            vec![
                ("a".into(), "b c".into()),
                ("d".into(), "%zz".into()),
                ("e".into(), "1 2".into()),
                ("f".into(), "".into())
            ]
        );
        assert_eq!(form_pairs("x=%4"), vec![("x".into(), "%4".into())]);
    }

    #[test]
    fn json_errors_are_clear() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[expect(dead_code)]
        struct T {
            name: String,
        }
        let e = parse_json::<T>(b"").unwrap_err();
        assert!(e.message.contains("empty"));
        let e = parse_json::<T>(b"{").unwrap_err();
        assert!(e.message.contains("not valid JSON"));
        let e = parse_json::<T>(br#"{"name":"a","x":1}"#).unwrap_err();
        assert!(e.message.contains("unknown field `x`"), "{}", e.message);
        let e = parse_json::<T>(br#"{"name":1}"#).unwrap_err();
        assert!(e.message.contains("invalid type"), "{}", e.message);
        assert!(parse_json::<T>(br#"{"name":"a"}"#).is_ok());
    }
}
