//! The `runc` command line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::RuntimeError;

/// `runc --version`'s version, or `None` when runc is not installed.
pub fn version() -> Option<String> {
    let out = command("runc").arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version(text: &str) -> Option<String> {
    text.lines().next()?.strip_prefix("runc version ").map(|v| v.trim().to_string())
}

/// Builds a command; the one place in berth where processes are created. Private
/// to `runtime`: other modules ask runtime for what they need done, never for a
/// process to run.
///
/// `NOTIFY_SOCKET` (set by systemd for the daemon's `Type=notify` unit) is not passed
/// on: runc, seeing it, hands the socket to the container and waits for the
/// container itself to send `READY=1`, which an ordinary app never does, so every
/// start under systemd would hang until the shim gave up.
#[expect(clippy::disallowed_methods, reason = "runtime is the module that runs processes")]
pub(super) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_remove("NOTIFY_SOCKET");
    c
}

/// runc with berth's state root.
#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    pub root: PathBuf,
}

impl Runc {
    pub fn new(root: PathBuf) -> Self {
        Self { binary: PathBuf::from("runc"), root }
    }

    /// A runc command line with berth's state root; private to `runtime` like
    /// [`command`].
    pub(super) fn cmd(&self) -> Command {
        let mut c = command(&self.binary);
        c.arg("--root").arg(&self.root);
        c
    }

    fn run(&self, args: &[&str]) -> Result<String, RuntimeError> {
        let out = self.cmd().args(args).stdin(Stdio::null()).output().map_err(|e| RuntimeError::Command {
            command: format!("runc {}", args.join(" ")),
            message: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(RuntimeError::Command {
                command: format!("runc {}", args.join(" ")),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends a signal to the container's init.
    pub fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.run(&["kill", id, signal]).map(|_| ())
    }

    /// Removes the container's runc state (and its cgroup), killing it if needed.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run(&["delete", "--force", id]) {
            Ok(_) => Ok(()),
            Err(RuntimeError::Command { message, .. }) if message.contains("does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// runc's view of the container (`runc state`): status and pid.
    pub fn state(&self, id: &str) -> Result<Option<(String, i32)>, RuntimeError> {
        match self.run(&["state", id]) {
            Ok(json) => {
                let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
                Ok(Some((v["status"].as_str().unwrap_or("").to_string(), v["pid"].as_i64().unwrap_or(0) as i32)))
            }
            Err(RuntimeError::Command { message, .. }) if message.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn children_do_not_get_the_notify_socket() {
        // Whatever the daemon's environment holds, the child's has no NOTIFY_SOCKET.
        let c = super::command("runc");
        let envs: Vec<_> = c.get_envs().collect();
        assert_eq!(envs, vec![(std::ffi::OsStr::new("NOTIFY_SOCKET"), None)]);
        let c = super::Runc::new("/run/x".into()).cmd();
        assert!(c.get_envs().any(|(k, v)| k == "NOTIFY_SOCKET" && v.is_none()));
    }

    #[test]
    fn parses_runc_output() {
        let text = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";
        assert_eq!(super::parse_version(text).as_deref(), Some("1.1.5+ds1"));
        assert_eq!(super::parse_version("garbage"), None);
    }
}
