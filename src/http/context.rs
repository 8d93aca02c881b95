//! The outer layer every request passes through, `/v1` and `/v2` alike: request
//! id, size checks that need no body, who is calling, the rate limit, response
//! headers and the request log line.
//!
//! Order matters for cost: a request refused by size or by its address's rate limit
//! has cost no SQLite read and no hashing. A bearer token found in the credential
//! cache is counted against its credential and user; one that is not (a fresh or a
//! made-up token) is first counted against the source address, so an address that
//! is already refused cannot buy database lookups with junk tokens.
//!
//! This runs for every request, so it is written for the common case: a caller
//! known from memory (no token, or a cached one) is decided synchronously and the
//! request goes on to the route at once; only a credential the store must check
//! makes the layer wait (see [`ContextLayer`]). Response headers use names built
//! at compile time, and the request log line (debug level for reads) is only
//! assembled when it is written. Each request is counted for `GET /metrics` by its
//! route template, which axum has matched before this layer runs (the layer wraps
//! each route, not the router).

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::REQUEST_ID;
use super::ratelimit::{Decision, LoginLimiter, RateLimiter};
use super::serve::Peer;
use crate::auth::{AuthError, Authenticator, BOOTSTRAP_PREFIX, Principal};
use crate::config::Config;
use crate::metrics::{Metrics, Protocol};
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
    /// Request counters and the rest of `GET /metrics` (every request is counted here).
    pub metrics: Arc<Metrics>,
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
            metrics: Arc::new(Metrics::new()),
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
    /// Which family a request is counted in and its route label: the template of
    /// the route that matched (`matched`, axum's), never the raw path, or
    /// [`crate::metrics::UNMATCHED`].
    fn route_label(&self, path: &str, matched: Option<&str>) -> (Protocol, &'static str);
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

impl Ctx {
    /// An audit entry, now, for this request, made by `user` (with the API token
    /// `token_id`, if one). The route table's middleware makes the entries of
    /// mutating `/v1` routes; this is for the others (the registry, the console).
    pub fn audit_entry(
        &self,
        user: &crate::store::users::User,
        token_id: Option<&str>,
        action: &str,
        target: String,
        project_id: Option<String>,
        status: u16,
    ) -> crate::store::audit::AuditEntry {
        crate::store::audit::AuditEntry {
            id: crate::ids::new_id("aud"),
            at: crate::ids::now_rfc3339(),
            actor_id: Some(user.id.clone()),
            actor_name: Some(user.username.clone()),
            token_id: token_id.map(str::to_string),
            action: action.to_string(),
            target,
            project_id,
            source_addr: self.source.to_string(),
            request_id: self.request_id.clone(),
            status,
        }
    }
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
        .get(X_REQUEST_ID)
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

/// Who is calling, as far as memory can tell, with the rate limit counted before
/// anything costly.
enum Authn<'a> {
    Done(Auth, Decision),
    /// A well-formed token the credential cache does not know: its address has been
    /// counted (and allowed), the store decides.
    Lookup {
        token: Cow<'a, str>,
        basic_user: Option<String>,
        charged: Decision,
    },
}

fn authenticate_now<'a>(gate: &Gate, headers: &'a HeaderMap, source: IpAddr) -> Authn<'a> {
    let by_address = || gate.limiter.check_address(source);
    // A token (as a bearer, or as the password of `docker login`): checked against the
    // cache first, then, if unknown, against the address's budget before the store.
    let (token, basic_user) = match presented_ref(headers) {
        None => return Authn::Done(Auth::Anonymous, by_address()),
        Some(Err(())) => return Authn::Done(Auth::Failed(Arc::new(AuthError::Malformed)), by_address()),
        Some(Ok(PresentedRef::Bearer(t))) if t.starts_with(BOOTSTRAP_PREFIX) => {
            return Authn::Done(Auth::Other(Arc::from(t)), by_address());
        }
        Some(Ok(PresentedRef::Bearer(t))) => (Cow::Borrowed(t), None),
        Some(Ok(PresentedRef::Basic(user, secret))) if crate::auth::parse_token(&secret).is_ok() => {
            (Cow::Owned(secret), Some(user))
        }
        Some(Ok(PresentedRef::Basic(user, password))) => {
            let auth = Auth::Basic { username: Arc::from(user), password: Arc::from(password) };
            return Authn::Done(auth, by_address());
        }
    };
    match gate.auth.authenticate_cached(&token) {
        Some(result) => {
            let (auth, decision) = conclude(gate, result, basic_user.as_deref(), None, source);
            Authn::Done(auth, decision)
        }
        None => {
            let charged = by_address();
            if !charged.allowed {
                return Authn::Done(Auth::Failed(Arc::new(AuthError::Invalid)), charged);
            }
            Authn::Lookup { token, basic_user, charged }
        }
    }
}

/// Finishes [`Authn::Lookup`] with the store.
async fn authenticate_with_store(
    gate: &Gate,
    token: &str,
    basic_user: Option<&str>,
    charged: Decision,
    source: IpAddr,
) -> (Auth, Decision) {
    let result = gate.auth.authenticate(token).await;
    conclude(gate, result, basic_user, Some(charged), source)
}

/// The outcome of a credential check and the budget it is counted against: a good
/// credential's and its user's, else the source address's (once).
fn conclude(
    gate: &Gate,
    result: Result<Arc<Principal>, AuthError>,
    basic_user: Option<&str>,
    charged: Option<Decision>,
    source: IpAddr,
) -> (Auth, Decision) {
    let failed =
        |e: AuthError| (Auth::Failed(Arc::new(e)), charged.unwrap_or_else(|| gate.limiter.check_address(source)));
    match result {
        Ok(p) if basic_user.is_none_or(|u| u == p.user.username) => {
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

/// The outer layer (see the module header), applied to every route.
///
/// A tower layer rather than `axum::middleware::from_fn`: a request whose caller is
/// known from memory (no token, or a cached one) is handed to the route at once,
/// with one allocation for the response future; only a credential lookup in the
/// store needs a copy of the route for later.
#[derive(Clone)]
pub struct ContextLayer(Arc<Gate>);

impl ContextLayer {
    pub fn new(gate: Arc<Gate>) -> Self {
        ContextLayer(gate)
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = Context<S>;

    fn layer(&self, inner: S) -> Context<S> {
        Context { gate: self.0.clone(), inner }
    }
}

/// The service of [`ContextLayer`].
#[derive(Clone)]
pub struct Context<S> {
    gate: Arc<Gate>,
    inner: S,
}

/// The response future of the `http` and `api` layers.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// What the log line and the response headers need from the request.
struct Head {
    method: Method,
    /// Cheap to keep (it shares the request's bytes); read to answer or log.
    uri: Uri,
    started: Instant,
    /// What the request is counted as (see [`Surface::route_label`]).
    counted: (Protocol, &'static str),
}

impl<S> Service<Request> for Context<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> ResponseFuture {
        let gate = self.gate.clone();
        let matched = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let counted = gate.surface.route_label(req.uri().path(), matched);
        let head = Head { method: req.method().clone(), uri: req.uri().clone(), started: Instant::now(), counted };
        let request_id = request_id_from(req.headers());
        let (source, local) = match req.extensions().get::<Peer>() {
            Some(peer) => (peer.remote.ip(), peer.local),
            None => (IpAddr::from([127, 0, 0, 1]), None),
        };
        let early = if head_len(&req) > super::serve::MAX_HEAD_BYTES {
            Some(Rejection::HeadTooLarge)
        } else {
            match (gate.surface.body_limit(&head.method, head.uri.path()), declared_length(req.headers())) {
                // Refused before the body is touched, so no `100 Continue` goes out.
                (Some(limit), Some(len)) if len > limit => Some(Rejection::TooLarge { limit }),
                _ => None,
            }
        };
        if let Some(rejection) = early {
            return Box::pin(REQUEST_ID.scope(request_id, async move {
                let mut resp = gate.surface.reject(head.uri.path(), rejection);
                // The body was never read: the connection cannot carry another request.
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                Ok(finish(&gate, resp, None, &head, None))
            }));
        }
        let user_agent: String = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(MAX_USER_AGENT).collect())
            .unwrap_or_default();
        let ctx_request_id = request_id.clone();
        match authenticate_now(&gate, req.headers(), source) {
            Authn::Done(auth, decision) => {
                let actor = principal_of(&auth);
                let routed = decision.allowed.then(|| {
                    req.extensions_mut().insert(Ctx { request_id: ctx_request_id, source, local, user_agent, auth });
                    self.inner.call(req)
                });
                Box::pin(REQUEST_ID.scope(request_id, async move {
                    let resp = match routed {
                        Some(routed) => {
                            let Ok(resp) = routed.await;
                            resp
                        }
                        None => {
                            gate.surface.reject(head.uri.path(), Rejection::RateLimited { retry_after: decision.reset })
                        }
                    };
                    Ok(finish(&gate, resp, Some(decision), &head, actor))
                }))
            }
            Authn::Lookup { token, basic_user, charged } => {
                let token = token.into_owned();
                let mut inner = self.inner.clone();
                Box::pin(REQUEST_ID.scope(request_id, async move {
                    let (auth, decision) =
                        authenticate_with_store(&gate, &token, basic_user.as_deref(), charged, source).await;
                    let actor = principal_of(&auth);
                    let resp = if decision.allowed {
                        req.extensions_mut().insert(Ctx {
                            request_id: ctx_request_id,
                            source,
                            local,
                            user_agent,
                            auth,
                        });
                        let Ok(resp) = inner.call(req).await;
                        resp
                    } else {
                        gate.surface.reject(head.uri.path(), Rejection::RateLimited { retry_after: decision.reset })
                    };
                    Ok(finish(&gate, resp, Some(decision), &head, actor))
                }))
            }
        }
    }
}

fn principal_of(auth: &Auth) -> Option<Arc<Principal>> {
    match auth {
        Auth::Principal(p) => Some(p.clone()),
        _ => None,
    }
}

/// A header value for a number. Small ones (resets in seconds, small budgets) are
/// shared from a table made once; larger ones cost one copy of their digits
/// (`HeaderValue::from` of an integer costs two allocations).
fn number(n: u64) -> HeaderValue {
    const SMALL: u64 = 1024;
    static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if n < SMALL {
        if let Some(v) = TABLE.get_or_init(|| (0..SMALL).map(HeaderValue::from).collect()).get(n as usize) {
            return v.clone();
        }
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&digits[at..]).unwrap_or_else(|_| HeaderValue::from(n))
}

fn finish(
    gate: &Gate,
    mut resp: Response,
    decision: Option<Decision>,
    head: &Head,
    actor: Option<Arc<Principal>>,
) -> Response {
    let status = resp.status().as_u16();
    let (protocol, route) = head.counted;
    gate.metrics.request(protocol, &head.method, route, status, head.started.elapsed());
    let h = resp.headers_mut();
    if let Some(d) = decision {
        h.insert(X_RATELIMIT_LIMIT, number(d.limit.into()));
        h.insert(X_RATELIMIT_REMAINING, number(d.remaining.into()));
        h.insert(X_RATELIMIT_RESET, number(d.reset));
    }
    let _ = REQUEST_ID.try_with(|request_id| {
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(X_REQUEST_ID, v);
        }
        // The fields are computed only when the line is written (reads log at debug).
        let (method, path) = (&head.method, head.uri.path());
        let ms = || head.started.elapsed().as_secs_f64() * 1000.0;
        let actor = actor.as_ref().map_or("-", |p| p.user.username.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_make_the_same_header_values_as_the_integer_conversion() {
        for n in [0, 1, 9, 10, 59, 60, 999, 1023, 1024, 6000, 100_000_000, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n), "{n}");
        }
    }
}
