//! Repository names and tags as the distribution spec defines them; digests are
//! [`crate::oci::Digest`], re-exported here.

pub use crate::oci::{Digest, DigestError};

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME: usize = 255;
/// Longest tag (spec: 128 characters).
pub const MAX_TAG: usize = 128;

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at
/// least two components (`<project>/<name>`), at most 255 characters.
pub fn is_repository(name: &str) -> bool {
    name.len() <= MAX_NAME && name.split('/').count() >= 2 && name.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-", followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn is_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in ["a/b", "alpha/web", "a-b/c.d", "a__b/c--d", "x/y/z", "p1/app_1"] {
            assert!(is_repository(ok), "{ok}");
        }
        for bad in ["app", "A/b", "a//b", "/a/b", "a/b/", "a/-b", "a/b-", "a/b___c", "a/b..c", "a/../b", "a/b c"] {
            assert!(!is_repository(bad), "{bad}");
        }
        assert!(!is_repository(&format!("a/{}", "b".repeat(254))));
    }

    #[test]
    fn tags() {
        assert!(is_tag("v1") && is_tag("_x") && is_tag("1.2.3-rc_1") && is_tag(&"a".repeat(128)));
        assert!(!is_tag("") && !is_tag(".x") && !is_tag("-x") && !is_tag("a/b") && !is_tag(&"a".repeat(129)));
    }
}
