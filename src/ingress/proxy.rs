//! The reverse proxy on the ingress's HTTP listener.
//!
//! Each request is routed by its host (the `Host` header, or the authority of an
//! absolute-form target) through the [`RoutingTable`] to one of the service's
//! healthy replicas, round-robin, over a pooled kept-alive HTTP/1.1 connection
//! ([`Upstreams`]). Bodies stream both ways a frame at a time under hyper's flow
//! control: the proxy holds at most one frame per direction plus hyper's write
//! buffer, whatever the body's size, and a slow reader on either side slows the
//! other instead of filling memory.
//!
//! Failures ([`ProxyError`]) record where they came from. A request is retried
//! once on another replica when nothing of it reached a replica (connect refused or
//! timed out, or the connection was closed before the request was written), whatever
//! its method; a kept-alive connection that the replica closed as the request was
//! sent is retried once on a fresh connection, only for an idempotent request
//! without a body. Anything else is a 502.
//!
//! WebSocket upgrades (HTTP/1.1 `Upgrade: websocket`) pass through: when the replica
//! answers 101, the two upgraded connections are joined until either side closes or
//! the daemon stops; the tunnel keeps its client connection counted against the
//! listener's caps.
//!
//! Every routed request ends up in the service's [`AccessLog`] ring when its
//! response body ends (or the client goes away).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use http_body::Body as _;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::access_log::{AccessEntry, AccessLog, CLIENT_CLOSED, clip_path};
use super::challenge::Challenges;
use super::error::{Origin, ProxyError};
use super::headers;
use super::routes::{Backend, Route, RoutingTable, normalize_host};
use super::tls::CertStore;
use super::upstream::{IDLE_TIMEOUT, Upstreams};
use crate::http::body::{TimedBody, is_timeout};
use crate::http::serve::{Conn, Handler, Hold, IncomingRequest, Limits};
use crate::metrics::Metrics;

mod h1;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often idle upstream connections are swept.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Seconds a client is told to wait when a service has no healthy replica.
const RETRY_AFTER_SECONDS: &str = "5";
/// Connections tried for one request, at most (stale kept-alive ones included).
const MAX_ATTEMPTS: usize = 8;

/// The proxy: cheap to clone, one per ingress listener.
#[derive(Clone)]
pub struct Proxy(Arc<Inner>);

struct Inner {
    routes: Arc<RoutingTable>,
    challenges: Arc<Challenges>,
    log: Arc<AccessLog>,
    upstreams: Arc<Upstreams<ReqBody>>,
    /// The fast path's replica connections ([`h1`]).
    raw: h1::RawPool,
    metrics: Arc<Metrics>,
    front: Front,
}

/// What the ingress answers before routing to a service, and its deadline on replicas.
#[derive(Clone)]
pub struct Front {
    /// Redirects plain HTTP requests for hosts with a certificate of their own here.
    pub redirect: Option<Redirect>,
    /// The control domain (normalized) and the API that answers it in-process.
    pub control: Option<(String, Router)>,
    /// Time a replica has to answer a request's head once the request is sent.
    pub upstream_timeout: Duration,
}

/// HTTP→HTTPS redirects: for the hosts `certs` covers, to the HTTPS listener's port.
#[derive(Clone)]
pub struct Redirect {
    pub certs: Arc<CertStore>,
    pub https_port: u16,
}

impl Default for Front {
    fn default() -> Self {
        Front { redirect: None, control: None, upstream_timeout: Duration::from_secs(60) }
    }
}

impl Proxy {
    pub fn new(
        routes: Arc<RoutingTable>,
        challenges: Arc<Challenges>,
        log: Arc<AccessLog>,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        Proxy::with_front(routes, challenges, log, metrics, Front::default())
    }

    /// A proxy with redirects, the control domain and the upstream deadline of `front`.
    pub fn with_front(
        routes: Arc<RoutingTable>,
        challenges: Arc<Challenges>,
        log: Arc<AccessLog>,
        metrics: Arc<Metrics>,
        front: Front,
    ) -> Proxy {
        Proxy(Arc::new(Inner {
            routes,
            challenges,
            log,
            upstreams: Arc::new(Upstreams::default()),
            raw: h1::RawPool::default(),
            metrics,
            front,
        }))
    }

    /// The upstream connection pool (for tests and metrics).
    pub fn upstreams(&self) -> &Upstreams<ReqBody> {
        &self.0.upstreams
    }

    /// Idle replica connections, of both paths.
    pub fn idle_upstreams(&self) -> usize {
        self.0.upstreams.idle_count() + self.0.raw.idle_count()
    }

    /// Sweeps idle upstream connections until `stop` flips.
    pub async fn prune_until(&self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.0.upstreams.prune();
                    self.0.raw.prune();
                }
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// What a WebSocket tunnel needs from the client connection.
struct TunnelSeat {
    hold: Arc<Hold>,
    stop: watch::Receiver<bool>,
}

impl Handler for Proxy {
    type Body = ProxyBody;

    fn serve_http1<I>(self, io: I, conn: Conn, limits: Limits) -> impl Future<Output = ()> + Send
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_h1(io, conn, limits)
    }

    fn call(&self, mut req: IncomingRequest, conn: &Conn) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        let started = Instant::now();
        let request_id = headers::new_request_id();
        let client = conn.peer.ip().to_canonical();
        let this = self.clone();
        // The control domain is answered by the API, with the connection as it is
        // (the real client address for rate limits and the audit); challenge paths
        // and redirects come first.
        let api = match self.plan(&mut req, conn.tls) {
            Plan::Api(router) => {
                req.headers_mut().insert(headers::X_REQUEST_ID, request_id.clone());
                Ok(router.call(req, conn))
            }
            plan => {
                let seat = (req.method() == Method::GET && headers::is_websocket(req.headers()))
                    .then(|| TunnelSeat { hold: conn.hold(), stop: conn.stop.clone() });
                Err((plan, req, seat))
            }
        };
        let tls = conn.tls;
        async move {
            let mut resp = match api {
                Ok(answer) => {
                    let resp = answer.await.map(|b| ProxyBody(Kind::Api(b)));
                    this.0.metrics.ingress_request(resp.status().as_u16(), started.elapsed());
                    resp
                }
                Err((plan, req, seat)) => {
                    this.handle(plan, req, Forward { client, tls, request_id: request_id.clone(), started }, seat).await
                }
            };
            resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
            resp
        }
    }
}

/// What answers a request, decided before anything is awaited.
enum Plan {
    /// A challenge path: answered from memory.
    Challenge,
    /// A plain HTTP request for a host with a certificate: 308 to this location.
    Redirect(HeaderValue),
    /// The control domain: the API.
    Api(Router),
    /// Anything else: a service, by host.
    Route,
}

/// The facts about a request that travel with it to the replica.
struct Forward {
    client: IpAddr,
    tls: bool,
    request_id: HeaderValue,
    started: Instant,
}

impl Proxy {
    fn plan(&self, req: &mut IncomingRequest, tls: bool) -> Plan {
        if Challenges::is_challenge_path(req.uri().path()) {
            return Plan::Challenge;
        }
        let front = &self.0.front;
        if front.redirect.is_none() && front.control.is_none() {
            return Plan::Route;
        }
        let host = normalize_host(&request_host(req));
        let redirect = front.redirect.as_ref().filter(|_| !tls);
        if let Some(r) = redirect.filter(|r| r.certs.covers(&host) && crate::validate::is_hostname(&host)) {
            let port = if r.https_port == 443 { String::new() } else { format!(":{}", r.https_port) };
            let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{port}{target}")) {
                return Plan::Redirect(location);
            }
        }
        match &front.control {
            Some((domain, router)) if *domain == host => Plan::Api(router.clone()),
            _ => Plan::Route,
        }
    }

    async fn handle(
        self,
        plan: Plan,
        mut req: IncomingRequest,
        fwd: Forward,
        seat: Option<TunnelSeat>,
    ) -> Response<ProxyBody> {
        let at = time::OffsetDateTime::now_utc();
        let started = fwd.started;
        let client = fwd.client;
        match plan {
            Plan::Challenge => {
                let resp = self.challenge(&mut req);
                self.0.metrics.ingress_request(resp.status().as_u16(), started.elapsed());
                return resp;
            }
            Plan::Redirect(location) => {
                let mut resp = Response::new(ProxyBody(Kind::Page(None)));
                *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
                resp.headers_mut().insert(header::LOCATION, location);
                resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                self.0.metrics.ingress_request(resp.status().as_u16(), started.elapsed());
                return resp;
            }
            // Answered before `handle` (see `call`); routed like any host if it comes here.
            Plan::Api(_) | Plan::Route => {}
        }
        let route = match self.route(&mut req) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%client, error = %e, "ingress: not routed");
                let resp = error_response(&e);
                self.0.metrics.ingress_request(resp.status().as_u16(), started.elapsed());
                return resp;
            }
        };
        let mut log = Pending::new(&self.0, &route, at, started, &req, client);
        match self.forward(&route, req, &fwd, seat, &mut log).await {
            Ok(resp) => resp,
            Err(e) => {
                match e.origin() {
                    Origin::Upstream => {
                        tracing::warn!(service = %route.service_id, %client, error = %e, "ingress: upstream failed")
                    }
                    Origin::Client | Origin::Internal => {
                        tracing::debug!(service = %route.service_id, %client, error = %e, "ingress: no answer")
                    }
                }
                let resp = error_response(&e);
                log.finish(resp.status().as_u16(), resp.body().len());
                resp
            }
        }
    }

    /// The answer on a challenge path: the token's body for its own host, else 404.
    fn challenge(&self, req: &mut IncomingRequest) -> Response<ProxyBody> {
        let host = request_host(req);
        match self.0.challenges.answer(&host, req.uri().path()) {
            Some(body) => {
                let mut resp = Response::new(ProxyBody(Kind::Page(Some(Bytes::from(body)))));
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            None => error_response(&ProxyError::UnknownHost),
        }
    }

    /// The route for a request's host.
    fn route(&self, req: &mut IncomingRequest) -> Result<Arc<Route>, ProxyError> {
        let host = request_host(req);
        if host.trim().is_empty() {
            return Err(ProxyError::NoHost);
        }
        self.0.routes.lookup(&host).ok_or(ProxyError::UnknownHost)
    }
}

/// The host a request is for. An absolute-form target names the host itself (RFC
/// 9112 §3.2.2; HTTP/2's `:authority`): it replaces `Host`, and the target becomes
/// a path.
fn request_host(req: &mut IncomingRequest) -> String {
    if let Some(authority) = req.uri().authority().cloned() {
        let host = match authority.port() {
            Some(port) => format!("{}:{}", authority.host(), port),
            None => authority.host().to_string(),
        };
        match HeaderValue::from_str(&host) {
            Ok(value) => req.headers_mut().insert(header::HOST, value),
            Err(_) => req.headers_mut().remove(header::HOST),
        };
        let path = req.uri().path_and_query().cloned().map(Uri::from).unwrap_or_else(|| Uri::from_static("/"));
        *req.uri_mut() = path;
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string()
}

impl Proxy {
    async fn forward(
        &self,
        route: &Route,
        mut req: IncomingRequest,
        fwd: &Forward,
        seat: Option<TunnelSeat>,
        log: &mut Pending,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let first = route.pick().ok_or(ProxyError::NoBackend)?;
        let client_upgrade = seat.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        headers::forward_request(&mut parts.headers, fwd.client, seat.is_some(), fwd.tls, &fwd.request_id);
        parts.version = Version::HTTP_11;
        parts.extensions = Default::default();
        let bodyless = http_body::Body::is_end_stream(&body);
        let replayable = bodyless && is_idempotent(&parts.method);
        let (body, req_done) = if bodyless {
            (ReqBody::Empty, None)
        } else {
            let done = Arc::new(Sent::new());
            (ReqBody::Client { body, done: done.clone() }, Some(done))
        };
        let (mut resp, backend, tx) =
            self.exchange(route, first, Request::from_parts(parts, body), replayable, req_done.as_deref()).await?;
        log.backend = Some(backend.clone());
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(seat), Some(client_upgrade)) = (seat, client_upgrade) else {
                return Err(ProxyError::UnaskedUpgrade { addr: backend.addr });
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            drop(tx);
            let (mut head, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut head.headers, true);
            head.extensions = Default::default();
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade, seat, backend.addr));
            log.finish(status.as_u16(), 0);
            return Ok(Response::from_parts(head, ProxyBody(Kind::Page(None))));
        }
        let (mut head, incoming) = resp.into_parts();
        headers::strip_hop_by_hop(&mut head.headers, false);
        head.extensions = Default::default();
        let streamed = Streamed {
            inner: incoming,
            back: Some(GiveBack { tx, addr: backend.addr, upstreams: self.0.upstreams.clone(), req_done }),
            log: std::mem::take(log),
            status: status.as_u16(),
            bytes: 0,
        };
        Ok(Response::from_parts(head, ProxyBody(Kind::Upstream(streamed))))
    }

    /// Sends the request to `first`, or to another replica of the route when
    /// nothing of it was sent (see the module header for the retry rules).
    async fn exchange<'r>(
        &self,
        route: &'r Route,
        first: &'r Backend,
        mut req: Request<ReqBody>,
        replayable: bool,
        sent: Option<&Sent>,
    ) -> Result<(Response<Incoming>, &'r Backend, SendRequest<ReqBody>), ProxyError> {
        let mut backend = first;
        let mut moved = false;
        let mut replayed = false;
        let mut fresh = false;
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let checkout = if fresh {
                self.0.upstreams.connect(backend.addr).await
            } else {
                self.0.upstreams.checkout(backend.addr).await
            };
            let mut co = match checkout {
                Ok(co) => co,
                Err(e) => match (!moved).then(|| other_backend(route, backend)).flatten() {
                    Some(next) => {
                        tracing::debug!(error = %e, next = %next.addr, "ingress: retrying on another replica");
                        backend = next;
                        moved = true;
                        last = Some(e);
                        continue;
                    }
                    None => return Err(e),
                },
            };
            let again = (co.reused && replayable && !replayed).then(|| copy_head(&req));
            let answer = co.tx.try_send_request(req);
            let Ok(answered) = answer_within(answer, self.0.front.upstream_timeout, sent).await else {
                return Err(ProxyError::UpstreamTimeout { addr: backend.addr });
            };
            match answered {
                Ok(resp) => return Ok((resp, backend, co.tx)),
                Err(mut e) => {
                    if let Some(unsent) = e.take_message() {
                        req = unsent;
                        let source = e.into_error();
                        if co.reused {
                            // A kept-alive connection closed meanwhile: take another.
                            last = Some(ProxyError::Upstream { addr: backend.addr, source });
                            continue;
                        }
                        match (!moved).then(|| other_backend(route, backend)).flatten() {
                            Some(next) => {
                                last = Some(ProxyError::Upstream { addr: backend.addr, source });
                                backend = next;
                                moved = true;
                                continue;
                            }
                            None => return Err(ProxyError::Upstream { addr: backend.addr, source }),
                        }
                    }
                    let source = e.into_error();
                    match again {
                        // Sent on a kept-alive connection the replica was closing, with no
                        // answer: safe to send again for an idempotent request without a body.
                        Some(again) if source.is_incomplete_message() || source.is_canceled() => {
                            tracing::debug!(addr = %backend.addr, error = %source, "ingress: replaying on a fresh connection");
                            req = again;
                            replayed = true;
                            fresh = true;
                            continue;
                        }
                        _ => return Err(classify(source, backend.addr)),
                    }
                }
            }
        }
        Err(last.unwrap_or(ProxyError::NoBackend))
    }
}

/// Waits for a replica's answer head until `timeout` has passed since the request
/// was sent: since the head, or since the last piece of its body went out (a long
/// upload to a replica reading it is not cut; one the replica stopped reading is).
async fn answer_within<F: Future>(answer: F, timeout: Duration, sent: Option<&Sent>) -> Result<F::Output, ()> {
    let start = tokio::time::Instant::now();
    tokio::pin!(answer);
    loop {
        let since = sent.map_or(start, |s| s.last().max(start));
        tokio::select! {
            r = answer.as_mut() => return Ok(r),
            _ = tokio::time::sleep_until(since + timeout) => {
                if sent.is_none_or(|s| s.last().max(start) + timeout <= tokio::time::Instant::now()) {
                    return Err(());
                }
            }
        }
    }
}

/// How far a request body has gone out: whether whole, and when a piece last did.
pub struct Sent {
    whole: AtomicBool,
    base: tokio::time::Instant,
    /// Milliseconds after `base`.
    last: AtomicU64,
}

impl Sent {
    fn new() -> Sent {
        Sent { whole: AtomicBool::new(false), base: tokio::time::Instant::now(), last: AtomicU64::new(0) }
    }

    fn progressed(&self) {
        let ms = self.base.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last.store(ms, Ordering::Release);
    }

    fn last(&self) -> tokio::time::Instant {
        self.base + Duration::from_millis(self.last.load(Ordering::Acquire))
    }

    fn is_whole(&self) -> bool {
        self.whole.load(Ordering::Acquire)
    }
}

/// Another replica than `failed`, the one after it in the route's order.
fn other_backend<'r>(route: &'r Route, failed: &Backend) -> Option<&'r Backend> {
    let n = route.backends.len();
    let at = route.backends.iter().position(|b| b.addr == failed.addr)?;
    (1..n).filter_map(|i| route.backends.get((at + i) % n)).find(|b| b.addr != failed.addr)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// The head of a bodyless request, to send again.
fn copy_head(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut copy = Request::new(ReqBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Where a failure after the request was (partly) sent lies: a body the client
/// stopped sending is the client's, everything else the replica's.
fn classify(e: hyper::Error, addr: SocketAddr) -> ProxyError {
    if is_timeout(&e) {
        ProxyError::ClientTimeout
    } else if e.is_user() {
        ProxyError::ClientBody(e)
    } else {
        ProxyError::Upstream { addr, source: e }
    }
}

fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody(Kind::Page(Some(Bytes::from(e.page())))));
    *resp.status_mut() = e.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if matches!(e, ProxyError::NoBackend) {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    if e.origin() == Origin::Client {
        // The request body may be half read: the connection cannot carry another.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Joins an upgraded client connection to an upgraded replica connection.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, seat: TunnelSeat, addr: SocketAddr) {
    let TunnelSeat { hold, mut stop } = seat;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "ingress: upgrade failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(%addr, error = %e, "ingress: tunnel ended with an error");
            }
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    drop(hold);
}

/// The request body sent upstream: none, or the client's, streamed.
pub enum ReqBody {
    Empty,
    Client {
        body: TimedBody<Incoming>,
        /// Whether the body has been sent whole (the connection may then be reused),
        /// and when a piece of it last went out (for the upstream deadline).
        done: Arc<Sent>,
    },
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Client { body, done } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => {
                        done.progressed();
                        body.is_end_stream()
                    }
                    Poll::Ready(Some(Err(_))) | Poll::Pending => false,
                };
                if ended {
                    done.progressed();
                    done.whole.store(true, Ordering::Release);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Client { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Client { body, .. } => body.size_hint(),
        }
    }
}

/// The response body the client gets: a page of the ingress's own, or a replica's
/// body, streamed.
pub struct ProxyBody(Kind);

#[expect(
    clippy::large_enum_variant,
    reason = "a streamed body is the common case; boxing it would cost an allocation per request"
)]
enum Kind {
    Page(Option<Bytes>),
    Upstream(Streamed),
    /// The API's answer, for the control domain.
    Api(axum::body::Body),
}

impl ProxyBody {
    /// Length of an ingress page (0 for a streamed body).
    fn len(&self) -> u64 {
        match &self.0 {
            Kind::Page(Some(b)) => b.len() as u64,
            Kind::Page(None) | Kind::Upstream(_) | Kind::Api(_) => 0,
        }
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Page(page) => Poll::Ready(page.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(s) => s.poll(cx),
            Kind::Api(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Page(page) => page.is_none(),
            Kind::Upstream(s) => s.inner.is_end_stream(),
            Kind::Api(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Page(page) => SizeHint::with_exact(page.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(s) => http_body::Body::size_hint(&s.inner),
            Kind::Api(b) => b.size_hint(),
        }
    }
}

/// What gives a connection back to the pool once its exchange is over.
struct GiveBack {
    tx: SendRequest<ReqBody>,
    addr: SocketAddr,
    upstreams: Arc<Upstreams<ReqBody>>,
    /// `None` for a bodyless request.
    req_done: Option<Arc<Sent>>,
}

impl GiveBack {
    fn give_back(self) {
        let GiveBack { mut tx, addr, upstreams, req_done } = self;
        if req_done.is_none_or(|d| d.is_whole()) {
            upstreams.checkin(addr, tx);
            return;
        }
        // The replica answered before the request body was sent whole: the connection
        // is reusable only once it is.
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(IDLE_TIMEOUT, tx.ready()).await {
                upstreams.checkin(addr, tx);
            }
        });
    }
}

/// A replica's response body on its way to the client.
struct Streamed {
    inner: Incoming,
    back: Option<GiveBack>,
    log: Pending,
    status: u16,
    bytes: u64,
}

impl Streamed {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "ingress: upstream body broke off");
                self.end(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.end(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The body is over: whole (the connection goes back to the pool) or not.
    fn end(&mut self, whole: bool) {
        if let Some(back) = self.back.take() {
            if whole {
                back.give_back();
            }
        }
        self.log.finish(self.status, self.bytes);
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // hyper drops a body it knows has ended without polling it again.
        let whole = self.inner.is_end_stream();
        self.end(whole);
    }
}

/// An access-log entry being made; recorded once, when the answer is over, or as
/// [`CLIENT_CLOSED`] when the client went away first.
#[derive(Default)]
struct Pending {
    entry: Option<PendingEntry>,
    /// The replica that answered, once one has.
    backend: Option<Backend>,
}

struct PendingEntry {
    log: Arc<AccessLog>,
    metrics: Arc<Metrics>,
    route: Arc<Route>,
    at: time::OffsetDateTime,
    started: Instant,
    method: Method,
    path: String,
    client: IpAddr,
}

impl Pending {
    fn new(
        proxy: &Inner,
        route: &Arc<Route>,
        at: time::OffsetDateTime,
        started: Instant,
        req: &IncomingRequest,
        client: IpAddr,
    ) -> Pending {
        Pending::with(proxy, route, at, started, req.method().clone(), clip_path(req.uri().path()), client)
    }

    /// An entry for a request the fast path took.
    fn with(
        proxy: &Inner,
        route: &Arc<Route>,
        at: time::OffsetDateTime,
        started: Instant,
        method: Method,
        path: String,
        client: IpAddr,
    ) -> Pending {
        Pending {
            entry: Some(PendingEntry {
                log: proxy.log.clone(),
                metrics: proxy.metrics.clone(),
                route: route.clone(),
                at,
                started,
                method,
                path,
                client,
            }),
            backend: None,
        }
    }

    fn finish(&mut self, status: u16, bytes: u64) {
        let Some(p) = self.entry.take() else { return };
        let backend = self.backend.take();
        let elapsed = p.started.elapsed();
        p.metrics.ingress_request(status, elapsed);
        let entry = AccessEntry {
            at: p.at,
            method: p.method.as_str().to_string(),
            path: p.path,
            status,
            duration_ms: elapsed.as_millis().min(u64::MAX as u128) as u64,
            bytes,
            client: p.client,
            replica_id: backend.as_ref().map(|b| b.replica_id.clone()),
            upstream: backend.map(|b| b.addr),
        };
        p.log.record(&p.route.service_id, entry);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(CLIENT_CLOSED, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, AtomicUsize};

    use http_body_util::{BodyExt, Full, combinators::BoxBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Notify, mpsc};

    use super::*;
    use crate::http::body::BodyPolicy;
    use crate::http::serve::{Connections, Limits, serve, serve_tls, test_tls};

    type TestBody = BoxBody<Bytes, BoxError>;

    fn limits(body: BodyPolicy) -> Limits {
        Limits { max_connections: 1000, max_per_address: 1000, head_timeout: Duration::from_secs(10), body }
    }

    fn patient() -> BodyPolicy {
        BodyPolicy { grace: Duration::from_secs(10), min_rate: 1024, idle: Duration::from_secs(10) }
    }

    /// The proxy on a loopback listener, with its table and log.
    struct Ingress {
        addr: SocketAddr,
        proxy: Proxy,
        routes: Arc<RoutingTable>,
        log: Arc<AccessLog>,
        metrics: Arc<Metrics>,
        stop: watch::Sender<bool>,
    }

    async fn ingress(body: BodyPolicy) -> Ingress {
        ingress_with(body, Front::default(), None).await
    }

    /// An ingress with `front`, plain or (with `tls`) over TLS.
    async fn ingress_with(body: BodyPolicy, front: Front, tls: Option<tokio_rustls::TlsAcceptor>) -> Ingress {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(RoutingTable::new());
        let log = Arc::new(AccessLog::default());
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::with_front(routes.clone(), Default::default(), log.clone(), metrics.clone(), front);
        let (stop, stop_rx) = watch::channel(false);
        let conns = Arc::new(Connections::default());
        let grace = Duration::from_secs(1);
        match tls {
            None => tokio::spawn(serve(listener, proxy.clone(), limits(body), conns, stop_rx, grace)),
            Some(tls) => tokio::spawn(serve_tls(listener, tls, proxy.clone(), limits(body), conns, stop_rx, grace)),
        };
        Ingress { addr, proxy, routes, log, metrics, stop }
    }

    fn backend(id: &str, addr: SocketAddr) -> Backend {
        Backend { replica_id: id.into(), addr }
    }

    /// A replica: a hyper server on loopback that counts the connections it accepts.
    struct Replica {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
    }

    async fn replica<F, Fut>(answer: F) -> Replica
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Replica { addr, accepted }
    }

    /// A replica that answers with its name.
    async fn named(name: &'static str) -> Replica {
        replica(move |_req| async move { text(200, name) }).await
    }

    fn text(status: u16, body: impl Into<Bytes>) -> Response<TestBody> {
        let mut r = Response::new(full(body));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    }

    fn full(body: impl Into<Bytes>) -> TestBody {
        Full::new(body.into()).map_err(|e| match e {}).boxed()
    }

    /// A kept-alive client connection.
    async fn client(addr: SocketAddr) -> SendRequest<TestBody> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        tx
    }

    async fn send(tx: &mut SendRequest<TestBody>, req: Request<TestBody>) -> Response<Bytes> {
        tx.ready().await.unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let (head, body) = resp.into_parts();
        Response::from_parts(head, body.collect().await.unwrap().to_bytes())
    }

    fn req(method: &str, host: &str, path: &str, body: impl Into<Bytes>) -> Request<TestBody> {
        Request::builder().method(method).uri(path).header(header::HOST, host).body(full(body)).unwrap()
    }

    /// One GET over a new client connection.
    async fn get(addr: SocketAddr, host: &str, path: &str) -> Response<Bytes> {
        send(&mut client(addr).await, req("GET", host, path, "")).await
    }

    fn body_text(r: &Response<Bytes>) -> String {
        String::from_utf8_lossy(r.body()).into_owned()
    }

    #[tokio::test]
    async fn requests_route_by_host_whatever_its_case_or_port() {
        let ing = ingress(patient()).await;
        let a = named("a").await;
        let b = replica(|req: Request<Incoming>| async move {
            let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap().to_string()).unwrap_or_default();
            if req.method() == Method::HEAD {
                let mut r = text(200, "");
                r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
                return r;
            }
            text(200, format!("b {} {}", req.uri(), host))
        })
        .await;
        ing.routes.set_service("svc_a", "prj_1", &["a.test".into()], vec![backend("rep_a", a.addr)]);
        ing.routes.set_service("svc_b", "prj_1", &["b.test".into()], vec![backend("rep_b", b.addr)]);

        assert_eq!(body_text(&get(ing.addr, "A.Test:8080", "/").await), "a");
        assert_eq!(body_text(&get(ing.addr, "b.test.", "/x?y=1").await), "b /x?y=1 b.test.");
        // An absolute-form target names the host, whatever `Host` says; the replica
        // gets a path and the target's host.
        let r = send(&mut client(ing.addr).await, req("GET", "a.test", "http://b.test/abs?q", "")).await;
        assert_eq!(body_text(&r), "b /abs?q b.test");
        // HEAD keeps the replica's length and sends no body.
        let r = send(&mut client(ing.addr).await, req("HEAD", "b.test", "/", "")).await;
        assert_eq!((r.status(), r.headers()[header::CONTENT_LENGTH].to_str().unwrap()), (StatusCode::OK, "99"));
        assert!(r.body().is_empty());

        let r = get(ing.addr, "nothing.test", "/").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(body_text(&r).contains("404 Not Found"), "{}", body_text(&r));
        // No host at all (HTTP/1.0 allows it): 400, and the connection closes.
        let mut s = TcpStream::connect(ing.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
        // One connection per replica, and one more for the absolute-form request: it
        // took the general path, which keeps connections of its own.
        assert_eq!((a.accepted.load(Ordering::SeqCst), b.accepted.load(Ordering::SeqCst)), (1, 2));
    }

    #[tokio::test]
    async fn replicas_take_turns() {
        let ing = ingress(patient()).await;
        let replicas = [named("r1").await, named("r2").await, named("r3").await];
        let backends =
            vec![backend("r1", replicas[0].addr), backend("r2", replicas[1].addr), backend("r3", replicas[2].addr)];
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], backends);
        let mut tx = client(ing.addr).await;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..9 {
            let r = send(&mut tx, req("GET", "web.test", "/", "")).await;
            *seen.entry(body_text(&r)).or_default() += 1;
        }
        assert_eq!(seen, HashMap::from([("r1".into(), 3), ("r2".into(), 3), ("r3".into(), 3)]));
    }

    #[tokio::test]
    async fn a_service_without_a_healthy_replica_gets_503() {
        let ing = ingress(patient()).await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![]);
        let r = get(ing.addr, "web.test", "/").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert!(body_text(&r).contains("503 Service Unavailable"));
        let logged = ing.log.recent("svc_1", 10);
        assert_eq!(logged.len(), 1);
        assert_eq!((logged[0].status, logged[0].replica_id.as_deref()), (503, None));
        assert_eq!(logged[0].bytes, r.body().len() as u64);
    }

    /// An address nothing listens on.
    async fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_dead_replica_is_a_502_and_its_requests_go_to_a_live_one() {
        let ing = ingress(patient()).await;
        let dead = dead_addr().await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![backend("gone", dead)]);
        let r = get(ing.addr, "web.test", "/").await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let page = body_text(&r);
        assert!(page.contains("502 Bad Gateway") && !page.contains("127.0.0.1") && !page.contains("refused"), "{page}");

        // With a live replica beside it, every request that picked the dead one is
        // retried there (nothing was sent), whatever its method.
        let live = replica(|req: Request<Incoming>| async move {
            let method = req.method().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text(200, format!("{method} {}", body.len()))
        })
        .await;
        ing.routes.set_service(
            "svc_1",
            "prj_1",
            &["web.test".into()],
            vec![backend("gone", dead), backend("live", live.addr)],
        );
        let mut tx = client(ing.addr).await;
        for _ in 0..3 {
            assert_eq!(body_text(&send(&mut tx, req("GET", "web.test", "/", "")).await), "GET 0");
            assert_eq!(body_text(&send(&mut tx, req("POST", "web.test", "/", vec![7u8; 5000])).await), "POST 5000");
        }
        let logged = ing.log.recent("svc_1", 6);
        assert!(logged.iter().all(|e| e.status == 200 && e.replica_id.as_deref() == Some("live")), "{logged:?}");
    }

    /// A replica that reads a request head and then does `then` with the socket.
    async fn raw_replica(then: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(then).await;
                    // Then close (the answer, if any, said nothing about closing).
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn malformed_or_missing_answers_are_502() {
        let ing = ingress(patient()).await;
        let garbage = raw_replica(b"this is not http\r\n\r\n").await;
        let silent = raw_replica(b"").await;
        ing.routes.set_service("svc_g", "prj_1", &["garbage.test".into()], vec![backend("g", garbage)]);
        ing.routes.set_service("svc_s", "prj_1", &["silent.test".into()], vec![backend("s", silent)]);
        assert_eq!(get(ing.addr, "garbage.test", "/").await.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(get(ing.addr, "silent.test", "/").await.status(), StatusCode::BAD_GATEWAY);
        let r = send(&mut client(ing.addr).await, req("POST", "silent.test", "/", "x")).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ing.log.recent("svc_s", 10).iter().filter(|e| e.status == 502).count(), 2);
    }

    /// Writes `requests` at once on a raw connection and reads until the ingress closes it.
    async fn raw_exchange(addr: SocketAddr, requests: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(requests.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await.unwrap().unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_whichever_path_takes_them() {
        let ing = ingress(patient()).await;
        let r = replica(|req: Request<Incoming>| async move {
            let what = format!("{} {}", req.method(), req.uri().path());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text(200, format!("[{what} {}]", body.len()))
        })
        .await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![backend("r", r.addr)]);
        // Bodyless ones first (the fast path), then one with a body: the rest of the
        // connection, bytes already read included, goes to the general path.
        let got = raw_exchange(
            ing.addr,
            "GET /1 HTTP/1.1\r\nHost: web.test\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: web.test\r\n\r\n\
             POST /3 HTTP/1.1\r\nHost: web.test\r\nContent-Length: 4\r\n\r\nabcd\
             GET /4 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let order: Vec<usize> =
            ["[GET /1 0]", "[POST /3 4]", "[GET /4 0]"].iter().map(|p| got.find(p).unwrap_or(usize::MAX)).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]) && order[2] != usize::MAX, "{got}");
        assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 4, "{got}");
        assert!(!got.contains("[HEAD"), "no body for HEAD: {got}");
        let logged = ing.log.recent("svc_1", 10);
        assert_eq!(logged.len(), 4, "{logged:?}");
        // And with the connection closed by the client's last request.
        let got = raw_exchange(ing.addr, "GET /5 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n").await;
        assert!(got.contains("connection: close") && got.ends_with("[GET /5 0]"), "{got}");
    }

    #[tokio::test]
    async fn answers_keep_their_framing_chunked_to_the_end_of_the_connection_or_none() {
        let ing = ingress(patient()).await;
        for (host, answer) in [
            (
                "chunked.test",
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"[..],
            ),
            ("eof.test", b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            ("empty.test", b"HTTP/1.1 204 No Content\r\n\r\n"),
            ("cut.test", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf!"),
            ("badchunk.test", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
        ] {
            let addr = raw_replica(Box::leak(answer.to_vec().into_boxed_slice())).await;
            ing.routes.set_service(host, "prj_1", &[host.into()], vec![backend("r", addr)]);
        }
        let r = get(ing.addr, "chunked.test", "/").await;
        assert_eq!((r.status(), body_text(&r)), (StatusCode::OK, "hello world".into()));
        let r = get(ing.addr, "eof.test", "/").await;
        assert_eq!((r.status(), body_text(&r)), (StatusCode::OK, "until the end".into()));
        let got = raw_exchange(ing.addr, "GET / HTTP/1.1\r\nHost: eof.test\r\n\r\n").await;
        assert!(got.contains("connection: close\r\n") && got.ends_with("\r\n\r\nuntil the end"), "{got}");
        let r = get(ing.addr, "empty.test", "/").await;
        assert_eq!((r.status(), body_text(&r)), (StatusCode::NO_CONTENT, String::new()));
        // A body cut short ends the client's connection before its length; one broken
        // from its start is a 502.
        let got = raw_exchange(ing.addr, "GET / HTTP/1.1\r\nHost: cut.test\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nhalf!"), "{got}");
        assert_eq!(get(ing.addr, "badchunk.test", "/").await.status(), StatusCode::BAD_GATEWAY);
        let cut = &ing.log.recent("cut.test", 1)[0];
        assert_eq!((cut.status, cut.bytes), (200, 5));
    }

    #[tokio::test]
    async fn kept_alive_connections_a_replica_closes_are_not_a_client_error() {
        // The replica answers once per connection, keep-alive by default, then closes:
        // the pooled connection is stale by the next request.
        let ing = ingress(patient()).await;
        let once = raw_replica(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![backend("r", once)]);
        let mut tx = client(ing.addr).await;
        for i in 0..20 {
            let r = send(&mut tx, req("GET", "web.test", "/", "")).await;
            assert_eq!((r.status(), body_text(&r)), (StatusCode::OK, "ok".into()), "request {i}");
        }
    }

    #[tokio::test]
    async fn upstream_connections_are_kept_alive_and_reused() {
        let ing = ingress(patient()).await;
        let r = replica(|req: Request<Incoming>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text(200, format!("{}", body.len()))
        })
        .await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![backend("r", r.addr)]);
        let mut tx = client(ing.addr).await;
        for _ in 0..10 {
            assert_eq!(body_text(&send(&mut tx, req("GET", "web.test", "/", "")).await), "0");
        }
        // Other client connections share the pool.
        for _ in 0..5 {
            assert_eq!(body_text(&get(ing.addr, "web.test", "/").await), "0");
        }
        assert_eq!(r.accepted.load(Ordering::SeqCst), 1, "15 sequential requests, one upstream connection");
        assert_eq!(ing.proxy.idle_upstreams(), 1);
        // A request with a body takes the general path, which keeps its own
        // connections: one more, whatever comes after it on that client connection.
        for _ in 0..10 {
            assert_eq!(body_text(&send(&mut tx, req("POST", "web.test", "/", vec![1u8; 3000])).await), "3000");
            assert_eq!(body_text(&send(&mut tx, req("GET", "web.test", "/", "")).await), "0");
        }
        assert_eq!(body_text(&get(ing.addr, "web.test", "/").await), "0");
        assert_eq!(r.accepted.load(Ordering::SeqCst), 2, "one upstream connection per path");
        assert_eq!(ing.proxy.idle_upstreams(), 2);
    }

    #[tokio::test]
    async fn forwarding_headers_are_set_and_hop_by_hop_ones_dropped() {
        let ing = ingress(patient()).await;
        let r = replica(|req: Request<Incoming>| async move {
            let mut seen: Vec<String> =
                req.headers().iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap())).collect();
            seen.sort();
            let mut resp = text(200, seen.join("\n"));
            let h = resp.headers_mut();
            h.insert("connection", HeaderValue::from_static("x-private"));
            h.insert("x-private", HeaderValue::from_static("1"));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
            h.insert("x-app", HeaderValue::from_static("yes"));
            resp
        })
        .await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![backend("r", r.addr)]);
        // Without a body the fast path takes the request, with one the general path:
        // the replica sees the same headers either way.
        let mut resp = None;
        for (method, body) in [("GET", ""), ("POST", "x")] {
            let request = Request::builder()
                .method(method)
                .uri("/")
                .header("host", "Web.Test:8080")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("te", "trailers")
                .header("proxy-authorization", "Basic eA==")
                .header("proxy", "http://evil.test")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-forwarded-proto", "https")
                .header("x-request-id", "chosen-by-the-client")
                .header("x-end", "kept")
                .body(full(body))
                .unwrap();
            let answer = send(&mut client(ing.addr).await, request).await;
            let seen = body_text(&answer);
            let mut lines: Vec<&str> = seen.lines().collect();
            lines.retain(|l| *l != "content-length: 1");
            let id = answer.headers()["x-request-id"].to_str().unwrap().to_string();
            assert!(id.starts_with("req_"), "{id}");
            assert_eq!(
                lines,
                vec![
                    "host: Web.Test:8080",
                    "x-end: kept",
                    "x-forwarded-for: 127.0.0.1",
                    "x-forwarded-host: Web.Test:8080",
                    "x-forwarded-proto: http",
                    &format!("x-request-id: {id}"),
                ],
                "{method}: client-sent forwarding headers are replaced; the replica and the client see one id: {seen}"
            );
            resp = Some(answer);
        }
        let resp = resp.unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let again = send(&mut client(ing.addr).await, req("GET", "web.test", "/", "")).await;
        assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), id, "a fresh id per request");
        let unrouted = get(ing.addr, "nothing.test", "/").await;
        assert_eq!(unrouted.status(), StatusCode::NOT_FOUND);
        assert!(unrouted.headers().contains_key("x-request-id"), "the ingress's own pages carry one too");
        assert_eq!(resp.headers()["x-app"], "yes");
        for gone in ["x-private", "keep-alive", "proxy-authenticate"] {
            assert!(!resp.headers().contains_key(gone), "{gone} reached the client");
        }
        assert_ne!(resp.headers().get("connection").map(|v| v.as_bytes()), Some(&b"x-private"[..]));
    }

    #[tokio::test]
    async fn the_access_log_has_each_answer() {
        let ing = ingress(patient()).await;
        let r = named("hello").await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![backend("rep_1", r.addr)]);
        get(ing.addr, "web.test", "/page?token=secret").await;
        let logged = ing.log.recent("svc_1", 10);
        assert_eq!(logged.len(), 1);
        let e = &logged[0];
        assert_eq!((e.method.as_str(), e.path.as_str(), e.status, e.bytes), ("GET", "/page", 200, 5));
        assert_eq!((e.replica_id.as_deref(), e.upstream), (Some("rep_1"), Some(r.addr)));
        assert_eq!(e.client, IpAddr::from([127, 0, 0, 1]));
        // Counted once, as the access log has it; so is an unrouted request.
        get(ing.addr, "nothing.test", "/").await;
        let text = ing.metrics.render(&crate::metrics::Snapshot::default()).unwrap();
        for line in [
            r#"berth_ingress_requests_total{status="2xx"} 1"#,
            r#"berth_ingress_requests_total{status="4xx"} 1"#,
            "berth_ingress_request_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_client_that_stalls_its_body_is_cut_off() {
        let ing =
            ingress(BodyPolicy { grace: Duration::from_millis(300), min_rate: 1000, idle: Duration::from_millis(500) })
                .await;
        let r = replica(|req: Request<Incoming>| async move {
            match req.into_body().collect().await {
                Ok(b) => text(200, format!("{}", b.to_bytes().len())),
                Err(_) => text(400, "broken"),
            }
        })
        .await;
        ing.routes.set_service("svc_1", "prj_1", &["web.test".into()], vec![backend("r", r.addr)]);
        let mut s = TcpStream::connect(ing.addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: web.test\r\nContent-Length: 100000\r\n\r\n0123456789").await.unwrap();
        // Then nothing more: the ingress answers 408 and closes.
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert_eq!(ing.log.recent("svc_1", 1)[0].status, 408);
    }

    /// At most `window` bytes produced ahead of what was consumed: a proxy that held
    /// back `window` bytes or more before passing them on would stall the transfer.
    struct Window {
        window: u64,
        consumed: AtomicU64,
        moved: Notify,
    }

    impl Window {
        fn new(window: u64) -> Arc<Window> {
            Arc::new(Window { window, consumed: AtomicU64::new(0), moved: Notify::new() })
        }

        async fn room_for(&self, produced: u64) {
            loop {
                let moved = self.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if produced.saturating_sub(self.consumed.load(Ordering::Acquire)) < self.window {
                    return;
                }
                moved.await;
            }
        }

        fn consumed(&self, n: u64) {
            self.consumed.fetch_add(n, Ordering::Release);
            self.moved.notify_waiters();
        }
    }

    const CHUNK: usize = 64 * 1024;
    const PERIOD: usize = 251;

    fn pattern() -> Arc<Vec<u8>> {
        Arc::new((0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect())
    }

    /// A body of `total` patterned bytes, produced only as `window` allows.
    fn produced(total: u64, window: Arc<Window>) -> TestBody {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            let pattern = pattern();
            let mut sent = 0u64;
            while sent < total {
                window.room_for(sent).await;
                let n = CHUNK.min((total - sent) as usize);
                let at = (sent % PERIOD as u64) as usize;
                if tx.send(Bytes::copy_from_slice(&pattern[at..at + n])).await.is_err() {
                    return;
                }
                sent += n as u64;
            }
        });
        Chan(rx).boxed()
    }

    struct Chan(mpsc::Receiver<Bytes>);

    impl http_body::Body for Chan {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    /// Reads `body` to its end, checking the pattern and telling `window`; the byte count.
    async fn consume<B>(mut body: B, window: &Window) -> u64
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let pattern = pattern();
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else { continue };
            for piece in data.chunks(CHUNK) {
                let at = (seen % PERIOD as u64) as usize;
                assert!(piece == &pattern[at..at + piece.len()], "bytes differ after {seen}");
                seen += piece.len() as u64;
            }
            window.consumed(data.len() as u64);
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_mib_streams_each_way_without_being_held() {
        const TOTAL: u64 = 100 * 1024 * 1024;
        // The producer may run only 1 MiB ahead of the consumer, so the transfer
        // completes only if the proxy passes bytes on as they come: buffering a
        // whole body (or any 1 MiB of it) would stall it for good.
        const WINDOW: u64 = 1024 * 1024;
        let ing = ingress(patient()).await;
        let down = Window::new(WINDOW);
        let up = Window::new(WINDOW);
        let r = {
            let (down, up) = (down.clone(), up.clone());
            replica(move |req: Request<Incoming>| {
                let (down, up) = (down.clone(), up.clone());
                async move {
                    if req.method() == Method::POST {
                        let n = consume(req.into_body(), &up).await;
                        text(200, n.to_string())
                    } else {
                        let mut r = Response::new(produced(TOTAL, down));
                        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(TOTAL));
                        r
                    }
                }
            })
            .await
        };
        ing.routes.set_service("svc_1", "prj_1", &["big.test".into()], vec![backend("r", r.addr)]);
        let transfer = async {
            let mut tx = client(ing.addr).await;
            tx.ready().await.unwrap();
            let resp = tx.send_request(req("GET", "big.test", "/", "")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(consume(resp.into_body(), &down).await, TOTAL);

            let upload = Request::builder()
                .method("POST")
                .uri("/")
                .header(header::HOST, "big.test")
                .body(produced(TOTAL, up.clone()))
                .unwrap();
            let resp = send(&mut tx, upload).await;
            assert_eq!((resp.status(), body_text(&resp)), (StatusCode::OK, TOTAL.to_string()));
        };
        tokio::time::timeout(Duration::from_secs(300), transfer)
            .await
            .expect("the transfer stalled: the proxy held bytes back instead of streaming them");
        let logged = ing.log.recent("svc_1", 2);
        assert_eq!(logged[1].bytes, TOTAL, "the download, all of it");
    }

    #[tokio::test]
    async fn websocket_upgrades_pass_through_until_the_ingress_stops() {
        let ing = ingress(patient()).await;
        let r = replica(|mut req: Request<Incoming>| async move {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                // An echo: enough to show bytes flow both ways once switched.
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let mut resp = text(101, "");
            resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            resp.headers_mut().insert("sec-websocket-accept", HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
            resp
        })
        .await;
        ing.routes.set_service("svc_1", "prj_1", &["ws.test".into()], vec![backend("r", r.addr)]);
        let mut s = TcpStream::connect(ing.addr).await.unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed before the head ended");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket") && head.contains("sec-websocket-accept: "), "{head}");
        for msg in [&b"hello"[..], &b"through the tunnel"[..]] {
            s.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }
        assert_eq!(ing.log.recent("svc_1", 1)[0].status, 101);
        // Stopping the ingress ends the tunnel.
        ing.stop.send(true).unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(n, 0);
    }

    /// A replica that reads requests and never answers; sends on `closed` when the
    /// ingress closes a connection to it.
    async fn hanging_replica() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    let _ = tx.send(());
                });
            }
        });
        (addr, rx)
    }

    fn front(timeout: Duration) -> Front {
        Front { upstream_timeout: timeout, ..Front::default() }
    }

    #[tokio::test]
    async fn a_replica_that_never_answers_gets_a_504_within_the_timeout_and_is_let_go() {
        let ing = ingress_with(patient(), front(Duration::from_millis(500)), None).await;
        let (hung, mut closed) = hanging_replica().await;
        ing.routes.set_service("svc_h", "prj_1", &["hung.test".into()], vec![backend("rep_h", hung)]);
        let started = std::time::Instant::now();
        let r = get(ing.addr, "hung.test", "/poll").await;
        let took = started.elapsed();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT, "{}", body_text(&r));
        assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(5), "answered after {took:?}");
        assert!(body_text(&r).contains("did not answer in time"));
        // The exchange is given up: the connection to the replica is closed, not pooled.
        tokio::time::timeout(Duration::from_secs(5), closed.recv()).await.expect("the upstream connection stayed open");
        assert_eq!(ing.proxy.idle_upstreams(), 0);
        assert_eq!(ing.log.recent("svc_h", 1)[0].status, 504);
        // A POST waits the same (it is not retried elsewhere either).
        let r = send(&mut client(ing.addr).await, req("POST", "hung.test", "/", "x")).await;
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test]
    async fn the_deadline_ends_at_the_head_and_counts_from_the_last_piece_of_an_upload() {
        let ing = ingress_with(patient(), front(Duration::from_millis(400)), None).await;
        let r = replica(|req: Request<Incoming>| async move {
            if req.method() == Method::POST {
                // Reads a body trickling in for longer than the deadline, then answers.
                let n = req.into_body().collect().await.unwrap().to_bytes().len();
                return text(200, n.to_string());
            }
            // Answers the head at once, then streams for longer than the deadline.
            let (tx, rx) = mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                for i in 0..6 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if tx.send(Bytes::from(format!("tick{i}\n"))).await.is_err() {
                        return;
                    }
                }
            });
            Response::new(Chan(rx).boxed())
        })
        .await;
        ing.routes.set_service("svc_1", "prj_1", &["slow.test".into()], vec![backend("r", r.addr)]);
        let streamed = get(ing.addr, "slow.test", "/events").await;
        assert_eq!(streamed.status(), StatusCode::OK);
        assert_eq!(body_text(&streamed).lines().count(), 6, "a body after the head is not cut");
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tx.send(Bytes::from_static(b"0123456789")).await;
            }
        });
        let upload = Request::builder()
            .method("POST")
            .uri("/up")
            .header(header::HOST, "slow.test")
            .body(Chan(rx).boxed())
            .unwrap();
        let r = send(&mut client(ing.addr).await, upload).await;
        assert_eq!((r.status(), body_text(&r)), (StatusCode::OK, "60".into()), "an upload still moving is not cut");
    }

    fn self_signed(names: &[&str]) -> (String, String) {
        let g = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (g.cert.pem(), g.signing_key.serialize_pem())
    }

    #[tokio::test]
    async fn plain_requests_for_hosts_with_a_certificate_go_to_https_except_challenges() {
        let certs = Arc::new(CertStore::new(&["localhost".into(), "*.apps.test".into()]).unwrap());
        let (chain, key) = self_signed(&["app.test"]);
        certs.install("app.test", &chain, &key).unwrap();
        let (chain, key) = self_signed(&["*.wild.test"]);
        certs.install("*.wild.test", &chain, &key).unwrap();
        let f = Front { redirect: Some(Redirect { certs: certs.clone(), https_port: 8443 }), ..Front::default() };
        let ing = ingress_with(patient(), f, None).await;
        let r = named("page").await;
        ing.routes.set_service(
            "svc_1",
            "prj_1",
            &["app.test".into(), "plain.test".into(), "x.apps.test".into()],
            vec![backend("r", r.addr)],
        );
        let moved = get(ing.addr, "App.Test:8080", "/a/b?c=1&d").await;
        assert_eq!(moved.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(moved.headers()[header::LOCATION], "https://app.test:8443/a/b?c=1&d");
        assert!(moved.headers().contains_key("x-request-id"));
        let wild = get(ing.addr, "a.wild.test", "/").await;
        assert_eq!(wild.headers()[header::LOCATION], "https://a.wild.test:8443/");
        // Challenge paths are answered over HTTP (404 here: no token is put).
        let challenge = get(ing.addr, "app.test", "/.well-known/acme-challenge/tok").await;
        assert_eq!(challenge.status(), StatusCode::NOT_FOUND);
        // Hosts with only the fallback, or none, are served over HTTP as before.
        assert_eq!(body_text(&get(ing.addr, "plain.test", "/").await), "page");
        assert_eq!(body_text(&get(ing.addr, "x.apps.test", "/").await), "page", "the fallback does not count");
        // A host that is not a name is never a redirect target.
        let odd = get(ing.addr, "evil.test/x.wild.test", "/").await;
        assert_ne!(odd.status(), StatusCode::PERMANENT_REDIRECT);
        // On 443 the location names no port.
        let f = Front { redirect: Some(Redirect { certs, https_port: 443 }), ..Front::default() };
        let ing = ingress_with(patient(), f, None).await;
        let moved = get(ing.addr, "app.test", "/x").await;
        assert_eq!(moved.headers()[header::LOCATION], "https://app.test/x");
    }

    #[tokio::test]
    async fn the_control_domain_is_answered_by_the_api_with_the_real_client() {
        use axum::extract::Extension;
        // The API's real table is mounted by `api::router`; one fallback stands in for it.
        let api = Router::new().fallback(
            |Extension(peer): Extension<crate::http::serve::Peer>, h: hyper::HeaderMap| async move {
                let id = h.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                format!("{} {id}", peer.remote.ip())
            },
        );
        let f = Front { control: Some(("berth.test".into(), api)), ..Front::default() };
        let ing = ingress_with(patient(), f, None).await;
        let r = send(
            &mut client(ing.addr).await,
            Request::builder()
                .uri("/v1/who")
                .header(header::HOST, "Berth.Test:8080")
                .header("x-request-id", "mine")
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(body_text(&r), format!("127.0.0.1 {id}"), "the API sees the client and the ingress's id");
        assert_ne!(id, "mine");
        // Other hosts are not the API's.
        assert_eq!(get(ing.addr, "other.test", "/v1/who").await.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tls_and_http2_the_replica_gets_http1_with_https_forwarding_headers() {
        let pair = test_tls::pair();
        let ing = ingress_with(patient(), Front::default(), Some(pair.acceptor.clone())).await;
        let r = replica(|req: Request<Incoming>| async move {
            let h = req.headers();
            let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
            text(
                200,
                format!(
                    "{:?} {} host={} proto={} fhost={} for={}",
                    req.version(),
                    req.uri(),
                    get("host"),
                    get("x-forwarded-proto"),
                    get("x-forwarded-host"),
                    get("x-forwarded-for")
                ),
            )
        })
        .await;
        ing.routes.set_service("svc_1", "prj_1", &["localhost".into()], vec![backend("r", r.addr)]);
        let stream = pair.connect(ing.addr, &[b"h2"]).await;
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..3 {
            let request = Request::get("https://localhost/p?q=1").body(full("")).unwrap();
            let resp = h2.send_request(request).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            assert!(resp.headers().contains_key("x-request-id"));
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                String::from_utf8_lossy(&body),
                "HTTP/1.1 /p?q=1 host=localhost proto=https fhost=localhost for=127.0.0.1"
            );
        }
        // Unknown hosts are 404 over HTTP/2 too.
        let unknown = Request::get("https://nothing.test/").body(full("")).unwrap();
        assert_eq!(h2.send_request(unknown).await.unwrap().status(), StatusCode::NOT_FOUND);
        // And HTTP/1.1 over TLS.
        let stream = pair.connect(ing.addr, &[b"http/1.1"]).await;
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let resp = send(&mut h1, req("GET", "localhost", "/one", "")).await;
        assert_eq!(body_text(&resp), "HTTP/1.1 /one host=localhost proto=https fhost=localhost for=127.0.0.1");
    }
}
