//! Custom domains (adr/027): which hostnames a user may attach, the token that
//! proves they control one, and the ownership check itself.
//!
//! Design:
//! - A hostname is a DNS name of at least two labels, lowercased, and none of the
//!   names berth hands out or answers itself: not an IP address, not `localhost`
//!   or under it, not the apps domain or under it (the default hostnames: one
//!   project could otherwise take another's), not the control domain.
//! - The check fetches `http://<hostname>:<ingress.challenge_port>/.well-known/berth-challenge/<token>`,
//!   resolving the name through `[dns] overrides` first, like pulls do. A fixed port
//!   and path, one request, no redirect followed, at most [`MAX_BODY`] bytes read and
//!   [`TIMEOUT`] for all of it: a user picks only the name, so the check cannot be
//!   pointed at an arbitrary URL, and what comes back is compared, never shown.
//! - The outcome is a sentence for the domain's `error` field that says what
//!   happened: the name does not resolve, nothing listens, the answer's status, a
//!   different token.
//!
//! Limits: one address is tried after another until one accepts (no racing of
//! IPv4 and IPv6); the check is plain HTTP, as HTTP-01 is.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, header};
use rand::RngCore;

use crate::ingress::challenge::BERTH_PREFIX;
use crate::outbound::Resolver;

/// The whole check: resolve, connect, ask, read.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer read; a token is 64 characters.
pub const MAX_BODY: usize = 4096;

/// A fresh verification token: 32 random bytes as 64 lowercase hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default hostnames' and the control domain's place, which no custom domain may take.
pub struct Reserved<'a> {
    pub apps_domain: &'a str,
    pub control_domain: Option<&'a str>,
}

/// `hostname` lowercased (one trailing dot dropped) when a user may attach it, else
/// why not.
pub fn check_hostname(hostname: &str, reserved: &Reserved<'_>) -> Result<String, String> {
    let h = hostname.strip_suffix('.').unwrap_or(hostname).to_ascii_lowercase();
    if h.is_empty() {
        return Err("hostname must not be empty".into());
    }
    if h.len() > 253 {
        return Err("hostname must be at most 253 characters".into());
    }
    let unbracketed = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(&h);
    let numeric_tld = h.rsplit('.').next().is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
    if unbracketed.parse::<IpAddr>().is_ok() || numeric_tld {
        return Err(format!("hostname {h:?} is an IP address; attach a DNS name that points at this host"));
    }
    if !crate::validate::is_hostname(&h) {
        return Err(format!(
            "hostname {h:?} is not a DNS name: dot-separated labels of a-z, 0-9 and '-' (1-63 each, not starting or ending with '-')"
        ));
    }
    if !h.contains('.') {
        return Err(format!("hostname {h:?} needs at least two labels (e.g. app.example.com)"));
    }
    let at_or_under = |parent: &str| {
        let parent = parent.to_ascii_lowercase();
        h == parent || h.ends_with(&format!(".{parent}"))
    };
    if at_or_under("localhost") {
        return Err(format!("hostname {h:?} is under localhost, which never leaves this host"));
    }
    if at_or_under(reserved.apps_domain) {
        return Err(format!(
            "hostname {h:?} is under the apps domain {}, where every service already has its default hostname",
            reserved.apps_domain
        ));
    }
    if reserved.control_domain.is_some_and(|c| c.eq_ignore_ascii_case(&h)) {
        return Err(format!("hostname {h:?} is the control domain, which routes to the API"));
    }
    Ok(h)
}

/// Checks that `http://<hostname>:<port>/.well-known/berth-challenge/<token>`
/// answers the token; `Err` says what happened instead.
pub(crate) async fn check_ownership(resolver: &Resolver, hostname: &str, port: u16, token: &str) -> Result<(), String> {
    match tokio::time::timeout(TIMEOUT, fetch(resolver, hostname, port, token)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("{hostname} (port {port}) did not answer within {} s", TIMEOUT.as_secs())),
    }
}

fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "timed out".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        _ => e.to_string(),
    }
}

/// Aborts the connection's task when the check is over, however it ends.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn fetch(resolver: &Resolver, hostname: &str, port: u16, token: &str) -> Result<(), String> {
    let ips = match resolver.lookup(hostname).await {
        Ok(ips) if !ips.is_empty() => ips,
        Ok(_) => return Err(format!("{hostname} does not resolve (no address)")),
        Err(e) => return Err(format!("{hostname} does not resolve ({e})")),
    };
    let mut connected = None;
    let mut refused = String::new();
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                connected = Some((s, addr));
                break;
            }
            Err(e) => refused = format!("could not connect to {hostname} ({addr}): {}", io_reason(&e)),
        }
    }
    let Some((stream, addr)) = connected else { return Err(refused) };
    let path = format!("{BERTH_PREFIX}{token}");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{hostname} ({addr}) did not speak HTTP: {e}"))?;
    let _driver = Driver(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let host = if port == 80 { hostname.to_string() } else { format!("{hostname}:{port}") };
    let request = Request::get(path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, concat!("berth/", env!("CARGO_PKG_VERSION"), " (domain verification)"))
        .body(Empty::new())
        .map_err(|e| format!("could not make the request: {e}"))?;
    let response =
        sender.send_request(request).await.map_err(|e| format!("{hostname} ({addr}) did not answer over HTTP: {e}"))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!("{hostname} ({addr}) answered {status} for {path}; redirects are not followed"));
    }
    if status != StatusCode::OK {
        return Err(format!("{hostname} ({addr}) answered {status} for {path}"));
    }
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{hostname} ({addr}) broke off its answer: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if got.len() + data.len() > MAX_BODY {
                return Err(format!(
                    "{hostname} ({addr}) answered more than {MAX_BODY} bytes, not the token (is another server answering?)"
                ));
            }
            got.extend_from_slice(data);
        }
    }
    if String::from_utf8_lossy(&got).trim() != token {
        return Err(format!(
            "{hostname} ({addr}) answered with a different token (is the name pointed at another server?)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const RESERVED: Reserved<'static> =
        Reserved { apps_domain: "apps.example.com", control_domain: Some("berth.example.com") };

    #[test]
    fn hostnames_are_dns_names_outside_what_berth_hands_out() {
        assert_eq!(check_hostname("App.Example.COM.", &RESERVED).as_deref(), Ok("app.example.com"));
        assert_eq!(check_hostname("example.org", &RESERVED).as_deref(), Ok("example.org"));
        assert_eq!(
            check_hostname("berth.example.com.evil.test", &RESERVED).as_deref(),
            Ok("berth.example.com.evil.test")
        );
        assert_eq!(check_hostname("www.berth.example.com", &RESERVED).as_deref(), Ok("www.berth.example.com"));
        assert_eq!(check_hostname("xapps.example.com", &RESERVED).as_deref(), Ok("xapps.example.com"));
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert!(long.len() > 253);
        for bad in [
            "",
            ".",
            "com",
            "127.0.0.1",
            "10.0.0.256",
            "1.2.3",
            "::1",
            "[::1]",
            "[2001:db8::1]",
            "example.123",
            "localhost",
            "x.localhost",
            "a.b.LOCALHOST",
            "apps.example.com",
            "web.alpha.apps.example.com",
            "berth.example.com",
            "Berth.Example.com",
            "under_score.example.com",
            "-lead.example.com",
            "trail-.example.com",
            "a..b.com",
            "*.example.com",
            "app.example.com:8080",
            "http://app.example.com",
            "app.example.com/x",
            " app.example.com",
            "äpp.example.com",
            &long,
        ] {
            assert!(check_hostname(bad, &RESERVED).is_err(), "{bad:?} must be refused");
        }
        let e = check_hostname("web.alpha.apps.example.com", &RESERVED).unwrap_err();
        assert!(e.contains("apps domain"), "{e}");
        let e = check_hostname("127.0.0.1", &RESERVED).unwrap_err();
        assert!(e.contains("IP address"), "{e}");
        let token = new_token();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(token, new_token());
    }

    /// A server on loopback that answers every connection with `response`;
    /// returns its port.
    async fn answering(response: &'static str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(response.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        port
    }

    fn resolver() -> Resolver {
        let mut o = BTreeMap::new();
        o.insert("app.test".to_string(), IpAddr::from([127, 0, 0, 1]));
        Resolver::new(Arc::new(o))
    }

    #[tokio::test]
    async fn the_check_wants_the_token_and_says_what_it_got_instead() {
        let token = "abc123";
        let r = resolver();
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nabc123\n").await;
        assert_eq!(check_ownership(&r, "app.test", ok, token).await, Ok(()));
        let other = answering("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nzzzzz").await;
        let e = check_ownership(&r, "app.test", other, token).await.unwrap_err();
        assert!(e.contains("different token"), "{e}");
        let missing = answering("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        let e = check_ownership(&r, "app.test", missing, token).await.unwrap_err();
        assert!(e.contains("answered 404"), "{e}");
        let moved =
            answering("HTTP/1.1 301 Moved Permanently\r\nlocation: http://127.0.0.1/\r\ncontent-length: 0\r\n\r\n")
                .await;
        let e = check_ownership(&r, "app.test", moved, token).await.unwrap_err();
        assert!(e.contains("301") && e.contains("redirects are not followed"), "{e}");
        static BIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| format!("HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n{}", "x".repeat(5000)));
        let e = check_ownership(&r, "app.test", answering(big).await, token).await.unwrap_err();
        assert!(e.contains("more than 4096 bytes"), "{e}");
        let garbage = answering("SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
        let e = check_ownership(&r, "app.test", garbage, token).await.unwrap_err();
        assert!(e.contains("did not answer over HTTP"), "{e}");
        // A port nothing listens on: bind one, then let it go.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let e = check_ownership(&r, "app.test", closed, token).await.unwrap_err();
        assert_eq!(e, format!("could not connect to app.test (127.0.0.1:{closed}): connection refused"));
    }
}
