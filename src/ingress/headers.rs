//! What the ingress changes in the heads it forwards: hop-by-hop headers out
//! (RFC 9110 §7.6.1), `X-Forwarded-*` and `X-Request-Id` in, the client's `Host`
//! kept.
//!
//! Forwarding headers a client sends are not trusted: berth is the edge, so
//! `X-Forwarded-For` is the address the connection came from, `-Proto` the
//! listener's scheme and `-Host` the request's host, each replacing whatever the
//! client put there. `X-Request-Id` is fresh for every request (adr/029), and the
//! client gets it back on the response.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (`Proxy` is dropped too:
/// CGI-style apps would read it as `HTTP_PROXY`).
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy", "proxy-connection"];

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
pub const X_REQUEST_ID: &str = "x-request-id";

/// Whether a header name (any case) is hop-by-hop: one of [`HOP_BY_HOP`] or a
/// `Proxy-*` one.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Whether a header name (any case) is one the ingress sets on every forwarded
/// request, replacing the client's.
pub fn is_set_by_ingress(name: &str) -> bool {
    [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_REQUEST_ID].iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether the request asks for a WebSocket (HTTP/1.1 `Upgrade: websocket` with
/// `Connection: upgrade`).
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket"))));
    upgrade && has_token(headers, header::CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// Removes the hop-by-hop headers, and those the `Connection` header names (never
/// `Host`). With `keep_upgrade`, `Upgrade` and `Connection: upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != header::HOST && !(keep_upgrade && *n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    // A message framed as chunked must not keep a length that contradicts it.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let upgrade = keep_upgrade.then(|| headers.remove(header::UPGRADE)).flatten();
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxied: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned().collect();
        for name in proxied {
            headers.remove(name);
        }
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Prepares a request's headers for the replica: hop-by-hop headers out,
/// `X-Forwarded-For` the client's address, `X-Forwarded-Proto` `https` when the
/// request came over TLS (else `http`), `X-Forwarded-Host` the request's host,
/// `X-Request-Id` the ingress's id for the request. `Host` stays as the client sent it.
pub fn forward_request(headers: &mut HeaderMap, client: IpAddr, websocket: bool, tls: bool, request_id: &HeaderValue) {
    strip_hop_by_hop(headers, websocket);
    let client = client.to_canonical().to_string();
    match HeaderValue::from_str(&client) {
        Ok(v) => headers.insert(X_FORWARDED_FOR, v),
        Err(_) => headers.remove(X_FORWARDED_FOR),
    };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    match headers.get(header::HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// A fresh request id as a header value.
pub fn new_request_id() -> HeaderValue {
    // Ids are ASCII letters, digits and `_`: always a valid header value.
    HeaderValue::from_str(&crate::ids::new_request_id()).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = map(&[
            ("host", "web.alpha.localhost"),
            ("connection", "keep-alive, X-Secret, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-foo", "1"),
            ("proxy", "http://evil"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["host", "x-kept"], "Host stays even when Connection names it");
    }

    #[test]
    fn client_sent_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("host", "Web.Alpha.localhost:8080"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
            ("x-request-id", "client-chosen"),
        ]);
        let id = new_request_id();
        forward_request(&mut h, "::ffff:192.0.2.1".parse().unwrap(), false, false, &id);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1", "a client cannot plant addresses");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "Web.Alpha.localhost:8080");
        assert_eq!(h["host"], "Web.Alpha.localhost:8080");
        assert_eq!(h["x-request-id"], id);
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
        let mut h = map(&[("host", "a.test"), ("x-forwarded-proto", "http")]);
        let other = new_request_id();
        assert_ne!(other, id, "every request gets its own id");
        forward_request(&mut h, "2001:db8::1".parse().unwrap(), false, true, &other);
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https", "the TLS listener says so");
        assert!(other.to_str().unwrap().starts_with("req_"));
        let mut h = map(&[]);
        forward_request(&mut h, "127.0.0.1".parse().unwrap(), false, false, &other);
        assert!(!h.contains_key("x-forwarded-host"), "no host, no forwarded host");
    }

    #[test]
    fn websocket_upgrades_keep_their_upgrade() {
        let mut h = map(&[("host", "a.test"), ("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert!(is_websocket(&h));
        forward_request(&mut h, "127.0.0.1".parse().unwrap(), true, false, &new_request_id());
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!is_websocket(&map(&[("upgrade", "websocket")])), "no Connection: upgrade");
        assert!(!is_websocket(&map(&[("upgrade", "h2c"), ("connection", "upgrade")])));
    }
}
