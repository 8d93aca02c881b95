//! The HTTP side of a pull: one pooled hyper client (HTTP/1.1; TLS by rustls with
//! ring and the system's CA roots), names answered by `[dns] overrides` before the
//! system resolver, plain HTTP only to loopback hosts, bounded redirects that drop
//! credentials when they leave the host, and bodies that must keep moving.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::outbound::Resolver;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, Sleep};

use super::PullError;

/// Time to open a TCP connection (and finish the TLS handshake's first step).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from sending a request to the response head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed for one request (registries send blob GETs to object storage).
const MAX_REDIRECTS: usize = 5;
/// A response body gets this long before [`MIN_RATE`] applies.
const BODY_GRACE: Duration = Duration::from_secs(30);
/// Slowest average rate a response body may arrive at after the grace, bytes/s.
const MIN_RATE: u64 = 32 * 1024;
/// Longest pause between two pieces of a response body.
const BODY_IDLE: Duration = Duration::from_secs(60);

type Connector = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;

/// The shared client. Built once (loading the CA roots reads the system's store).
pub(super) struct Http {
    client: Client<Connector, Empty<Bytes>>,
    /// Why HTTPS cannot work here (no CA roots), said when an HTTPS pull is tried.
    tls_unavailable: Option<String>,
}

impl Http {
    /// Blocking: reads the system's CA certificates (`rustls-native-certs`, which
    /// honours `SSL_CERT_FILE` and `SSL_CERT_DIR`), plus `extra_roots` (PEM). Without
    /// any root the client is still made (loopback registries need no TLS) and HTTPS
    /// pulls say why they cannot work.
    pub(super) fn new(overrides: Arc<BTreeMap<String, IpAddr>>, extra_roots: &[u8]) -> Result<Http, String> {
        let tcp = crate::outbound::tcp(overrides, CONNECT_TIMEOUT);
        let (config, tls_unavailable) = crate::outbound::tls_config(extra_roots)?;
        if tls_unavailable.is_some() {
            tracing::warn!("no CA certificates: pulls over HTTPS will fail (install ca-certificates)");
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        Ok(Http { client, tls_unavailable })
    }

    /// Sends a GET or HEAD and follows redirects. `auth` goes only to `url`'s own
    /// host: a redirect elsewhere (object storage) goes without it. Answers the
    /// final response and the URL it came from.
    pub(super) async fn send(
        &self,
        registry: &str,
        method: Method,
        url: Uri,
        headers: &HeaderMap,
        auth: Option<&HeaderValue>,
    ) -> Result<(Response<Incoming>, Uri), PullError> {
        let origin = url.authority().cloned();
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            check_scheme(registry, &url)?;
            if url.scheme_str() == Some("https") {
                if let Some(why) = &self.tls_unavailable {
                    return Err(PullError::Unreachable {
                        registry: registry.to_string(),
                        reason: format!("cannot check its TLS certificate: {why}"),
                    });
                }
            }
            let mut req = Request::builder().method(method.clone()).uri(url.clone());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            if let Some(a) = auth.filter(|_| url.authority() == origin.as_ref()) {
                req = req.header(header::AUTHORIZATION, a.clone());
            }
            req = req.header(header::USER_AGENT, concat!("berth/", env!("CARGO_PKG_VERSION")));
            let req = req
                .body(Empty::new())
                .map_err(|e| PullError::Protocol { registry: registry.to_string(), reason: e.to_string() })?;
            let resp = match tokio::time::timeout(HEAD_TIMEOUT, self.client.request(req)).await {
                Err(_) => {
                    return Err(PullError::Timeout {
                        registry: registry.to_string(),
                        what: format!("no answer within {}s", HEAD_TIMEOUT.as_secs()),
                    });
                }
                Ok(Err(e)) => return Err(unreachable(registry, &e)),
                Ok(Ok(r)) => r,
            };
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok((resp, url));
            }
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| resolve(&url, l))
                .ok_or_else(|| PullError::Protocol {
                    registry: registry.to_string(),
                    reason: format!("a {} redirect without a usable Location", resp.status().as_u16()),
                })?;
            // The redirect's body is not wanted; dropping it closes that connection.
            drop(resp);
            url = next;
        }
        Err(PullError::Protocol {
            registry: registry.to_string(),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }
}

/// An error that names where it failed and why, never a URL's query (presigned
/// object-storage URLs carry signatures there).
fn unreachable(registry: &str, e: &hyper_util::client::legacy::Error) -> PullError {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    PullError::Unreachable { registry: registry.to_string(), reason }
}

/// Whether a host, as written in a reference or URL, is a loopback address.
pub(super) fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The scheme berth speaks to a registry host: plain HTTP to loopback (nothing leaves
/// the machine), HTTPS to anything else.
pub(super) fn scheme_for(host: &str) -> &'static str {
    if is_loopback_host(host) { "http" } else { "https" }
}

/// Plain HTTP is allowed to loopback hosts only, for redirects and token realms too.
fn check_scheme(registry: &str, url: &Uri) -> Result<(), PullError> {
    match (url.scheme_str(), url.host()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), Some(h)) if is_loopback_host(h) => Ok(()),
        (Some("http"), Some(h)) => Err(PullError::Protocol {
            registry: registry.to_string(),
            reason: format!("refusing plain HTTP to {h}: only loopback registries may be reached without TLS"),
        }),
        _ => Err(PullError::Protocol {
            registry: registry.to_string(),
            reason: format!("unsupported URL scheme {:?}", url.scheme_str().unwrap_or("")),
        }),
    }
}

/// `location` made absolute against `base` (RFC 3986 §5.2, the cases servers send:
/// absolute, scheme-relative, absolute path, relative path).
pub(super) fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    let authority = base.authority()?;
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}").parse().ok();
    }
    let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
    format!("{scheme}://{authority}{dir}/{location}").parse().ok()
}

/// A URL for messages: scheme, host and path, never the query.
pub(super) fn display_url(u: &Uri) -> String {
    format!("{}://{}{}", u.scheme_str().unwrap_or(""), u.authority().map_or("", |a| a.as_str()), u.path())
}

/// Why a guarded body stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BodyFault {
    TooSlow,
    TooLarge(u64),
    Broken(String),
}

impl std::fmt::Display for BodyFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyFault::TooSlow => f.write_str("the body arrived too slowly"),
            BodyFault::TooLarge(limit) => write!(f, "the body is larger than {limit} bytes"),
            BodyFault::Broken(e) => write!(f, "the body broke off: {e}"),
        }
    }
}

impl std::error::Error for BodyFault {}

/// A response body that must keep moving (a grace, then a minimum average rate,
/// and a longest pause) and may not exceed `limit` bytes. Why it failed is kept in
/// `fault`, for callers that see the error only through another layer.
pub(super) struct Guarded<B = Incoming> {
    inner: B,
    limit: u64,
    received: u64,
    /// Set at the first read: the clock starts then.
    started: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    pub(super) fault: Arc<std::sync::Mutex<Option<BodyFault>>>,
    done: bool,
}

impl<B> Guarded<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub(super) fn new(inner: B, limit: u64) -> Guarded<B> {
        Guarded {
            inner,
            limit,
            received: 0,
            started: None,
            timer: Box::pin(tokio::time::sleep(BODY_GRACE)),
            fault: Arc::new(std::sync::Mutex::new(None)),
            done: false,
        }
    }

    /// When the body fails if nothing more comes: the grace plus the time the bytes
    /// so far buy at the minimum rate, and never later than the longest pause.
    fn deadline(&self, started: Instant, last: Instant) -> Instant {
        let by_rate = started + BODY_GRACE + Duration::from_secs_f64(self.received as f64 / MIN_RATE as f64);
        by_rate.min(last + BODY_IDLE)
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        self.done = true;
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(fault.clone());
        Poll::Ready(Some(Err(fault)))
    }

    /// Reads the whole body (for small documents: manifests, token answers).
    pub(super) async fn read_all(mut self) -> Result<Vec<u8>, BodyFault> {
        let mut out = Vec::new();
        while let Some(frame) = self.frame().await {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let started = match this.started {
            Some(s) => s,
            None => {
                let now = Instant::now();
                this.started = Some(now);
                let d = this.deadline(now, now);
                this.timer.as_mut().reset(d);
                now
            }
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        let limit = this.limit;
                        return this.fail(BodyFault::TooLarge(limit));
                    }
                    let d = this.deadline(started, Instant::now());
                    this.timer.as_mut().reset(d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(BodyFault::Broken(e.to_string())),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => this.fail(BodyFault::TooSlow),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed by the test through a channel.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// Sends `chunk` bytes every `every` for `times` times, then ends the body.
    fn trickle(chunk: usize, every: Duration, times: usize) -> Fed {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..times {
                tokio::time::sleep(every).await;
                if tx.send(Bytes::from(vec![0u8; chunk])).await.is_err() {
                    return;
                }
            }
        });
        Fed(rx)
    }

    async fn drain(b: Guarded<Fed>) -> (Result<u64, BodyFault>, Duration) {
        let t0 = Instant::now();
        let r = b.read_all().await.map(|v| v.len() as u64);
        (r, t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_must_keep_its_rate_after_the_grace() {
        // 64 KiB/s for a minute: fine.
        let (r, _) = drain(Guarded::new(trickle(64 << 10, Duration::from_secs(1), 60), u64::MAX)).await;
        assert_eq!(r, Ok(60 * (64 << 10)));
        // 1 KiB/s: fine during the grace, then too slow.
        let (r, took) = drain(Guarded::new(trickle(1024, Duration::from_secs(1), 600), u64::MAX)).await;
        assert_eq!(r, Err(BodyFault::TooSlow));
        assert!(took >= BODY_GRACE && took < BODY_GRACE + Duration::from_secs(5), "{took:?}");
        // A pause longer than the longest allowed, even with credit from a fast start.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Bytes::from(vec![0u8; 64 << 20])).await.unwrap();
        let (r, took) = drain(Guarded::new(Fed(rx), u64::MAX)).await;
        assert_eq!(r, Err(BodyFault::TooSlow));
        assert_eq!(took, BODY_IDLE);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_may_not_exceed_its_limit() {
        let b = Guarded::new(trickle(1000, Duration::from_millis(1), 5), 4500);
        let fault = b.fault.clone();
        let (r, _) = drain(b).await;
        assert_eq!(r, Err(BodyFault::TooLarge(4500)));
        assert_eq!(*fault.lock().unwrap(), Some(BodyFault::TooLarge(4500)), "the reason is kept for the caller");
        let (r, _) = drain(Guarded::new(trickle(1000, Duration::from_millis(1), 5), 5000)).await;
        assert_eq!(r, Ok(5000));
    }

    #[test]
    fn loopback_plain_http_and_redirect_targets() {
        for h in ["127.0.0.1", "127.3.2.1", "[::1]", "::1", "localhost", "LOCALHOST"] {
            assert!(is_loopback_host(h), "{h}");
            assert_eq!(scheme_for(h), "http");
        }
        for h in ["10.0.0.1", "registry.test", "localhost.example.com", "[::2]"] {
            assert_eq!(scheme_for(h), "https", "{h}");
        }
        let base: Uri = "https://r.io/v2/a/blobs/sha256:x".parse().unwrap();
        let abs = |l: &str| resolve(&base, l).map(|u| u.to_string());
        assert_eq!(abs("https://s3.example.com/b?sig=1").as_deref(), Some("https://s3.example.com/b?sig=1"));
        assert_eq!(abs("//cdn.example.com/x").as_deref(), Some("https://cdn.example.com/x"));
        assert_eq!(abs("/v2/other").as_deref(), Some("https://r.io/v2/other"));
        assert_eq!(abs("y").as_deref(), Some("https://r.io/v2/a/blobs/y"));
        let presigned: Uri = "https://s3.example.com/bucket/key?X-Amz-Signature=secret".parse().unwrap();
        assert_eq!(display_url(&presigned), "https://s3.example.com/bucket/key", "no query in messages");
        assert!(check_scheme("r", &"http://127.0.0.1:5000/x".parse().unwrap()).is_ok());
        assert!(check_scheme("r", &"http://r.io/x".parse().unwrap()).is_err());
        assert!(check_scheme("r", &"ftp://r.io/x".parse().unwrap()).is_err());
    }
}
