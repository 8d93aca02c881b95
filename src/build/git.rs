//! Git sources: shallow clones over https or ssh.
//!
//! (Being written: until then every clone fails with a message that says so.)

use std::path::Path;

use super::{LogTx, Stop};
use crate::secrets::credentials::GitKey;

/// What to clone.
pub struct Fetch<'a> {
    /// `https://…` or `ssh://…` / `user@host:path`.
    pub repo_url: &'a str,
    /// A branch, a tag or a full commit id.
    pub git_ref: &'a str,
    /// The project's deploy key, for ssh URLs.
    pub key: Option<&'a GitKey>,
}

/// Whether `url` may be cloned at all (https or ssh; no local paths, no `file://`,
/// no `ext::`, nothing starting with `-`). The message is for a 422.
pub fn check_url(url: &str) -> Result<(), String> {
    Err(format!("git sources are not available yet ({} bytes)", url.len()))
}

/// Whether `git_ref` is a ref or commit git can be asked for (not starting with
/// `-`, no control characters). The message is for a 422.
pub fn check_ref(git_ref: &str) -> Result<(), String> {
    Err(format!("git sources are not available yet ({} bytes)", git_ref.len()))
}

/// Clones `fetch` into `dest` (an empty directory), shallow, at its ref; `scratch` is
/// a private directory for the key and known-hosts files. Returns the commit id.
pub async fn fetch(
    fetch: &Fetch<'_>,
    dest: &Path,
    scratch: &Path,
    log: &LogTx,
    cancel: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<String, Stop> {
    let _ = (dest, scratch, log, cancel, fetch.key);
    Err(Stop::Failed(format!("git sources are not available yet: {}", fetch.repo_url)))
}
