//! Git sources: shallow clones over https or ssh (adr/031).
//!
//! - [`check_url`] and [`check_ref`] decide what may be cloned at all: `https://`
//!   and ssh URLs only (no `file://`, `ext::`, local paths, plain `http://`, no
//!   credentials inside the URL), and refs by git's own `check-ref-format` rules,
//!   never starting with `-`.
//! - [`fetch`] runs the system `git` (through [`crate::runtime::group`]) with a
//!   clean environment: no system or global config, `HOME` in the scratch dir, no
//!   prompts, only the https and ssh transports, no hooks, `--` before every
//!   positional argument. A branch or tag is a `clone --depth 1 --branch`; a full
//!   commit id is an `init` plus `fetch --depth 1 <id>` (the server must allow
//!   fetching reachable commits by id, as GitHub and GitLab do). Over ssh the
//!   project's deploy key and its `known_hosts` go into the scratch dir (0600) and
//!   host keys are checked strictly: a key without `known_hosts` is refused.
//! - The clone's `.git` is removed afterwards: a build needs the tree only; the
//!   commit id goes into the log and is returned.
//!
//! Limits: short commit ids are not fetched (a shallow fetch needs the full id);
//! submodules and LFS objects are not fetched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use super::{LogTx, Stop};
use crate::runtime::group::{self, Ended, Tool};
use crate::secrets::credentials::GitKey;

/// What to clone.
pub struct Fetch<'a> {
    /// `https://…` or `ssh://…` / `user@host:path`.
    pub repo_url: &'a str,
    /// A branch, a tag or a full commit id.
    pub git_ref: &'a str,
    /// The project's deploy key, for ssh URLs.
    pub key: Option<&'a GitKey>,
    /// Extra PEM roots trusted for https, besides the system's
    /// (`build.git_ca_bundle`).
    pub ca_bundle: Option<&'a Path>,
    /// Longest the clone may take (`build.git_timeout_seconds`).
    pub timeout: Duration,
}

impl<'a> Fetch<'a> {
    /// A fetch of `repo_url` at `git_ref` with the `[build]` settings (extra CA
    /// roots, the clone's deadline).
    pub fn new(
        repo_url: &'a str,
        git_ref: &'a str,
        key: Option<&'a GitKey>,
        build: &'a crate::config::BuildConfig,
    ) -> Fetch<'a> {
        Fetch {
            repo_url,
            git_ref,
            key,
            ca_bundle: (!build.git_ca_bundle.is_empty()).then(|| Path::new(build.git_ca_bundle.as_str())),
            timeout: Duration::from_secs(build.git_timeout_seconds),
        }
    }
}

/// Longest repository URL accepted.
const MAX_URL: usize = 2048;
/// Longest ref accepted.
const MAX_REF: usize = 255;
/// Where Debian keeps the system's roots, copied in front of `build.git_ca_bundle`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a checked URL reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Https,
    Ssh,
}

/// Whether `url` may be cloned at all (https or ssh; no local paths, no `file://`,
/// no `ext::`, nothing starting with `-`). The message is for a 422.
pub fn check_url(url: &str) -> Result<(), String> {
    transport(url).map(|_| ())
}

fn transport(url: &str) -> Result<Transport, String> {
    if url.is_empty() {
        return Err("repo_url is empty".into());
    }
    if url.len() > MAX_URL {
        return Err(format!("repo_url is longer than {MAX_URL} bytes"));
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("repo_url holds whitespace or control characters".into());
    }
    if url.starts_with('-') {
        return Err("repo_url may not start with '-' (git would read it as an option)".into());
    }
    let lower = url.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("https://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err("repo_url may not hold credentials: they would be stored in plain text; use a public https \
                        repository or ssh with the project's deploy key"
                .into());
        }
        check_host_port(authority, "repo_url")?;
        let path = &rest[authority.len()..];
        if path.trim_matches('/').is_empty() {
            return Err("repo_url names no repository path".into());
        }
        return Ok(Transport::Https);
    }
    if let Some(rest) = lower.strip_prefix("ssh://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let Some((user, host)) = authority.rsplit_once('@') else {
            return Err("an ssh repo_url names its user: ssh://user@host[:port]/path".into());
        };
        check_user(user)?;
        check_host_port(host, "repo_url")?;
        let path = &rest[authority.len()..];
        if path.trim_matches('/').is_empty() {
            return Err("repo_url names no repository path".into());
        }
        return Ok(Transport::Ssh);
    }
    if lower.starts_with("http://") {
        return Err("plain http:// is refused: what is cloned could be altered on the way; use https:// or ssh".into());
    }
    if lower.starts_with("file:") || lower.starts_with('/') || lower.starts_with('.') || lower.starts_with('~') {
        return Err("local repositories are refused: repo_url must be https:// or ssh".into());
    }
    if url.contains("::") || url.contains("://") {
        return Err("only https:// and ssh repositories are cloned (no file://, ext::, fd::, git://)".into());
    }
    // The scp-like form `user@host:path` (git's rule: a colon before any slash).
    if let Some((authority, path)) = url.split_once(':') {
        if let Some((user, host)) = authority.rsplit_once('@') {
            if authority.contains('/') {
                return Err("repo_url is not an https or ssh URL".into());
            }
            check_user(user)?;
            check_host(host, "repo_url")?;
            if path.is_empty() || path.starts_with('-') || path.starts_with(':') {
                return Err("an ssh repo_url names a repository path after ':'".into());
            }
            return Ok(Transport::Ssh);
        }
    }
    Err("repo_url must be https://host/path, ssh://user@host[:port]/path or user@host:path".into())
}

fn check_user(user: &str) -> Result<(), String> {
    if user.contains(':') {
        return Err("repo_url may not hold a password: use the project's deploy key".into());
    }
    let ok = !user.is_empty()
        && !user.starts_with('-')
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(format!("repo_url has a bad user name {user:?}")) }
}

fn check_host_port(authority: &str, what: &str) -> Result<(), String> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => {
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("{what} has a bad IPv6 address"));
                }
                (None, rest.strip_prefix(':'))
            }
            None => return Err(format!("{what} has a bad IPv6 address")),
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(authority), None),
        },
    };
    if let Some(h) = host {
        check_host(h, what)?;
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(format!("{what} has a bad port {p:?}"));
        }
    }
    Ok(())
}

fn check_host(host: &str, what: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok { Ok(()) } else { Err(format!("{what} has a bad host name {host:?}")) }
}

/// Whether `git_ref` is a ref or commit git can be asked for (not starting with
/// `-`, no control characters). The message is for a 422.
pub fn check_ref(git_ref: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("ref {:?} is not a valid branch, tag or commit: {why}", shown(git_ref)));
    if git_ref.is_empty() {
        return Err("ref is empty".into());
    }
    if git_ref.len() > MAX_REF {
        return bad("too long");
    }
    if git_ref.starts_with('-') {
        return bad("it starts with '-' (git would read it as an option)");
    }
    if git_ref.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("whitespace or control characters");
    }
    if let Some(c) = git_ref.chars().find(|c| matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\')) {
        return bad(&format!("{c:?} is not allowed"));
    }
    if git_ref.contains("..") || git_ref.contains("@{") || git_ref == "@" {
        return bad("'..', '@{' and '@' are not allowed");
    }
    if git_ref.starts_with('/') || git_ref.ends_with('/') || git_ref.contains("//") {
        return bad("empty path components");
    }
    if git_ref.ends_with('.') {
        return bad("it ends with '.'");
    }
    for part in git_ref.split('/') {
        if part.starts_with('.') || part.ends_with(".lock") {
            return bad("a component starts with '.' or ends with '.lock'");
        }
    }
    let other_namespace =
        git_ref.starts_with("refs/") && !git_ref.starts_with("refs/heads/") && !git_ref.starts_with("refs/tags/");
    if git_ref == "HEAD" || other_namespace {
        return bad("name a branch, a tag or a commit");
    }
    Ok(())
}

/// `git_ref`, cut for an error message.
fn shown(git_ref: &str) -> String {
    git_ref.chars().take(80).collect()
}

/// A full commit id (SHA-1 or SHA-256).
fn is_commit(git_ref: &str) -> bool {
    (git_ref.len() == 40 || git_ref.len() == 64) && git_ref.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Clones `fetch` into `dest` (an empty directory), shallow, at its ref; `scratch` is
/// a private directory for the key and known-hosts files. Returns the commit id.
pub async fn fetch(
    fetch: &Fetch<'_>,
    dest: &Path,
    scratch: &Path,
    log: &LogTx,
    cancel: &mut watch::Receiver<bool>,
) -> Result<String, Stop> {
    let url = fetch.repo_url;
    let transport = transport(url).map_err(Stop::Failed)?;
    check_ref(fetch.git_ref).map_err(Stop::Failed)?;
    let mut git = Git::prepare(fetch, transport, scratch).map_err(Stop::Failed)?;
    let started = std::time::Instant::now();
    let outcome = git.clone_into(fetch, dest, log, cancel).await;
    git.forget_key();
    let commit = outcome?;
    let git_dir = dest.join(".git");
    let removed = {
        let d = git_dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d)).await
    };
    match removed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Stop::Failed(format!("cannot remove {}: {e}", git_dir.display()))),
        Err(e) => return Err(Stop::Failed(format!("cannot remove {}: {e}", git_dir.display()))),
    }
    let _ = log
        .send(format!("cloned {url} at {} (commit {commit}) in {:.1}s", fetch.git_ref, started.elapsed().as_secs_f64()))
        .await;
    Ok(commit)
}

/// The git command lines of one fetch: the environment and `-c` settings every
/// invocation shares.
struct Git {
    env: Vec<(String, String)>,
    config: Vec<String>,
    key_file: Option<PathBuf>,
    url: String,
    deadline: std::time::Instant,
}

impl Git {
    fn prepare(fetch: &Fetch<'_>, transport: Transport, scratch: &Path) -> Result<Git, String> {
        let url = fetch.repo_url;
        let home = scratch.join("home");
        std::fs::create_dir_all(&home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
        let home_s = utf8(&home)?;
        let mut env = vec![
            ("HOME".to_string(), home_s.clone()),
            ("XDG_CONFIG_HOME".to_string(), home_s),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
            ("GIT_CONFIG_GLOBAL".to_string(), "/dev/null".to_string()),
            ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
            ("GIT_ALLOW_PROTOCOL".to_string(), "https:ssh".to_string()),
            ("GIT_PROTOCOL_FROM_USER".to_string(), "0".to_string()),
            ("LC_ALL".to_string(), "C".to_string()),
        ];
        let mut config: Vec<String> = [
            "protocol.file.allow=never",
            "protocol.ext.allow=never",
            "core.hooksPath=/dev/null",
            "credential.helper=",
            "core.askPass=",
            "advice.detachedHead=false",
            "init.defaultBranch=main",
            "transfer.fsckObjects=true",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut key_file = None;
        match transport {
            Transport::Https => {
                if let Some(extra) = fetch.ca_bundle {
                    let mut pem = std::fs::read(SYSTEM_ROOTS).unwrap_or_default();
                    pem.push(b'\n');
                    pem.extend(std::fs::read(extra).map_err(|e| format!("cannot read {}: {e}", extra.display()))?);
                    let roots = scratch.join("roots.pem");
                    std::fs::write(&roots, pem).map_err(|e| format!("cannot write {}: {e}", roots.display()))?;
                    config.push(format!("http.sslCAInfo={}", utf8(&roots)?));
                }
            }
            Transport::Ssh => {
                let Some(key) = fetch.key else {
                    return Err(format!(
                        "{url} is an ssh repository and the project has no deploy key \
                         (POST /v1/projects/{{id}}/credentials/git)"
                    ));
                };
                let Some(known_hosts) = key.known_hosts.as_deref().filter(|k| !k.trim().is_empty()) else {
                    return Err(format!(
                        "{url} is an ssh repository and the project's deploy key has no known_hosts: \
                         host keys are checked strictly, so give the server's key with the deploy key"
                    ));
                };
                let dir = scratch.join("ssh");
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                let key_path = dir.join("deploy_key");
                let hosts_path = dir.join("known_hosts");
                let mut text = key.private_key.to_string();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                write_private(&key_path, text.as_bytes())?;
                let mut hosts = known_hosts.to_string();
                if !hosts.ends_with('\n') {
                    hosts.push('\n');
                }
                write_private(&hosts_path, hosts.as_bytes())?;
                key_file = Some(key_path.clone());
                let (k, h) = (shell_quote(&utf8(&key_path)?)?, shell_quote(&utf8(&hosts_path)?)?);
                env.push((
                    "GIT_SSH_COMMAND".to_string(),
                    format!(
                        "ssh -F /dev/null -i {k} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
                         -o UserKnownHostsFile={h} -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes \
                         -o ConnectTimeout=30 -o ServerAliveInterval=15"
                    ),
                ));
                env.push(("GIT_SSH_VARIANT".to_string(), "ssh".to_string()));
            }
        }
        Ok(Git { env, config, key_file, url: url.to_string(), deadline: std::time::Instant::now() + fetch.timeout })
    }

    fn tool(&self, dir: Option<&Path>) -> Tool {
        let mut t = Tool::new("git");
        for c in &self.config {
            t = t.arg("-c").arg(c);
        }
        if let Some(d) = dir {
            t = t.arg("-C").arg(d);
        }
        for (k, v) in &self.env {
            t = t.env(k, v);
        }
        t
    }

    async fn clone_into(
        &self,
        fetch: &Fetch<'_>,
        dest: &Path,
        log: &LogTx,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<String, Stop> {
        let r = fetch.git_ref;
        let _ = log.send(format!("cloning {} at {r}", self.url)).await;
        if is_commit(r) {
            let init = self.tool(None).arg("init").arg("-q").arg("--template=").arg("--").arg(dest);
            self.run(&init, "init", log, cancel).await?;
            let get = self
                .tool(Some(dest))
                .arg("fetch")
                .arg("--depth")
                .arg("1")
                .arg("--no-tags")
                .arg("--")
                .arg(&self.url)
                .arg(r);
            self.run(&get, r, log, cancel).await?;
            let checkout = self.tool(Some(dest)).arg("checkout").arg("-q").arg("--detach").arg("FETCH_HEAD");
            self.run(&checkout, r, log, cancel).await?;
        } else {
            let name = r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")).unwrap_or(r);
            let clone = self
                .tool(None)
                .arg("clone")
                .arg("-q")
                .arg("--depth")
                .arg("1")
                .arg("--single-branch")
                .arg("--no-tags")
                .arg("--template=")
                .arg("--branch")
                .arg(name)
                .arg("--")
                .arg(&self.url)
                .arg(dest);
            if let Err(e) = self.run(&clone, r, log, cancel).await {
                if let Stop::Failed(m) = &e {
                    if r.len() >= 7 && r.bytes().all(|b| b.is_ascii_hexdigit()) && m.contains("no such ref") {
                        return Err(Stop::Failed(format!(
                            "{m}; a commit is fetched by its full 40-character id, not an abbreviation"
                        )));
                    }
                }
                return Err(e);
            }
        }
        let head = self.tool(Some(dest)).arg("rev-parse").arg("--verify").arg("HEAD^{commit}");
        let out = self.run(&head, r, log, cancel).await?;
        let commit = out.trim().to_string();
        if !is_commit(&commit) {
            return Err(Stop::Failed(format!("git clone of {}: HEAD is not a commit id ({commit:?})", self.url)));
        }
        if is_commit(r) && !commit.eq_ignore_ascii_case(r) {
            return Err(Stop::Failed(format!("git clone of {}: got commit {commit}, not {r}", self.url)));
        }
        Ok(commit)
    }

    /// Runs one git command, its standard error into `log`; its standard output
    /// back when it succeeds, else a message that says what failed.
    async fn run(
        &self,
        tool: &Tool,
        git_ref: &str,
        log: &LogTx,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<String, Stop> {
        let left = self.deadline.saturating_duration_since(std::time::Instant::now());
        let ended = group::run(tool, Some(log), false, left, cancel)
            .await
            .map_err(|e| Stop::Failed(format!("git clone of {}: {e} (is git installed?)", self.url)))?;
        match ended {
            Ended::Exited { code: Some(0), stdout, .. } => Ok(stdout),
            Ended::Exited { stderr, .. } => Err(Stop::Failed(explain(&self.url, git_ref, &stderr))),
            Ended::Cancelled => Err(Stop::Cancelled),
            Ended::TimedOut => Err(Stop::Failed(format!("git clone of {} timed out", self.url))),
        }
    }

    /// Removes the private key file as soon as git is done with it.
    fn forget_key(&mut self) {
        if let Some(k) = self.key_file.take() {
            let _ = std::fs::remove_file(k);
        }
    }
}

impl Drop for Git {
    fn drop(&mut self) {
        self.forget_key();
    }
}

/// What failed, from git's last lines of standard error.
fn explain(url: &str, git_ref: &str, stderr: &[String]) -> String {
    let all = stderr.join("\n");
    let has = |needles: &[&str]| needles.iter().any(|n| all.contains(n));
    let what = if has(&["Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED"]) {
        "the server's host key does not match the deploy key's known_hosts".to_string()
    } else if has(&["Permission denied", "Authentication failed", "could not read Username", "returned error: 401"]) {
        "authentication refused".to_string()
    } else if has(&["returned error: 403"]) {
        "access forbidden".to_string()
    } else if has(&["SSL certificate problem", "server certificate verification failed", "certificate verify failed"]) {
        "the server's TLS certificate is not trusted".to_string()
    } else if has(&[
        "Could not resolve host",
        "Connection refused",
        "Failed to connect",
        "Connection timed out",
        "Could not resolve hostname",
        "Network is unreachable",
        "No route to host",
        "Connection closed by",
    ]) {
        "unreachable".to_string()
    } else if has(&["Remote branch", "couldn't find remote ref", "not our ref", "unadvertised object"]) {
        if is_commit(git_ref) {
            format!(
                "no such ref: commit {git_ref} is not in the repository, or the server does not serve commits \
                 by id (uploadpack.allowReachableSHA1InWant)"
            )
        } else {
            format!("no such ref: no branch or tag {git_ref:?}")
        }
    } else if has(&["not found", "does not appear to be a git repository", "returned error: 404"]) {
        "no such repository".to_string()
    } else {
        "failed".to_string()
    };
    match stderr.iter().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("git clone of {url}: {what} ({})", last.trim()),
        None => format!("git clone of {url}: {what}"),
    }
}

fn utf8(p: &Path) -> Result<String, String> {
    p.to_str().map(str::to_string).ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

/// `s` in single quotes for the shell git runs `GIT_SSH_COMMAND` with.
fn shell_quote(s: &str) -> Result<String, String> {
    if s.contains('\'') {
        return Err(format!("{s} holds a quote"));
    }
    Ok(format!("'{s}'"))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_and_ssh_urls_pass() {
        for ok in [
            "https://github.com/org/app.git",
            "https://git.example.com:8443/group/sub/app",
            "https://127.0.0.1:9999/repo.git",
            "https://[::1]:9999/repo.git",
            "ssh://git@github.com/org/app.git",
            "ssh://git@127.0.0.1:2222/srv/repo.git",
            "git@github.com:org/app.git",
            "deploy_user@git.example.com:app",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        assert_eq!(transport("git@github.com:org/app.git"), Ok(Transport::Ssh));
        assert_eq!(transport("https://h/x"), Ok(Transport::Https));
    }

    #[test]
    fn hostile_and_unsupported_urls_are_refused() {
        for (bad, says) in [
            ("", "empty"),
            ("file:///etc/passwd", "local"),
            ("FILE:///srv/repo", "local"),
            ("/srv/repo.git", "local"),
            ("./repo", "local"),
            ("~/repo", "local"),
            ("ext::sh -c touch% /tmp/pwned", "whitespace"),
            ("ext::sh", "ext::"),
            ("fd::17", "fd::"),
            ("git://github.com/org/app", "git://"),
            ("http://github.com/org/app", "plain http"),
            ("http://127.0.0.1:9/repo", "plain http"),
            ("-uhack", "'-'"),
            ("--upload-pack=touch /tmp/x", "whitespace"),
            ("--upload-pack=id", "'-'"),
            ("https://user:token@github.com/org/app", "credentials"),
            ("https://token@github.com/org/app", "credentials"),
            ("ssh://git:pw@host/repo", "password"),
            ("ssh://-oProxyCommand=id@host/repo", "user"),
            ("ssh://git@-oProxyCommand=id/repo", "host"),
            ("ssh://host/repo", "user"),
            ("git@-oProxyCommand=x:repo", "host"),
            ("git@host:-repo", "path"),
            ("https://github.com/org/app\n", "control"),
            ("https://github.com/a b", "whitespace"),
            ("https://github.com", "path"),
            ("https://github.com/", "path"),
            ("https://host:0/x", "port"),
            ("https://host:99999/x", "port"),
            ("host:repo", "must be"),
            ("repo", "must be"),
        ] {
            let e = check_url(bad).expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(check_url(&format!("https://h/{}", "a".repeat(3000))).is_err());
    }

    #[test]
    fn refs_follow_check_ref_format() {
        for ok in [
            "main",
            "release/1.2",
            "v1.0.0",
            "feature/x-y_z",
            "refs/heads/main",
            "refs/tags/v1",
            "0123456789abcdef0123456789abcdef01234567",
            "abc1234",
        ] {
            assert_eq!(check_ref(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-uhack",
            "--upload-pack=x",
            "main..dev",
            "a:b",
            "a b",
            "a\tb",
            "x\u{7f}",
            "a~1",
            "a^",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "@",
            "a@{1}",
            "/main",
            "main/",
            "a//b",
            ".hidden",
            "a/.b",
            "x.lock",
            "x.",
            "HEAD",
            "refs/remotes/origin/main",
        ] {
            assert!(check_ref(bad).is_err(), "{bad:?}");
        }
        assert!(check_ref(&"a".repeat(300)).is_err());
    }

    #[test]
    fn failures_are_named() {
        let u = "https://h/r.git";
        let e = explain(u, "main", &["fatal: Remote branch nope not found in upstream origin".into()]);
        assert!(e.starts_with("git clone of https://h/r.git: no such ref"), "{e}");
        let e = explain(u, "main", &["fatal: unable to access 'x': Failed to connect to h port 1".into()]);
        assert!(e.contains("unreachable"), "{e}");
        let e = explain(u, "main", &["Host key verification failed.".into()]);
        assert!(e.contains("host key"), "{e}");
        let e = explain(u, "main", &["git@h: Permission denied (publickey).".into()]);
        assert!(e.contains("authentication refused"), "{e}");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let e = explain(u, sha, &["fatal: remote error: upload-pack: not our ref".into()]);
        assert!(e.contains("allowReachableSHA1InWant"), "{e}");
    }
}
