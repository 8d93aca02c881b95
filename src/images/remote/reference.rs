//! External image references, parsed as the distribution project's reference
//! grammar has them, with one rule of berth's: the first component must be a
//! registry host (SPEC §4a), so `docker.io/library/nginx:1.27`, never `nginx`.
//!
//! ```text
//! reference  := host [":" port] "/" path [":" tag] ["@" digest]
//! host       := domain-name | IPv4 | "[" IPv6 "]"       (a name needs a "." or is "localhost")
//! path       := component ("/" component)*           component := [a-z0-9]+ (sep [a-z0-9]+)*
//! sep        := "." | "_" | "__" | "-"+               tag := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! ```
//!
//! `docker.io` (and `index.docker.io`) is served by `registry-1.docker.io`, and a
//! one-component Docker Hub path gets `library/`. Without a tag or digest the tag is
//! `latest`; with both, the digest decides what is pulled.

use std::fmt;

use crate::oci::{Digest, DigestError};

/// Longest name (host and path), as distribution caps it.
const MAX_NAME: usize = 255;
/// Longest tag.
const MAX_TAG: usize = 128;

/// Docker Hub as written in references, and the host that serves its API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed external image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry as written, lowercased (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Where its API is (`registry-1.docker.io` for `docker.io`): host and optional port.
    pub endpoint: String,
    /// The repository path (`library/nginx`).
    pub repository: String,
    /// The tag, `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

/// Whether `reference` names an external registry (its first component is a host:
/// it holds a `.` or a `:`, or is `localhost`), as opposed to a repository of the
/// hosted registry (`alpha/web:v1`). Says nothing about validity: parse it next.
pub fn is_external(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
        let err = |reason: &str| ReferenceError { reference: reference.to_string(), reason: reason.to_string() };
        if reference.is_empty() {
            return Err(err("it is empty"));
        }
        if reference.len() > MAX_NAME + 1 + MAX_TAG + 1 + 71 {
            return Err(err("it is too long"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|e| match e {
                    DigestError::Malformed => err(&format!("{d:?} is not a valid digest")),
                    DigestError::UnsupportedAlgorithm(a) => {
                        err(&format!("digest algorithm {a} is not supported; use sha256"))
                    }
                })?;
                (rest, Some(digest))
            }
            None => (reference, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|s| i > s) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            if !is_tag(t) {
                return Err(err(&format!(
                    "{t:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-], at most {MAX_TAG} characters)"
                )));
            }
        }
        if name.len() > MAX_NAME {
            return Err(err(&format!("the name is longer than {MAX_NAME} characters")));
        }
        let Some((host, path)) = name.split_once('/') else {
            return Err(err(&format!("it names no registry host; write it in full, such as docker.io/library/{name}")));
        };
        if !is_external(name) {
            return Err(err(&format!(
                "{host:?} is not a registry host (a host has a '.' or a port, or is localhost); \
                 {name} would be a repository of berth's own registry"
            )));
        }
        if !is_host(host) {
            return Err(err(&format!("{host:?} is not a valid registry host")));
        }
        if path.is_empty() || !path.split('/').all(is_component) {
            return Err(err(&format!(
                "{path:?} is not a valid repository path (lowercase letters, digits and separators . _ __ -)"
            )));
        }
        let host = host.to_ascii_lowercase();
        let hub = matches!(host.as_str(), "docker.io" | "index.docker.io" | "registry-1.docker.io");
        let (registry, endpoint) =
            if hub { (DOCKER_HUB.to_string(), DOCKER_HUB_API.to_string()) } else { (host.clone(), host) };
        let repository = if hub && !path.contains('/') { format!("library/{path}") } else { path.to_string() };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(ImageRef { registry, endpoint, repository, tag, digest })
    }

    /// The manifest reference to ask for: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// `<scheme>://<endpoint>`: HTTPS, or plain HTTP to a loopback host.
    pub fn base_url(&self) -> String {
        format!("{}://{}", super::client::scheme_for(self.host()), self.endpoint)
    }

    /// The endpoint without its port (`[::1]` keeps its brackets).
    pub fn host(&self) -> &str {
        match self.endpoint.strip_prefix('[') {
            Some(rest) => rest.find(']').map_or(self.endpoint.as_str(), |i| &self.endpoint[..i + 2]),
            None => self.endpoint.split(':').next().unwrap_or(&self.endpoint),
        }
    }
}

impl fmt::Display for ImageRef {
    /// The canonical form: `docker.io/library/nginx:1.27`, `ghcr.io/o/a@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let sep = match (b[i], b.get(i + 1)) {
            (b'.', _) => 1,
            (b'_', Some(b'_')) => 2,
            (b'_', _) => 1,
            (b'-', _) => b[i..].iter().take_while(|c| **c == b'-').count(),
            _ => return false,
        };
        i += sep;
        if i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// `host[:port]` where host is a domain name, an IPv4 address or a bracketed IPv6
/// address, and port is 1-65535.
fn is_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((ip6, after)) = rest.split_once(']') else { return false };
        if ip6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if !p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n)) {
            return false;
        }
    }
    if host.is_empty() {
        // The bracketed IPv6 case, already checked.
        return h.starts_with('[');
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_completed() {
        let r = parse("docker.io/nginx:1.27");
        assert_eq!((r.registry.as_str(), r.endpoint.as_str()), ("docker.io", "registry-1.docker.io"));
        assert_eq!((r.repository.as_str(), r.tag.as_deref()), ("library/nginx", Some("1.27")));
        assert_eq!(r.to_string(), "docker.io/library/nginx:1.27");
        assert_eq!(r.base_url(), "https://registry-1.docker.io");
        let r = parse("docker.io/library/nginx");
        assert_eq!((r.repository.as_str(), r.tag.as_deref()), ("library/nginx", Some("latest")));
        let r = parse("index.docker.io/bitnami/redis:7");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("docker.io", "bitnami/redis"));
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let r = parse("ghcr.io/org/app:tag");
        assert_eq!((r.endpoint.as_str(), r.repository.as_str(), r.tag.as_deref()), ("ghcr.io", "org/app", Some("tag")));
        assert_eq!(r.manifest_reference(), "tag");
        let r = parse(&format!("127.0.0.1:5000/team/app@{D}"));
        assert_eq!(
            (r.endpoint.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", None)
        );
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.base_url(), "http://127.0.0.1:5000", "loopback speaks plain HTTP");
        let r = parse(&format!("localhost:5000/a:v1@{D}"));
        assert_eq!((r.tag.as_deref(), r.manifest_reference()), (Some("v1"), D.to_string()), "the digest decides");
        assert_eq!(r.to_string(), format!("localhost:5000/a:v1@{D}"));
        assert_eq!(parse("[::1]:5000/a/b:c").base_url(), "http://[::1]:5000");
        assert_eq!(parse("Registry.Example.COM/a/b").endpoint, "registry.example.com");
        assert_eq!(parse("registry.example.com:8443/a__b/c-d/e.f").base_url(), "https://registry.example.com:8443");
        assert_eq!(parse("10.0.0.1:5000/a").base_url(), "https://10.0.0.1:5000", "only loopback is plain HTTP");
        assert!(parse(&format!("r.io/a:{}", "t".repeat(128))).tag.is_some());
    }

    #[test]
    fn hosted_and_short_names_are_told_apart() {
        for hosted in ["alpha/web:v1", &format!("alpha/web@{D}"), "alpha/web", "nginx", "nginx:1.27"] {
            assert!(!is_external(hosted), "{hosted}");
        }
        for external in ["docker.io/library/nginx:1.27", "ghcr.io/org/app:tag", "127.0.0.1:5000/a", "localhost/a"] {
            assert!(is_external(external), "{external}");
        }
        let e = ImageRef::parse("nginx:1.27").unwrap_err().to_string();
        assert!(e.contains("docker.io/library/nginx"), "{e}");
        let e = ImageRef::parse("alpha/web:v1").unwrap_err().to_string();
        assert!(e.contains("berth's own registry"), "{e}");
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("ghcr.io/Org/app", "repository path"),
            ("ghcr.io/org//app", "repository path"),
            ("ghcr.io/org/app/", "repository path"),
            ("ghcr.io/", "repository path"),
            ("ghcr.io/a/-b", "repository path"),
            ("ghcr.io/a/b___c", "repository path"),
            ("ghcr.io/a/b..c", "repository path"),
            ("ghcr.io/a/../b", "repository path"),
            ("ghcr.io/a b", "repository path"),
            ("ghcr.io/a:", "tag"),
            ("ghcr.io/a:-x", "tag"),
            ("ghcr.io/a:b/c", "repository path"),
            ("ghcr.io/a@sha256:abc", "digest"),
            ("ghcr.io/a@sha512:abc", "digest"),
            ("ghcr.io:0/a", "registry host"),
            ("ghcr.io:99999/a", "registry host"),
            ("ghcr.io:/a", "registry host"),
            ("-ghcr.io/a", "registry host"),
            ("gh_cr.io/a", "registry host"),
            ("[::g]:5000/a", "registry host"),
            ("[::1]x/a", "registry host"),
        ] {
            let e = ImageRef::parse(bad).err().unwrap_or_else(|| panic!("{bad:?} was accepted")).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("r.io/{}", "a".repeat(260));
        assert!(ImageRef::parse(&long).is_err());
        let long_tag = format!("r.io/a:{}", "t".repeat(129));
        assert!(ImageRef::parse(&long_tag).unwrap_err().to_string().contains("tag"));
        let md = format!("ghcr.io/a@sha512:{}", "a".repeat(128));
        assert!(ImageRef::parse(&md).unwrap_err().to_string().contains("not supported"));
    }
}
