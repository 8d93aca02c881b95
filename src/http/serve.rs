//! The accept loop, shared by the API listener and the ingress's HTTP and HTTPS
//! listeners.
//!
//! Hand-rolled over hyper (instead of `axum::serve`) for the limits a public
//! listener needs:
//! - a cap on the request head (64 KiB, larger heads get 431) and a deadline for
//!   reading it, which also closes kept-alive connections left idle (slowloris);
//! - a deadline on every request body ([`super::body::TimedBody`]), so a client that
//!   sends a `Content-Length` and then stalls is cut off (requests without a body
//!   skip the wrapper and its timer);
//! - caps on open connections, in all and per address (IPv6 per /64): connections
//!   over a cap are closed at once, before hyper allocates anything for them;
//! - a graceful drain that stops accepting, lets in-flight requests finish, and
//!   reports whether they did within the grace period;
//! - on TLS ([`serve_tls`]): the handshake under the head deadline and inside the
//!   caps, then HTTP/2 when ALPN says `h2` (stream and header caps, the rapid-reset
//!   guards, an idle deadline) and HTTP/1.1 with upgrades otherwise (adr/029).
//!
//! What answers the requests is a [`Handler`]: the API's axum `Router`, or the
//! ingress's proxy. Each listener has its own [`Limits`] and [`Connections`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::body::{BodyPolicy, TimedBody};
use super::ratelimit::AddrKey;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Who a request came from and where to (a request extension set by [`serve`]).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub remote: SocketAddr,
    /// The listener address the client connected to.
    pub local: Option<SocketAddr>,
    /// Whether the client came over TLS (the ingress's HTTPS listener, for the
    /// control domain).
    pub tls: bool,
}

/// What a connection lends a WebSocket that outlives its HTTP exchange: a request
/// extension on the API's upgrade requests.
#[derive(Clone)]
pub struct Tunnel {
    /// Keeps the connection counted against the caps and by the drain.
    pub hold: Arc<Hold>,
    /// Flips to true when the listener stops.
    pub stop: watch::Receiver<bool>,
}

/// A request as the accept loop hands it over: its body already on a deadline.
pub type IncomingRequest = Request<TimedBody<Incoming>>;

/// What answers the requests of a listener.
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static;

    /// Answers one request that came in on `conn`. The future owns what it needs:
    /// it may outlive the borrow.
    fn call(&self, req: IncomingRequest, conn: &Conn) -> impl Future<Output = Response<Self::Body>> + Send + use<Self>;

    /// Serves one HTTP/1.1 connection (plain, or TLS without h2) until it ends. The
    /// default is hyper's ([`serve_http1`]); the ingress's proxy serves the common
    /// requests itself first.
    fn serve_http1<I>(self, io: I, conn: Conn, limits: Limits) -> impl Future<Output = ()> + Send
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        serve_http1(TokioIo::new(io), self, conn, limits)
    }
}

impl Handler for Router {
    type Body = axum::body::Body;

    fn call(&self, req: IncomingRequest, conn: &Conn) -> impl Future<Output = Response<Self::Body>> + Send + use<> {
        // Most requests have no body: theirs needs no deadline to be polled.
        let mut req = req.map(|b| if b.is_end_stream() { axum::body::Body::empty() } else { axum::body::Body::new(b) });
        req.extensions_mut().insert(Peer { remote: conn.peer, local: conn.local, tls: conn.tls });
        if crate::ingress::headers::is_websocket(req.headers()) {
            req.extensions_mut().insert(Tunnel { hold: conn.hold(), stop: conn.stop.clone() });
        }
        let answer = self.clone().oneshot(req);
        async move {
            match answer.await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }
}

/// The connection a request came in on.
#[derive(Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    /// Whether the connection came in over TLS (the HTTPS listener).
    pub tls: bool,
    /// Flips to true when the listener stops (shutdown).
    pub stop: watch::Receiver<bool>,
    hold: Arc<Hold>,
}

/// Keeps a connection counted, against the caps and by the drain, while something
/// outlives its HTTP exchange (an upgraded connection's tunnel).
pub struct Hold {
    _admitted: Admitted,
    _alive: mpsc::Sender<Infallible>,
}

impl Conn {
    /// A handle that keeps this connection counted for as long as it lives.
    pub fn hold(&self) -> Arc<Hold> {
        self.hold.clone()
    }
}

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub head_timeout: Duration,
    pub body: BodyPolicy,
}

impl Limits {
    pub fn from_config(api: &crate::config::ApiConfig) -> Self {
        Limits {
            max_connections: api.max_connections,
            max_per_address: api.max_connections_per_address,
            head_timeout: Duration::from_secs(api.head_timeout_seconds),
            body: BodyPolicy::from_config(api),
        }
    }

    /// The ingress listener's limits (`[ingress]`).
    pub fn for_ingress(ingress: &crate::config::IngressConfig) -> Self {
        Limits {
            max_connections: ingress.max_connections,
            max_per_address: ingress.max_connections_per_address,
            head_timeout: Duration::from_secs(ingress.head_timeout_seconds),
            body: BodyPolicy {
                grace: Duration::from_secs(ingress.body_grace_seconds),
                min_rate: ingress.body_min_bytes_per_second.max(1),
                idle: Duration::from_secs(ingress.body_idle_seconds),
            },
        }
    }
}

/// Open connections, in all and per address.
#[derive(Default)]
pub struct Connections {
    open: Mutex<(usize, HashMap<AddrKey, usize>)>,
}

/// Held while a connection is open; gives its place back when dropped.
pub struct Admitted {
    conns: Arc<Connections>,
    key: AddrKey,
}

impl Connections {
    /// Admits a connection from `peer` unless a cap is reached.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, limits: &Limits) -> Option<Admitted> {
        let key = AddrKey::of(peer.ip());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_addr) = &mut *open;
        let mine = by_addr.get(&key).copied().unwrap_or(0);
        if *total >= limits.max_connections || mine >= limits.max_per_address {
            return None;
        }
        *total += 1;
        by_addr.insert(key, mine + 1);
        Some(Admitted { conns: self.clone(), key })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_addr) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_addr.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_addr.remove(&self.key);
            }
        }
        if by_addr.is_empty() && by_addr.capacity() > 1024 {
            by_addr.shrink_to_fit();
        }
    }
}

/// Serves `handler` over plain HTTP/1.1 on `listener` until `stop` flips, then
/// drains for at most `grace`. Returns false when connections were still busy at the
/// deadline (they are dropped).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    conns: Arc<Connections>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> bool {
    accept_loop(listener, None, handler, limits, conns, stop, grace).await
}

/// [`serve`] over TLS: HTTP/2 when the client's ALPN picks `h2`, HTTP/1.1 (with
/// upgrades) otherwise.
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    tls: TlsAcceptor,
    handler: H,
    limits: Limits,
    conns: Arc<Connections>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> bool {
    accept_loop(listener, Some(tls), handler, limits, conns, stop, grace).await
}

/// The one accept loop behind [`serve`] and [`serve_tls`].
async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    limits: Limits,
    conns: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> bool {
    // Every connection task (and every tunnel outliving one) holds a sender; when
    // all are gone, `recv` yields None.
    let (alive_tx, mut alive_rx) = mpsc::channel::<Infallible>(1);
    let mut refused: u64 = 0;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(admitted) = conns.admit(peer, &limits) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "connection refused: too many open connections");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer,
            local: stream.local_addr().ok(),
            tls: tls.is_some(),
            stop: stop.clone(),
            hold: Arc::new(Hold { _admitted: admitted, _alive: alive_tx.clone() }),
        };
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                return handler.serve_http1(stream, conn, limits).await;
            };
            // The handshake is part of the head: a client that connects and sends no
            // ClientHello holds its place against the caps only this long.
            let mut conn_stop = conn.stop.clone();
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.head_timeout, acceptor.accept(stream)) => r,
                _ = conn_stop.changed() => return,
            };
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "tls handshake timed out");
                    return;
                }
            };
            let alpn = stream.get_ref().1.alpn_protocol();
            if alpn == Some(crate::ingress::tls::ACME_TLS_ALPN) {
                // A CA's TLS-ALPN-01 check ends with the handshake (RFC 8737 §3).
                return;
            }
            if alpn == Some(b"h2") {
                serve_http2(TokioIo::new(stream), handler, conn, limits).await
            } else {
                handler.serve_http1(stream, conn, limits).await
            }
        });
    }
    drop(listener);
    drop(alive_tx);
    tokio::time::timeout(grace, alive_rx.recv()).await.is_ok()
}

/// The hyper service answering a connection's requests with `handler`; `active`,
/// when given, counts requests whose answer head is not ready yet.
fn service<H: Handler>(
    handler: H,
    conn: Conn,
    body: BodyPolicy,
    active: Option<Arc<Activity>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<H::Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<H::Body>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = active.as_ref().map(|a| a.start());
        let answer = handler.call(req.map(|b| TimedBody::new(b, body)), &conn);
        async move {
            let resp = answer.await;
            drop(busy);
            Ok::<_, Infallible>(resp)
        }
    })
}

/// A connection's HTTP/1.1 exchanges: the head cap and deadline, upgrades, and a
/// graceful end when the listener stops.
pub async fn serve_http1<I, H>(io: I, handler: H, conn: Conn, limits: Limits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let mut conn_stop = conn.stop.clone();
    let peer = conn.peer;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.head_timeout).max_header_size(MAX_HEAD_BYTES);
    let served = builder.serve_connection(io, service(handler, conn, limits.body, None)).with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = conn_stop.changed() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Streams one HTTP/2 connection may have open at once.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may open and reset before they are served (rapid reset,
/// CVE-2023-44487): past it the connection is closed with `ENHANCE_YOUR_CALM`.
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it closes
/// the connection.
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Requests in flight on an HTTP/2 connection, and since when none is: HTTP/2 has
/// no head deadline of its own, so an idle connection is closed (GOAWAY, in-flight
/// streams finish) after the head timeout, like an idle HTTP/1.1 one.
struct Activity {
    base: tokio::time::Instant,
    busy: std::sync::atomic::AtomicUsize,
    /// Milliseconds after `base` when a request last started or got its answer head.
    last: std::sync::atomic::AtomicU64,
}

struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity { base: tokio::time::Instant::now(), busy: Default::default(), last: Default::default() })
    }

    fn touch(&self) {
        let now = self.base.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn start(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    /// How long the connection has had no request waiting for its head.
    fn idle_for(&self) -> Duration {
        if self.busy.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connection's HTTP/2 streams, with the stream and header caps, the rapid-reset
/// guards, pings to find dead peers, and the idle deadline.
async fn serve_http2<I, H>(io: I, handler: H, conn: Conn, limits: Limits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Handler,
{
    let mut conn_stop = conn.stop.clone();
    let peer = conn.peer;
    let activity = Activity::new();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(limits.head_timeout)
        .keep_alive_timeout(limits.head_timeout);
    let served = builder.serve_connection(io, service(handler, conn, limits.body, Some(activity.clone())));
    tokio::pin!(served);
    let mut tick = tokio::time::interval(limits.head_timeout.div_f32(4.0).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            r = served.as_mut() => break r,
            _ = conn_stop.changed() => {
                served.as_mut().graceful_shutdown();
                break served.await;
            }
            _ = tick.tick() => {
                if activity.idle_for() >= limits.head_timeout {
                    served.as_mut().graceful_shutdown();
                    break served.await;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http/2 connection ended with an error");
    }
}

/// TLS on loopback for tests: a self-signed `localhost` certificate, a server
/// config offering h2 and http/1.1, and clients that trust it.
#[cfg(test)]
pub(crate) mod test_tls {
    use std::sync::Arc;

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    pub struct Pair {
        pub acceptor: tokio_rustls::TlsAcceptor,
        client: rustls::ClientConfig,
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        #[expect(deprecated, reason = "ring is chosen over aws-lc-rs on purpose (adr/019)")]
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub fn pair() -> Pair {
        let g = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = g.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(g.signing_key.serialize_der()));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Pair { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), client: client_trusting(&[cert]) }
    }

    /// A client config trusting exactly `roots`.
    pub fn client_trusting(roots: &[rustls::pki_types::CertificateDer<'static>]) -> rustls::ClientConfig {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth()
    }

    /// A TLS connection to `addr` for `name`, offering `alpn`.
    pub async fn connect_with(
        config: &rustls::ClientConfig,
        addr: std::net::SocketAddr,
        name: &str,
        alpn: &[&[u8]],
    ) -> TlsStream<TcpStream> {
        let mut config = config.clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
    }

    impl Pair {
        pub async fn connect(&self, addr: std::net::SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
            connect_with(&self.client, addr, "localhost", alpn).await
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use tokio::io::AsyncReadExt;

    use super::*;

    fn tight(per_address: usize, head: Duration) -> Limits {
        Limits {
            max_connections: 100,
            max_per_address: per_address,
            head_timeout: head,
            body: BodyPolicy { grace: Duration::from_secs(5), min_rate: 1, idle: Duration::from_secs(5) },
        }
    }

    /// Answers with what it knows of the request and its connection; `/slow` first
    /// waits, counting the answers in progress.
    #[derive(Clone, Default)]
    struct Echo {
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Handler for Echo {
        type Body = Full<Bytes>;

        fn call(
            &self,
            req: IncomingRequest,
            conn: &Conn,
        ) -> impl Future<Output = Response<Full<Bytes>>> + Send + use<> {
            let text = format!("tls={} {:?} {}", conn.tls, req.version(), req.uri().path());
            let slow = req.uri().path() == "/slow";
            let (running, most) = (self.running.clone(), self.most.clone());
            async move {
                if slow {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    struct Done(Arc<AtomicUsize>);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _done = Done(running);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Response::new(Full::new(Bytes::from(text)))
            }
        }
    }

    async fn tls_server(limits: Limits, handler: Echo) -> (SocketAddr, test_tls::Pair, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pair = test_tls::pair();
        let (stop, stop_rx) = watch::channel(false);
        let conns = Arc::new(Connections::default());
        let acceptor = pair.acceptor.clone();
        tokio::spawn(serve_tls(listener, acceptor, handler, limits, conns, stop_rx, Duration::from_secs(1)));
        (addr, pair, stop)
    }

    async fn h2_get(tx: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>, path: &str) -> (u16, String) {
        let req = Request::get(format!("https://localhost{path}")).body(Full::new(Bytes::new())).unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn h2_client(
        stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    ) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        tx
    }

    #[tokio::test]
    async fn alpn_picks_http2_or_http1_and_the_handler_knows_it_is_tls() {
        let (addr, pair, _stop) = tls_server(tight(10, Duration::from_secs(5)), Echo::default()).await;
        let stream = pair.connect(addr, &[b"h2", b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut tx = h2_client(stream).await;
        assert_eq!(h2_get(&mut tx, "/a").await, (200, "tls=true HTTP/2.0 /a".to_string()));
        for alpn in [&[&b"http/1.1"[..]][..], &[]] {
            let stream = pair.connect(addr, alpn).await;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let req = Request::get("/b").header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
            let resp = tx.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "tls=true HTTP/1.1 /b", "alpn {alpn:?}");
        }
    }

    #[tokio::test]
    async fn an_http2_head_over_the_cap_gets_431_and_the_connection_goes_on() {
        let (addr, pair, _stop) = tls_server(tight(10, Duration::from_secs(5)), Echo::default()).await;
        let stream = pair.connect(addr, &[b"h2"]).await;
        // h2's client, unlike curl's, sends what the server said it would not take.
        let (h2, conn) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(conn);
        let mut h2 = h2.ready().await.unwrap();
        let big = "a".repeat(MAX_HEAD_BYTES + 1024);
        let req = Request::get("https://localhost/big").header("x-big", big).body(()).unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 431);
        let mut h2 = h2.ready().await.unwrap();
        let req = Request::get("https://localhost/after").body(()).unwrap();
        let (resp, _) = h2.send_request(req, true).unwrap();
        let mut body = resp.await.unwrap().into_body();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"tls=true HTTP/2.0 /after");
    }

    #[tokio::test]
    async fn a_client_that_never_says_hello_is_closed_at_the_head_timeout_and_counted_until_then() {
        let head = Duration::from_millis(500);
        let (addr, pair, _stop) = tls_server(tight(2, head), Echo::default()).await;
        let started = std::time::Instant::now();
        let mut silent =
            [tokio::net::TcpStream::connect(addr).await.unwrap(), tokio::net::TcpStream::connect(addr).await.unwrap()];
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The third from this address is over the cap: closed at once.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "over the cap: {n:?}");
        for s in &mut silent {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap();
            assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        }
        let waited = started.elapsed();
        assert!(waited >= head, "closed after {waited:?}, before the head timeout");
        // Their places are free again.
        let mut tx = h2_client(pair.connect(addr, &[b"h2"]).await).await;
        assert_eq!(h2_get(&mut tx, "/").await.0, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_opened_and_reset_in_a_loop_do_not_stop_another_client() {
        let echo = Echo::default();
        let (addr, pair, _stop) = tls_server(tight(10, Duration::from_secs(30)), echo.clone()).await;
        let attack = {
            let stream = pair.connect(addr, &[b"h2"]).await;
            tokio::spawn(async move {
                let Ok((mut h2, conn)) = h2::client::handshake(stream).await else { return (0, true) };
                let driver = tokio::spawn(conn);
                let mut sent = 0usize;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
                while tokio::time::Instant::now() < deadline {
                    let Ok(ready) = h2.ready().await else { break };
                    h2 = ready;
                    let req = Request::get("https://localhost/slow").body(()).unwrap();
                    let Ok((_resp, mut stream)) = h2.send_request(req, false) else { break };
                    stream.send_reset(h2::Reason::CANCEL);
                    sent += 1;
                    if sent.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                // Stopped before the deadline: the server closed the connection
                // (GOAWAY ENHANCE_YOUR_CALM once too many resets were pending).
                let cut_off = tokio::time::Instant::now() < deadline;
                driver.abort();
                (sent, cut_off)
            })
        };
        let mut tx = h2_client(pair.connect(addr, &[b"h2"]).await).await;
        let normal = tokio::time::timeout(Duration::from_secs(30), async {
            let mut ok = 0;
            for i in 0..40 {
                let path = if i % 2 == 0 { "/slow" } else { "/fast" };
                if h2_get(&mut tx, path).await.0 == 200 {
                    ok += 1;
                }
            }
            ok
        })
        .await
        .expect("the normal client was starved");
        let (resets, cut_off) = attack.await.unwrap();
        eprintln!("rapid reset: {resets} streams opened and reset; attacker cut off: {cut_off}; normal client 40/40");
        assert_eq!(normal, 40);
        assert!(resets >= 50, "the attack did not run: {resets}");
        let most = echo.most.load(Ordering::SeqCst);
        assert!(
            most <= H2_MAX_CONCURRENT_STREAMS as usize + 1,
            "{most} answers ran at once: reset streams kept their handlers running"
        );
    }

    #[tokio::test]
    async fn an_idle_http2_connection_is_closed_after_the_head_timeout() {
        let (addr, pair, _stop) = tls_server(tight(10, Duration::from_millis(400)), Echo::default()).await;
        let stream = pair.connect(addr, &[b"h2"]).await;
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        let driver = tokio::spawn(conn);
        assert_eq!(h2_get(&mut tx, "/").await.0, 200);
        let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
        assert!(ended.is_ok(), "the idle connection stayed open");
    }

    #[test]
    fn connection_caps_hold_per_address_and_in_all() {
        let conns = Arc::new(Connections::default());
        let limits = Limits {
            max_connections: 3,
            max_per_address: 2,
            head_timeout: Duration::from_secs(1),
            body: BodyPolicy { grace: Duration::from_secs(1), min_rate: 1, idle: Duration::from_secs(1) },
        };
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:1000".parse().unwrap();
        let a1 = conns.admit(a, &limits).unwrap();
        let _a2 = conns.admit(a, &limits).unwrap();
        assert!(conns.admit(a, &limits).is_none(), "two per address");
        let _b1 = conns.admit(b, &limits).unwrap();
        assert!(conns.admit(c, &limits).is_none(), "three in all");
        drop(a1);
        assert_eq!(conns.open(), 2);
        assert!(conns.admit(c, &limits).is_some());
    }
}
