//! The `/v1` management API.
//!
//! A request travels: `middleware::context` (request id, authentication, rate limit)
//! → router → `middleware::authorize` (the route table's access and scope, then the
//! audit entry) → a handler, which parses and validates input and calls `store`
//! or `engine` (services, deployments) to act. Handlers never hold SQL themselves.

pub mod audit;
pub mod builds;
pub mod cache;
pub mod certificates;
pub mod console;
pub mod console_page;
pub mod credentials;
pub mod deployments;
pub mod domains;
pub mod error;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod middleware;
pub mod node;
pub mod openapi;
pub mod projects;
pub mod registry;
pub mod router;
pub mod services;
pub mod session;
pub mod tokens;
pub mod uploads;
pub mod users;
pub mod webhooks;

#[cfg(test)]
mod tests;

pub use crate::state::AppState;
use crate::validate;
use error::{ApiError, ApiResult};

/// Hashes a new password on the gate's hashing pool.
pub async fn hash_password(state: &AppState, password: String) -> ApiResult<String> {
    Ok(crate::http::login::hash_password(&state.gate, password).await?)
}

/// Checks a new password against the policy.
pub fn check_password(password: &str) -> ApiResult<()> {
    use crate::auth::password::{MAX_LEN, MIN_LEN};
    if password.chars().count() < MIN_LEN || password.len() > MAX_LEN {
        return Err(ApiError::invalid(format!("password must be {MIN_LEN} to {MAX_LEN} characters")));
    }
    Ok(())
}

/// Checks a username's shape.
pub fn check_username(username: &str) -> ApiResult<()> {
    if !validate::is_username(username) {
        return Err(ApiError::invalid(
            "username must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    Ok(())
}
