//! Kept-alive HTTP/1.1 connections to replicas, pooled per replica address.
//!
//! A connection is taken out of the pool for one exchange and given back when both
//! the request body and the response body have ended (hyper then asks for the next
//! request within microseconds; a connection given back in that instant is
//! "settling" and its next user waits for it). A connection the replica closed, or
//! one idle longer than [`IDLE_TIMEOUT`], is dropped; at most
//! [`MAX_IDLE_PER_REPLICA`] idle connections are kept per replica, so the pool is
//! bounded by construction: every other upstream connection belongs to a request in
//! flight. Addresses are IP literals from the routing table: no DNS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::error::ProxyError;

/// How long a connection to a replica may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unused connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per replica: at least as many as the requests a busy
/// replica has in flight at once, or the pool churns (a connection closed at
/// check-in, a new one opened at the next checkout: nginx's `keepalive 32` trap).
pub const MAX_IDLE_PER_REPLICA: usize = 256;
/// Largest response head accepted from a replica.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Largest read buffer of an upstream connection: a response head must fit, and a
/// body streams through it. hyper's default (~400 KiB) grows to that on every
/// connection that carries a large body, which multiplies by the open connections.
const UPSTREAM_READ_BUF: usize = MAX_RESPONSE_HEAD + 16 * 1024;
/// How long a settling connection is waited for before it is given up.
const SETTLE: Duration = Duration::from_secs(1);

struct Idle<B> {
    tx: SendRequest<B>,
    since: Instant,
}

/// The pool; `B` is the request body type sent upstream.
pub struct Upstreams<B> {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle<B>>>>,
}

/// A connection taken for one exchange.
pub struct Checkout<B> {
    pub tx: SendRequest<B>,
    /// Whether it served an earlier exchange (a kept-alive connection the replica may
    /// have closed meanwhile).
    pub reused: bool,
}

impl<B> Default for Upstreams<B> {
    fn default() -> Self {
        Upstreams { idle: Mutex::new(HashMap::new()) }
    }
}

impl<B> Upstreams<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A connection to `addr`: a kept-alive one if any is usable, else a new one.
    pub async fn checkout(&self, addr: SocketAddr) -> Result<Checkout<B>, ProxyError> {
        while let Some(mut idle) = self.pop(addr) {
            if idle.tx.is_closed() || idle.since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            if idle.tx.is_ready() {
                return Ok(Checkout { tx: idle.tx, reused: true });
            }
            // Settling: its last exchange has ended both ways; hyper is about to ask
            // for the next request, or to close.
            if let Ok(Ok(())) = tokio::time::timeout(SETTLE, idle.tx.ready()).await {
                return Ok(Checkout { tx: idle.tx, reused: true });
            }
        }
        self.connect(addr).await
    }

    /// A new connection to `addr`, whatever is idle.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Checkout<B>, ProxyError> {
        Ok(Checkout { tx: connect(addr).await?, reused: false })
    }

    fn pop(&self, addr: SocketAddr) -> Option<Idle<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        let last = list.pop();
        if list.is_empty() {
            idle.remove(&addr);
        }
        last
    }

    /// Gives back a connection whose exchange has ended both ways.
    pub fn checkin(&self, addr: SocketAddr, tx: SendRequest<B>) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_REPLICA {
            // The oldest is the likeliest to have been closed by the replica.
            list.remove(0);
        }
        list.push(Idle { tx, since: Instant::now() });
    }

    /// Drops idle connections that are closed or too old (run periodically, so a
    /// replica that is gone does not keep sockets open).
    pub fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|i| !i.tx.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
            !list.is_empty()
        });
        if idle.is_empty() && idle.capacity() > 64 {
            idle.shrink_to_fit();
        }
    }

    /// Idle connections now (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum()
    }
}

/// Opens a connection to a replica and starts its driver task (which also carries
/// upgraded connections, for WebSockets).
async fn connect<B>(addr: SocketAddr) -> Result<SendRequest<B>, ProxyError>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
        Err(_) => return Err(ProxyError::ConnectTimeout { addr }),
    };
    let _ = stream.set_nodelay(true);
    let (tx, conn) = Builder::new()
        .max_header_size(MAX_RESPONSE_HEAD)
        .max_buf_size(UPSTREAM_READ_BUF)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(tx)
}
