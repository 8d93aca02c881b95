//! Registry authentication the way Docker does it: a request goes out anonymous
//! (or with what worked before for that repository); a 401 names the scheme in
//! `WWW-Authenticate`. `Basic` gets the credentials; `Bearer realm=…,service=…,
//! scope=…` sends them (when there are any) to the realm, which answers a token
//! that is then used as the bearer and kept for its `expires_in`.
//!
//! What worked is remembered per registry endpoint, repository and user name, so
//! one pull asks for a token once, not once per blob; different credentials never
//! share a token. Tokens live in memory only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use hyper::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::RegistryLogin;

/// Cached answers kept at most; past it, expired ones go, then all.
const MAX_ENTRIES: usize = 256;
/// A token with no `expires_in` lives this long (the token spec's default).
const DEFAULT_TOKEN_SECONDS: u64 = 60;
/// A token is dropped this long before it expires, so it does not lapse in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// What a 401 asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// The first usable challenge of the `WWW-Authenticate` headers, Bearer preferred.
pub(super) fn challenge(headers: &HeaderMap) -> Option<Challenge> {
    let mut basic = false;
    for value in headers.get_all(hyper::header::WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        let (scheme, params) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let params = auth_params(params);
            let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
            if let Some(realm) = get("realm") {
                return Some(Challenge::Bearer { realm, service: get("service"), scope: get("scope") });
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// `name=value` pairs of an auth challenge, values plain or quoted (with `\`
/// escapes), separated by commas.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        out.push((name.trim().to_string(), value));
    }
    out
}

/// `Authorization: Basic …`, marked sensitive so it is never logged.
pub(super) fn basic_header(login: &RegistryLogin) -> Option<HeaderValue> {
    let plain = Zeroizing::new(format!("{}:{}", login.username, login.password.as_str()));
    let encoded =
        Zeroizing::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(plain.as_bytes())));
    let mut v = HeaderValue::from_str(&encoded).ok()?;
    v.set_sensitive(true);
    Some(v)
}

pub(super) fn bearer_header(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A token service's answer (Docker's token spec; OAuth2 names it `access_token`).
#[derive(serde::Deserialize)]
pub(super) struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenAnswer {
    /// The token and how long to keep it.
    pub(super) fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.filter(|t| !t.is_empty()).or(self.access_token.filter(|t| !t.is_empty()))?;
        // The spec: a token lives at least 60 s; an expires_in below that means 60.
        let secs = self.expires_in.unwrap_or(DEFAULT_TOKEN_SECONDS).max(DEFAULT_TOKEN_SECONDS);
        Some((token, Duration::from_secs(secs).saturating_sub(EXPIRY_MARGIN)))
    }
}

/// What worked for a repository.
#[derive(Clone)]
enum Entry {
    Basic,
    Bearer { header: HeaderValue, until: Instant },
}

/// (registry endpoint, repository, user name or "" for anonymous)
type Key = (String, String, String);

/// Remembered authentication, per endpoint, repository and user.
#[derive(Default)]
pub(super) struct Tokens {
    map: Mutex<HashMap<Key, Entry>>,
}

impl Tokens {
    pub(super) fn key(endpoint: &str, repository: &str, login: Option<&RegistryLogin>) -> Key {
        (endpoint.to_string(), repository.to_string(), login.map(|l| l.username.clone()).unwrap_or_default())
    }

    /// The `Authorization` value to start with, if something worked before.
    pub(super) fn header(&self, key: &Key, login: Option<&RegistryLogin>) -> Option<HeaderValue> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key)? {
            Entry::Basic => login.and_then(basic_header),
            Entry::Bearer { header, until } if *until > Instant::now() => Some(header.clone()),
            Entry::Bearer { .. } => {
                map.remove(key);
                None
            }
        }
    }

    pub(super) fn remember_basic(&self, key: Key) {
        self.insert(key, Entry::Basic);
    }

    pub(super) fn remember_bearer(&self, key: Key, header: HeaderValue, ttl: Duration) {
        self.insert(key, Entry::Bearer { header, until: Instant::now() + ttl });
    }

    pub(super) fn forget(&self, key: &Key) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn insert(&self, key: Key, entry: Entry) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            let now = Instant::now();
            map.retain(|_, e| matches!(e, Entry::Bearer { until, .. } if *until > now));
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, entry);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn challenges_are_read_like_docker_reads_them() {
        let hub = headers(&[
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        ]);
        assert_eq!(
            challenge(&hub),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        let berth = headers(&[r#"Bearer realm="http://127.0.0.1:7420/v2/token",service="berth""#]);
        assert!(matches!(challenge(&berth), Some(Challenge::Bearer { scope: None, .. })));
        assert_eq!(challenge(&headers(&[r#"Basic realm="Registry Realm""#])), Some(Challenge::Basic));
        // Bearer wins over Basic; escapes and odd spacing are read; unknown schemes ignored.
        let both = headers(&[r#"Basic realm="x""#, r#"bearer  realm = "a\"b" , service=plain"#]);
        assert_eq!(
            challenge(&both),
            Some(Challenge::Bearer { realm: "a\"b".into(), service: Some("plain".into()), scope: None })
        );
        assert_eq!(challenge(&headers(&["Negotiate abc"])), None);
        assert_eq!(challenge(&headers(&["Bearer service=\"x\""])), None, "a bearer challenge needs a realm");
        assert_eq!(challenge(&HeaderMap::new()), None);
    }

    #[test]
    fn token_answers_and_their_lifetime() {
        let t: TokenAnswer = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("a".into(), Duration::from_secs(290))));
        let t: TokenAnswer = serde_json::from_str(r#"{"access_token":"b","expires_in":5}"#).unwrap();
        assert_eq!(t.into_token(), Some(("b".into(), Duration::from_secs(50))), "at least 60 s, less the margin");
        let t: TokenAnswer = serde_json::from_str(r#"{"token":"","access_token":"c"}"#).unwrap();
        assert_eq!(t.into_token(), Some(("c".into(), Duration::from_secs(50))));
        let t: TokenAnswer = serde_json::from_str(r#"{"expires_in":60}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn remembered_per_repository_and_user_until_expiry() {
        let tokens = Tokens::default();
        let alice = RegistryLogin { username: "alice".into(), password: Zeroizing::new("pw".into()) };
        let k_alice = Tokens::key("r.io", "a/b", Some(&alice));
        let k_anon = Tokens::key("r.io", "a/b", None);
        tokens.remember_bearer(k_alice.clone(), bearer_header("t1").unwrap(), Duration::from_secs(30));
        assert_eq!(tokens.header(&k_alice, Some(&alice)).unwrap(), "Bearer t1");
        assert!(tokens.header(&k_anon, None).is_none(), "anonymous callers never get alice's token");
        assert!(tokens.header(&Tokens::key("r.io", "a/c", Some(&alice)), Some(&alice)).is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(tokens.header(&k_alice, Some(&alice)).is_none(), "expired");
        tokens.remember_basic(k_alice.clone());
        let basic = tokens.header(&k_alice, Some(&alice)).unwrap();
        assert!(basic.is_sensitive());
        assert_eq!(basic, "Basic YWxpY2U6cHc=");
        tokens.forget(&k_alice);
        assert_eq!(tokens.len(), 0);
        for i in 0..MAX_ENTRIES * 2 {
            tokens.remember_basic(Tokens::key("r.io", &format!("a/{i}"), None));
        }
        assert!(tokens.len() <= MAX_ENTRIES);
    }
}
