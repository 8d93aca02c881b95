//! The `/v1` management API.
//!
//! A request travels: `middleware::context` (request id, authentication, rate limit)
//! → router → `middleware::authorize` (the route table's access and scope, then the
//! audit entry) → a handler, which parses and validates input and calls `store`
//! (later `engine`) to act. Handlers never hold SQL themselves.

pub mod audit;
pub mod error;
pub mod extract;
pub mod health;
pub mod middleware;
pub mod node;
pub mod openapi;
pub mod projects;
pub mod ratelimit;
pub mod registry;
pub mod router;
pub mod serve;
pub mod session;
pub mod tokens;
pub mod users;
pub mod validate;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::store::Store;
use error::{ApiError, ApiResult};

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Authenticator,
    pub limiter: ratelimit::RateLimiter,
    pub logins: ratelimit::LoginLimiter,
    /// Bounds concurrent argon2 work (each call holds 19 MiB for tens of ms).
    pub hashing: Semaphore,
    pub started: Instant,
    pub host: crate::runtime::host::StaticFacts,
    pub openapi: axum::body::Bytes,
    pub registry: crate::registry::Registry,
    /// `None` when this daemon does not run containers (no runc, not root, or off).
    pub engine: Option<Arc<crate::engine::Engine>>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        host: crate::runtime::host::StaticFacts,
        engine: Option<Arc<crate::engine::Engine>>,
    ) -> Self {
        let permits = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let registry = crate::registry::Registry::new(
            config.data_dir.join("registry"),
            store.clone(),
            std::time::Duration::from_secs(config.registry.gc_grace_seconds),
            std::time::Duration::from_secs(config.registry.upload_ttl_seconds),
        );
        AppState(Arc::new(Shared {
            engine,
            registry,
            config,
            auth: Authenticator::new(store.clone()),
            store,
            limiter: Default::default(),
            logins: Default::default(),
            hashing: Semaphore::new(permits),
            started: Instant::now(),
            host,
            openapi: openapi::render(),
        }))
    }

    /// Hashes a password on a blocking thread, bounded by the hashing semaphore.
    pub async fn hash_password(&self, password: String) -> ApiResult<String> {
        let _permit = self.hashing.acquire().await.map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(move || crate::auth::password::hash(&password))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }

    /// Verifies a password (or burns the same time when there is no hash to check).
    pub async fn verify_password(&self, password: String, phc: Option<String>) -> ApiResult<bool> {
        let _permit = self.hashing.acquire().await.map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(move || match phc {
            Some(h) => crate::auth::password::verify(&password, &h),
            None => {
                crate::auth::password::verify_dummy(&password);
                false
            }
        })
        .await
        .map_err(ApiError::internal)
    }
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
