//! The HTTP/1.1 accept loop, shared by the API listener and the ingress.
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
//!   reports whether they did within the grace period.
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
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
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
}

/// A request as the accept loop hands it over: its body already on a deadline.
pub type IncomingRequest = Request<TimedBody<Incoming>>;

/// What answers the requests of a listener.
pub trait Handler: Clone + Send + Sync + 'static {
    type Body: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static;

    /// Answers one request that came in on `conn`. The future owns what it needs:
    /// it may outlive the borrow.
    fn call(&self, req: IncomingRequest, conn: &Conn) -> impl Future<Output = Response<Self::Body>> + Send + use<Self>;
}

impl Handler for Router {
    type Body = axum::body::Body;

    fn call(&self, req: IncomingRequest, conn: &Conn) -> impl Future<Output = Response<Self::Body>> + Send + use<> {
        // Most requests have no body: theirs needs no deadline to be polled.
        let mut req = req.map(|b| if b.is_end_stream() { axum::body::Body::empty() } else { axum::body::Body::new(b) });
        req.extensions_mut().insert(Peer { remote: conn.peer, local: conn.local });
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

/// Serves `handler` on `listener` until `stop` flips, then drains for at most `grace`.
/// Returns false when connections were still busy at the deadline (they are dropped).
pub async fn serve<H: Handler>(
    listener: TcpListener,
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
            stop: stop.clone(),
            hold: Arc::new(Hold { _admitted: admitted, _alive: alive_tx.clone() }),
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut conn_stop = conn.stop.clone();
            let service = {
                let conn = conn.clone();
                hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = handler.call(req.map(|b| TimedBody::new(b, limits.body)), &conn);
                    async move { Ok::<_, Infallible>(answer.await) }
                })
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.head_timeout).max_header_size(MAX_HEAD_BYTES);
            let served = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(served);
            let result = tokio::select! {
                r = served.as_mut() => r,
                _ = conn_stop.changed() => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(alive_tx);
    tokio::time::timeout(grace, alive_rx.recv()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
