//! The ingress: host-based routing of HTTP requests to service replicas.
//!
//! - [`routes::RoutingTable`] is the live table: a host name (a service's default
//!   hostname `<service>.<project>.<apps_domain>`, later its verified domains) → the
//!   addresses of its healthy replicas. Deployments switch a service's entry in one
//!   step when a rollout's new replicas are healthy; the proxy reads a snapshot per
//!   request, so a request sees either the old set or the new one, never a mix.
//! - [`proxy::Proxy`] is the reverse proxy on the HTTP listener
//!   (`ingress.http_listen`), served by the same accept loop as the API
//!   (`crate::http::serve`, with the `[ingress]` caps and deadlines): it streams
//!   requests and responses to a replica over pooled kept-alive connections
//!   ([`upstream`]), rewrites the forwarding headers ([`headers`]), answers 404, 503
//!   or 502 with a short page of its own ([`error`]) and passes WebSocket upgrades
//!   through.
//! - [`access_log::AccessLog`] keeps each service's recent requests in memory.
//! - [`tls::CertStore`] holds a certificate per host for SNI, with a self-signed
//!   fallback; [`acme`] gets certificates from an ACME CA (HTTP-01 answered
//!   through [`challenge::Challenges`]), which `crate::workers::acme` stores and
//!   renews in the background (adr/028).
//!
//! Current limits: plain HTTP only (the TLS listener and custom domains come later,
//! on `ingress.https_listen`); HTTP/1.1 to clients and replicas; no timeout on a
//! replica's answer (long polls and event streams must work), so a hung replica
//! holds its clients' connections until they give up.

pub mod access_log;
pub mod acme;
pub mod challenge;
pub mod error;
pub mod headers;
pub mod proxy;
pub mod routes;
pub mod tls;
pub mod upstream;
