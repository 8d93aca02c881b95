//! The ingress: host-based routing of HTTP(S) requests to service replicas.
//!
//! [`routes::RoutingTable`] is the live table: a host name (a service's default
//! hostname `<service>.<project>.<apps_domain>`, later its verified domains) → the
//! addresses of its healthy replicas. Deployments switch a service's entry in one
//! step when a rollout's new replicas are healthy; the proxy reads a snapshot per
//! request, so a request sees either the old set or the new one, never a mix.

pub mod routes;
