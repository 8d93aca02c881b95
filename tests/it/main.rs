//! berth's integration tests: each starts the real daemon and talks to it as a user would.

#![expect(clippy::disallowed_methods, reason = "the tests drive real processes: berth, curl, python")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking; the daemon's own code may not"
)]

mod acme;
mod admin;
mod bad_input;
mod bench_start;
mod browser;
mod builds;
mod clients;
mod conformance;
mod console;
mod credentials;
mod deployments;
mod domains;
mod durability;
mod engine;
mod flow;
mod git;
mod harness;
mod hold;
mod images;
mod ingress;
mod jobs;
mod lifecycle;
mod matrix;
mod metrics;
mod network;
mod openapi;
mod ratelimit;
mod registry;
mod remote;
mod replicas;
mod runtime;
mod secrets;
mod services;
mod tls;
mod tools;
mod uploads;
