//! Extractors and response helpers every `/v1` handler shares: the request context,
//! the authenticated caller, strict JSON bodies, cursor pagination.

use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Kind};
use crate::auth::{AuthError, Principal};
use crate::store::{Page, PageQuery};

/// What the outer middleware learnt about a request before routing.
#[derive(Clone)]
pub struct Ctx {
    pub request_id: String,
    pub source: IpAddr,
    pub user_agent: String,
    pub auth: Auth,
}

/// The outcome of reading the `Authorization` header.
#[derive(Clone)]
pub enum Auth {
    Anonymous,
    Principal(Arc<Principal>),
    /// A bearer that is not a session or API token (maybe the bootstrap token).
    Other(Arc<str>),
    /// HTTP Basic with a password (not a token); verified only where accepted (`/v2`),
    /// since checking a password costs an argon2 hash.
    Basic {
        username: Arc<str>,
        password: Arc<str>,
    },
    Failed(Arc<AuthError>),
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Ctx>().cloned().ok_or_else(|| ApiError::internal("request context missing"))
    }
}

/// The authenticated caller (the route's access check has already run).
pub struct Caller(pub Arc<Principal>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &S) -> Result<Self, Self::Rejection> {
        match Ctx::from_request_parts(parts, s).await?.auth {
            Auth::Principal(p) => Ok(Caller(p)),
            _ => Err(ApiError::new(Kind::MissingToken, "this route needs a bearer token")),
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

/// Reads a body of at most `limit` bytes; 413 beyond that.
pub async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(ApiError::new(Kind::PayloadTooLarge, format!("request body is larger than the {limit}-byte limit")))
        }
        Err(e) => Err(ApiError::invalid(format!("could not read the request body: {e}"))),
    }
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
                        .filter(|s| s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                        .ok_or_else(|| ApiError::invalid("cursor is not one this server gave out"))?;
                    out.cursor = Some(decoded);
                }
                _ => out.filters.push((k, v)),
            }
        }
        Ok(out)
    }
}

/// Splits and percent-decodes `a=b&c=d`.
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() => {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
