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

/// A short free-text field: at most `max` characters, no control characters but
/// tab/newline, and no bidirectional overrides or isolates (which make text display
/// in another order than it reads: "Trojan Source").
pub fn is_text(s: &str, max: usize) -> bool {
    s.chars().count() <= max && !s.chars().any(|c| (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c))
}

/// A display name (of a token, say): free text on one line, without bidirectional
/// controls or invisible characters, so two names that look alike are alike.
pub fn is_name_text(s: &str, max: usize) -> bool {
    is_text(s, max) && !s.chars().any(|c| c == '\n' || c == '\t' || is_invisible(c))
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Zero-width and other invisible format characters, and bidirectional marks.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
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

    #[test]
    fn text_refuses_reordering_and_invisible_characters() {
        assert!(is_text("déploiement ✓", 64) && is_name_text("ci token ✓", 64));
        assert!(is_text("two\nlines", 64) && !is_name_text("two\nlines", 64));
        for bad in ["abc\u{202E}cba", "\u{2066}x\u{2069}"] {
            assert!(!is_text(bad, 64) && !is_name_text(bad, 64), "{bad:?}");
        }
        for bad in ["ad\u{200B}min", "x\u{FEFF}", "a\u{200F}b", "\u{2060}"] {
            assert!(!is_name_text(bad, 64), "{bad:?}");
        }
        assert!(!is_text("bell\u{7}", 64));
    }
}
