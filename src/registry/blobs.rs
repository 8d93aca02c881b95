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

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};

use super::error::{RegistryError, RegistryResult};
use super::names::Digest;
use crate::error::PathError;

/// Chunk size for reading blobs out: below the allocator's mmap threshold (see
/// `main.rs`), so freed chunks are reused from the heap without page faults.
const READ_CHUNK: usize = 512 << 10;
/// Chunks queued between the network and the disk writer.
const PIPELINE_DEPTH: usize = 16;
/// Body frames (clients send 8-64 KiB chunks) are gathered into pieces of at least
/// this size before they cross to the writer thread: one wake-up, one `write` and
/// one hash call per piece instead of per frame.
const COALESCE: usize = 256 << 10;

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

    /// Streams `len` bytes of a blob from `offset` as a response body.
    pub fn stream(&self, digest: &Digest, offset: u64, len: u64) -> Result<Body, PathError> {
        let path = self.blob_path(digest);
        let mut f = File::open(&path).map_err(|e| PathError::new("open", &path, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| PathError::new("seek", &path, e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let want = left.min(READ_CHUNK as u64) as usize;
                // read_to_end fills spare capacity without zeroing it first.
                let mut buf = Vec::with_capacity(want);
                let r = match (&mut f).take(want as u64).read_to_end(&mut buf) {
                    Ok(n) if n == want => Ok(Bytes::from(buf)),
                    Ok(n) => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("blob ended {n} bytes into a {want}-byte read"),
                    )),
                    Err(e) => Err(e),
                };
                let failed = r.is_err();
                if tx.blocking_send(r).is_err() || failed {
                    return;
                }
                left -= want as u64;
            }
        });
        Ok(Body::new(ChannelBody { rx, remaining: len }))
    }
}

/// A response body fed by a blocking reader thread.
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

/// Starts writeback of a range without waiting for it, so the disk works while the
/// rest of the upload streams in and the fsync at commit has little left to do.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor and the integers; with
    // SYNC_FILE_RANGE_WRITE alone it initiates writeback and returns. A failure is
    // harmless: the fsync at commit still makes the data durable.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Waits for a range whose writeback started a window ago and drops it from the
/// page cache. An upload then keeps at most two windows of its data in memory, and
/// the pages it frees are the ones its next writes reuse: taking never-touched
/// memory for the page cache is what makes big writes slow (on a VM, several times
/// the cost of the copy itself), and nothing reads a blob's bytes back right away.
fn retire(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: both calls only read the descriptor and the integers. A failure is
    // harmless: the pages stay cached, and the fsync at commit still runs.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, wait);
        libc::posix_fadvise(f.as_raw_fd(), offset as libc::off_t, len as libc::off_t, libc::POSIX_FADV_DONTNEED);
    }
}

/// The state an upload carries between requests.
pub struct Appended {
    pub hasher: Sha256,
    pub offset: u64,
}

/// Streams a request body onto the end of an upload's data file, hashing as it goes.
/// The network read runs here; hashing and writing run on a blocking thread, with a
/// bounded queue between them so memory stays flat whatever the blob size. If the
/// body fails midway, the file is cut back and the previous state returned, so a
/// client can retry the chunk.
pub async fn append(store: &BlobStore, id: &str, state: Appended, body: Body) -> RegistryResult<Appended> {
    let path = store.upload_data(id);
    let before = Appended { hasher: state.hasher.clone(), offset: state.offset };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let wpath = path.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<Appended, PathError> {
        let mut f =
            std::fs::OpenOptions::new().append(true).open(&wpath).map_err(|e| PathError::new("open", &wpath, e))?;
        let mut st = state;
        let mut flushed = st.offset;
        let mut in_writeback: Option<(u64, u64)> = None;
        while let Some(chunk) = rx.blocking_recv() {
            st.hasher.update(&chunk);
            f.write_all(&chunk).map_err(|e| PathError::new("write", &wpath, e))?;
            st.offset += chunk.len() as u64;
            if st.offset - flushed >= WRITEBACK_EVERY {
                start_writeback(&f, flushed, st.offset - flushed);
                if let Some((offset, len)) = in_writeback.replace((flushed, st.offset - flushed)) {
                    retire(&f, offset, len);
                }
                flushed = st.offset;
            }
        }
        Ok(st)
    });
    let mut body = body;
    let mut failed: Option<String> = None;
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let Ok(data) = frame.into_data() else { continue };
                let piece = if pending.is_empty() && data.len() >= COALESCE {
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
                };
                if tx.send(piece).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    if failed.is_none() && !pending.is_empty() {
        // A failed writer drops the receiver; its error is reported below.
        let _ = tx.send(Bytes::from(pending)).await;
    }
    drop(tx);
    let written = writer.await.map_err(|e| RegistryError::Internal(e.to_string()));
    match (written, failed) {
        (Ok(Ok(st)), None) => Ok(st),
        (written, failed) => {
            let restore = std::fs::OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(before.offset));
            if let Err(e) = restore {
                tracing::warn!(path = %path.display(), error = %e, "could not cut a failed upload back");
            }
            match (written, failed) {
                (Ok(Err(e)), _) => Err(e.into()),
                (Err(e), _) => Err(e),
                (_, Some(msg)) => Err(RegistryError::BlobUploadInvalid(format!("the upload body broke off: {msg}"))),
                (Ok(Ok(_)), None) => Ok(before),
            }
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
        let st = Appended { hasher: Sha256::new(), offset: 0 };
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
