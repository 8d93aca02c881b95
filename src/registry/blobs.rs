//! The content-addressed blob store on disk.
//!
//! Layout under `<data_dir>/registry/`:
//! - `blobs/sha256/<2 hex>/<64 hex>`: committed content, immutable.
//! - `uploads/<upl_id>/data`: an upload in progress.
//!
//! A blob file only ever appears by `rename` of a complete upload whose digest was
//! verified while the bytes streamed in and which was fsynced first (and its
//! directory after), so a reader never sees partial content, even across a crash.
//! The image store the runtime unpacks from reads the same files.
//!
//! Bytes move between sockets and files in short jobs on the blob I/O pool (one
//! 512 KiB read or one 256 KiB write+hash each), never on a thread held for a whole
//! transfer: a client that reads or sends slowly parks a task and a buffer, not a
//! thread, so a thousand slow clients cannot starve anyone.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};

use super::error::{RegistryError, RegistryResult};
use super::names::Digest;
use crate::error::PathError;
use crate::pool::Pool;

/// Chunk size for reading blobs out: below the allocator's mmap threshold (see
/// `main.rs`), so freed chunks are reused from the heap without page faults.
const READ_CHUNK: usize = 512 << 10;
/// Threads doing blob I/O jobs.
const IO_THREADS: usize = 8;
/// Blob I/O jobs admitted (running or queued) before more wait for room.
const IO_QUEUE: usize = 1024;
/// Body frames (clients send 8-64 KiB chunks) are gathered into pieces of at least
/// this size before they cross to the writer thread: one wake-up, one `write` and
/// one hash call per piece instead of per frame.
const COALESCE: usize = 256 << 10;

/// The pool every blob read and write chunk runs on.
fn io_pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| Pool::new("blob-io", IO_THREADS, IO_QUEUE))
}

fn pool_err(e: crate::pool::PoolError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(&d.hex()[..2]).join(d.hex())
    }

    pub fn upload_dir(&self, id: &str) -> PathBuf {
        self.uploads_dir().join(id)
    }

    pub fn upload_data(&self, id: &str) -> PathBuf {
        self.upload_dir(id).join("data")
    }

    /// Creates the directory tree; called once at start.
    pub fn init(&self) -> Result<(), PathError> {
        for d in [self.blobs_dir(), self.uploads_dir()] {
            std::fs::create_dir_all(&d).map_err(|e| PathError::new("create", &d, e))?;
        }
        Ok(())
    }

    /// Starts an upload's data file.
    pub fn create_upload(&self, id: &str) -> Result<(), PathError> {
        let dir = self.upload_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| PathError::new("create", &dir, e))?;
        let data = self.upload_data(id);
        File::create(&data).map_err(|e| PathError::new("create", &data, e))?;
        Ok(())
    }

    pub fn remove_upload(&self, id: &str) {
        let dir = self.upload_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "could not remove upload");
            }
        }
    }

    /// Re-derives the hash state of an upload from its data file (after a restart).
    pub fn rehash_upload(&self, id: &str) -> Result<(Sha256, u64), PathError> {
        let path = self.upload_data(id);
        let mut f = File::open(&path).map_err(|e| PathError::new("open", &path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| PathError::new("read", &path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        Ok((hasher, total))
    }

    /// Moves a finished upload into the store under its digest: fsync the data, rename
    /// into place, fsync the directory. An existing blob with that digest is identical
    /// by construction, so the new copy simply replaces it.
    pub fn commit_upload(&self, id: &str, digest: &Digest) -> Result<(), PathError> {
        let data = self.upload_data(id);
        File::open(&data).and_then(|f| f.sync_all()).map_err(|e| PathError::new("fsync", &data, e))?;
        let target = self.blob_path(digest);
        let dir = target.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(|e| PathError::new("create", &dir, e))?;
        std::fs::rename(&data, &target).map_err(|e| PathError::new("rename", &target, e))?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| PathError::new("fsync", &dir, e))?;
        self.remove_upload(id);
        Ok(())
    }

    /// Writes small content (a manifest) straight into the store.
    pub fn put_small(&self, digest: &Digest, bytes: &[u8]) -> Result<(), PathError> {
        let target = self.blob_path(digest);
        if target.exists() {
            return Ok(());
        }
        let id = crate::ids::new_id("upl");
        self.create_upload(&id)?;
        let data = self.upload_data(&id);
        std::fs::write(&data, bytes).map_err(|e| PathError::new("write", &data, e))?;
        self.commit_upload(&id, digest)
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn read_small(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, PathError> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(|e| PathError::new("open", &path, e))?;
        let mut out = Vec::new();
        f.take(max).read_to_end(&mut out).map_err(|e| PathError::new("read", &path, e))?;
        Ok(out)
    }

    /// Streams `len` bytes of a blob from `offset` as a response body. Each chunk is
    /// read by a short job on the blob I/O pool; a task forwards it to the body and
    /// waits, holding no thread, while the client is slow to take it.
    pub async fn stream(&self, digest: &Digest, offset: u64, len: u64) -> Result<Body, PathError> {
        let path = self.blob_path(digest);
        let open = path.clone();
        let file = io_pool()
            .run(move |_| File::open(&open))
            .await
            .map_err(|e| PathError::new("open", &path, pool_err(e)))?
            .map_err(|e| PathError::new("open", &path, e))?;
        let file = std::sync::Arc::new(file);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        tokio::spawn(async move {
            let mut at = offset;
            let end = offset + len;
            while at < end {
                let want = (end - at).min(READ_CHUNK as u64) as usize;
                let f = file.clone();
                let read = io_pool().run(move |_| read_exact_at(&f, at, want)).await.map_err(pool_err).and_then(|r| r);
                let failed = read.is_err();
                if tx.send(read).await.is_err() || failed {
                    return;
                }
                at += want as u64;
            }
        });
        Ok(Body::new(ChannelBody { rx, remaining: len }))
    }
}

/// Reads exactly `want` bytes at `at`.
fn read_exact_at(f: &File, at: u64, want: usize) -> Result<Bytes, std::io::Error> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match f.read_at(&mut buf[filled..], at + filled as u64) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("blob ended {filled} bytes into a {want}-byte read"),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bytes::from(buf))
}

/// A response body fed by the reading task.
struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    remaining: u64,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(Ok(b))) => {
                self.remaining = self.remaining.saturating_sub(b.len() as u64);
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b))))
            }
            std::task::Poll::Ready(Some(Err(e))) => std::task::Poll::Ready(Some(Err(e))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Bytes written between asking the kernel to start writing an upload to disk.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// `sync_file_range(2)`, which no wrapper crate covers. A failure is harmless for
/// both uses below: the fsync at commit still makes the data durable.
fn sync_range(f: &File, offset: u64, len: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor (valid: `f` is borrowed for
    // the call) and the integers; it touches no memory of ours.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags);
    }
}

/// Starts writeback of a range without waiting for it, so the disk works while the
/// rest of the upload streams in and the fsync at commit has little left to do.
fn start_writeback(f: &File, offset: u64, len: u64) {
    sync_range(f, offset, len, libc::SYNC_FILE_RANGE_WRITE);
}

/// Waits for a range whose writeback started a window ago and drops it from the
/// page cache. An upload then keeps at most two windows of its data in memory, and
/// the pages it frees are the ones its next writes reuse: taking never-touched
/// memory for the page cache is what makes big writes slow (on a VM, several times
/// the cost of the copy itself), and nothing reads a blob's bytes back right away.
fn retire(f: &File, offset: u64, len: u64) {
    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    sync_range(f, offset, len, wait);
    // A failure leaves the pages cached, which costs memory, not correctness.
    let _ = rustix::fs::fadvise(f, offset, std::num::NonZeroU64::new(len), rustix::fs::Advice::DontNeed);
}

/// The state an upload carries between requests.
pub struct Appended {
    pub hasher: Sha256,
    pub offset: u64,
    /// When the session's `updated_at` was last written by this process.
    pub touched: Option<std::time::Instant>,
}

impl Appended {
    pub fn new() -> Self {
        Appended { hasher: Sha256::new(), offset: 0, touched: None }
    }
}

impl Default for Appended {
    fn default() -> Self {
        Self::new()
    }
}

/// The writing end of an upload, moved into each write job and back.
struct Writer {
    file: File,
    path: PathBuf,
    st: Appended,
    flushed: u64,
    in_writeback: Option<(u64, u64)>,
}

impl Writer {
    fn write(mut self, piece: &[u8]) -> Result<Writer, PathError> {
        self.st.hasher.update(piece);
        self.file.write_all(piece).map_err(|e| PathError::new("write", &self.path, e))?;
        self.st.offset += piece.len() as u64;
        if self.st.offset - self.flushed >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.flushed, self.st.offset - self.flushed);
            if let Some((offset, len)) = self.in_writeback.replace((self.flushed, self.st.offset - self.flushed)) {
                retire(&self.file, offset, len);
            }
            self.flushed = self.st.offset;
        }
        Ok(self)
    }
}

type WriteJob = tokio::task::JoinHandle<Result<Result<Writer, PathError>, crate::pool::PoolError>>;

/// Writes `piece` in a job on the blob I/O pool; a task drives it so the next piece
/// can be read from the network meanwhile.
fn spawn_write(w: Writer, piece: Bytes) -> WriteJob {
    tokio::spawn(async move { io_pool().run(move |_| w.write(&piece)).await })
}

async fn join_write(job: WriteJob) -> RegistryResult<Writer> {
    match job.await {
        Ok(Ok(Ok(w))) => Ok(w),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(e)) => Err(RegistryError::Internal(e.to_string())),
        Err(e) => Err(RegistryError::Internal(e.to_string())),
    }
}

/// Streams a request body onto the end of an upload's data file, hashing as it goes.
/// The network read runs here; each piece (at least [`COALESCE`] bytes) is hashed and
/// written by a job on the blob I/O pool while the next one is read, one write in
/// flight at a time, so memory stays flat whatever the blob size and no thread waits
/// on the client. If the body fails midway (broken off, or too slow), the file is cut
/// back and an error returned; the caller keeps the previous state, so a client can
/// retry the chunk.
pub async fn append(store: &BlobStore, id: &str, state: Appended, body: Body) -> RegistryResult<Appended> {
    let path = store.upload_data(id);
    let before = state.offset;
    let open = path.clone();
    let file = io_pool()
        .run(move |_| std::fs::OpenOptions::new().append(true).open(&open))
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?
        .map_err(|e| PathError::new("open", &path, e))?;
    let flushed = state.offset;
    let mut writer = Some(Writer { file, path: path.clone(), st: state, flushed, in_writeback: None });
    let mut inflight: Option<WriteJob> = None;
    let mut body = body;
    let mut failure: Option<RegistryError> = None;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let piece = match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if pending.is_empty() && data.len() >= COALESCE {
                    data
                } else {
                    if pending.capacity() == 0 {
                        pending.reserve(COALESCE + data.len());
                    }
                    pending.extend_from_slice(&data);
                    if pending.len() < COALESCE {
                        continue;
                    }
                    Bytes::from(std::mem::take(&mut pending))
                }
            }
            Some(Err(e)) => {
                failure = Some(if crate::http::body::is_timeout(&e) {
                    RegistryError::Timeout("the upload body arrived too slowly".into())
                } else {
                    RegistryError::BlobUploadInvalid(format!("the upload body broke off: {e}"))
                });
                break;
            }
            None if pending.is_empty() => break,
            None => Bytes::from(std::mem::take(&mut pending)),
        };
        if let Some(job) = inflight.take() {
            match join_write(job).await {
                Ok(w) => writer = Some(w),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(w) = writer.take() else { break };
        inflight = Some(spawn_write(w, piece));
    }
    if let Some(job) = inflight.take() {
        match join_write(job).await {
            Ok(w) => writer = Some(w),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match (failure, writer) {
        (None, Some(w)) => Ok(w.st),
        (failure, _) => {
            let cut = path.clone();
            let restore = io_pool()
                .run(move |_| std::fs::OpenOptions::new().write(true).open(&cut).and_then(|f| f.set_len(before)))
                .await;
            if !matches!(restore, Ok(Ok(()))) {
                tracing::warn!(path = %path.display(), "could not cut a failed upload back");
            }
            Err(failure.unwrap_or_else(|| RegistryError::Internal("the upload writer was lost".into())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn append_then_commit_is_content_addressed() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("blobtest"));
        let store = BlobStore::new(dir.clone());
        store.init().unwrap();
        store.create_upload("upl_1").unwrap();
        let st = Appended::new();
        let st = append(&store, "upl_1", st, Body::from("hello ")).await.unwrap();
        let st = append(&store, "upl_1", st, Body::from("world")).await.unwrap();
        assert_eq!(st.offset, 11);
        let d = Digest::from_sha256(&st.hasher.finalize());
        assert_eq!(d, Digest::of(b"hello world"));
        store.commit_upload("upl_1", &d).unwrap();
        assert!(!store.upload_dir("upl_1").exists());
        assert_eq!(store.read_small(&d, 100).unwrap(), b"hello world");
        let (rehash, n) = {
            store.create_upload("upl_2").unwrap();
            std::fs::write(store.upload_data("upl_2"), b"abc").unwrap();
            store.rehash_upload("upl_2").unwrap()
        };
        assert_eq!((Digest::from_sha256(&rehash.finalize()), n), (Digest::of(b"abc"), 3));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
