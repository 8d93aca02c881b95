//! runc discovery.

use std::process::{Command, Stdio};

/// `runc --version`'s first line's version, or `None` when runc is not installed.
pub fn version() -> Option<String> {
    #[expect(clippy::disallowed_methods, reason = "runtime is the module that runs processes")]
    let out = Command::new("runc").arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version(text: &str) -> Option<String> {
    text.lines().next()?.strip_prefix("runc version ").map(|v| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_runc_output() {
        let text = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        assert_eq!(super::parse_version(text).as_deref(), Some("1.1.5+ds1"));
        assert_eq!(super::parse_version("garbage"), None);
    }
}
