//! Request plumbing shared by `/v1` (`api`) and `/v2` (`registry`), below both.
//!
//! - [`serve`]: the accept loop with its caps (connections, request heads) and the
//!   deadline on request bodies;
//! - [`context`]: the outer layer (request id, who is calling, rate limits, early
//!   size refusals) and the [`Ctx`] every handler gets;
//! - [`ratelimit`]: GCRA budgets per address, credential and user, and the
//!   failed-login window;
//! - [`login`]: password checks on their own hashing pool, and sessions;
//! - [`body`]: bounded, timed body reads.
//!
//! Which protocol answers a refusal (the `/v1` envelope or `/v2` OCI errors) is
//! decided above, by the [`Surface`] the router passes in; nothing here imports
//! `api` or `registry`.

pub mod body;
pub mod context;
pub mod login;
pub mod ratelimit;
pub mod serve;

pub use context::{Auth, Ctx, Gate, Rejection, Surface};

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

/// The id of the request being served, or an empty string outside one.
pub fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The listener address a connection came in on (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub std::net::SocketAddr);
