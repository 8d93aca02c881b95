//! The hosted OCI registry (distribution spec 1.1) served under `/v2/`.
//!
//! Design:
//! - Repositories are `<project>/<name>[/…]`; the first component is a project and
//!   decides access (pull: Viewer, push and delete: Operator, plus the token scopes
//!   `registry:pull` / `registry:push`). A repository in a project the caller cannot
//!   see answers exactly like one that does not exist.
//! - Bytes live in the content-addressed [`blobs::BlobStore`]; what is visible where
//!   (blob links, manifests, references, tags, uploads) lives in SQLite
//!   (`store::registry`). Manifests are kept byte-for-byte as pushed.
//! - Digests are computed while bytes stream in; a blob file appears only by rename
//!   of verified, fsynced content.
//! - Garbage collection ([`gc`]) is online: it marks from tags, sweeps what is
//!   unreferenced and older than a grace period, and excludes blob commits while it
//!   deletes files (`gc_lock`), so a push running alongside loses nothing.
//!
//! Limits: sha256 digests only; no schema1 manifests; uploads resume across requests
//! and daemon restarts (the hash state is rebuilt from the data file).

pub mod blobs;
pub mod error;
pub mod gc;
pub mod http;
pub mod manifests;
pub mod names;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use sha2::Digest as _;

use crate::store::Store;
use crate::store::registry::{self as sql, ManifestRef, ManifestRow, Repo};
use blobs::{Appended, BlobStore};
use error::{RegistryError, RegistryResult};
use names::{Digest, Reference};

/// An upload's in-memory state; `None` once finished or cancelled.
type UploadSlot = Arc<tokio::sync::Mutex<Option<Appended>>>;

/// Upload states kept in memory at most; past it, idle ones are dropped (and
/// rebuilt from their data file if their client comes back).
const MAX_UPLOAD_SLOTS: usize = 4096;
/// An upload's `updated_at` is written at most this often (not once per chunk).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// What the registry is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<data_dir>/registry`.
    pub root: std::path::PathBuf,
    pub gc_grace: Duration,
    pub upload_ttl: Duration,
    pub max_open_uploads_per_project: u32,
}

impl Settings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Settings {
            root: config.data_dir.join("registry"),
            gc_grace: Duration::from_secs(config.registry.gc_grace_seconds),
            upload_ttl: Duration::from_secs(config.registry.upload_ttl_seconds),
            max_open_uploads_per_project: config.registry.max_open_uploads_per_project,
        }
    }
}

pub struct Registry {
    pub blobs: BlobStore,
    store: Store,
    uploads: Mutex<HashMap<String, UploadSlot>>,
    /// Blob commits hold it shared; GC holds it exclusively while it deletes files.
    gc_lock: tokio::sync::RwLock<()>,
    pub gc_grace: Duration,
    pub upload_ttl: Duration,
    max_open_uploads: u32,
}

fn now() -> i64 {
    crate::ids::unix_now()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> RegistryResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| RegistryError::Internal(e.to_string()))
}

impl Registry {
    pub fn new(settings: Settings, store: Store) -> Self {
        Self {
            blobs: BlobStore::new(settings.root),
            store,
            uploads: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            gc_grace: settings.gc_grace,
            upload_ttl: settings.upload_ttl,
            max_open_uploads: settings.max_open_uploads_per_project,
        }
    }

    /// Upload states held in memory (for tests and metrics).
    pub fn upload_slots(&self) -> usize {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Keeps an upload's state in memory, first dropping idle ones when there are
    /// too many (an idle slot is one no request holds).
    fn keep_slot(&self, id: &str, slot: UploadSlot) -> UploadSlot {
        let mut map = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_UPLOAD_SLOTS && !map.contains_key(id) {
            map.retain(|_, s| Arc::strong_count(s) > 1);
            map.shrink_to_fit();
        }
        map.entry(id.to_string()).or_insert(slot).clone()
    }

    /// Forgets the in-memory state of uploads that ended elsewhere (GC).
    pub(crate) fn forget_uploads(&self, ids: &[String]) {
        let mut map = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            map.remove(id);
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The repository if it exists.
    pub async fn repo(&self, name: &str) -> RegistryResult<Option<Repo>> {
        let name = name.to_string();
        Ok(self.store.read(move |c| sql::repo_get(c, &name)).await?)
    }

    /// The repository, created if needed (push paths).
    pub async fn repo_for_push(&self, name: &str, project_id: &str) -> RegistryResult<Repo> {
        let (name, project) = (name.to_string(), project_id.to_string());
        Ok(self.store.write(move |c| sql::repo_ensure(c, &name, &project, now())).await?)
    }

    /// Size of a blob visible in the repository.
    pub async fn blob_size(&self, repo: &Repo, digest: &Digest) -> RegistryResult<Option<u64>> {
        let (id, d, blobs, digest) = (repo.id, digest.to_string(), self.blobs.clone(), digest.clone());
        // The read closure runs on a blocking thread, so the stat goes there too.
        let size =
            self.store.read(move |c| Ok(sql::linked_blob_size(c, id, &d)?.filter(|_| blobs.exists(&digest)))).await?;
        Ok(size.map(|s| s as u64))
    }

    /// Opens an upload session, unless the project already has its most open ones
    /// (429: finish or cancel some first, or wait for the idle ones to expire).
    pub async fn start_upload(&self, repo: &Repo) -> RegistryResult<String> {
        let id = crate::ids::new_id("upl");
        let (upload, repo_id, project, max) = (id.clone(), repo.id, repo.project_id.clone(), self.max_open_uploads);
        let admitted = self
            .store
            .write(move |c| {
                if sql::open_uploads_in_project(c, &project)? >= i64::from(max) {
                    return Ok(false);
                }
                sql::upload_insert(c, &upload, repo_id, now())?;
                Ok(true)
            })
            .await?;
        if !admitted {
            return Err(RegistryError::TooManyRequests { retry_after: 60 });
        }
        let blobs = self.blobs.clone();
        let upload = id.clone();
        if let Err(e) = blocking(move || blobs.create_upload(&upload)).await? {
            let upload = id.clone();
            let _ = self.store.write(move |c| sql::upload_delete(c, &upload)).await;
            return Err(e.into());
        }
        let slot = Arc::new(tokio::sync::Mutex::new(Some(Appended::new())));
        self.keep_slot(&id, slot);
        Ok(id)
    }

    /// The session's slot, rebuilt from disk if this process has not seen it yet.
    async fn slot(&self, repo: &Repo, id: &str) -> RegistryResult<UploadSlot> {
        let unknown = || RegistryError::BlobUploadUnknown(format!("upload {id} is not known"));
        if !crate::ids::has_shape(id, "upl") {
            return Err(unknown());
        }
        let lookup = id.to_string();
        let owner = self.store.read(move |c| sql::upload_repo(c, &lookup)).await?;
        if owner != Some(repo.id) {
            return Err(unknown());
        }
        if let Some(slot) = self.uploads.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(slot.clone());
        }
        let blobs = self.blobs.clone();
        let upload = id.to_string();
        let (hasher, offset) = blocking(move || blobs.rehash_upload(&upload)).await?.map_err(|_| unknown())?;
        let slot = Arc::new(tokio::sync::Mutex::new(Some(Appended { hasher, offset, touched: None })));
        Ok(self.keep_slot(id, slot))
    }

    /// Bytes received so far.
    pub async fn upload_offset(&self, repo: &Repo, id: &str) -> RegistryResult<u64> {
        let slot = self.slot(repo, id).await?;
        let guard = slot.lock().await;
        guard
            .as_ref()
            .map(|s| s.offset)
            .ok_or_else(|| RegistryError::BlobUploadUnknown(format!("upload {id} is finished")))
    }

    /// Appends a chunk. `start` is where the client says the chunk begins (from
    /// `Content-Range`); it must be the current end.
    pub async fn patch(&self, repo: &Repo, id: &str, start: Option<u64>, body: Body) -> RegistryResult<u64> {
        let slot = self.slot(repo, id).await?;
        let mut guard = slot.lock().await;
        let state = guard.take().ok_or_else(|| RegistryError::BlobUploadUnknown(format!("upload {id} is finished")))?;
        if let Some(start) = start {
            if start != state.offset {
                let offset = state.offset;
                *guard = Some(state);
                return Err(RegistryError::RangeInvalid(format!(
                    "chunk starts at {start} but the upload has {offset} bytes"
                )));
            }
        }
        let before = Appended { hasher: state.hasher.clone(), offset: state.offset, touched: state.touched };
        match blobs::append(&self.blobs, id, state, body).await {
            Ok(mut st) => {
                let offset = st.offset;
                let due = st.touched.is_none_or(|t| t.elapsed() >= TOUCH_EVERY);
                if due {
                    st.touched = Some(std::time::Instant::now());
                }
                *guard = Some(st);
                if due {
                    let upload = id.to_string();
                    self.store.write_detached(move |c| sql::upload_touch(c, &upload, now()));
                }
                Ok(offset)
            }
            Err(e) => {
                *guard = Some(before);
                Err(e)
            }
        }
    }

    /// Stores the file at `path` as blob `digest` of the repository (an image built
    /// on this node), through an upload session like any push: the file (linked or
    /// copied; the caller does not write it again) is hashed and committed only when
    /// it has the digest it claims. A blob the repository
    /// already holds is not copied again. Returns its size.
    pub async fn import_blob(&self, repo: &Repo, digest: &Digest, path: &std::path::Path) -> RegistryResult<u64> {
        if let Some(size) = self.blob_size(repo, digest).await? {
            return Ok(size);
        }
        let id = self.start_upload(repo).await?;
        let (blobs, upload, from) = (self.blobs.clone(), id.clone(), path.to_path_buf());
        let copied = blocking(move || -> Result<(sha2::Sha256, u64), crate::error::PathError> {
            let data = blobs.upload_data(&upload);
            // A link when the file is on the same filesystem (the state dir): the
            // bytes are then only read, to be hashed.
            let _ = std::fs::remove_file(&data);
            if std::fs::hard_link(&from, &data).is_err() {
                std::fs::copy(&from, &data).map_err(|e| crate::error::PathError::new("copy", &from, e))?;
            }
            blobs.rehash_upload(&upload)
        })
        .await?;
        let (hasher, size) = match copied {
            Ok(c) => c,
            Err(e) => {
                self.discard(&id).await;
                return Err(e.into());
            }
        };
        let actual = Digest::from_sha256(&hasher.finalize());
        if actual != *digest {
            self.discard(&id).await;
            return Err(RegistryError::DigestInvalid(format!("the file has digest {actual}, not {digest}")));
        }
        self.commit(repo, &id, digest, size).await?;
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        Ok(size)
    }

    /// Appends the last chunk (if any), checks the digest and commits the blob.
    /// A digest mismatch discards the upload: nothing partial stays behind.
    pub async fn finish(&self, repo: &Repo, id: &str, expected: &Digest, body: Body) -> RegistryResult<u64> {
        let slot = self.slot(repo, id).await?;
        let mut guard = slot.lock().await;
        let state = guard.take().ok_or_else(|| RegistryError::BlobUploadUnknown(format!("upload {id} is finished")))?;
        let state = match blobs::append(&self.blobs, id, state, body).await {
            Ok(s) => s,
            Err(e) => {
                self.discard(id).await;
                return Err(e);
            }
        };
        let actual = Digest::from_sha256(&state.hasher.finalize());
        if actual != *expected {
            self.discard(id).await;
            return Err(RegistryError::DigestInvalid(format!(
                "the uploaded content has digest {actual}, not {expected}"
            )));
        }
        let size = state.offset;
        self.commit(repo, id, expected, size).await?;
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(size)
    }

    async fn commit(&self, repo: &Repo, id: &str, digest: &Digest, size: u64) -> RegistryResult<()> {
        let _shared = self.gc_lock.read().await;
        let (blobs, upload, d) = (self.blobs.clone(), id.to_string(), digest.clone());
        blocking(move || blobs.commit_upload(&upload, &d)).await??;
        let (repo_id, upload, d) = (repo.id, id.to_string(), digest.to_string());
        self.store
            .write(move |c| {
                sql::blob_commit(c, repo_id, &d, size as i64, now())?;
                sql::upload_delete(c, &upload)?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn discard(&self, id: &str) {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let (blobs, upload) = (self.blobs.clone(), id.to_string());
        let _ = blocking(move || blobs.remove_upload(&upload)).await;
        let upload = id.to_string();
        if let Err(e) = self.store.write(move |c| sql::upload_delete(c, &upload)).await {
            tracing::warn!(error = %e, "could not forget a discarded upload");
        }
    }

    /// Cancels an upload session.
    pub async fn cancel(&self, repo: &Repo, id: &str) -> RegistryResult<()> {
        let slot = self.slot(repo, id).await?;
        let mut guard = slot.lock().await;
        guard.take();
        self.discard(id).await;
        Ok(())
    }

    /// Links a blob that is visible in `from` into `repo`; false if it is not there.
    pub async fn mount(&self, repo: &Repo, from: &Repo, digest: &Digest) -> RegistryResult<bool> {
        if self.blob_size(from, digest).await?.is_none() {
            return Ok(false);
        }
        let _shared = self.gc_lock.read().await;
        let (to, from_id, d) = (repo.id, from.id, digest.to_string());
        Ok(self
            .store
            .write(move |c| {
                if sql::linked_blob_size(c, from_id, &d)?.is_none() {
                    return Ok(false);
                }
                sql::link_blob(c, to, &d, now())?;
                Ok(true)
            })
            .await?)
    }

    /// Links a blob that another repository of the same project already has (a
    /// mount without `from`); false, and nothing linked, when none has it. Other
    /// projects are never looked at, so nothing leaks across them.
    pub async fn mount_from_project(&self, repo: &Repo, digest: &Digest) -> RegistryResult<bool> {
        let (blobs, d) = (self.blobs.clone(), digest.clone());
        if !blocking(move || blobs.exists(&d)).await? {
            return Ok(false);
        }
        let _shared = self.gc_lock.read().await;
        let (to, project, d) = (repo.id, repo.project_id.clone(), digest.to_string());
        Ok(self
            .store
            .write(move |c| {
                if !sql::project_has_blob(c, &project, &d)? {
                    return Ok(false);
                }
                sql::link_blob(c, to, &d, now())?;
                Ok(true)
            })
            .await?)
    }

    /// Unlinks a blob from the repository (GC reclaims the bytes later).
    pub async fn delete_blob(&self, repo: &Repo, digest: &Digest) -> RegistryResult<()> {
        let (id, d) = (repo.id, digest.to_string());
        if !self.store.write(move |c| sql::unlink_blob(c, id, &d)).await? {
            return Err(RegistryError::BlobUnknown(format!("blob {digest} is not in {}", repo.name)));
        }
        Ok(())
    }

    /// Stores a manifest under a tag or its digest; returns its digest and subject.
    pub async fn put_manifest(
        &self,
        repo: &Repo,
        reference: &Reference,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> RegistryResult<(Digest, Option<Digest>)> {
        let digest = Digest::of(&body);
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(RegistryError::DigestInvalid(format!("the manifest has digest {digest}, not {d}")));
            }
        }
        let parsed = manifests::parse(&body, content_type)?;
        let _shared = self.gc_lock.read().await;
        let (blobs, d, bytes) = (self.blobs.clone(), digest.clone(), body.clone());
        blocking(move || blobs.put_small(&d, &bytes)).await??;
        let row = ManifestRow {
            digest: digest.to_string(),
            media_type: parsed.media_type.clone(),
            size: body.len() as i64,
            artifact_type: parsed.artifact_type.clone(),
            subject: parsed.subject.as_ref().map(ToString::to_string),
            annotations: parsed.annotations.clone(),
        };
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        let repo_id = repo.id;
        let subject = parsed.subject.clone();
        self.store
            .write(move |c| {
                for b in &parsed.blobs {
                    if sql::linked_blob_size(c, repo_id, &b.to_string())?.is_none() {
                        return Err(crate::store::StoreError::NotFound(format!("blob {b} is not in this repository")));
                    }
                }
                for m in &parsed.children {
                    if !sql::manifests_present(c, repo_id, &m.to_string())? {
                        return Err(crate::store::StoreError::NotFound(format!(
                            "manifest {m} is not in this repository"
                        )));
                    }
                }
                let blob_names: Vec<String> = parsed.blobs.iter().map(ToString::to_string).collect();
                let child_names: Vec<String> = parsed.children.iter().map(ToString::to_string).collect();
                let refs: Vec<ManifestRef<'_>> = blob_names
                    .iter()
                    .map(|b| ManifestRef { child: b, manifest: false })
                    .chain(child_names.iter().map(|m| ManifestRef { child: m, manifest: true }))
                    .collect();
                let t = now();
                sql::blob_commit(c, repo_id, &row.digest, row.size, t)?;
                sql::manifest_put(c, repo_id, &row, &refs, tag.as_deref(), t)
            })
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound(m) => RegistryError::ManifestBlobUnknown(m),
                e => e.into(),
            })?;
        Ok((digest, subject))
    }

    /// A manifest's metadata, by tag or digest.
    pub async fn manifest_row(&self, repo: &Repo, reference: &Reference) -> RegistryResult<ManifestRow> {
        let id = repo.id;
        let r = reference.clone();
        let row = self
            .store
            .read(move |c| match &r {
                Reference::Tag(t) => sql::manifest_by_tag(c, id, t),
                Reference::Digest(d) => sql::manifest_by_digest(c, id, &d.to_string()),
            })
            .await?;
        row.ok_or_else(|| {
            RegistryError::ManifestUnknown(match reference {
                Reference::Tag(t) => format!("manifest {t} is not in {}", repo.name),
                Reference::Digest(d) => format!("manifest {d} is not in {}", repo.name),
            })
        })
    }

    pub async fn manifest_bytes(&self, row: &ManifestRow) -> RegistryResult<Vec<u8>> {
        let d =
            Digest::parse(&row.digest).map_err(|_| RegistryError::Internal(format!("stored digest {}", row.digest)))?;
        let blobs = self.blobs.clone();
        Ok(blocking(move || blobs.read_small(&d, manifests::MAX_MANIFEST_BYTES as u64)).await??)
    }

    /// Deletes a tag (by tag) or a manifest and its tags (by digest).
    pub async fn delete_manifest(&self, repo: &Repo, reference: &Reference) -> RegistryResult<()> {
        let id = repo.id;
        let r = reference.clone();
        let gone = self
            .store
            .write(move |c| match &r {
                Reference::Tag(t) => sql::tag_delete(c, id, t),
                Reference::Digest(d) => sql::manifest_delete(c, id, &d.to_string()),
            })
            .await?;
        if !gone {
            return Err(RegistryError::ManifestUnknown(format!("manifest is not in {}", repo.name)));
        }
        Ok(())
    }

    pub async fn tags(&self, repo: &Repo, last: Option<String>, n: Option<u32>) -> RegistryResult<(Vec<String>, bool)> {
        let id = repo.id;
        Ok(self.store.read(move |c| sql::tags_list(c, id, last.as_deref(), n)).await?)
    }

    pub async fn referrers(&self, repo: &Repo, subject: &Digest) -> RegistryResult<Vec<ManifestRow>> {
        let (id, d) = (repo.id, subject.to_string());
        Ok(self.store.read(move |c| sql::referrers(c, id, &d)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_upload_states_are_dropped_past_the_bound() {
        let (store, dir) = crate::store::test_store();
        let settings = Settings {
            root: dir.join("registry"),
            gc_grace: Duration::from_secs(60),
            upload_ttl: Duration::from_secs(60),
            max_open_uploads_per_project: 1,
        };
        let reg = Registry::new(settings, store.clone());
        let slot = || Arc::new(tokio::sync::Mutex::new(Some(Appended::new())));
        // Three uploads with a request in flight (their slot is held).
        let held: Vec<UploadSlot> = (0..3).map(|i| reg.keep_slot(&format!("held{i}"), slot())).collect();
        for i in 0..MAX_UPLOAD_SLOTS * 2 {
            reg.keep_slot(&format!("idle{i}"), slot());
        }
        assert!(reg.upload_slots() <= MAX_UPLOAD_SLOTS, "{} states held", reg.upload_slots());
        let map = reg.uploads.lock().unwrap();
        for i in 0..3 {
            assert!(map.contains_key(&format!("held{i}")), "an upload in flight lost its state");
        }
        drop(map);
        drop(held);
        reg.forget_uploads(&["held0".to_string()]);
        assert!(!reg.uploads.lock().unwrap().contains_key("held0"));
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
