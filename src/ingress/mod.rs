//! The ingress: host-based routing of HTTP requests to service replicas.
//!
//! - [`routes::RoutingTable`] is the live table: a host name (a service's default
//!   hostname `<service>.<project>.<apps_domain>` and its verified custom domains,
//!   adr/027) → the addresses of its healthy replicas. Deployments switch a
//!   service's entry in one step when a rollout's new replicas are healthy; the proxy
//!   reads a snapshot per request, so a request sees either the old set or the new
//!   one, never a mix.
//! - [`proxy::Proxy`] is the reverse proxy on both listeners, served by the same
//!   accept loop as the API (`crate::http::serve`, with the `[ingress]` caps and
//!   deadlines): plain HTTP/1.1 on `ingress.http_listen`, and TLS on
//!   `ingress.https_listen` with the certificate [`tls::CertStore`] picks by SNI and
//!   HTTP/2 or HTTP/1.1 by ALPN. Before routing it answers the challenge paths
//!   ([`challenge`]), redirects plain requests for hosts with a certificate of their
//!   own to HTTPS (308), and hands the control domain to the API's router in-process.
//!   It streams requests and responses to a replica over pooled kept-alive HTTP/1.1
//!   connections ([`upstream`]), sets the forwarding headers and a fresh
//!   `X-Request-Id` ([`headers`]), answers 404, 503, 502 or 504 with a short page of
//!   its own ([`error`]) and passes WebSocket upgrades through (HTTP/1.1, over TLS
//!   too).
//! - [`access_log::AccessLog`] keeps each service's recent requests in memory.
//! - [`tls::CertStore`] holds a certificate per host for SNI, with a self-signed
//!   fallback; [`acme`] gets certificates from an ACME CA (HTTP-01 answered
//!   through [`challenge::Challenges`]), which `crate::workers::acme` stores and
//!   renews in the background (adr/028).
//!
//! Current limits: HTTP-01 only (no TLS-ALPN-01, no wildcard certificates);
//! replicas are spoken to over HTTP/1.1 only; a replica must answer a request's head
//! within `ingress.upstream_timeout_seconds` (504 otherwise), but a body streaming
//! after the head is never cut; WebSockets over HTTP/2 (extended CONNECT) are not
//! offered; forwarding headers a client sends are replaced, so a trusted proxy in
//! front of berth cannot pass its chain through (adr/029).

pub mod access_log;
pub mod acme;
pub mod challenge;
pub mod error;
pub mod headers;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod upstream;
