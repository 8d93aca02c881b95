//! Build contexts uploaded by `POST /v1/services/{id}/uploads` (adr/032).
//!
//! - The body is streamed to `<dir>/<id>.part` as it arrives, never held in memory,
//!   and refused past `build.max_upload_bytes`.
//! - The archive (`tar.zst`, `tar.gz` or plain tar, told apart by magic bytes) is
//!   then unpacked once into a scratch directory by the layer unpacker in its
//!   build-context mode, which refuses `..` and absolute names, links whose target
//!   leaves the archive, device nodes, fifos, whiteouts, and more than
//!   `max_upload_bytes` unpacked (so a zstd or gzip bomb stops at the cap), and never
//!   writes through a symlink. The scratch tree is removed; only an archive that
//!   passed is kept, as `<dir>/<id>.archive`, with its row.
//! - A build unpacks it again, with the same checks, into the build's own directory.
//! - Uploads expire `build.upload_ttl_seconds` after they were made or last used;
//!   files whose row went with its service are swept at the same time.

use std::path::{Path, PathBuf};

use axum::body::Body;
use http_body_util::BodyExt;

use super::Stop;
use crate::config::BuildConfig;
use crate::images::unpack::{Limits, unpack_layer};
use crate::store::Store;
use crate::store::uploads::{self as sql, UploadRow};

/// Uploads one service may hold at once.
pub const MAX_PER_SERVICE: u64 = 16;
/// Files and directories one build context may hold.
const MAX_ENTRIES: u64 = 200_000;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Over the size cap, as sent or unpacked (413).
    #[error("{0}")]
    TooLarge(String),
    /// Not a safe, readable archive (400).
    #[error("{0}")]
    Refused(String),
    /// Too many uploads waiting for this service (409).
    #[error("{0}")]
    TooMany(String),
    /// The client went away or the disk failed (the request fails as a whole).
    #[error("{0}")]
    Io(String),
}

/// What `POST /v1/services/{id}/uploads` answers.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UploadInfo {
    pub upload_id: String,
    pub service_id: String,
    /// Bytes as uploaded.
    pub bytes: u64,
    /// Bytes of file data the archive unpacks to.
    pub unpacked_bytes: u64,
    /// Files, directories and links in the archive.
    pub entries: u64,
    /// `zstd`, `gzip` or `uncompressed`.
    pub compression: String,
    /// Whether the archive has a `Dockerfile` at its root (a deployment may name
    /// another path).
    pub has_dockerfile: bool,
    pub created_at: String,
    /// When it is removed unless a build uses it first.
    pub expires_at: String,
}

/// The uploads of every service: files under one directory, rows in the store.
pub struct Uploads {
    store: Store,
    dir: PathBuf,
    config: BuildConfig,
}

/// Removes a path (file or tree) when dropped, unless disarmed.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            remove_any(&p);
        }
    }
}

fn remove_any(p: &Path) {
    let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
}

impl Uploads {
    pub fn new(store: Store, dir: PathBuf, config: &BuildConfig) -> Self {
        Self { store, dir, config: config.clone() }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_entries: MAX_ENTRIES,
            max_total_bytes: self.config.max_upload_bytes,
            max_entry_bytes: self.config.max_upload_bytes,
            build_context: true,
        }
    }

    fn archive_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.archive"))
    }

    /// Streams `body` to disk, checks it, and records it as an upload of the service.
    pub async fn receive(&self, service_id: &str, project_id: &str, body: Body) -> Result<UploadInfo, UploadError> {
        let sid = service_id.to_string();
        let held = self.store.read(move |c| sql::count_for_service(c, &sid)).await.map_err(io)?;
        if held >= MAX_PER_SERVICE {
            return Err(UploadError::TooMany(format!(
                "service {service_id} already holds {held} uploads; deploy one or let them expire"
            )));
        }
        let dir = self.dir.clone();
        blocking(move || std::fs::create_dir_all(&dir))
            .await
            .map_err(|e| UploadError::Io(format!("create the uploads dir: {e}")))?;
        let id = crate::ids::new_id("upl");
        let part = self.dir.join(format!("{id}.part"));
        let mut guard = Scratch(Some(part.clone()));
        let bytes = self.stream_to(&part, body).await?;
        if bytes == 0 {
            return Err(UploadError::Refused(
                "the body is empty; send a tar.zst or tar.gz of the build context".into(),
            ));
        }
        let check = self.dir.join(format!("{id}.check"));
        let _check_guard = Scratch(Some(check.clone()));
        let limits = self.limits();
        let (p, c) = (part.clone(), check.clone());
        let stats = tokio::task::spawn_blocking(move || -> Result<_, UploadError> {
            std::fs::create_dir(&c).map_err(|e| UploadError::Io(format!("create a scratch dir: {e}")))?;
            let file = std::fs::File::open(&p).map_err(|e| UploadError::Io(format!("open the upload: {e}")))?;
            let stats = unpack_layer(file, &c, &limits).map_err(context_error)?;
            let has_dockerfile = std::fs::symlink_metadata(c.join("Dockerfile")).is_ok_and(|m| m.is_file());
            Ok((stats, has_dockerfile))
        })
        .await
        .map_err(|e| UploadError::Io(format!("check the archive: {e}")))?;
        let (stats, has_dockerfile) = stats?;
        let (from, to) = (part.clone(), self.archive_path(&id));
        blocking(move || std::fs::rename(&from, &to))
            .await
            .map_err(|e| UploadError::Io(format!("keep the upload: {e}")))?;
        guard.0 = Some(self.archive_path(&id));
        let row = UploadRow {
            id: id.clone(),
            service_id: service_id.to_string(),
            project_id: project_id.to_string(),
            bytes,
            unpacked_bytes: stats.bytes,
            entries: stats.entries,
            compression: stats.compression.as_str().to_string(),
            created_at: crate::ids::now_rfc3339(),
            used_at: None,
        };
        let r = row.clone();
        self.store.write(move |c| sql::insert(c, &r)).await.map_err(io)?;
        guard.0 = None;
        Ok(UploadInfo {
            expires_at: self.expiry(&row.created_at),
            upload_id: row.id,
            service_id: row.service_id,
            bytes,
            unpacked_bytes: row.unpacked_bytes,
            entries: row.entries,
            compression: row.compression,
            has_dockerfile,
            created_at: row.created_at,
        })
    }

    fn expiry(&self, from: &str) -> String {
        let ttl = time::Duration::seconds(i64::try_from(self.config.upload_ttl_seconds).unwrap_or(i64::MAX / 2));
        crate::ids::parse_time(from)
            .and_then(|t| t.checked_add(ttl))
            .map(crate::ids::format_time)
            .unwrap_or_else(|| from.to_string())
    }

    /// Writes the body to `path`, at most `max_upload_bytes`, in pieces of about
    /// 1 MiB written off the runtime's threads.
    async fn stream_to(&self, path: &Path, body: Body) -> Result<u64, UploadError> {
        const PIECE: usize = 1 << 20;
        let cap = self.config.max_upload_bytes;
        let p = path.to_path_buf();
        let mut file = blocking(move || std::fs::OpenOptions::new().write(true).create_new(true).open(&p))
            .await
            .map_err(|e| UploadError::Io(format!("create the upload file: {e}")))?;
        let mut body = body;
        let mut written: u64 = 0;
        let mut pending: Vec<u8> = Vec::with_capacity(PIECE);
        loop {
            let end = match body.frame().await {
                Some(frame) => {
                    let frame = frame.map_err(|e| UploadError::Io(format!("the body broke off: {e}")))?;
                    let Ok(data) = frame.into_data() else { continue };
                    written = written.saturating_add(data.len() as u64);
                    if written > cap {
                        return Err(UploadError::TooLarge(format!(
                            "the build context is over the {cap}-byte cap (build.max_upload_bytes)"
                        )));
                    }
                    pending.extend_from_slice(&data);
                    if pending.len() < PIECE {
                        continue;
                    }
                    false
                }
                None => true,
            };
            let piece = std::mem::replace(&mut pending, Vec::with_capacity(if end { 0 } else { PIECE }));
            file = blocking(move || {
                use std::io::Write;
                file.write_all(&piece)?;
                if end {
                    file.sync_all()?;
                }
                Ok(file)
            })
            .await
            .map_err(|e| UploadError::Io(format!("write the upload: {e}")))?;
            if end {
                return Ok(written);
            }
        }
    }

    /// Whether `upload_id` is an upload of `service_id` that a deployment may build.
    /// The message is for a 422.
    pub async fn check(&self, service_id: &str, upload_id: &str) -> Result<(), String> {
        let (s, u) = (service_id.to_string(), upload_id.to_string());
        match self.store.read(move |c| sql::get(c, &s, &u)).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "upload {upload_id} not found for service {service_id} (uploads expire when unused); upload the context again"
            )),
            Err(e) => Err(format!("look up upload {upload_id}: {e}")),
        }
    }

    /// Unpacks upload `upload_id` of `service_id` into `dest` (an empty directory),
    /// with the same checks it passed when it was uploaded.
    pub async fn unpack(&self, service_id: &str, upload_id: &str, dest: &Path) -> Result<(), Stop> {
        self.check(service_id, upload_id).await.map_err(Stop::Failed)?;
        let (path, dest_owned, limits) = (self.archive_path(upload_id), dest.to_path_buf(), self.limits());
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(|e| format!("open the upload: {e}"))?;
            unpack_layer(file, &dest_owned, &limits).map(|_| ()).map_err(|e| context_error(e).to_string())
        })
        .await
        .map_err(|e| Stop::Failed(format!("unpack upload {upload_id}: {e}")))?
        .map_err(|e| Stop::Failed(format!("unpack upload {upload_id}: {e}")))?;
        let (id, at) = (upload_id.to_string(), crate::ids::now_rfc3339());
        if let Err(e) = self.store.write(move |c| sql::mark_used(c, &id, &at)).await {
            tracing::warn!(upload = upload_id, error = %e, "could not record the upload's use");
        }
        Ok(())
    }

    /// Removes uploads past their time, files whose row is gone, and scratch files
    /// left by a daemon that died mid-upload. Returns how many uploads went.
    pub async fn expire(&self) -> Result<usize, String> {
        let ttl = time::Duration::seconds(i64::try_from(self.config.upload_ttl_seconds).unwrap_or(i64::MAX / 2));
        let before = time::OffsetDateTime::now_utc()
            .checked_sub(ttl)
            .map(crate::ids::format_time)
            .unwrap_or_else(|| "0000".into());
        let gone = self.store.write(move |c| sql::delete_expired(c, &before)).await.map_err(|e| e.to_string())?;
        let held = self.store.read(sql::ids).await.map_err(|e| e.to_string())?;
        let dir = self.dir.clone();
        // Scratch files younger than this may belong to an upload in progress.
        let settle = std::time::Duration::from_secs(self.config.upload_ttl_seconds.min(3600));
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else { return };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let (id, kind) = name.rsplit_once('.').unwrap_or((name.as_str(), ""));
                let stale = match kind {
                    "archive" => !held.contains(id),
                    _ => {
                        e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > settle)
                    }
                };
                if stale {
                    remove_any(&e.path());
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(gone.len())
    }
}

/// Runs file work off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)?
}

fn io(e: crate::store::StoreError) -> UploadError {
    UploadError::Io(e.to_string())
}

/// The unpacker's refusal, told as a build context's (it speaks of layers).
fn context_error(e: crate::images::ImageError) -> UploadError {
    use crate::images::ImageError as E;
    let too_large = matches!(e, E::LayerTooLarge { .. } | E::EntryTooLarge { .. });
    let text = e
        .to_string()
        .replace("entries are not allowed in a layer", "entries are not allowed in a build context")
        .replace("brings the layer to", "brings the context to")
        .replace("layer entry", "archive entry")
        .replace("layer is refused", "archive is refused")
        .replace("layer is not a valid archive", "the body is not a valid tar, tar.gz or tar.zst archive")
        .replace("reading the layer blob", "reading the archive")
        .replace("the layer stream", "the archive");
    if too_large {
        UploadError::TooLarge(format!("{text} (build.max_upload_bytes)"))
    } else {
        UploadError::Refused(text)
    }
}
