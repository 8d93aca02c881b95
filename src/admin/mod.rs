//! `berth admin`: local commands for the sysadmin on the host, working on the state
//! dir directly rather than through the API (adr/024).
//!
//! - `create-user` and `reset-password` write through [`crate::store`] like the
//!   daemon does (its own writer, short transactions, WAL), so they are safe while
//!   the daemon runs; passwords are hashed with argon2id by [`crate::auth::password`].
//!   A reset also ends the user's sessions (the daemon may trust a cached session
//!   for up to a minute more); API tokens stay.
//! - `backup` and `restore` live in [`archive`]: one `tar.zst` holding a consistent
//!   copy of the database, the host key and the registry's manifests (and, with
//!   `--with-blobs`, every blob), with a manifest of sha256 sums that restore checks
//!   in full before anything reaches the target.
//! - `gc` collects the registry, the layer cache and unpacked layers, and only with
//!   no daemon on the dir: it takes the state dir's lock ([`crate::lock`]). The
//!   daemon's collector excludes its own blob commits with an in-memory lock another
//!   process cannot hold, so with a daemon running the answer is to collect through
//!   its API (`POST /v1/registry/gc`, `POST /v1/oci/cache/gc`).
//!
//! Progress of long work goes to stderr, one line per step.

pub mod archive;

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::PathError;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "no berth state in {0} (no state.db): check --data-dir or the config's data_dir, or start `berth serve` once"
    )]
    NoState(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("no user named {0}")]
    NoSuchUser(String),
    #[error("hash the password: {0}")]
    Hash(String),
    #[error(
        "berth serve is running on {dir}{}: collect through its API instead (POST /v1/registry/gc, then POST /v1/oci/cache/gc, as a super-admin)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    DaemonRunning { dir: PathBuf, pid: Option<u32> },
    #[error(transparent)]
    Lock(crate::lock::LockError),
    #[error("{0} is not empty: restore only into an empty or missing state dir")]
    NotEmpty(PathBuf),
    #[error("the backup is damaged or not a berth backup: {0}; nothing was written")]
    BadArchive(String),
    #[error("garbage collection: {0}")]
    Gc(String),
}

pub type Result<T> = std::result::Result<T, AdminError>;

/// Opens the store of an existing state dir (never creates one).
fn open_store(data_dir: &Path) -> Result<Store> {
    let db = data_dir.join("state.db");
    if !db.is_file() {
        return Err(AdminError::NoState(data_dir.to_path_buf()));
    }
    Ok(Store::open(&db)?)
}

fn check_new_password(password: &str) -> Result<()> {
    use crate::auth::password::{MAX_LEN, MIN_LEN};
    if password.chars().count() < MIN_LEN || password.len() > MAX_LEN {
        return Err(AdminError::Invalid(format!("password must be {MIN_LEN} to {MAX_LEN} characters")));
    }
    Ok(())
}

fn hash(password: &str) -> Result<String> {
    check_new_password(password)?;
    crate::auth::password::hash(password).map_err(|e| AdminError::Hash(e.to_string()))
}

/// The new password: the first line of `file`, or of stdin (asked for twice, without
/// echo, when stdin is a terminal). The line's end is not part of it.
pub fn read_password(file: Option<&Path>) -> Result<String> {
    let first_line = |text: &str| text.lines().next().unwrap_or_default().to_string();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| PathError::new("read", path, e))?;
        return Ok(first_line(&text));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = prompt_hidden("new password: ")?;
        let again = prompt_hidden("again: ")?;
        if first != again {
            return Err(AdminError::Invalid("the passwords do not match".into()));
        }
        return Ok(first);
    }
    let mut text = String::new();
    stdin.lock().take(64 * 1024).read_to_string(&mut text).map_err(|e| PathError::new("read", "stdin", e))?;
    Ok(first_line(&text))
}

/// Reads one line from the terminal on stdin with echo off, restoring it after.
fn prompt_hidden(prompt: &str) -> Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let io = |e: std::io::Error| AdminError::Path(PathError::new("read", "stdin", e));
    eprint!("{prompt}");
    let saved = tcgetattr(&stdin).map_err(|e| io(e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).map_err(|e| io(e.into()))?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    read.map_err(io)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `berth admin create-user`: a new user, a super-admin with `super_admin`. The
/// first super-admin made this way also spends the one-time bootstrap token, as
/// `POST /v1/bootstrap` would have.
pub fn create_user(
    data_dir: &Path,
    username: &str,
    password: &str,
    super_admin: bool,
) -> Result<crate::store::users::User> {
    if !crate::validate::is_username(username) {
        return Err(AdminError::Invalid(
            "username must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit".into(),
        ));
    }
    let hash = hash(password)?;
    let store = open_store(data_dir)?;
    let user = crate::store::users::User {
        id: crate::ids::new_id("usr"),
        username: username.to_string(),
        super_admin,
        created_at: crate::ids::now_rfc3339(),
    };
    let u = user.clone();
    let spent = store.write_blocking(move |c| {
        crate::store::users::insert(c, &u, &hash)?;
        if u.super_admin { crate::store::auth::meta_delete(c, crate::auth::BOOTSTRAP_META_KEY) } else { Ok(false) }
    });
    store.close();
    if spent? {
        let file = data_dir.join("bootstrap-token");
        if let Err(e) = std::fs::remove_file(&file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(PathError::new("remove", &file, e).into());
            }
        }
    }
    Ok(user)
}

/// `berth admin reset-password`: sets a user's password and ends their sessions.
/// Returns how many sessions ended.
pub fn reset_password(data_dir: &Path, username: &str, password: &str) -> Result<usize> {
    let hash = hash(password)?;
    let store = open_store(data_dir)?;
    let name = username.to_string();
    let outcome = store.write_blocking(move |c| {
        let Some(user) = crate::store::users::by_username(c, &name)? else { return Ok(None) };
        crate::store::users::set_password_hash(c, &user.id, &hash)?;
        Ok(Some(crate::store::auth::delete_other_sessions(c, &user.id, None)?))
    });
    store.close();
    outcome?.ok_or_else(|| AdminError::NoSuchUser(username.to_string()))
}

/// What `berth admin gc` did.
#[derive(Debug)]
pub struct GcOutcome {
    pub registry: crate::store::registry::GcReport,
    pub cache: crate::images::remote::CacheGcReport,
    pub snapshots_removed: usize,
}

/// `berth admin gc`: with no daemon on the dir, the collections the daemon runs for
/// `POST /v1/registry/gc` and `POST /v1/oci/cache/gc`, then unpacked layers. Blobs
/// that replicas run from, or that a rollback may need, are kept as the daemon
/// keeps them.
pub async fn gc(config: &Config) -> Result<GcOutcome> {
    let data_dir = &config.data_dir;
    let _lock = crate::lock::acquire(data_dir).map_err(|e| match e {
        crate::lock::LockError::Held { dir, pid } => AdminError::DaemonRunning { dir, pid },
        other => AdminError::Lock(other),
    })?;
    let store = open_store(data_dir)?;
    let outcome = gc_with(config, &store).await;
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.close()).await;
    outcome
}

async fn gc_with(config: &Config, store: &Store) -> Result<GcOutcome> {
    let registry = crate::registry::Registry::new(crate::registry::Settings::from_config(config), store.clone());
    registry.blobs.init()?;
    let mut manifests = store.read(crate::store::replicas::image_manifests).await?;
    manifests.extend(store.read(crate::store::deployments::rollback_digests).await?);
    let blobs = registry.blobs.clone();
    let pinned: HashSet<String> = tokio::task::spawn_blocking(move || {
        manifests.iter().flat_map(|m| crate::engine::image::referenced_blobs(&blobs, m)).collect()
    })
    .await
    .map_err(|e| AdminError::Gc(e.to_string()))?;
    eprintln!("gc: {} blobs pinned by replicas and rollbacks", pinned.len());
    let report = crate::registry::gc::run(&registry, &pinned).await.map_err(|e| AdminError::Gc(e.to_string()))?;
    eprintln!(
        "gc: registry: {} manifests and {} blobs deleted, {} bytes freed, {} uploads purged",
        report.manifests_deleted, report.blobs_deleted, report.bytes_freed, report.uploads_purged
    );
    let cache = crate::images::remote::cache::gc(&registry, &pinned, config.cache.max_bytes, registry.gc_grace)
        .await
        .map_err(|e| AdminError::Gc(e.to_string()))?;
    eprintln!("gc: layer cache: {} blobs evicted, {} bytes freed", cache.blobs_evicted, cache.bytes_freed);
    let blobs = registry.blobs.clone();
    let snapshots = crate::images::snapshots::SnapshotStore::new(data_dir_images(config));
    let removed = tokio::task::spawn_blocking(move || crate::engine::collect_snapshots(&blobs, &snapshots))
        .await
        .map_err(|e| AdminError::Gc(e.to_string()))?
        .map_err(|e| AdminError::Gc(e.to_string()))?
        .removed
        .len();
    eprintln!("gc: {removed} unpacked layers removed");
    Ok(GcOutcome { registry: report, cache, snapshots_removed: removed })
}

fn data_dir_images(config: &Config) -> PathBuf {
    config.data_dir.join("images").join("snapshots")
}
