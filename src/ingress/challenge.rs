//! The answers the ingress gives on the well-known challenge paths, from memory.
//!
//! - `GET /.well-known/berth-challenge/{token}`: domain-ownership verification
//!   (SPEC §4 "Domains"). The body is the token, and only when the request's Host is
//!   the domain the token belongs to; anything else is a 404, so a token says
//!   nothing about other domains.
//! - `GET /.well-known/acme-challenge/{token}`: ACME HTTP-01 (RFC 8555 §8.3). The
//!   body is the key authorization, again only for the host the order is for.
//!
//! Both are answered on the HTTP listener before routing (and before any redirect
//! to HTTPS), so they work for hosts that have no service yet or no healthy replica.
//! Nothing here touches SQLite: the domains and ACME code put and take entries.

use std::collections::HashMap;
use std::sync::Mutex;

use super::routes::normalize_host;

pub const BERTH_PREFIX: &str = "/.well-known/berth-challenge/";
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// Token → (host, body), one map per kind.
#[derive(Default)]
pub struct Challenges {
    berth: Mutex<HashMap<String, (String, String)>>,
    acme: Mutex<HashMap<String, (String, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Challenges {
    /// Answers `token` with itself for requests to `host`.
    pub fn put_berth(&self, host: &str, token: &str) {
        lock(&self.berth).insert(token.to_string(), (normalize_host(host), token.to_string()));
    }

    pub fn remove_berth(&self, token: &str) {
        lock(&self.berth).remove(token);
    }

    /// Answers `token` with `key_authorization` for requests to `host`.
    pub fn put_acme(&self, host: &str, token: &str, key_authorization: &str) {
        lock(&self.acme).insert(token.to_string(), (normalize_host(host), key_authorization.to_string()));
    }

    pub fn remove_acme(&self, token: &str) {
        lock(&self.acme).remove(token);
    }

    /// Whether `path` is one of the challenge paths (answered here, never proxied).
    pub fn is_challenge_path(path: &str) -> bool {
        path.starts_with(BERTH_PREFIX) || path.starts_with(ACME_PREFIX)
    }

    /// The body for a challenge request, `None` for a 404.
    pub fn answer(&self, host: &str, path: &str) -> Option<String> {
        let (map, token) = if let Some(t) = path.strip_prefix(BERTH_PREFIX) {
            (&self.berth, t)
        } else if let Some(t) = path.strip_prefix(ACME_PREFIX) {
            (&self.acme, t)
        } else {
            return None;
        };
        if token.is_empty() || token.contains('/') {
            return None;
        }
        let host = normalize_host(host);
        lock(map).get(token).filter(|(h, _)| *h == host).map(|(_, body)| body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_answers_only_for_its_own_host_and_kind() {
        let c = Challenges::default();
        c.put_berth("App.Test", "tok1");
        c.put_acme("app.test", "acme1", "acme1.thumb");
        assert_eq!(c.answer("app.test:8080", "/.well-known/berth-challenge/tok1").as_deref(), Some("tok1"));
        assert_eq!(c.answer("other.test", "/.well-known/berth-challenge/tok1"), None, "another host");
        assert_eq!(c.answer("app.test", "/.well-known/acme-challenge/tok1"), None, "another kind");
        assert_eq!(c.answer("app.test", "/.well-known/acme-challenge/acme1").as_deref(), Some("acme1.thumb"));
        assert_eq!(c.answer("app.test", "/.well-known/berth-challenge/tok1/x"), None);
        assert_eq!(c.answer("app.test", "/.well-known/berth-challenge/"), None);
        c.remove_berth("tok1");
        assert_eq!(c.answer("app.test", "/.well-known/berth-challenge/tok1"), None);
        assert!(Challenges::is_challenge_path("/.well-known/acme-challenge/x"));
        assert!(!Challenges::is_challenge_path("/.well-known/other"));
    }
}
