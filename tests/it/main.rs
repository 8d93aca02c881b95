//! berth's integration tests: each starts the real daemon and talks to it as a user would.

#![expect(clippy::disallowed_methods, reason = "the tests drive real processes: berth, curl, python")]

mod bad_input;
mod clients;
mod engine;
mod durability;
mod flow;
mod harness;
mod lifecycle;
mod matrix;
mod openapi;
mod ratelimit;
mod registry;
mod runtime;
mod secrets;
mod tools;
