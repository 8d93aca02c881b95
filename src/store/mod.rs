//! State in one SQLite file (`<data_dir>/state.db`).
//!
//! Design:
//! - WAL mode, `synchronous=FULL` (a commit is on disk before the caller hears
//!   about it, so a 201 survives a power cut), foreign keys on, numbered migrations
//!   applied at open. A database whose schema is newer than the last migration this
//!   binary has is refused before anything is written to it.
//! - One writer: a dedicated thread owns the only write connection and runs jobs
//!   sent to it. Jobs that queue up while a commit is in flight are group-committed:
//!   each runs inside its own SAVEPOINT (a failing job rolls back alone), then one
//!   COMMIT (one fsync) covers them all, and only then does each caller get its answer.
//! - Async reads run on the store's own pool of reader threads, each with its own
//!   read-only connection (`crate::pool`): never on the async executor's threads, and
//!   never behind password hashing or blob I/O. Callers that are already on a blocking
//!   thread use [`Store::read_blocking`] with a small set of idle connections.
//! - The writer's queue is bounded: `write` waits (asynchronously) for room, so a
//!   burst of writers is slowed down instead of growing memory; `write_detached`
//!   (bookkeeping such as `last_used_at`) drops its update when the queue is full.
//!
//! SQL lives in this module's files (one per table group); callers pass closures
//! that call those functions, never naming the connection's type. `clippy.toml`
//! holds the wall: rusqlite's connection, statement and row types and the methods
//! that run SQL are disallowed everywhere, and allowed again only here.

#![expect(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "src/store is the one module that reaches SQLite"
)]

pub mod acme;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod cache;
pub mod console;
pub mod credentials;
pub mod deployments;
pub mod domains;
pub mod ipam;
pub mod jobs;
pub mod projects;
pub mod registry;
pub mod replicas;
pub mod services;
pub mod uploads;
pub mod users;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::pool::{Pool, PoolError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("open {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
    #[error(
        "the database schema is version {found}, newer than this berth knows ({known}): it was written by a newer berth; run that version again (nothing was changed)"
    )]
    NewerSchema { found: i64, known: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Reply half of a write job: called after the batch's COMMIT with its outcome.
type Reply = Box<dyn FnOnce(Result<()>) + Send>;
/// A write job: runs on the writer thread, says whether it succeeded, hands back its reply.
type Job = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 64;
/// Idle read connections kept open for [`Store::read_blocking`].
const MAX_IDLE_READERS: usize = 4;
/// Threads (each with one connection) serving [`Store::read`].
const READER_THREADS: usize = 4;
/// Reads admitted (running or queued) before `read` waits for room.
const READ_QUEUE: usize = 1024;
/// Writes queued for the writer thread before `write` waits for room.
const WRITE_QUEUE: usize = 1024;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/001_init.sql")),
    (2, include_str!("migrations/002_registry.sql")),
    (3, include_str!("migrations/003_replicas.sql")),
    (4, include_str!("migrations/004_ipam.sql")),
    (5, include_str!("migrations/005_network.sql")),
    (6, include_str!("migrations/006_token_parents.sql")),
    (7, include_str!("migrations/007_credentials.sql")),
    (8, include_str!("migrations/008_oci_cache.sql")),
    (9, include_str!("migrations/009_services.sql")),
    (10, include_str!("migrations/010_domains.sql")),
    (11, include_str!("migrations/011_acme.sql")),
    (12, include_str!("migrations/012_uploads.sql")),
    (13, include_str!("migrations/013_webhooks.sql")),
    (14, include_str!("migrations/014_building.sql")),
    (15, include_str!("migrations/015_jobs.sql")),
    (16, include_str!("migrations/016_console.sql")),
];

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    reader_pool: Pool<Option<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.into(), source })?;
        configure(&conn)?;
        // Before anything persistent (even the journal mode): a database from a newer
        // berth is left exactly as it was.
        refuse_newer(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<Job>(WRITE_QUEUE);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Corrupt(format!("spawn writer: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                readers: Mutex::new(Vec::new()),
                reader_pool: Pool::with_state("store-read", READER_THREADS, READ_QUEUE, || None),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in the single writer's transaction; resolves once committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (job, rx) = Self::job_with_reply(f);
        let sender = self.sender()?;
        sender.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A writer job for `f` and the receiver of its result once committed.
    fn job_with_reply<T, F>(f: F) -> (Job, oneshot::Receiver<Result<T>>)
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let outcome = f(conn);
            let ok = outcome.is_ok();
            let reply: Reply = Box::new(move |commit| {
                let _ = tx.send(commit.and(outcome));
            });
            (ok, reply)
        });
        (job, rx)
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>> {
        self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(StoreError::Closed)
    }

    /// Like [`Store::write`], for callers on a blocking thread (never on the executor).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (job, rx) = Self::job_with_reply(f);
        self.sender()?.blocking_send(job).map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Queues a write whose result nobody waits for (e.g. `last_used_at` updates).
    /// Such writes are bookkeeping: when the writer's queue is full the update is
    /// dropped (and logged) rather than queued without bound.
    pub fn write_detached<F>(&self, f: F)
    where
        F: FnOnce(&Connection) -> Result<()> + Send + 'static,
    {
        let job: Job = Box::new(move |conn| {
            let outcome = f(conn);
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "background write failed");
            }
            (outcome.is_ok(), Box::new(|_| {}))
        });
        if let Ok(sender) = self.sender() {
            if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(job) {
                tracing::warn!("the store's write queue is full; a bookkeeping update was dropped");
            }
        }
    }

    /// Runs `f` on one of the store's reader threads; waits (holding no thread) when
    /// they are all busy.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let path = self.inner.path.clone();
        self.inner
            .reader_pool
            .run(move |slot: &mut Option<Connection>| {
                let conn = match slot {
                    Some(c) => c,
                    None => slot.insert(open_reader(&path)?),
                };
                f(conn)
            })
            .await
            .map_err(|e| match e {
                PoolError::Busy(_) | PoolError::Stopped(_) => StoreError::Closed,
            })?
    }

    /// Like [`Store::read`] for callers already on a blocking thread.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.inner.path)?,
        };
        let out = f(&conn);
        let mut idle = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    /// Stops the writer after it has finished every queued job, then checkpoints the WAL.
    pub fn close(&self) {
        self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.inner.reader_pool.shutdown();
        self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(handle) = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
    configure(&c)?;
    Ok(c)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -2048)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The schema version this binary migrates up to.
pub fn known_schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

fn schema_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Refuses a database whose schema is newer than any migration this binary has:
/// running on it could misread or damage what a newer berth wrote.
fn refuse_newer(conn: &Connection) -> Result<i64> {
    let found = schema_version(conn)?;
    let known = known_schema_version();
    if found > known {
        return Err(StoreError::NewerSchema { found, known });
    }
    Ok(found)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (version, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied database migration");
    }
    Ok(())
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let commit = (|| -> Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for job in batch.drain(..) {
                conn.execute_batch("SAVEPOINT job")?;
                let (ok, reply) = job(&conn);
                if ok {
                    conn.execute_batch("RELEASE job")?;
                } else {
                    conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                }
                replies.push(reply);
            }
            conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        if let Err(e) = &commit {
            tracing::error!(error = %e, "write batch failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in replies {
            reply(match &commit {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
            });
        }
        // Jobs that never ran (the batch failed before reaching them) drop their
        // reply sender, which their callers see as `Closed`.
    }
    if let Err(e) = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(error = %e, "wal checkpoint at close failed");
    }
}

/// Maps a UNIQUE violation to `Conflict(message)`, anything else through unchanged.
pub(crate) fn conflict_on_unique(e: rusqlite::Error, message: impl FnOnce() -> String) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            StoreError::Conflict(message())
        }
        _ => StoreError::Sqlite(e),
    }
}

/// Keyset pagination: rows after `cursor` (exclusive) in id order, `limit + 1` fetched
/// so the caller can tell whether there is more.
pub struct PageQuery {
    pub limit: u32,
    pub after: Option<String>,
}

/// A page of rows plus whether more follow.
pub struct Page<T> {
    pub rows: Vec<T>,
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Trims the extra probe row off a `limit + 1` fetch.
    pub fn from_probe(mut rows: Vec<T>, limit: u32) -> Page<T> {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Page { rows, has_more }
    }
}

#[cfg(test)]
pub(crate) fn test_store() -> (Store, PathBuf) {
    let dir = std::env::temp_dir().join(crate::ids::new_id("storetest"));
    std::fs::create_dir_all(&dir).unwrap();
    (Store::open(&dir.join("state.db")).unwrap(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_from_a_newer_berth_is_refused_and_left_as_it_was() {
        let (store, dir) = test_store();
        store.close();
        let db = dir.join("state.db");
        {
            let c = Connection::open(&db).unwrap();
            c.pragma_update(None, "user_version", known_schema_version() + 1).unwrap();
            c.pragma_update(None, "journal_mode", "DELETE").unwrap();
        }
        let before = std::fs::read(&db).unwrap();
        match Store::open(&db) {
            Err(StoreError::NewerSchema { found, known }) => assert_eq!(found, known + 1),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a newer schema was opened"),
        }
        assert_eq!(std::fs::read(&db).unwrap(), before);
        assert!(!dir.join("state.db-wal").exists(), "the journal mode was changed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_isolates_failing_jobs() {
        let (store, dir) = test_store();
        let mut handles = Vec::new();
        for i in 0..50 {
            let s = store.clone();
            handles.push(tokio::spawn(async move {
                s.write(move |c| {
                    c.execute("INSERT INTO meta(key, value) VALUES (?1, 'x')", [format!("k{}", i % 40)])
                        .map_err(|e| conflict_on_unique(e, || "dup".into()))?;
                    Ok(())
                })
                .await
            }));
        }
        let mut ok = 0;
        let mut dup = 0;
        for h in handles {
            match h.await.unwrap() {
                Ok(()) => ok += 1,
                Err(StoreError::Conflict(_)) => dup += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ok, dup), (40, 10));
        let n: i64 = store.read(|c| Ok(c.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(n, 40);
        store.close();
        assert!(matches!(store.write(|_| Ok(())).await, Err(StoreError::Closed)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn detached_writes_past_the_queue_bound_are_dropped_not_queued() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (store, dir) = test_store();
        // Hold the writer thread so nothing drains the queue.
        let (release, held) = std::sync::mpsc::channel::<()>();
        store.write_detached(move |_| {
            let _ = held.recv();
            Ok(())
        });
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..WRITE_QUEUE * 3 {
            let ran = ran.clone();
            store.write_detached(move |_| {
                ran.fetch_add(1, Ordering::Relaxed);
                Ok(())
            });
        }
        release.send(()).unwrap();
        // A waited write goes after whatever was queued.
        store.write(|_| Ok(())).await.unwrap();
        let n = ran.load(Ordering::Relaxed);
        // The queue, plus what the writer took into its batch before it blocked.
        assert!(n <= WRITE_QUEUE + MAX_BATCH, "{n} of {} writes ran; the queue holds {WRITE_QUEUE}", WRITE_QUEUE * 3);
        assert!(n > 0);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
