//! The ingress's HTTP/1.1 fast path (adr/036).
//!
//! Most requests through an ingress are bodyless heads (GET, HEAD, DELETE…) for a
//! routed host. For those, the client connection's own task parses the head
//! (httparse, no header map), writes it with the forwarding headers to a pooled
//! replica connection, parses the answer's head the same way and streams its body
//! back as it comes, counting the bytes: one read and one write on each side, no
//! channel or other task in between.
//!
//! Everything else hands the connection, with the bytes already read, to the
//! general path ([`crate::http::serve::serve_http1`], hyper and [`Proxy`]'s
//! handler) for the rest of its life, so every rule and answer of that path holds
//! unchanged: a request with a body, an upgrade, `Expect`, HTTP/1.0, an
//! absolute-form target, a `Connection` header naming other headers, a challenge
//! path, the control domain, a host to redirect, an unknown host, a service without
//! a healthy replica, and anything malformed or over the limits.
//!
//! What the fast path forwards is what the general path would: hop-by-hop headers
//! out (both ways), `X-Forwarded-For/-Proto/-Host` and `X-Request-Id` set by the
//! ingress, the replica's body framed as it came (a length, or chunks passed through
//! verbatim after checking their syntax; a body that ends with the connection ends
//! the client's connection too). Failures before the answer's head are the same
//! pages (502, 504) after the same retries: a replica that refuses the connection
//! is replaced by another once, and a kept-alive connection the replica closed is
//! replaced by a fresh one (idempotent requests only once the head was written).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::{Challenges, MAX_ATTEMPTS, Pending, Proxy, other_backend};
use crate::http::serve::{Conn, Limits, MAX_HEAD_BYTES};
use crate::ingress::access_log::clip_path;
use crate::ingress::error::ProxyError;
use crate::ingress::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID, is_hop_by_hop, is_set_by_ingress,
};
use crate::ingress::routes::{Backend, Route, normalize_host};
use crate::ingress::upstream::{CONNECT_TIMEOUT, IDLE_TIMEOUT, MAX_IDLE_PER_REPLICA, MAX_RESPONSE_HEAD};

/// Headers a head may have (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// What a read asks for at least.
const READ_CHUNK: usize = 8 * 1024;
/// Largest read of a response body: one write to the client per read.
const BODY_CHUNK: usize = 64 * 1024;
/// Largest chunk extension accepted in a chunked body.
const MAX_CHUNK_EXT: usize = 4096;

/// A kept-alive connection to a replica, with what it has read and not yet used.
pub(super) struct UpConn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Idle replica connections of the fast path, per replica address (the general
/// path has its own, [`crate::ingress::upstream::Upstreams`]).
#[derive(Default)]
pub(super) struct RawPool {
    idle: Mutex<HashMap<SocketAddr, Vec<(UpConn, tokio::time::Instant)>>>,
}

impl RawPool {
    /// A usable idle connection to `addr`, if any.
    fn take(&self, addr: SocketAddr) -> Option<UpConn> {
        loop {
            let (conn, since) = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let list = idle.get_mut(&addr)?;
                let last = list.pop();
                if list.is_empty() {
                    idle.remove(&addr);
                }
                last?
            };
            if since.elapsed() < IDLE_TIMEOUT && still_open(&conn.stream) {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose exchange ended cleanly.
    fn give(&self, addr: SocketAddr, mut conn: UpConn) {
        if conn.buf.capacity() > 2 * READ_CHUNK {
            // A large body went through: do not keep its buffer while idle.
            conn.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_REPLICA {
            list.remove(0);
        }
        list.push((conn, tokio::time::Instant::now()));
    }

    /// Drops idle connections that are closed or too old.
    pub(super) fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|(c, since)| since.elapsed() < IDLE_TIMEOUT && still_open(&c.stream));
            !list.is_empty()
        });
        if idle.is_empty() && idle.capacity() > 64 {
            idle.shrink_to_fit();
        }
    }

    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum()
    }
}

/// Whether an idle connection is still open. The reactor has seen any end of file
/// or stray byte as readiness, so an idle connection that is not readable costs no
/// system call; one that is gets a non-blocking read, which must find nothing.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// A request head the fast path takes; its forwarded form is written aside.
struct Head {
    /// Bytes of the head in the read buffer.
    len: usize,
    method: Method,
    host: String,
    /// The path without its query, for the access log.
    path: String,
    /// The client asked to close the connection after this exchange.
    close: bool,
}

enum Parsed {
    Head(Head),
    /// The head is not whole yet.
    More,
    /// Anything the fast path does not take.
    Other,
}

/// The facts about the client a forwarded head carries.
struct Client<'a> {
    addr: IpAddr,
    tls: bool,
    request_id: &'a str,
}

/// Parses a request head from `buf` and, when the fast path takes it, writes its
/// forwarded form to `out`.
fn parse_request(buf: &[u8], out: &mut Vec<u8>, client: &Client<'_>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::More,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Parsed::Other };
    // Origin form, visible ASCII only: anything else is the general path's to judge.
    if !target.starts_with('/') || !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Parsed::Other;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Other };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    let path = target.split('?').next().unwrap_or(target);
    if Challenges::is_challenge_path(path) {
        return Parsed::Other;
    }
    // Headers `Connection` names are this hop's only (RFC 9110 §7.6.1).
    let mut named: Vec<&str> = Vec::new();
    let mut close = false;
    for h in req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        let Ok(value) = std::str::from_utf8(h.value) else { return Parsed::Other };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("close") {
                close = true;
            } else if token.eq_ignore_ascii_case("upgrade") {
                return Parsed::Other;
            } else if !token.eq_ignore_ascii_case("keep-alive") && !token.eq_ignore_ascii_case("host") {
                named.push(token);
            }
        }
    }
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: Option<&str> = None;
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("host") {
            let Ok(value) = std::str::from_utf8(h.value) else { return Parsed::Other };
            if host.is_some() || value.trim().is_empty() {
                return Parsed::Other;
            }
            host = Some(value);
        } else if is("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Parsed::Other;
            }
        } else if is("transfer-encoding") || is("upgrade") || is("expect") || is("http2-settings") {
            return Parsed::Other;
        }
        if is_hop_by_hop(name) || is_set_by_ingress(name) || named.iter().any(|n| is(n)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let Some(host) = host else { return Parsed::Other };
    let _ = write!(
        out,
        "{X_FORWARDED_FOR}: {}\r\n{X_FORWARDED_PROTO}: {}\r\n{X_FORWARDED_HOST}: {host}\r\n{X_REQUEST_ID}: {}\r\n\r\n",
        client.addr,
        if client.tls { "https" } else { "http" },
        client.request_id,
    );
    Parsed::Head(Head { len, method, host: host.to_string(), path: clip_path(path), close })
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the replica closes the connection.
    Close,
}

/// A replica's answer head, parsed; its forwarded form is written aside.
struct Answer {
    status: u16,
    framing: Framing,
    /// The replica keeps the connection open after the body.
    keep_alive: bool,
}

enum ParsedAnswer {
    Final(Answer, usize),
    /// A 1xx other than 101: skipped, its length given.
    Informational(usize),
    More,
    Bad(&'static str),
    Upgrade,
}

/// What the client's response head needs from its request.
struct Asked<'a> {
    head: bool,
    close: bool,
    request_id: &'a str,
}

/// Parses a replica's answer head from `buf` and, when final, writes the client's
/// response head to `out`.
fn parse_answer(buf: &[u8], out: &mut Vec<u8>, asked: &Asked<'_>) -> ParsedAnswer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ParsedAnswer::More,
        Err(_) => return ParsedAnswer::Bad("a malformed answer head"),
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else { return ParsedAnswer::Bad("no status") };
    let Ok(status) = StatusCode::from_u16(code) else { return ParsedAnswer::Bad("a status out of range") };
    if code == 101 {
        return ParsedAnswer::Upgrade;
    }
    if status.is_informational() {
        return ParsedAnswer::Informational(len);
    }
    let mut keep_alive = version == 1;
    let mut named: Vec<&str> = Vec::new();
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut has_date = false;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            let Ok(value) = std::str::from_utf8(h.value) else { return ParsedAnswer::Bad("a malformed Connection") };
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if !token.eq_ignore_ascii_case("keep-alive") {
                    named.push(token);
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides: chunked, or the body runs to the end of the connection.
            let last = h.value.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii).unwrap_or_default();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|b| *b == b',') {
                let part = part.trim_ascii();
                let n = std::str::from_utf8(part)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok());
                match (n, length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(seen)) if n == seen => {}
                    _ => return ParsedAnswer::Bad("a malformed or conflicting Content-Length"),
                }
            }
        } else if name.eq_ignore_ascii_case("date") {
            has_date = true;
        }
    }
    let framing = if asked.head || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    out.clear();
    let reason = resp.reason.filter(|r| !r.is_empty()).or(status.canonical_reason()).unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {code} {reason}\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        let strip = is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(X_REQUEST_ID)
            || (framing != Framing::Empty && name.eq_ignore_ascii_case("content-length"))
            || named.iter().any(|n| n.eq_ignore_ascii_case(name) && !n.eq_ignore_ascii_case("host"));
        if strip {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Close => {}
    }
    if !has_date {
        let _ = write!(out, "date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()));
    }
    let _ = write!(out, "{X_REQUEST_ID}: {}\r\n", asked.request_id);
    if asked.close || framing == Framing::Close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ParsedAnswer::Final(Answer { status: code, framing, keep_alive }, len)
}

/// Where a chunked body is (RFC 9112 §7.1): its bytes pass through as they are,
/// this only finds where the body ends, and fails on what is not chunked syntax.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    size: u64,
    digits: usize,
    ext: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

impl Chunks {
    /// Reads `buf` up to the end of the body: the bytes that belong to it, or an
    /// error for bytes that cannot.
    fn feed(&mut self, buf: &[u8]) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() && self.state != Done {
            let b = buf[i];
            match self.state {
                Size => match (b as char).to_digit(16) {
                    Some(d) => {
                        if self.size > (u64::MAX >> 4) {
                            return Err("a chunk size too large");
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                    }
                    None if self.digits == 0 => return Err("a chunk without a size"),
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = Ext,
                    None if b == b'\r' => self.state = SizeLf,
                    None => return Err("a malformed chunk size"),
                },
                Ext => self.skip_line(b, MAX_CHUNK_EXT, "a chunk extension too long", SizeLf)?,
                SizeLf => {
                    let next = if self.size == 0 { TrailerStart } else { Data };
                    self.state = expect(b, b'\n', "a malformed chunk line", next)?;
                }
                Data => {
                    let n = (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => self.state = expect(b, b'\r', "a chunk longer than its size", DataLf)?,
                DataLf => {
                    self.state = expect(b, b'\n', "a malformed chunk end", Size)?;
                    (self.digits, self.ext) = (0, 0);
                }
                TrailerStart => self.state = if b == b'\r' { EndLf } else { TrailerLine },
                TrailerLine => self.skip_line(b, MAX_RESPONSE_HEAD, "trailers too long", TrailerLf)?,
                TrailerLf => self.state = expect(b, b'\n', "a malformed trailer", TrailerStart)?,
                EndLf => self.state = expect(b, b'\n', "a malformed end of chunks", Done)?,
                Done => break,
            }
            i += 1;
        }
        Ok(i)
    }

    /// One byte of a line passed over up to its CR (a chunk extension, a trailer),
    /// counted against `cap`.
    fn skip_line(&mut self, b: u8, cap: usize, too_long: &'static str, then: ChunkState) -> Result<(), &'static str> {
        self.ext += 1;
        if self.ext > cap {
            return Err(too_long);
        }
        if b == b'\r' {
            self.state = then;
        }
        Ok(())
    }

    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// `next` when `b` is the byte the syntax wants here, else `err`.
fn expect(b: u8, want: u8, err: &'static str, next: ChunkState) -> Result<ChunkState, &'static str> {
    if b == want { Ok(next) } else { Err(err) }
}

/// How an exchange whose head reached the client ended.
enum Relayed {
    /// The body went through whole; the replica connection may be kept.
    Whole { bytes: u64, reusable: bool },
    /// The client stopped reading, or the replica broke off: the client connection ends.
    Cut { bytes: u64, why: &'static str },
    /// The body was broken before anything went to the client: a 502 can still go.
    Unsent { why: &'static str },
}

/// Writes the response head in `out` and the body after it to the client.
async fn relay<C>(client: &mut C, up: &mut UpConn, answer: &Answer, out: &mut Vec<u8>) -> Relayed
where
    C: AsyncWrite + Unpin,
{
    let mut bytes = 0u64;
    let mut chunks = Chunks::default();
    let mut left = match answer.framing {
        Framing::Empty => 0,
        Framing::Length(n) => n,
        Framing::Chunked | Framing::Close => u64::MAX,
    };
    // What the replica already sent of the body goes out with the head.
    let mut first = true;
    loop {
        let take = match answer.framing {
            Framing::Chunked => match chunks.feed(&up.buf) {
                Ok(n) => n,
                Err(why) if first => return Relayed::Unsent { why },
                Err(why) => return Relayed::Cut { bytes, why },
            },
            _ => up.buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
        };
        let wrote = if first {
            out.extend_from_slice(&up.buf[..take]);
            client.write_all(out).await
        } else {
            client.write_all(&up.buf[..take]).await
        };
        if wrote.is_err() {
            return Relayed::Cut { bytes, why: "the client went away" };
        }
        first = false;
        up.buf.advance(take);
        bytes += take as u64;
        if answer.framing != Framing::Chunked && answer.framing != Framing::Close {
            left -= take as u64;
        }
        let ended = match answer.framing {
            Framing::Chunked => chunks.done(),
            Framing::Close => false,
            Framing::Empty | Framing::Length(_) => left == 0,
        };
        if ended {
            break;
        }
        let want = match answer.framing {
            Framing::Length(_) => usize::try_from(left).unwrap_or(usize::MAX).clamp(READ_CHUNK, BODY_CHUNK),
            _ => BODY_CHUNK,
        };
        up.buf.reserve(want);
        match up.stream.read_buf(&mut up.buf).await {
            Ok(0) if answer.framing == Framing::Close => break,
            Ok(0) => return Relayed::Cut { bytes, why: "the replica closed the connection in the body" },
            Ok(_) => {}
            Err(_) => return Relayed::Cut { bytes, why: "the replica's connection broke in the body" },
        }
    }
    if client.flush().await.is_err() {
        return Relayed::Cut { bytes, why: "the client went away" };
    }
    // Bytes past the end of the body are not an answer to anything: the connection goes.
    let reusable = answer.keep_alive && up.buf.is_empty();
    Relayed::Whole { bytes, reusable }
}

/// Why no answer head came back on one connection.
enum Unanswered {
    Timeout,
    /// The connection ended or broke before any byte of an answer.
    Closed(std::io::Error),
    Bad(&'static str),
    Upgrade,
}

impl Proxy {
    /// Serves an HTTP/1.1 connection: the fast path for as long as it can take the
    /// requests, then the general path.
    pub(super) async fn serve_h1<I>(self, mut io: I, conn: Conn, limits: Limits)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut forwarded = Vec::with_capacity(1024);
        let mut out = Vec::with_capacity(1024);
        let mut stop = conn.stop.clone();
        let addr = conn.peer.ip().to_canonical();
        let head_wait = tokio::time::sleep(limits.head_timeout);
        tokio::pin!(head_wait);
        loop {
            head_wait.as_mut().reset(tokio::time::Instant::now() + limits.head_timeout);
            let request_id = crate::ids::new_request_id();
            let client = Client { addr, tls: conn.tls, request_id: &request_id };
            let head = loop {
                if !rbuf.is_empty() {
                    match parse_request(&rbuf, &mut forwarded, &client) {
                        Parsed::Head(h) => break Some(h),
                        Parsed::More if rbuf.len() < MAX_HEAD_BYTES => {}
                        Parsed::More | Parsed::Other => break None,
                    }
                }
                if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
                    rbuf.reserve(READ_CHUNK);
                }
                let idle = rbuf.is_empty();
                let read = tokio::select! {
                    r = io.read_buf(&mut rbuf) => r,
                    () = head_wait.as_mut() => return,
                    _ = stop.wait_for(|s| *s), if idle => return,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            };
            let route = head.as_ref().and_then(|h| self.fast_route(&h.host, conn.tls));
            let (Some(head), Some(route)) = (head, route) else {
                let io = TokioIo::new(Rewind { pre: rbuf, inner: io });
                return crate::http::serve::serve_http1(io, self, conn, limits).await;
            };
            rbuf.advance(head.len);
            if !self.exchange_fast(&mut io, addr, &head, &route, &forwarded, &mut out, &request_id).await
                || head.close
                || *stop.borrow()
            {
                let _ = io.shutdown().await;
                return;
            }
        }
    }

    /// The route for a host the fast path may take: not the control domain, not one
    /// to redirect to HTTPS, and with a healthy replica.
    fn fast_route(&self, host: &str, tls: bool) -> Option<std::sync::Arc<Route>> {
        let front = &self.0.front;
        if front.control.is_some() || (front.redirect.is_some() && !tls) {
            let host = normalize_host(host);
            if front.control.as_ref().is_some_and(|(domain, _)| *domain == host) {
                return None;
            }
            if front.redirect.as_ref().is_some_and(|r| !tls && r.certs.covers(&host)) {
                return None;
            }
        }
        self.0.routes.lookup(host).filter(|r| !r.backends.is_empty())
    }

    /// One exchange with a replica for a head the fast path took. Returns whether the
    /// client connection can carry another request.
    #[expect(clippy::too_many_arguments, reason = "the connection's buffers, lent for one exchange")]
    async fn exchange_fast<C>(
        &self,
        client: &mut C,
        ip: IpAddr,
        head: &Head,
        route: &std::sync::Arc<Route>,
        forwarded: &[u8],
        out: &mut Vec<u8>,
        request_id: &str,
    ) -> bool
    where
        C: AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let at = time::OffsetDateTime::now_utc();
        let mut log = Pending::with(&self.0, route, at, started, head.method.clone(), head.path.clone(), ip);
        let asked = Asked { head: head.method == Method::HEAD, close: head.close, request_id };
        match self.send_fast(route, forwarded, &head.method, &asked, out).await {
            Ok((mut up, backend, answer)) => {
                log.backend = Some(backend.clone());
                match relay(client, &mut up, &answer, out).await {
                    Relayed::Whole { bytes, reusable } => {
                        log.finish(answer.status, bytes);
                        if reusable {
                            self.0.raw.give(backend.addr, up);
                        }
                        answer.framing != Framing::Close
                    }
                    Relayed::Cut { bytes, why } => {
                        tracing::debug!(service = %route.service_id, addr = %backend.addr, why, "ingress: answer cut off");
                        log.finish(answer.status, bytes);
                        false
                    }
                    Relayed::Unsent { why } => {
                        let e = ProxyError::UpstreamSyntax { addr: backend.addr, what: why };
                        self.fail(client, e, &route.service_id, &mut log, request_id, out).await
                    }
                }
            }
            Err(e) => self.fail(client, e, &route.service_id, &mut log, request_id, out).await,
        }
    }

    /// Answers with the ingress's page for `e`; returns whether the client
    /// connection can carry another request.
    async fn fail<C>(
        &self,
        client: &mut C,
        e: ProxyError,
        service: &str,
        log: &mut Pending,
        request_id: &str,
        out: &mut Vec<u8>,
    ) -> bool
    where
        C: AsyncWrite + Unpin,
    {
        tracing::warn!(service, error = %e, "ingress: upstream failed");
        let len = error_page(out, &e, request_id);
        log.finish(e.status().as_u16(), len);
        client.write_all(out).await.is_ok() && client.flush().await.is_ok()
    }
}

impl Proxy {
    /// Sends a forwarded head to one of the route's replicas and reads the answer's
    /// head, with the general path's retries (see the module header).
    async fn send_fast<'r>(
        &self,
        route: &'r Route,
        forwarded: &[u8],
        method: &Method,
        asked: &Asked<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(UpConn, &'r Backend, Answer), ProxyError> {
        let mut backend = route.pick().ok_or(ProxyError::NoBackend)?;
        let replayable = super::is_idempotent(method);
        let timeout = self.0.front.upstream_timeout;
        let (mut moved, mut replayed, mut fresh) = (false, false, false);
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            let pooled = if fresh { None } else { self.0.raw.take(backend.addr) };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(up) => up,
                None => match connect(backend.addr).await {
                    Ok(up) => up,
                    Err(e) => match (!moved).then(|| other_backend(route, backend)).flatten() {
                        Some(next) => {
                            tracing::debug!(error = %e, next = %next.addr, "ingress: retrying on another replica");
                            (backend, moved, last) = (next, true, Some(e));
                            continue;
                        }
                        None => return Err(e),
                    },
                },
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let sent = match tokio::time::timeout_at(deadline, up.stream.write_all(forwarded)).await {
                Err(_) => return Err(ProxyError::UpstreamTimeout { addr: backend.addr }),
                Ok(r) => r,
            };
            let answered = match sent {
                Ok(()) => read_answer(&mut up, deadline, asked, out).await,
                Err(e) => Err((Unanswered::Closed(e), false)),
            };
            match answered {
                Ok(answer) => return Ok((up, backend, answer)),
                Err((Unanswered::Timeout, _)) => return Err(ProxyError::UpstreamTimeout { addr: backend.addr }),
                Err((Unanswered::Upgrade, _)) => return Err(ProxyError::UnaskedUpgrade { addr: backend.addr }),
                Err((Unanswered::Bad(what), _)) => return Err(ProxyError::UpstreamSyntax { addr: backend.addr, what }),
                Err((Unanswered::Closed(source), got_any)) => {
                    let failed = ProxyError::UpstreamIo { addr: backend.addr, source };
                    // A kept-alive connection the replica closed meanwhile: once more on a
                    // fresh one, for a request that may be sent twice.
                    if reused && !got_any && replayable && !replayed {
                        tracing::debug!(addr = %backend.addr, "ingress: replaying on a fresh connection");
                        (replayed, fresh, last) = (true, true, Some(failed));
                        continue;
                    }
                    return Err(failed);
                }
            }
        }
        Err(last.unwrap_or(ProxyError::NoBackend))
    }
}

/// Opens a connection to a replica.
async fn connect(addr: SocketAddr) -> Result<UpConn, ProxyError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
        Err(_) => return Err(ProxyError::ConnectTimeout { addr }),
    };
    let _ = stream.set_nodelay(true);
    Ok(UpConn { stream, buf: BytesMut::with_capacity(READ_CHUNK) })
}

/// Reads a replica's answer head (skipping 1xx ones) until `deadline`; on failure,
/// also whether any byte came.
async fn read_answer(
    up: &mut UpConn,
    deadline: tokio::time::Instant,
    asked: &Asked<'_>,
    out: &mut Vec<u8>,
) -> Result<Answer, (Unanswered, bool)> {
    let mut got_any = !up.buf.is_empty();
    loop {
        if !up.buf.is_empty() {
            match parse_answer(&up.buf, out, asked) {
                ParsedAnswer::Final(answer, len) => {
                    up.buf.advance(len);
                    return Ok(answer);
                }
                ParsedAnswer::Informational(len) => {
                    up.buf.advance(len);
                    continue;
                }
                ParsedAnswer::More if up.buf.len() <= MAX_RESPONSE_HEAD => {}
                ParsedAnswer::More => return Err((Unanswered::Bad("an answer head too large"), true)),
                ParsedAnswer::Bad(what) => return Err((Unanswered::Bad(what), true)),
                ParsedAnswer::Upgrade => return Err((Unanswered::Upgrade, true)),
            }
        }
        up.buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, up.stream.read_buf(&mut up.buf)).await {
            Err(_) => return Err((Unanswered::Timeout, got_any)),
            Ok(Ok(0)) => {
                let source = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before answering");
                return Err((Unanswered::Closed(source), got_any));
            }
            Ok(Ok(_)) => got_any = true,
            Ok(Err(e)) => return Err((Unanswered::Closed(e), got_any)),
        }
    }
}

/// Writes the ingress's page for `e` to `out`: the general path's answer
/// ([`super::error_response`]), head and body, in HTTP/1.1; returns the body's length.
fn error_page(out: &mut Vec<u8>, e: &ProxyError, request_id: &str) -> u64 {
    let resp = super::error_response(e);
    let status = resp.status();
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let page = match resp.into_body().0 {
        super::Kind::Page(Some(page)) => page,
        _ => hyper::body::Bytes::new(),
    };
    let _ = write!(
        out,
        "content-length: {}\r\ndate: {}\r\n{X_REQUEST_ID}: {request_id}\r\n\r\n",
        page.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    out.extend_from_slice(&page);
    page.len() as u64
}

/// A connection handed to the general path with the bytes the fast path had read.
struct Rewind<I> {
    pre: BytesMut,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client<'static> {
        Client { addr: "192.0.2.1".parse().unwrap(), tls: false, request_id: "req_1" }
    }

    fn forwarded(head: &str) -> Result<(Head, String), &'static str> {
        let mut out = Vec::new();
        match parse_request(head.as_bytes(), &mut out, &client()) {
            Parsed::Head(h) => Ok((h, String::from_utf8(out).unwrap())),
            Parsed::More => Err("more"),
            Parsed::Other => Err("other"),
        }
    }

    #[test]
    fn bodyless_requests_are_taken_and_forwarded_with_the_ingress_headers() {
        let (head, out) = forwarded(
            "GET /a?b=1 HTTP/1.1\r\nHost: Web.Test:80\r\nConnection: keep-alive, X-Hop, host\r\nX-Forwarded-For: 6.6.6.6\r\n\
             X-Request-Id: mine\r\nProxy-Authorization: x\r\nTE: trailers\r\nx-hop: 1\r\nAccept: */*\r\n\r\nGET /next",
        )
        .unwrap();
        assert_eq!(
            (head.method, head.host.as_str(), head.path.as_str(), head.close),
            (Method::GET, "Web.Test:80", "/a", false)
        );
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: Web.Test:80\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: Web.Test:80\r\nx-request-id: req_1\r\n\r\n"
        );
        let (head, _) =
            forwarded("DELETE /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(head.close);
        assert_eq!(forwarded("GET / HTTP/1.1\r\nHost: a\r\n").err(), Some("more"));
    }

    #[test]
    fn everything_else_goes_to_the_general_path() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            "GET /\u{7f} HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(forwarded(head).err(), Some("other"), "{head:?}");
        }
    }

    fn answer(head: &str, asked_head: bool) -> Result<(Answer, String), &'static str> {
        let mut out = Vec::new();
        let asked = Asked { head: asked_head, close: false, request_id: "req_1" };
        match parse_answer(head.as_bytes(), &mut out, &asked) {
            ParsedAnswer::Final(a, _) => Ok((a, String::from_utf8(out).unwrap())),
            ParsedAnswer::Informational(_) => Err("1xx"),
            ParsedAnswer::More => Err("more"),
            ParsedAnswer::Bad(what) => Err(what),
            ParsedAnswer::Upgrade => Err("101"),
        }
    }

    #[test]
    fn answer_heads_lose_their_hop_by_hop_headers_and_keep_their_framing() {
        let (a, out) = answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Inner\r\nX-Inner: 1\r\nKeep-Alive: t=5\r\n\
             X-Request-Id: theirs\r\nDate: Sun, 06 Dec 2026 12:00:00 GMT\r\n\r\nhello",
            false,
        )
        .unwrap();
        assert_eq!((a.status, a.framing, a.keep_alive), (200, Framing::Length(5), true));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 12:00:00 GMT\r\ncontent-length: 5\r\nx-request-id: req_1\r\n\r\n"
        );
        let (a, out) =
            answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", false).unwrap();
        assert_eq!(a.framing, Framing::Chunked);
        assert!(out.contains("transfer-encoding: chunked\r\n") && !out.contains("ontent-length"), "{out}");
        assert!(out.contains("\r\ndate: "), "a date is added when the replica sent none: {out}");
        let (a, out) = answer("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((a.framing, a.keep_alive), (Framing::Close, false));
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
        let (a, out) = answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!(a.framing, Framing::Empty, "the answer to HEAD has no body");
        assert!(out.contains("Content-Length: 5\r\n"), "{out}");
        assert_eq!(answer("HTTP/1.1 304 Not Modified\r\n\r\n", false).unwrap().0.framing, Framing::Empty);
        assert!(!answer("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap().0.keep_alive);
        assert!(
            !answer("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", false).unwrap().0.keep_alive
        );
        assert_eq!(answer("HTTP/1.1 100 Continue\r\n\r\n", false).err(), Some("1xx"));
        assert_eq!(answer("HTTP/1.1 101 Switching Protocols\r\n\r\n", false).err(), Some("101"));
        assert!(answer("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(answer("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(answer("this is not http\r\n\r\n", false).is_err());
    }

    #[test]
    fn error_pages_are_the_general_paths_in_http1() {
        let mut out = Vec::new();
        let len = error_page(&mut out, &ProxyError::NoBackend, "req_1");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        for line in [
            "content-type: text/html; charset=utf-8",
            "cache-control: no-store",
            "retry-after: 5",
            "x-request-id: req_1",
        ] {
            assert!(head.contains(&format!("\r\n{line}")), "{line} missing: {head}");
        }
        assert!(head.contains(&format!("\r\ncontent-length: {len}\r\n")) && head.contains("\r\ndate: "), "{head}");
        assert_eq!((body, len), (ProxyError::NoBackend.page().as_str(), body.len() as u64));
    }

    #[test]
    fn chunked_bodies_end_where_their_syntax_says_whatever_the_reads() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut c = Chunks::default();
            let a = c.feed(&body[..split]).unwrap();
            assert_eq!(a, split.min(body.len() - 4), "everything before the end belongs to the body");
            let b = c.feed(&body[split..]).unwrap();
            assert!(c.done());
            assert_eq!(a + b, body.len() - 4, "split at {split}");
        }
        for bad in [&b"x\r\n"[..], b"5\r\nhello!\r\n", b"5\nhello", b"fffffffffffffffff\r\n"] {
            assert!(Chunks::default().feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
