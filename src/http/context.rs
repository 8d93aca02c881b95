//! The outer layer every request passes through, `/v1` and `/v2` alike: request
//! id, size checks that need no body, who is calling, the rate limit, response
//! headers and the request log line.
//!
//! Order matters for cost: a request refused by size or by its address's rate limit
//! has cost no SQLite read and no hashing. A bearer token found in the credential
//! cache is counted against its credential and user; one that is not (a fresh or a
//! made-up token) is first counted against the source address, so an address that
//! is already refused cannot buy database lookups with junk tokens.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::REQUEST_ID;
use super::ratelimit::{Decision, LoginLimiter, RateLimiter};
use super::serve::Peer;
use crate::auth::{AuthError, Authenticator, BOOTSTRAP_PREFIX, Principal};
use crate::config::Config;
use crate::pool::Pool;
use crate::store::Store;
use crate::store::projects::PageCache;

const MAX_USER_AGENT: usize = 256;

/// Bytes of rendered project-list pages kept at most (`Gate::lists`).
const LIST_PAGES_BYTES: usize = 4 << 20;

/// What every request shares in front of the store: rate limits, the credential
/// check and login, and the project-list pages kept while they are current.
pub struct Gate {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    pub logins: LoginLimiter,
    /// Password hashing runs here and nowhere else: a few threads, a short queue.
    pub hashing: Pool,
    /// Which protocol answers what (`/v1` or `/v2`), decided by the layer above.
    pub surface: Arc<dyn Surface>,
    /// Rendered `GET /v1/projects` pages, served while no project or membership has
    /// changed since they were read (`store::projects` decides that exactly).
    pub lists: PageCache<Bytes>,
}

impl Gate {
    pub fn new(config: Arc<Config>, store: Store, surface: Arc<dyn Surface>) -> Gate {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        // Half the cores at most, so a login flood leaves the rest to everything else.
        let threads = (cores / 2).clamp(1, 4);
        Gate {
            auth: Authenticator::new(store.clone()),
            limiter: RateLimiter::new(config.api.rate_limit_per_minute, config.api.anonymous_rate_limit_per_minute),
            logins: LoginLimiter::new(
                config.api.login_failures_per_minute,
                std::time::Duration::from_secs(config.api.login_window_seconds),
            ),
            hashing: Pool::new("argon2", threads, threads * 16),
            lists: PageCache::new(LIST_PAGES_BYTES),
            surface,
            store,
            config,
        }
    }
}

/// A refusal the context layer answers itself, in the protocol of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    RateLimited {
        retry_after: u64,
    },
    /// `Content-Length` is over the route's limit.
    TooLarge {
        limit: u64,
    },
    /// The request line and headers are over [`super::serve::MAX_HEAD_BYTES`].
    HeadTooLarge,
}

/// The protocols served on one listener: each decides its body limits and how a
/// refusal looks (`/v1` JSON envelope or `/v2` OCI errors).
pub trait Surface: Send + Sync + 'static {
    /// Largest body the route takes; `None` for no limit here (streamed uploads).
    fn body_limit(&self, method: &Method, path: &str) -> Option<u64>;
    fn reject(&self, path: &str, rejection: Rejection) -> Response;
}

/// What the outer layer learnt about a request before routing.
#[derive(Clone)]
pub struct Ctx {
    pub request_id: String,
    pub source: IpAddr,
    /// The listener address the client connected to.
    pub local: Option<SocketAddr>,
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

/// The context is always there: the outer layer inserts it before routing.
#[derive(Debug)]
pub struct MissingContext;

impl IntoResponse for MissingContext {
    fn into_response(self) -> Response {
        tracing::error!("request context missing");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = MissingContext;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Ctx>().cloned().ok_or(MissingContext)
    }
}

/// The client's `X-Request-Id` when it is a sane one, else a new id.
fn request_id_from(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string)
        .unwrap_or_else(crate::ids::new_request_id)
}

/// What the `Authorization` header holds.
pub enum Presented {
    Bearer(String),
    Basic(String, String),
}

/// Parses the `Authorization` header: `None` when absent, `Err` when unreadable.
pub fn presented(headers: &HeaderMap) -> Option<Result<Presented, ()>> {
    Some(presented_ref(headers)?.map(|p| match p {
        PresentedRef::Bearer(t) => Presented::Bearer(t.to_string()),
        PresentedRef::Basic(u, p) => Presented::Basic(u, p),
    }))
}

/// [`presented`], with the bearer token borrowed from the header.
enum PresentedRef<'a> {
    Bearer(&'a str),
    Basic(String, String),
}

fn presented_ref(headers: &HeaderMap) -> Option<Result<PresentedRef<'_>, ()>> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?;
    let Ok(value) = value.to_str() else { return Some(Err(())) };
    Some(match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(PresentedRef::Bearer(token.trim())),
        Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(u, p)| PresentedRef::Basic(u.to_string(), p.to_string())))
            .ok_or(()),
        _ => Err(()),
    })
}

/// Who is calling, with the rate limit counted before anything costly.
async fn authenticate(gate: &Gate, headers: &HeaderMap, source: IpAddr) -> (Auth, Decision) {
    let by_address = || gate.limiter.check_address(source);
    // A token (as a bearer, or as the password of `docker login`): checked against the
    // cache first, then, if unknown, against the address's budget before the store.
    let (token, basic_user) = match presented_ref(headers) {
        None => return (Auth::Anonymous, by_address()),
        Some(Err(())) => return (Auth::Failed(Arc::new(AuthError::Malformed)), by_address()),
        Some(Ok(PresentedRef::Bearer(t))) if t.starts_with(BOOTSTRAP_PREFIX) => {
            return (Auth::Other(Arc::from(t)), by_address());
        }
        Some(Ok(PresentedRef::Bearer(t))) => (std::borrow::Cow::Borrowed(t), None),
        Some(Ok(PresentedRef::Basic(user, secret))) if crate::auth::parse_token(&secret).is_ok() => {
            (std::borrow::Cow::Owned(secret), Some(user))
        }
        Some(Ok(PresentedRef::Basic(user, password))) => {
            return (Auth::Basic { username: Arc::from(user), password: Arc::from(password) }, by_address());
        }
    };
    // The address's decision, once it has been counted against.
    let mut charged = None;
    let result = match gate.auth.authenticate_cached(&token) {
        Some(r) => r,
        None => {
            let d = by_address();
            if !d.allowed {
                return (Auth::Failed(Arc::new(AuthError::Invalid)), d);
            }
            charged = Some(d);
            gate.auth.authenticate(&token).await
        }
    };
    let failed = |e: AuthError| (Auth::Failed(Arc::new(e)), charged.unwrap_or_else(by_address));
    match result {
        Ok(p) if basic_user.as_deref().is_none_or(|u| u == p.user.username) => {
            let d = gate.limiter.check_principal(p.credential_id(), &p.user.id);
            (Auth::Principal(p), d)
        }
        // `docker login` with someone else's token: the token is not theirs to use.
        Ok(_) => failed(AuthError::Invalid),
        Err(e) => failed(e),
    }
}

/// Length of the request line and headers as they came in (close enough: the
/// separators are counted as on the wire).
fn head_len(req: &Request) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>() + line
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The outer layer: see the module header.
pub async fn layer(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request_id_from(req.headers());
    let (source, local) = match req.extensions().get::<Peer>() {
        Some(peer) => (peer.remote.ip(), peer.local),
        None => (IpAddr::from([127, 0, 0, 1]), None),
    };
    let method = req.method().clone();
    // Cheap to keep (the request's bytes are shared), read only to answer or log.
    let uri = req.uri().clone();
    let ctx_request_id = request_id.clone();
    REQUEST_ID
        .scope(request_id, async move {
            let path = uri.path();
            let early = if head_len(&req) > super::serve::MAX_HEAD_BYTES {
                Some(Rejection::HeadTooLarge)
            } else {
                match (gate.surface.body_limit(&method, path), declared_length(req.headers())) {
                    // Refused before the body is touched, so no `100 Continue` goes out.
                    (Some(limit), Some(len)) if len > limit => Some(Rejection::TooLarge { limit }),
                    _ => None,
                }
            };
            if let Some(rejection) = early {
                let mut resp = gate.surface.reject(path, rejection);
                // The body was never read: the connection cannot carry another request.
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return finish(resp, None, (&method, path, None, started));
            }
            let (auth, decision) = authenticate(&gate, req.headers(), source).await;
            let actor = match &auth {
                Auth::Principal(p) => Some(p.clone()),
                _ => None,
            };
            let user_agent = req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(MAX_USER_AGENT).collect())
                .unwrap_or_default();
            let resp = if decision.allowed {
                req.extensions_mut().insert(Ctx { request_id: ctx_request_id, source, local, user_agent, auth });
                next.run(req).await
            } else {
                gate.surface.reject(path, Rejection::RateLimited { retry_after: decision.reset })
            };
            let actor = actor.as_ref().map(|p| p.user.username.as_str());
            finish(resp, Some(decision), (&method, path, actor, started))
        })
        .await
}

fn finish(
    mut resp: Response,
    decision: Option<Decision>,
    (method, path, actor, started): (&Method, &str, Option<&str>, Instant),
) -> Response {
    let status = resp.status().as_u16();
    let h = resp.headers_mut();
    if let Some(d) = decision {
        h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(d.limit));
        h.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
        h.insert(X_RATELIMIT_RESET, HeaderValue::from(d.reset));
    }
    let _ = REQUEST_ID.try_with(|request_id| {
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(X_REQUEST_ID, v);
        }
        // The fields are computed only when the line is written (reads log at debug).
        let ms = || started.elapsed().as_secs_f64() * 1000.0;
        let actor = actor.unwrap_or("-");
        if status >= 500 {
            tracing::error!(request_id, %method, path, status, ms = ms(), actor, "request");
        } else if method != Method::GET && method != Method::HEAD {
            tracing::info!(request_id, %method, path, status, ms = ms(), actor, "request");
        } else {
            tracing::debug!(request_id, %method, path, status, ms = ms(), actor, "request");
        }
    });
    resp
}
