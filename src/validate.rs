//! Shape checks for names and values that arrive in requests.

/// A DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A hostname: dot-separated DNS labels, at most 253 characters.
pub fn is_hostname(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A username: 1–64 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn is_username(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 255 characters.
pub fn is_env_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A short free-text field: at most `max` characters, no control characters but tab/newline.
pub fn is_text(s: &str, max: usize) -> bool {
    s.chars().count() <= max && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(is_dns_label("alpha-1"));
        for bad in ["", "-a", "a-", "Alpha", "a_b", "a.b", &"a".repeat(64), "ü"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_hostname("apps.example.com"));
        assert!(!is_hostname("apps..example.com"));
        assert!(is_username("ci.bot_1"));
        assert!(!is_username("_x") && !is_username("A") && !is_username(""));
        assert!(is_env_key("DATABASE_URL") && is_env_key("_x"));
        assert!(!is_env_key("1X") && !is_env_key("A-B") && !is_env_key(""));
    }
}
