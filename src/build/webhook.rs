//! Push webhooks (adr/031): how a delivery proves it comes from the Git host, what
//! it says, and when it is the same delivery again.
//!
//! - GitHub style: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`
//!   keyed with the webhook's secret, `X-GitHub-Event`, `X-GitHub-Delivery`.
//! - GitLab style: `X-Gitlab-Token` equal to the secret, `X-Gitlab-Event`,
//!   `X-Gitlab-Event-UUID`.
//!
//! Both comparisons are constant-time. A delivery is known again by its id and by
//! the digest of its body: the delivery id is not covered by GitHub's signature, so
//! a captured request replayed with a fresh id is still the same body.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Which convention a delivery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    GitHub,
    GitLab,
}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// GitHub's test delivery when a webhook is added.
    Ping,
    /// A push of `git_ref` (`refs/heads/…` or `refs/tags/…`) to commit `after`;
    /// `deleted` when the ref was removed.
    Push { git_ref: String, after: String, deleted: bool },
    /// Any other event, by name.
    Other(String),
}

/// A new secret: 32 random bytes, hex.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex(&b)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The convention of a delivery, from its headers; `None` when it carries no
/// signature or token at all.
pub fn style(h: &HeaderMap) -> Option<Style> {
    if h.contains_key("x-hub-signature-256") {
        Some(Style::GitHub)
    } else if h.contains_key("x-gitlab-token") {
        Some(Style::GitLab)
    } else {
        None
    }
}

/// Whether the delivery proves knowledge of `secret`, in constant time.
pub fn verify(style: Style, h: &HeaderMap, body: &[u8], secret: &[u8]) -> bool {
    match style {
        Style::GitHub => {
            let Some(given) = header(h, "x-hub-signature-256").and_then(|v| v.strip_prefix("sha256=")) else {
                return false;
            };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                return false;
            };
            mac.update(body);
            let want = hex(&mac.finalize().into_bytes());
            want.as_bytes().ct_eq(given.to_ascii_lowercase().as_bytes()).into()
        }
        Style::GitLab => match h.get("x-gitlab-token") {
            Some(given) => given.as_bytes().ct_eq(secret).into(),
            None => false,
        },
    }
}

/// The HMAC signature header value GitHub would send for `body` (for tests and
/// for clients that sign their own deliveries).
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// The keys a delivery is known again by: its id when it has a usable one, and
/// the digest of its body.
pub fn delivery_keys(style: Style, h: &HeaderMap, body: &[u8]) -> Vec<String> {
    let name = match style {
        Style::GitHub => "x-github-delivery",
        Style::GitLab => "x-gitlab-event-uuid",
    };
    let mut keys = Vec::with_capacity(2);
    if let Some(id) = header(h, name) {
        let id = id.trim();
        if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
            keys.push(format!("id:{id}"));
        }
    }
    keys.push(format!("sha256:{}", hex(&Sha256::digest(body))));
    keys
}

#[derive(Deserialize)]
struct PushBody {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
}

/// What a verified delivery says. The message is for a 400.
pub fn event(style: Style, h: &HeaderMap, body: &[u8]) -> Result<Event, String> {
    let name = match style {
        Style::GitHub => header(h, "x-github-event"),
        Style::GitLab => header(h, "x-gitlab-event"),
    }
    .unwrap_or_default()
    .to_string();
    let push = match style {
        Style::GitHub if name == "ping" => return Ok(Event::Ping),
        Style::GitHub => name == "push",
        Style::GitLab => name == "Push Hook",
    };
    if !push {
        return Ok(Event::Other(if name.is_empty() { "unnamed".into() } else { name }));
    }
    let p: PushBody = serde_json::from_slice(body).map_err(|e| format!("push event body: {e}"))?;
    let zeros = !p.after.is_empty() && p.after.bytes().all(|b| b == b'0');
    Ok(Event::Push { git_ref: p.git_ref, after: p.after.to_ascii_lowercase(), deleted: p.deleted || zeros })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn github_signatures_are_checked_against_the_raw_body() {
        // The example in GitHub's documentation.
        let sig = github_signature(b"It's a Secret to Everybody", b"Hello, World!");
        assert_eq!(sig, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");
        let body = br#"{"ref":"refs/heads/main","after":"abc"}"#;
        let good = headers(&[("x-hub-signature-256", &github_signature(b"s3cret", body))]);
        assert_eq!(style(&good), Some(Style::GitHub));
        assert!(verify(Style::GitHub, &good, body, b"s3cret"));
        assert!(!verify(Style::GitHub, &good, body, b"other"));
        assert!(!verify(Style::GitHub, &good, b"{\"ref\":\"refs/heads/evil\"}", b"s3cret"));
        for bad in ["", "sha256=", "sha1=abc", "sha256=zz", &github_signature(b"s3cret", body)[7..]] {
            assert!(!verify(Style::GitHub, &headers(&[("x-hub-signature-256", bad)]), body, b"s3cret"), "{bad}");
        }
        assert_eq!(style(&headers(&[("x-github-event", "push")])), None);
    }

    #[test]
    fn gitlab_tokens_must_equal_the_secret() {
        let h = headers(&[("x-gitlab-token", "s3cret")]);
        assert_eq!(style(&h), Some(Style::GitLab));
        assert!(verify(Style::GitLab, &h, b"", b"s3cret"));
        assert!(!verify(Style::GitLab, &h, b"", b"s3cret2"));
        assert!(!verify(Style::GitLab, &h, b"", b"s3cre"));
    }

    #[test]
    fn events_are_read_by_their_convention() {
        let body = br#"{"ref":"refs/heads/main","after":"ABCDEF0123456789abcdef0123456789abcdef01","before":"x"}"#;
        let gh = headers(&[("x-github-event", "push")]);
        assert_eq!(
            event(Style::GitHub, &gh, body),
            Ok(Event::Push {
                git_ref: "refs/heads/main".into(),
                after: "abcdef0123456789abcdef0123456789abcdef01".into(),
                deleted: false
            })
        );
        let gl = headers(&[("x-gitlab-event", "Push Hook")]);
        assert!(matches!(event(Style::GitLab, &gl, body), Ok(Event::Push { .. })));
        let gone = format!(r#"{{"ref":"refs/heads/main","after":"{}"}}"#, "0".repeat(40));
        assert!(matches!(event(Style::GitLab, &gl, gone.as_bytes()), Ok(Event::Push { deleted: true, .. })));
        assert_eq!(event(Style::GitHub, &headers(&[("x-github-event", "ping")]), b"{}"), Ok(Event::Ping));
        assert_eq!(
            event(Style::GitLab, &headers(&[("x-gitlab-event", "Tag Push Hook")]), body),
            Ok(Event::Other("Tag Push Hook".into()))
        );
        assert!(event(Style::GitHub, &gh, b"not json").is_err());
        assert!(event(Style::GitHub, &gh, br#"{"ref":"x"}"#).is_err());
    }

    #[test]
    fn a_delivery_is_known_by_its_id_and_its_body() {
        let h = headers(&[("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]);
        let keys = delivery_keys(Style::GitHub, &h, b"{}");
        assert_eq!(keys[0], "id:72d3162e-cc78-11e3-81ab-4c9367dc0958");
        assert!(keys[1].starts_with("sha256:44136fa3"), "{keys:?}");
        assert_eq!(delivery_keys(Style::GitLab, &h, b"{}").len(), 1);
        assert_eq!(new_secret().len(), 64);
        assert_ne!(new_secret(), new_secret());
    }
}
