//! A project's credentials for the outside world, and the only way to get their
//! secret parts back in plain text.
//!
//! - **Registry logins** (`/v1/projects/{id}/registries`): name, server, username and
//!   a password sealed at rest. The image puller calls [`registry_login`] (a deployment
//!   that names `registry_id`) or [`login_for_server`] (an `ExternalImage` from a host
//!   the project has a login for). Both are scoped by project: another project's
//!   credential is "not found", exactly like one that does not exist. Both take the
//!   host the image is pulled from, and a login is only ever opened for its own
//!   server: naming a Docker Hub login for an image on another host is refused, so
//!   nobody who may deploy can send a stored password to a host of their choosing.
//! - **A Git deploy key** (`/v1/projects/{id}/credentials/git`): one per project, an
//!   unencrypted SSH private key sealed at rest, with its fingerprint and an optional
//!   `known_hosts`; builds get it from [`git_key`].
//! - Registry hosts are normalized by [`normalize_server`]: lower case, and Docker
//!   Hub's aliases (`index.docker.io`, `registry-1.docker.io`,
//!   `registry.hub.docker.com`) are stored as `docker.io`. The puller normalizes an
//!   image reference's host the same way before it looks a login up, and maps
//!   `docker.io` to the host that actually serves the API (`registry-1.docker.io`).
//! - A value that does not open (sealed under another host key, or damaged) is an
//!   error that names the credential and how to repair it, never a panic and never
//!   an empty password sent to a registry.

use super::{Sealer, Zeroizing};
use crate::store::Store;
use crate::store::credentials::{self as sql, GitKeyRow, RegistryRow};

/// Docker Hub's one name here.
pub const DOCKER_HUB: &str = "docker.io";
/// Hosts that mean Docker Hub.
const DOCKER_HUB_ALIASES: &[&str] =
    &["docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"];

pub const MAX_USERNAME: usize = 255;
/// A registry password or token; big enough for a cloud key file (GCR's `_json_key`)
/// or a long-lived JWT.
pub const MAX_PASSWORD: usize = 16 * 1024;
pub const MAX_KNOWN_HOSTS: usize = 64 * 1024;
pub const MAX_KEY_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Unknown, or of another project (the two are not told apart).
    #[error("{0} not found")]
    NotFound(String),
    /// Sealed under another host key, or damaged: it has to be set again.
    #[error("{what} cannot be opened with this host's key (it was sealed under another key, or is damaged); {repair}")]
    Unreadable { what: String, repair: String },
    /// More than one login for a registry host and none named.
    #[error("the project has {} logins for {server} ({}); name one with registry_id", names.len(), names.join(", "))]
    Ambiguous { server: String, names: Vec<String> },
    /// A login named for an image on another registry host.
    #[error("{what} is for {server}, not {wanted}; a login is only sent to its own server")]
    OtherServer { what: String, server: String, wanted: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A registry login, opened for one pull.
pub struct RegistryLogin {
    pub id: String,
    pub name: String,
    /// Normalized (`docker.io` for Docker Hub).
    pub server: String,
    pub username: String,
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("id", &self.id)
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &super::Redacted(()))
            .finish()
    }
}

/// The project's deploy key, opened for one clone.
pub struct GitKey {
    pub name: String,
    pub key_type: String,
    pub fingerprint: String,
    /// The private key text, for a 0600 file that `ssh -i` reads.
    pub private_key: Zeroizing<String>,
    pub known_hosts: Option<String>,
}

impl std::fmt::Debug for GitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitKey")
            .field("fingerprint", &self.fingerprint)
            .field("private_key", &super::Redacted(()))
            .finish_non_exhaustive()
    }
}

/// The login `registry_id` of `project_id`, password opened, for a pull from
/// `server` (the image reference's registry host, any spelling [`normalize_server`]
/// accepts), which must be the login's own server.
pub async fn registry_login(
    store: &Store,
    sealer: &Sealer,
    project_id: &str,
    registry_id: &str,
    server: &str,
) -> Result<RegistryLogin, CredentialError> {
    let not_found = || CredentialError::NotFound(format!("registry credential {registry_id}"));
    if !crate::ids::has_shape(registry_id, "reg") {
        return Err(not_found());
    }
    let wanted = normalize_server(server).map_err(CredentialError::Invalid)?;
    let (p, r) = (project_id.to_string(), registry_id.to_string());
    let row = store.read(move |c| sql::get_registry(c, &p, &r)).await?.ok_or_else(not_found)?;
    if row.server != wanted {
        return Err(CredentialError::OtherServer {
            what: format!("registry credential {} ({})", row.id, row.name),
            server: row.server,
            wanted,
        });
    }
    open_login(sealer, row)
}

/// The project's login for the registry host `server` (any spelling
/// [`normalize_server`] accepts), if it has exactly one; `None` when it has none
/// (pull anonymously), an error when it has several.
pub async fn login_for_server(
    store: &Store,
    sealer: &Sealer,
    project_id: &str,
    server: &str,
) -> Result<Option<RegistryLogin>, CredentialError> {
    let server = normalize_server(server).map_err(CredentialError::Invalid)?;
    let (p, s) = (project_id.to_string(), server.clone());
    let mut rows = store.read(move |c| sql::registries_for_server(c, &p, &s)).await?;
    match rows.len() {
        0 => Ok(None),
        1 => rows.pop().map(|row| open_login(sealer, row)).transpose(),
        _ => Err(CredentialError::Ambiguous { server, names: rows.into_iter().map(|r| r.name).collect() }),
    }
}

fn open_login(sealer: &Sealer, row: RegistryRow) -> Result<RegistryLogin, CredentialError> {
    let password = sealer.open_string(&row.password_sealed).map_err(|_| CredentialError::Unreadable {
        what: format!("the password of registry credential {} ({})", row.id, row.name),
        repair: format!("set it again with PUT /v1/projects/{}/registries/{}", row.project_id, row.id),
    })?;
    Ok(RegistryLogin { id: row.id, name: row.name, server: row.server, username: row.username, password })
}

/// The project's Git deploy key, opened; `None` when it has none.
pub async fn git_key(store: &Store, sealer: &Sealer, project_id: &str) -> Result<Option<GitKey>, CredentialError> {
    let p = project_id.to_string();
    let Some(row) = store.read(move |c| sql::get_git(c, &p)).await? else {
        return Ok(None);
    };
    open_git(sealer, row).map(Some)
}

fn open_git(sealer: &Sealer, row: GitKeyRow) -> Result<GitKey, CredentialError> {
    let private_key = sealer.open_string(&row.private_key_sealed).map_err(|_| CredentialError::Unreadable {
        what: format!("the Git deploy key {} of project {}", row.fingerprint, row.project_id),
        repair: format!("set it again with POST /v1/projects/{}/credentials/git", row.project_id),
    })?;
    Ok(GitKey {
        name: row.name,
        key_type: row.key_type,
        fingerprint: row.fingerprint,
        private_key,
        known_hosts: row.known_hosts,
    })
}

const SERVER_SHAPE: &str =
    "server must be a registry host such as docker.io, ghcr.io or 127.0.0.1:5000 (host[:port], no scheme or path)";

/// Checks a registry host (`host[:port]`, `[v6]:port`) and gives its one spelling:
/// lower case, port without leading zeros, Docker Hub's aliases as `docker.io`.
pub fn normalize_server(server: &str) -> Result<String, String> {
    let bad = || SERVER_SHAPE.to_string();
    if server.is_empty() || server.len() > 260 || server.contains("://") || server.contains('/') {
        return Err(bad());
    }
    let (host, port) = if let Some(rest) = server.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        let addr: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (server, None),
        };
        let host = host.to_ascii_lowercase();
        let ok = host.parse::<std::net::Ipv4Addr>().is_ok()
            || (crate::validate::is_hostname(&host) && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
        if !ok {
            return Err(bad());
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?)
        }
        Some(_) => return Err(bad()),
    };
    Ok(match port {
        None if DOCKER_HUB_ALIASES.contains(&host.as_str()) => DOCKER_HUB.to_string(),
        None => host,
        Some(p) => format!("{host}:{p}"),
    })
}

/// A credential's name: a DNS label, unique in its project.
pub fn check_name(name: &str) -> Result<(), String> {
    if !crate::validate::is_dns_label(name) {
        return Err("name must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'".into());
    }
    Ok(())
}

/// A registry username: one line of printable text, no `:` (Basic auth splits on it).
pub fn check_username(username: &str) -> Result<(), String> {
    if username.is_empty()
        || !crate::validate::is_name_text(username, MAX_USERNAME)
        || username.contains(':')
        || username.trim() != username
    {
        return Err(format!(
            "username must be 1-{MAX_USERNAME} printable characters without ':', control characters or surrounding spaces"
        ));
    }
    Ok(())
}

/// A registry password or token. Line breaks and tabs are allowed (cloud key files
/// are JSON); other control characters are not. The message never quotes it.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.is_empty()
        || password.len() > MAX_PASSWORD
        || password.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(format!(
            "password must be 1 to {MAX_PASSWORD} bytes with no control characters but line breaks and tabs"
        ));
    }
    Ok(())
}

/// A deploy key's label.
pub fn check_key_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !crate::validate::is_name_text(name, MAX_KEY_NAME) {
        return Err(format!("name must be 1-{MAX_KEY_NAME} printable characters on one line"));
    }
    Ok(())
}

/// `known_hosts` lines as OpenSSH reads them: `[@marker] hosts keytype base64key [comment]`,
/// with blank lines and `#` comments; each key must decode and be of its stated type.
pub fn check_known_hosts(text: &str) -> Result<(), String> {
    use base64::Engine;
    if text.len() > MAX_KNOWN_HOSTS {
        return Err(format!("known_hosts must be at most {MAX_KNOWN_HOSTS} bytes"));
    }
    if text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err("known_hosts holds control characters".into());
    }
    let mut entries = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("known_hosts line {}: {why}", i + 1);
        let mut fields = line.split_whitespace().peekable();
        if fields.peek().is_some_and(|f| f.starts_with('@')) {
            match fields.next() {
                Some("@cert-authority" | "@revoked") => {}
                _ => return Err(bad("unknown marker; expected @cert-authority or @revoked")),
            }
        }
        let (Some(_hosts), Some(key_type), Some(key)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad("expected: hosts key-type base64-key"));
        };
        let blob = base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| bad("the key is not base64"))?;
        let stated = blob
            .get(..4)
            .and_then(|l| usize::try_from(u32::from_be_bytes([l[0], l[1], l[2], l[3]])).ok())
            .and_then(|n| blob.get(4..4 + n));
        if stated != Some(key_type.as_bytes()) {
            return Err(bad("the key is not of the type the line states"));
        }
        entries += 1;
    }
    if entries == 0 {
        return Err("known_hosts holds no host key".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_have_one_spelling() {
        for (given, want) in [
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("Registry.Hub.Docker.com", "docker.io"),
            ("GHCR.io", "ghcr.io"),
            ("ghcr.io:443", "ghcr.io:443"),
            ("docker.io:5000", "docker.io:5000"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("127.0.0.1:05000", "127.0.0.1:5000"),
            ("localhost:5000", "localhost:5000"),
            ("registry", "registry"),
            ("[::1]:5000", "[::1]:5000"),
            ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ] {
            assert_eq!(normalize_server(given).as_deref(), Ok(want), "{given}");
        }
        for bad in [
            "",
            "https://ghcr.io",
            "ghcr.io/org",
            "ghcr.io:",
            "ghcr.io:0",
            "ghcr.io:65536",
            "ghcr.io:+80",
            "ghcr.io:80:80",
            "::1",
            "[::1",
            "[::1]5000",
            "[nope]:1",
            "gh cr.io",
            "ghcr..io",
            "-ghcr.io",
            "ghcr_io",
            "999.1.1.1",
            "1.2.3",
            "ghcr.io\n",
            "ünï.io",
        ] {
            assert!(normalize_server(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_server(&format!("{}.io", "a".repeat(300))).is_err());
    }

    #[test]
    fn names_usernames_and_passwords() {
        assert!(check_name("docker-hub").is_ok() && check_name("Hub").is_err() && check_name("").is_err());
        for ok in ["robot$ci+bot", "me@example.com", "_json_key", "AWS", "ü-user"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a:b", "tab\there", "nl\n", " padded", "bidi\u{202E}x", &"u".repeat(MAX_USERNAME + 1)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        let json_key = "{\n  \"type\": \"service_account\",\n\t\"private_key\": \"-----BEGIN...\"\r\n}";
        for ok in ["p", "pa ss:word", json_key, &"x".repeat(MAX_PASSWORD)] {
            assert!(check_password(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "nul\0", "esc\u{1b}[0m", "del\u{7f}", &"x".repeat(MAX_PASSWORD + 1)] {
            let e = check_password(bad).unwrap_err();
            assert!(!e.contains("nul") && !e.contains("esc"), "{e}");
        }
        assert!(check_key_name("github deploy ✓").is_ok());
        assert!(check_key_name("").is_err() && check_key_name("a\nb").is_err());
    }

    #[test]
    fn known_hosts_lines_are_checked() {
        let ed = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let good = format!(
            "# github\ngithub.com ssh-ed25519 {ed}\n\n|1|salt=|hash= ssh-ed25519 {ed} comment here\n\
             @cert-authority *.example.com ssh-ed25519 {ed}\n[git.example.com]:2222 ssh-ed25519 {ed}\r\n"
        );
        assert_eq!(check_known_hosts(&good), Ok(()));
        for bad in [
            String::new(),
            "# only a comment\n".to_string(),
            format!("github.com ssh-rsa {ed}"),
            "github.com ssh-ed25519 not*base64".to_string(),
            "github.com ssh-ed25519".to_string(),
            format!("@trusted github.com ssh-ed25519 {ed}"),
            format!("github.com ssh-ed25519 {ed}\u{1b}"),
            "x".repeat(MAX_KNOWN_HOSTS + 1),
        ] {
            assert!(check_known_hosts(&bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn logins_are_scoped_opened_and_named_when_they_cannot_be() {
        let (store, dir) = crate::store::test_store();
        let sealer = Sealer::ephemeral();
        let other_key = Sealer::ephemeral();
        let row = |id: &str, project: &str, name: &str, server: &str, password: &str, by: &Sealer| RegistryRow {
            id: id.into(),
            project_id: project.into(),
            name: name.into(),
            server: server.into(),
            username: "ci".into(),
            password_sealed: by.seal(password.as_bytes()).unwrap(),
            sealed_by: by.key_id().into(),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        let id = |n: u8| format!("reg_{n:0>26}");
        let rows = [
            row(&id(1), "prj_a", "hub", "docker.io", "hub-pass", &sealer),
            row(&id(2), "prj_a", "gh1", "ghcr.io", "gh-pass-1", &sealer),
            row(&id(3), "prj_a", "gh2", "ghcr.io", "gh-pass-2", &sealer),
            row(&id(4), "prj_a", "old", "quay.io", "old-pass", &other_key),
            row(&id(5), "prj_b", "hub", "docker.io", "b-pass", &sealer),
        ];
        store
            .write(move |c| {
                for (p, n) in [("prj_a", "a"), ("prj_b", "b")] {
                    let project = crate::store::projects::Project {
                        id: p.into(),
                        name: n.into(),
                        description: String::new(),
                        env: Default::default(),
                        limits: Default::default(),
                        created_at: "t".into(),
                        updated_at: "t".into(),
                    };
                    crate::store::projects::insert(c, &project)?;
                }
                for r in &rows {
                    sql::insert_registry(c, r)?;
                }
                Ok(())
            })
            .await
            .unwrap();

        let login = registry_login(&store, &sealer, "prj_a", &id(1), "index.docker.io").await.unwrap();
        assert_eq!((login.server.as_str(), login.password.as_str()), ("docker.io", "hub-pass"));
        assert!(!format!("{login:?}").contains("hub-pass"));
        // Another project's id, and a malformed one, are not found alike.
        for (project, reg) in [("prj_b", id(1)), ("prj_a", id(5)), ("prj_a", "reg_x".to_string())] {
            let e = registry_login(&store, &sealer, project, &reg, "docker.io").await.unwrap_err();
            assert!(matches!(&e, CredentialError::NotFound(m) if m.contains(&reg)), "{e}");
        }
        // A login is never opened for another server than its own.
        let e = registry_login(&store, &sealer, "prj_a", &id(1), "attacker.example:443").await.unwrap_err();
        assert!(matches!(&e, CredentialError::OtherServer { wanted, .. } if wanted == "attacker.example:443"), "{e}");
        assert!(e.to_string().contains("is for docker.io, not attacker.example:443"), "{e}");
        let e = registry_login(&store, &sealer, "prj_a", &id(1), "https://docker.io").await.unwrap_err();
        assert!(matches!(e, CredentialError::Invalid(_)));
        // By server, in any spelling; none is anonymous; two is ambiguous.
        let hub = login_for_server(&store, &sealer, "prj_a", "registry-1.docker.io").await.unwrap().unwrap();
        assert_eq!(hub.id, id(1));
        assert_eq!(login_for_server(&store, &sealer, "prj_b", "index.docker.io").await.unwrap().unwrap().id, id(5));
        assert!(login_for_server(&store, &sealer, "prj_b", "ghcr.io").await.unwrap().is_none());
        let e = login_for_server(&store, &sealer, "prj_a", "GHCR.IO").await.unwrap_err();
        assert!(matches!(&e, CredentialError::Ambiguous { names, .. } if names == &["gh1", "gh2"]), "{e}");
        assert!(matches!(
            login_for_server(&store, &sealer, "prj_a", "http://x").await,
            Err(CredentialError::Invalid(_))
        ));
        // Sealed under another key: named, with the way to repair it, and no secret.
        let e = login_for_server(&store, &sealer, "prj_a", "quay.io").await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, CredentialError::Unreadable { .. }));
        assert!(text.contains(&id(4)) && text.contains("(old)") && text.contains("PUT /v1/projects/prj_a/registries/"));
        assert!(!text.contains("old-pass"));

        // The deploy key.
        assert!(git_key(&store, &sealer, "prj_a").await.unwrap().is_none());
        let key_text = include_str!("testdata/ed25519");
        let info = super::super::ssh::inspect(key_text).unwrap();
        let git = GitKeyRow {
            project_id: "prj_a".into(),
            name: "deploy".into(),
            key_type: info.key_type,
            fingerprint: info.fingerprint.clone(),
            private_key_sealed: sealer.seal(key_text.as_bytes()).unwrap(),
            known_hosts: None,
            sealed_by: sealer.key_id().into(),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        store.write(move |c| sql::put_git(c, &git).map(|_| ())).await.unwrap();
        let key = git_key(&store, &sealer, "prj_a").await.unwrap().unwrap();
        assert_eq!(key.private_key.as_str(), key_text);
        assert!(!format!("{key:?}").contains("PRIVATE KEY"));
        let e = git_key(&store, &other_key, "prj_a").await.unwrap_err();
        assert!(
            e.to_string().contains(&info.fingerprint)
                && e.to_string().contains("POST /v1/projects/prj_a/credentials/git")
        );
        assert!(git_key(&store, &sealer, "prj_b").await.unwrap().is_none());
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
