//! Build contexts uploaded by `POST /v1/services/{id}/uploads`.
//!
//! (Being written: until then no upload exists.)

use std::path::{Path, PathBuf};

use super::Stop;
use crate::config::BuildConfig;
use crate::store::Store;

/// The uploads of every service: files under one directory, rows in the store.
pub struct Uploads {
    store: Store,
    dir: PathBuf,
    config: BuildConfig,
}

impl Uploads {
    pub fn new(store: Store, dir: PathBuf, config: &BuildConfig) -> Self {
        Self { store, dir, config: config.clone() }
    }

    /// Whether `upload_id` is an upload of `service_id` that a deployment may build.
    /// The message is for a 422.
    pub async fn check(&self, service_id: &str, upload_id: &str) -> Result<(), String> {
        let _ = (&self.store, &self.dir, self.config.max_upload_bytes);
        Err(format!("upload {upload_id} of service {service_id} not found"))
    }

    /// Unpacks upload `upload_id` of `service_id` into `dest` (an empty directory),
    /// with the same checks it passed when it was uploaded.
    pub async fn unpack(&self, service_id: &str, upload_id: &str, dest: &Path) -> Result<(), Stop> {
        let _ = dest;
        Err(Stop::Failed(format!("upload {upload_id} of service {service_id} not found")))
    }
}
