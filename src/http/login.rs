//! Passwords and sessions, for `/v1/auth/login` and for registry clients that send
//! a password with HTTP Basic.
//!
//! A login attempt is reserved against its address's failed-login budget *before*
//! the password is checked and given back only when it succeeds, so concurrent
//! attempts cannot all get through. Hashing runs on the gate's own small pool with a
//! short queue: when it is full the attempt is refused as busy (and given back)
//! instead of waiting behind a flood. A failed attempt is logged with a short hash
//! of the name typed, never the name itself (it is sometimes a password).

use std::net::IpAddr;

use super::context::{Ctx, Gate};
use crate::auth::{self, CredentialKind};
use crate::pool::PoolError;
use crate::store::StoreError;
use crate::store::auth::NewSession;
use crate::store::users::User;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("too many failed logins; retry in {0}s")]
    RateLimited(u64),
    #[error("username or password is too long")]
    TooLong,
    #[error("wrong username or password")]
    Invalid,
    #[error("the server is busy checking passwords; retry in a second")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// Checks a username and password for a request from `source`.
pub async fn verify(gate: &Gate, source: IpAddr, username: &str, password: String) -> Result<User, LoginError> {
    let attempt = gate.logins.reserve(source).map_err(LoginError::RateLimited)?;
    if username.len() > 64 || password.len() > auth::password::MAX_LEN {
        gate.logins.succeeded(attempt);
        return Err(LoginError::TooLong);
    }
    let name = username.to_string();
    let found = gate.store.read(move |c| crate::store::users::by_username_with_hash(c, &name)).await;
    let (user, phc) = match found {
        Ok(Some((u, h))) => (Some(u), Some(h)),
        Ok(None) => (None, None),
        Err(e) => {
            gate.logins.succeeded(attempt);
            return Err(e.into());
        }
    };
    let checked = gate
        .hashing
        .try_run(move |_| match phc {
            Some(h) => auth::password::verify(&password, &h),
            None => {
                // Burn the same time, so a missing user looks like a wrong password.
                auth::password::verify_dummy(&password);
                false
            }
        })
        .await;
    let ok = match checked {
        Ok(ok) => ok,
        Err(PoolError::Busy(_)) => {
            gate.logins.succeeded(attempt);
            return Err(LoginError::Busy);
        }
        Err(e @ PoolError::Stopped(_)) => {
            gate.logins.succeeded(attempt);
            return Err(LoginError::Internal(e.to_string()));
        }
    };
    match user.filter(|_| ok) {
        Some(u) => {
            gate.logins.succeeded(attempt);
            Ok(u)
        }
        None => {
            tracing::warn!(%source, user = %name_hash(username), "failed login");
            Err(LoginError::Invalid)
        }
    }
}

/// A short, stable stand-in for a typed username in logs.
pub fn name_hash(name: &str) -> String {
    let digest = auth::hash_secret(name);
    format!("h:{}", auth::hex(&digest[..4]))
}

/// Hashes a new password on the hashing pool (waiting for room when it is busy).
pub async fn hash_password(gate: &Gate, password: String) -> Result<String, LoginError> {
    gate.hashing
        .run(move |_| auth::password::hash(&password))
        .await
        .map_err(|e| LoginError::Internal(e.to_string()))?
        .map_err(|e| LoginError::Internal(e.to_string()))
}

/// A new session: its id, token and expiry.
pub struct Opened {
    pub id: String,
    pub token: String,
    pub expires_at: String,
}

/// Opens a session for `user` that lives `ttl`. The user keeps at most
/// `api.max_sessions_per_user` sessions: the least recently used beyond that end.
pub async fn open_session(gate: &Gate, ctx: &Ctx, user: &User, ttl: time::Duration) -> Result<Opened, StoreError> {
    let id = crate::ids::new_id("ses");
    let secret = auth::new_secret();
    let hash = auth::hash_secret(&secret);
    let now = time::OffsetDateTime::now_utc();
    let created_at = crate::ids::format_time(now);
    let expires_at = crate::ids::format_time(now + ttl);
    let keep = gate.config.api.max_sessions_per_user;
    let (sid, uid, exp, src, ua) =
        (id.clone(), user.id.clone(), expires_at.clone(), ctx.source.to_string(), ctx.user_agent.clone());
    let trimmed = gate
        .store
        .write(move |c| {
            crate::store::auth::insert_session(
                c,
                &NewSession {
                    id: &sid,
                    user_id: &uid,
                    secret_hash: &hash,
                    created_at: &created_at,
                    expires_at: &exp,
                    source_addr: &src,
                    user_agent: &ua,
                },
            )?;
            crate::store::auth::trim_sessions(c, &uid, keep)
        })
        .await?;
    if trimmed > 0 {
        gate.auth.invalidate_all();
    }
    let token = auth::format_token(&CredentialKind::Session(id.clone()), &secret);
    Ok(Opened { id, token, expires_at })
}
