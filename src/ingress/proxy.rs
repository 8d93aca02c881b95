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
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
use super::routes::{Backend, Route, RoutingTable};
use super::upstream::{IDLE_TIMEOUT, Upstreams};
use crate::http::body::{TimedBody, is_timeout};
use crate::http::serve::{Conn, Handler, Hold, IncomingRequest};
use crate::metrics::Metrics;

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
    metrics: Arc<Metrics>,
}

impl Proxy {
    pub fn new(
        routes: Arc<RoutingTable>,
        challenges: Arc<Challenges>,
        log: Arc<AccessLog>,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        Proxy(Arc::new(Inner { routes, challenges, log, upstreams: Arc::new(Upstreams::default()), metrics }))
    }

    /// The upstream connection pool (for tests and metrics).
    pub fn upstreams(&self) -> &Upstreams<ReqBody> {
        &self.0.upstreams
    }

    /// Sweeps idle upstream connections until `stop` flips.
    pub async fn prune_until(&self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.0.upstreams.prune(),
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

    fn call(&self, req: IncomingRequest, conn: &Conn) -> impl Future<Output = Response<ProxyBody>> + Send + use<> {
        let seat = (req.method() == Method::GET && headers::is_websocket(req.headers()))
            .then(|| TunnelSeat { hold: conn.hold(), stop: conn.stop.clone() });
        let this = self.clone();
        let client = conn.peer.ip().to_canonical();
        async move { this.handle(req, client, seat).await }
    }
}

impl Proxy {
    async fn handle(self, mut req: IncomingRequest, client: IpAddr, seat: Option<TunnelSeat>) -> Response<ProxyBody> {
        let at = time::OffsetDateTime::now_utc();
        let started = Instant::now();
        if Challenges::is_challenge_path(req.uri().path()) {
            let resp = self.challenge(&mut req);
            self.0.metrics.ingress_request(resp.status().as_u16(), started.elapsed());
            return resp;
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
        match self.forward(&route, req, client, seat, &mut log).await {
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
        client: IpAddr,
        seat: Option<TunnelSeat>,
        log: &mut Pending,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let first = route.pick().ok_or(ProxyError::NoBackend)?;
        let client_upgrade = seat.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        headers::forward_request(&mut parts.headers, client, seat.is_some());
        parts.version = Version::HTTP_11;
        parts.extensions = Default::default();
        let bodyless = http_body::Body::is_end_stream(&body);
        let replayable = bodyless && is_idempotent(&parts.method);
        let (body, req_done) = if bodyless {
            (ReqBody::Empty, None)
        } else {
            let done = Arc::new(AtomicBool::new(false));
            (ReqBody::Client { body, done: done.clone() }, Some(done))
        };
        let (mut resp, backend, tx) = self.exchange(route, first, Request::from_parts(parts, body), replayable).await?;
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
            match co.tx.try_send_request(req).await {
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
        /// Set when the body has been sent whole (the connection may then be reused).
        done: Arc<AtomicBool>,
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
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Ready(Some(Err(_))) | Poll::Pending => false,
                };
                if ended {
                    done.store(true, Ordering::Release);
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
}

impl ProxyBody {
    /// Length of an ingress page (0 for a streamed body).
    fn len(&self) -> u64 {
        match &self.0 {
            Kind::Page(Some(b)) => b.len() as u64,
            Kind::Page(None) | Kind::Upstream(_) => 0,
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Page(page) => page.is_none(),
            Kind::Upstream(s) => s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Page(page) => SizeHint::with_exact(page.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(s) => http_body::Body::size_hint(&s.inner),
        }
    }
}

/// What gives a connection back to the pool once its exchange is over.
struct GiveBack {
    tx: SendRequest<ReqBody>,
    addr: SocketAddr,
    upstreams: Arc<Upstreams<ReqBody>>,
    /// `None` for a bodyless request.
    req_done: Option<Arc<AtomicBool>>,
}

impl GiveBack {
    fn give_back(self) {
        let GiveBack { mut tx, addr, upstreams, req_done } = self;
        if req_done.is_none_or(|d| d.load(Ordering::Acquire)) {
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
        Pending {
            entry: Some(PendingEntry {
                log: proxy.log.clone(),
                metrics: proxy.metrics.clone(),
                route: route.clone(),
                at,
                started,
                method: req.method().clone(),
                path: clip_path(req.uri().path()),
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
    use crate::http::serve::{Connections, Limits, serve};

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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(RoutingTable::new());
        let log = Arc::new(AccessLog::default());
        let metrics = Arc::new(Metrics::new());
        let proxy = Proxy::new(routes.clone(), Default::default(), log.clone(), metrics.clone());
        let (stop, stop_rx) = watch::channel(false);
        let conns = Arc::new(Connections::default());
        tokio::spawn(serve(listener, proxy.clone(), limits(body), conns, stop_rx, Duration::from_secs(1)));
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
        assert_eq!((a.accepted.load(Ordering::SeqCst), b.accepted.load(Ordering::SeqCst)), (1, 1));
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
            assert_eq!(body_text(&send(&mut tx, req("POST", "web.test", "/", vec![1u8; 3000])).await), "3000");
        }
        // Other client connections share the pool.
        for _ in 0..5 {
            assert_eq!(body_text(&get(ing.addr, "web.test", "/").await), "0");
        }
        assert_eq!(r.accepted.load(Ordering::SeqCst), 1, "25 sequential requests, one upstream connection");
        assert_eq!(ing.proxy.upstreams().idle_count(), 1);
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
        let request = Request::builder()
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
            .header("x-end", "kept")
            .body(full(""))
            .unwrap();
        let resp = send(&mut client(ing.addr).await, request).await;
        let seen = body_text(&resp);
        let lines: Vec<&str> = seen.lines().collect();
        assert_eq!(
            lines,
            vec![
                "host: Web.Test:8080",
                "x-end: kept",
                "x-forwarded-for: 203.0.113.9, 127.0.0.1",
                "x-forwarded-host: Web.Test:8080",
                "x-forwarded-proto: http",
            ],
            "{seen}"
        );
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
}
