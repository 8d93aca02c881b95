//! Who is calling, and what they may do.
//!
//! - Passwords are hashed with argon2id (OWASP parameters: 19 MiB, t=2, p=1).
//! - Session and API tokens are `berth_ses_<id>_<secret>` and `berth_pat_<id>_<secret>`:
//!   the id finds the row, the secret (256 bits from the OS RNG) is stored only as its
//!   SHA-256 and compared in constant time. A high-entropy secret needs no slow hash.
//! - The bootstrap token is `berth_boot_<secret>`, its hash kept in `meta` until used.
//! - Roles are per project: Viewer < Operator < Admin; a super-admin flag bypasses
//!   membership. API tokens carry scopes, a ceiling over the owner's roles.
//! - Verified credentials are cached in memory for a minute, as the shared
//!   [`Principal`] they stand for and the hash their secret must match (a hit costs
//!   one lookup, one SHA-256 and no copies); every revocation path invalidates the
//!   cache (guarded by a generation counter so a lookup racing a revocation cannot
//!   re-insert a stale entry), so a revoked token fails at once.

pub mod password;
pub mod scopes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

pub use scopes::Scope;

use crate::store::users::User;
use crate::store::{Store, StoreError};

/// A role in one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

pub const SESSION_PREFIX: &str = "berth_ses_";
pub const TOKEN_PREFIX: &str = "berth_pat_";
pub const BOOTSTRAP_PREFIX: &str = "berth_boot_";
const SECRET_LEN: usize = 43;
/// `meta` key holding the bootstrap token's hash while it is unused.
pub const BOOTSTRAP_META_KEY: &str = "bootstrap_token_sha256";

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    Session(String),
    ApiToken(String),
    /// A password sent with HTTP Basic to `/v2` (registry clients without the token flow).
    Password,
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub credential: CredentialKind,
    /// `None`: every scope (sessions, and tokens made with `*`).
    pub scopes: Option<Vec<Scope>>,
    /// When the credential expires (Unix seconds); `None` for never.
    pub expires_unix: Option<i64>,
}

impl Principal {
    pub fn has_scope(&self, s: Scope) -> bool {
        self.scopes.as_ref().is_none_or(|set| set.contains(&s))
    }

    pub fn token_id(&self) -> Option<&str> {
        match &self.credential {
            CredentialKind::ApiToken(id) => Some(id),
            CredentialKind::Session(_) | CredentialKind::Password => None,
        }
    }

    pub fn session_id(&self) -> Option<&str> {
        match &self.credential {
            CredentialKind::Session(id) => Some(id),
            CredentialKind::ApiToken(_) | CredentialKind::Password => None,
        }
    }

    /// The id rate limits are counted against.
    pub fn credential_id(&self) -> &str {
        match &self.credential {
            CredentialKind::Session(id) | CredentialKind::ApiToken(id) => id,
            CredentialKind::Password => &self.user.id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token is not a berth token")]
    Malformed,
    #[error("the token is not valid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a presented bootstrap token is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// The unused one-time token.
    Valid,
    /// Not the token (and bootstrap is still open).
    Wrong,
    /// Bootstrap has happened; no token works any more.
    Done,
}

/// A fresh random secret: 43 alphanumeric characters (≈256 bits).
pub fn new_secret() -> String {
    rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(SECRET_LEN).map(char::from).collect()
}

/// Whether `s` has the shape of a secret [`new_secret`] makes.
pub fn is_secret(s: &str) -> bool {
    s.len() == SECRET_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `berth_ses_<id>_<secret>` / `berth_pat_<id>_<secret>` into its kind, id and secret.
pub fn parse_token(token: &str) -> Result<(CredentialKind, &str), AuthError> {
    let (session, id, secret) = split_token(token)?;
    let kind = if session { CredentialKind::Session(id.to_string()) } else { CredentialKind::ApiToken(id.to_string()) };
    Ok((kind, secret))
}

/// Formats a token from its parts.
pub fn format_token(kind: &CredentialKind, secret: &str) -> String {
    match kind {
        CredentialKind::Session(id) => format!("{SESSION_PREFIX}{id}_{secret}"),
        CredentialKind::ApiToken(id) => format!("{TOKEN_PREFIX}{id}_{secret}"),
        CredentialKind::Password => String::new(),
    }
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A verified credential as kept in memory: the principal it stands for, ready to
/// hand out, and the hash its secret must match.
struct Cached {
    secret_hash: Vec<u8>,
    principal: Arc<Principal>,
    fetched: Instant,
    touched: Option<Instant>,
}

/// Credentials kept in the cache at most (expired entries are dropped first).
const MAX_CACHED: usize = 100_000;

/// How long a verified credential is trusted from memory before re-reading it.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// `last_used_at` is written at most this often per credential.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Splits a session or API token into (is a session, credential id, secret), borrowing.
fn split_token(token: &str) -> Result<(bool, &str, &str), AuthError> {
    let (rest, session) = if let Some(r) = token.strip_prefix(SESSION_PREFIX) {
        (r, true)
    } else if let Some(r) = token.strip_prefix(TOKEN_PREFIX) {
        (r, false)
    } else {
        return Err(AuthError::Malformed);
    };
    let (id, secret) = rest.rsplit_once('_').ok_or(AuthError::Malformed)?;
    let prefix = if session { "ses" } else { "tok" };
    if !crate::ids::has_shape(id, prefix) || !is_secret(secret) {
        return Err(AuthError::Malformed);
    }
    Ok((session, id, secret))
}

/// Verifies bearer tokens against the store, with a revocation-safe cache.
pub struct Authenticator {
    store: Store,
    cache: Mutex<HashMap<String, Cached>>,
    generation: AtomicU64,
}

impl Authenticator {
    pub fn new(store: Store) -> Self {
        Self { store, cache: Mutex::new(HashMap::new()), generation: AtomicU64::new(0) }
    }

    /// Checks a session or API token against the cache alone: `None` when checking it
    /// needs the store (not cached, or cached too long ago).
    pub fn authenticate_cached(&self, token: &str) -> Option<Result<Arc<Principal>, AuthError>> {
        let (session, id, secret) = match split_token(token) {
            Ok(parts) => parts,
            Err(e) => return Some(Err(e)),
        };
        let presented = Sha256::digest(secret.as_bytes());
        let now = Instant::now();
        let (principal, touch) = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let cached = cache.get_mut(id).filter(|c| now.duration_since(c.fetched) < CACHE_TTL)?;
            if !hashes_equal(&presented, &cached.secret_hash) {
                return Some(Err(AuthError::Invalid));
            }
            if cached.principal.expires_unix.is_some_and(|e| e <= crate::ids::unix_now()) {
                return Some(Err(AuthError::Expired));
            }
            let touch = cached.touched.is_none_or(|t| now.duration_since(t) >= TOUCH_EVERY);
            if touch {
                cached.touched = Some(now);
            }
            (cached.principal.clone(), touch)
        };
        if touch {
            self.touch(session, id);
        }
        Some(Ok(principal))
    }

    /// Checks a session or API token; returns the principal it stands for.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if let Some(cached) = self.authenticate_cached(token) {
            return cached;
        }
        let (session, id, secret) = split_token(token)?;
        let now = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let lookup_id = id.to_string();
        let cred = self
            .store
            .read(move |c| {
                if session {
                    crate::store::auth::session_credential(c, &lookup_id)
                } else {
                    crate::store::auth::token_credential(c, &lookup_id)
                }
            })
            .await?
            .ok_or(AuthError::Invalid)?;
        let expires_unix = cred.expires_at.as_deref().and_then(crate::ids::parse_time).map(|t| t.unix_timestamp());
        let scopes = match cred.scopes {
            None => None,
            Some(names) if names.iter().any(|n| n == "*") => None,
            Some(names) => Some(names.iter().filter_map(|n| Scope::parse(n)).collect()),
        };
        let credential =
            if session { CredentialKind::Session(id.to_string()) } else { CredentialKind::ApiToken(id.to_string()) };
        let principal = Arc::new(Principal { user: cred.user, credential, scopes, expires_unix });
        let verified = hashes_equal(&hash_secret(secret), &cred.secret_hash);
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if self.generation.load(Ordering::Acquire) == generation {
                if cache.len() >= MAX_CACHED {
                    cache.retain(|_, c| now.duration_since(c.fetched) < CACHE_TTL);
                }
                if cache.len() < MAX_CACHED {
                    // Touched below when the secret is right, so the first use is recorded.
                    let touched = verified.then_some(now);
                    let entry =
                        Cached { secret_hash: cred.secret_hash, principal: principal.clone(), fetched: now, touched };
                    cache.insert(id.to_string(), entry);
                }
            }
        }
        if !verified {
            return Err(AuthError::Invalid);
        }
        if expires_unix.is_some_and(|e| e <= crate::ids::unix_now()) {
            return Err(AuthError::Expired);
        }
        self.touch(session, id);
        Ok(principal)
    }

    /// Records the credential's use (`last_used_at`); a bookkeeping write.
    fn touch(&self, session: bool, id: &str) {
        let at = crate::ids::now_rfc3339();
        let id = id.to_string();
        if session {
            self.store.write_detached(move |c| crate::store::auth::touch_session(c, &id, &at))
        } else {
            self.store.write_detached(move |c| crate::store::auth::touch_token(c, &id, &at))
        }
    }

    /// Forgets every cached credential; call after any revocation, user deletion or
    /// privilege change has been committed.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Checks the one-time bootstrap token.
    pub async fn check_bootstrap(&self, token: &str) -> Result<Bootstrap, AuthError> {
        let stored = self.store.read(|c| crate::store::auth::meta_get(c, BOOTSTRAP_META_KEY)).await?;
        let Some(stored) = stored else { return Ok(Bootstrap::Done) };
        let Some(secret) = token.strip_prefix(BOOTSTRAP_PREFIX) else { return Ok(Bootstrap::Wrong) };
        let presented = hex(&hash_secret(secret));
        Ok(if hashes_equal(stored.as_bytes(), presented.as_bytes()) { Bootstrap::Valid } else { Bootstrap::Wrong })
    }

    /// Whether bootstrap has happened (the one-time token is used up).
    pub async fn bootstrap_done(&self) -> Result<bool, AuthError> {
        Ok(self.store.read(|c| crate::store::auth::meta_get(c, BOOTSTRAP_META_KEY)).await?.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let id = crate::ids::new_id("tok");
        let secret = new_secret();
        let token = format_token(&CredentialKind::ApiToken(id.clone()), &secret);
        assert!(token.starts_with("berth_pat_tok_"));
        let (kind, s) = parse_token(&token).unwrap();
        assert_eq!(kind, CredentialKind::ApiToken(id.clone()));
        assert_eq!(s, secret);
        for bad in [
            "",
            "berth_pat_",
            "berth_pat_tok_x_y",
            "Bearer x",
            &format!("berth_pat_{id}_short"),
            &format!("berth_ses_{id}_{secret}"),
            &format!("berth_pat_{id}_{}", "é".repeat(43)),
        ] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn hash_compare_is_exact() {
        let a = hash_secret("x");
        assert!(hashes_equal(&a, &hash_secret("x")));
        assert!(!hashes_equal(&a, &hash_secret("y")));
        assert!(!hashes_equal(&a, &a[..31]));
    }
}
