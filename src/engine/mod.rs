//! The engine: decides and records what runs. It is the only caller of `runtime`
//! and `store` together. [`deploy`] turns services and deployments into replicas
//! and routes (rollouts, scaling, health, recovery; adr/021); [`jobs`] runs commands
//! to completion in replicas of their own, on schedules (adr/033); the API asks it, and
//! this module's [`Engine`], to create, stop, delete and inspect replicas.
//!
//! - Every replica is a row in SQLite (`store::replicas`) plus a container in the
//!   runtime, supervised by its own `berth shim`.
//! - `reconcile` runs at start-up: replicas whose shim still answers are re-adopted
//!   as they are; those that exited while the daemon was away get their exit
//!   recorded (and their restart policy applied on the next tick); a replica whose
//!   shim vanished without an exit record is marked failed; container state on disk
//!   with no row is removed.
//! - `stop_for_host_shutdown` stops every replica when the host itself goes down
//!   (the daemon decides that, `crate::daemon`), recorded so that the restart
//!   policies bring them back after the boot; a plain daemon stop leaves them running.
//! - `tick` runs every second: it notices exits and applies the restart policy
//!   (`no`, `on-failure`, `always`) with exponential backoff (1 s doubling to 5 min)
//!   and crash-loop detection (5 restarts within 5 minutes stops restarting).
//!
//! Limits: images are given as layer snapshot directories, a plain rootfs or a
//! manifest in the hosted registry's blob store; the image store and network
//! attachment are wired in by the callers that have them.

pub mod deploy;
pub mod domains;
pub mod health;
pub mod image;
pub mod ipam;
pub mod jobs;
pub mod service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::images::snapshots::SnapshotStore;
use crate::registry::blobs::BlobStore;
use crate::runtime::RuntimeError;
use crate::runtime::cgroups::{Limits, Metrics};
use crate::runtime::container::Runtime;
use crate::runtime::exec::{Exec, ExecSpec};
use crate::runtime::network::{NetError, Networks};
use crate::runtime::shim::{LogLine, State};
use crate::runtime::spec::ContainerSpec;
use crate::store::replicas::{self, Replica};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("replica {0} not found")]
    NotFound(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("engine task: {0}")]
    Task(String),
    #[error("image: {0}")]
    Image(String),
    #[error(transparent)]
    Network(#[from] NetError),
    #[error("{0}")]
    Unavailable(&'static str),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    #[default]
    OnFailure,
    Always,
}

/// Where a replica's filesystem comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RootSource {
    /// Layer snapshot directories, topmost first, overlaid with a private upper dir.
    Layers(Vec<PathBuf>),
    /// A plain directory used as it is.
    Rootfs(PathBuf),
    /// An image in the hosted registry, by manifest digest; unpacked into snapshots.
    Image { manifest: String },
}

/// Everything needed to (re)create a replica; stored with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaConfig {
    pub project_id: String,
    pub service: String,
    pub root: RootSource,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub memory_bytes: Option<i64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    pub restart: RestartPolicy,
    /// Attach to the project's network (an address, service names, isolation).
    #[serde(default)]
    pub network: bool,
    pub netns: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    pub resolv_file: Option<PathBuf>,
    pub volumes: Vec<(PathBuf, String)>,
    /// Replaces the image's Cmd (kept after its Entrypoint) when `args` is empty.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The service and deployment the replica belongs to (`None` for a bare replica).
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub deployment_id: Option<String>,
    /// The job run the container is for (`None` for a service's replica).
    #[serde(default)]
    pub job_run: Option<String>,
}

const BACKOFF_START: i64 = 1;
const BACKOFF_MAX: i64 = 300;
const CRASH_WINDOW: i64 = 300;
const CRASH_RESTARTS: i64 = 5;

pub struct Engine {
    store: Store,
    runtime: Arc<Runtime>,
    /// The first restart delay in seconds (doubling after); tests set 0.
    pub backoff_start_s: i64,
    networks: Option<(Arc<Networks>, PathBuf)>,
    images: Option<Arc<(BlobStore, SnapshotStore)>>,
    /// Creates hold it shared from preparing an image until its overlay is mounted;
    /// [`Engine::gc_images`] holds it alone, so it never takes a snapshot a create
    /// is about to mount.
    image_lock: tokio::sync::RwLock<()>,
}

impl Engine {
    pub fn new(store: Store, runtime: Arc<Runtime>) -> Self {
        Self {
            store,
            runtime,
            backoff_start_s: BACKOFF_START,
            networks: None,
            images: None,
            image_lock: tokio::sync::RwLock::new(()),
        }
    }

    /// Project networks; replicas' generated hosts files go in `hosts_dir`.
    pub fn with_networks(mut self, networks: Arc<Networks>, hosts_dir: PathBuf) -> Self {
        self.networks = Some((networks, hosts_dir));
        self
    }

    /// Images from the registry's blob store, unpacked into `snapshots`.
    pub fn with_images(mut self, blobs: BlobStore, snapshots: SnapshotStore) -> Self {
        self.images = Some(Arc::new((blobs, snapshots)));
        self
    }

    /// Turns an image reference into layers, filling the process from the image's
    /// config where the replica does not say otherwise.
    async fn resolve_image(&self, cfg: &mut ReplicaConfig) -> Result<Vec<PathBuf>, EngineError> {
        let manifest = match &cfg.root {
            RootSource::Layers(l) => return Ok(l.clone()),
            RootSource::Rootfs(_) => return Ok(Vec::new()),
            RootSource::Image { manifest } => manifest.clone(),
        };
        let images = self.images.clone().ok_or(EngineError::Unavailable("this engine has no image store"))?;
        let prepared = tokio::task::spawn_blocking(move || prepare_blocking(&images, &manifest))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        if cfg.args.is_empty() {
            cfg.args = prepared.config.command(cfg.cmd.as_deref()).ok_or_else(|| {
                EngineError::Image("the image sets neither Entrypoint nor Cmd and the replica gives no command".into())
            })?;
        }
        let mut env = prepared.config.env.clone();
        for kv in &cfg.env {
            let key = kv.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        cfg.env = env;
        if cfg.cwd.is_empty() {
            cfg.cwd = prepared.config.working_dir.clone().unwrap_or_else(|| "/".into());
        }
        Ok(prepared.layers)
    }

    /// Unpacks an image's layers ahead of its replicas, so a deployment of an image
    /// that cannot run fails before anything starts; returns the image's config.
    pub async fn prepare_image(&self, manifest: &str) -> Result<crate::oci::ImageConfig, EngineError> {
        let images = self.images.clone().ok_or(EngineError::Unavailable("this engine has no image store"))?;
        let manifest = manifest.to_string();
        let _images = self.image_lock.read().await;
        let prepared = tokio::task::spawn_blocking(move || prepare_blocking(&images, &manifest))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        Ok(prepared.config)
    }

    /// Rewrites, in place, the hosts files of every attached replica of a project
    /// (they are bind-mounted, so the inode must stay).
    async fn refresh_hosts(&self, project: &str) -> Result<(), EngineError> {
        let Some((nets, dir)) = self.networks.clone() else { return Ok(()) };
        let project = project.to_string();
        let ids: Vec<String> =
            self.list().await?.into_iter().filter(|r| r.project_id == project).map(|r| r.id).collect();
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            let text = nets.hosts_file(&project)?;
            for id in ids {
                let path = dir.join(format!("{id}.hosts"));
                if path.exists() {
                    std::fs::write(&path, &text).map_err(|e| EngineError::Task(format!("{}: {e}", path.display())))?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))?
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runtime) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || f(&rt)).await.map_err(|e| EngineError::Task(e.to_string()))
    }

    /// Creates and starts a replica. A replica that cannot start leaves nothing in
    /// the runtime and is recorded as `failed` with the reason.
    pub async fn create(&self, cfg: ReplicaConfig) -> Result<Replica, EngineError> {
        let mut r = Replica {
            id: crate::ids::new_id("rep"),
            project_id: cfg.project_id.clone(),
            service: cfg.service.clone(),
            state: "starting".into(),
            pid: None,
            restarts: 0,
            exit_code: None,
            signal: None,
            oom_killed: false,
            error: None,
            created_at: crate::ids::now_rfc3339(),
            started_at: None,
            finished_at: None,
            address: None,
            next_restart_at: None,
            window_start: None,
            window_restarts: 0,
        };
        let json = serde_json::to_string(&cfg).map_err(|e| EngineError::Task(e.to_string()))?;
        let row = r.clone();
        self.store.write(move |c| replicas::insert(c, &row, &json)).await?;
        let mut cfg = cfg;
        let _images = self.image_lock.read().await;
        let prepared = match self.resolve_image(&mut cfg).await {
            Ok(layers) => self.attach(&mut cfg, &mut r).await.map(|()| layers),
            Err(e) => Err(e),
        };
        let lowers = match prepared {
            Ok(l) => l,
            Err(e) => {
                r.state = "failed".into();
                r.error = Some(e.to_string());
                self.detach(&r).await;
                self.save(&r).await?;
                return Ok(r);
            }
        };
        let spec = container_spec(&r.id, &cfg);
        let project = cfg.project_id.clone();
        let started = self.blocking(move |rt| rt.create(&project, &spec, &lowers)).await?;
        match started {
            Ok(s) => {
                r.state = "running".into();
                r.pid = Some(s.pid);
                r.started_at = Some(s.started_at);
            }
            Err(e) => {
                r.state = "failed".into();
                r.error = Some(e.to_string());
                self.detach(&r).await;
            }
        }
        self.save(&r).await?;
        Ok(r)
    }

    /// Puts the replica on its project's network and writes its hosts file.
    async fn attach(&self, cfg: &mut ReplicaConfig, r: &mut Replica) -> Result<(), EngineError> {
        if !cfg.network {
            return Ok(());
        }
        let (nets, dir) = self.networks.clone().ok_or(EngineError::Unavailable("this engine has no networks"))?;
        let (project, id, service) = (cfg.project_id.clone(), r.id.clone(), cfg.service.clone());
        let (att, hosts) = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let att = nets.attach(&project, &id, &service)?;
            std::fs::create_dir_all(&dir).map_err(|e| EngineError::Task(format!("{}: {e}", dir.display())))?;
            let hosts = dir.join(format!("{id}.hosts"));
            std::fs::write(&hosts, nets.hosts_file(&project)?)
                .map_err(|e| EngineError::Task(format!("{}: {e}", hosts.display())))?;
            Ok((att, hosts))
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))??;
        cfg.netns = Some(att.netns_path);
        cfg.hosts_file = Some(hosts);
        r.address = Some(att.address.to_string());
        self.refresh_hosts(&cfg.project_id).await
    }

    /// Takes a replica off its network (harmless when it was never on one).
    async fn detach(&self, r: &Replica) {
        let Some((nets, dir)) = self.networks.clone() else { return };
        let id = r.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(dir.join(format!("{id}.hosts")));
            nets.detach(&id)
        })
        .await;
    }

    async fn save(&self, r: &Replica) -> Result<(), EngineError> {
        let row = r.clone();
        Ok(self.store.write(move |c| replicas::update(c, &row)).await?)
    }

    pub async fn get(&self, id: &str) -> Result<Replica, EngineError> {
        let lookup = id.to_string();
        self.store.read(move |c| replicas::get(c, &lookup)).await?.ok_or_else(|| EngineError::NotFound(id.into()))
    }

    pub async fn list(&self) -> Result<Vec<Replica>, EngineError> {
        Ok(self.store.read(replicas::list).await?)
    }

    /// Stops a replica (SIGTERM, then SIGKILL after `grace`); it is not restarted.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<Replica, EngineError> {
        let mut r = self.get(id).await?;
        let rid = id.to_string();
        let status = self.blocking(move |rt| rt.stop(&rid, grace)).await??;
        record_exit(&mut r, &status);
        r.state = "stopped".into();
        self.save(&r).await?;
        Ok(r)
    }

    /// For a host shutdown or reboot: stops every running replica at once (SIGTERM,
    /// then SIGKILL after `grace`) and records it as ended by the host, the way
    /// `reconcile` records a replica a host restart took without an exit record: with
    /// a restart policy it is `exited` with no exit code, so the policy brings it back
    /// after the boot whatever code the process exited with; without one it is
    /// `stopped`. Nothing is deleted: writable layers, logs and addresses stay for the
    /// next boot. Call it only once the ticker no longer runs (it would restart them).
    /// Returns how many replicas it stopped.
    pub async fn stop_for_host_shutdown(&self, grace: Duration) -> Result<usize, EngineError> {
        const WHY: &str = "stopped because the host was shutting down";
        let mut stopping = tokio::task::JoinSet::new();
        for r in self.list().await? {
            if !matches!(r.state.as_str(), "starting" | "running") {
                continue;
            }
            let rt = self.runtime.clone();
            stopping.spawn_blocking(move || {
                let status = rt.stop(&r.id, grace);
                (r, status)
            });
        }
        let mut stopped = 0;
        while let Some(joined) = stopping.join_next().await {
            let (mut r, status) = joined.map_err(|e| EngineError::Task(e.to_string()))?;
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(replica = r.id, error = %e, "could not stop a replica for the host shutdown");
                    continue;
                }
            };
            record_exit(&mut r, &status);
            r.pid = None;
            r.error = Some(WHY.into());
            if self.config(&r.id).await?.restart == RestartPolicy::No {
                r.state = "stopped".into();
            } else {
                r.state = "exited".into();
                r.exit_code = None;
                r.signal = None;
                r.next_restart_at = None;
            }
            if status.exit.is_none() {
                r.finished_at = Some(crate::ids::now_rfc3339());
            }
            self.save(&r).await?;
            stopped += 1;
        }
        Ok(stopped)
    }

    /// Removes a replica and everything it had.
    pub async fn delete(&self, id: &str) -> Result<(), EngineError> {
        let r = self.get(id).await?;
        let (project, rid) = (r.project_id.clone(), id.to_string());
        self.blocking(move |rt| rt.delete(&project, &rid)).await??;
        self.detach(&r).await;
        let rid = id.to_string();
        self.store.write(move |c| replicas::delete(c, &rid)).await?;
        self.refresh_hosts(&r.project_id).await
    }

    /// What the replica's supervisor says of its container now (running, or how it
    /// ended), without waiting for the next [`Engine::tick`] to notice.
    pub async fn status(&self, id: &str) -> Result<crate::runtime::shim::Status, EngineError> {
        self.get(id).await?;
        let rid = id.to_string();
        self.blocking(move |rt| rt.status(&rid)).await
    }

    pub async fn logs(&self, id: &str, tail: usize) -> Result<Vec<LogLine>, EngineError> {
        self.get(id).await?;
        let rid = id.to_string();
        self.blocking(move |rt| rt.logs(&rid, tail)).await
    }

    pub async fn metrics(&self, id: &str) -> Result<Metrics, EngineError> {
        let r = self.get(id).await?;
        let rid = id.to_string();
        self.blocking(move |rt| rt.metrics(&r.project_id, &rid)).await
    }

    /// Starts a process inside a running replica (`runc exec`, with pipes or a
    /// terminal): what the console and one-off commands are built on. The caller
    /// waits for the returned child.
    pub async fn exec(&self, id: &str, spec: ExecSpec) -> Result<Exec, EngineError> {
        self.get(id).await?;
        let rid = id.to_string();
        Ok(self.blocking(move |rt| rt.exec(&rid, &spec)).await??)
    }

    /// The registry blobs replicas run from, which garbage collection must keep
    /// even when no tag references them any more (see `registry::gc`).
    pub async fn pinned_blobs(&self) -> Result<std::collections::HashSet<String>, EngineError> {
        let Some(images) = self.images.clone() else { return Ok(Default::default()) };
        let manifests = self.store.read(replicas::image_manifests).await?;
        tokio::task::spawn_blocking(move || {
            manifests.iter().flat_map(|m| image::referenced_blobs(&images.0, m)).collect()
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))
    }

    /// [`Engine::pinned_blobs`] plus every blob the images `manifests` need.
    pub async fn pinned_blobs_with(
        &self,
        manifests: Vec<String>,
    ) -> Result<std::collections::HashSet<String>, EngineError> {
        let mut pinned = self.pinned_blobs().await?;
        let Some(images) = self.images.clone() else { return Ok(pinned) };
        let more: Vec<String> = tokio::task::spawn_blocking(move || {
            manifests.iter().flat_map(|m| image::referenced_blobs(&images.0, m)).collect()
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))?;
        pinned.extend(more);
        Ok(pinned)
    }

    /// Deletes unpacked layers nothing needs: a snapshot stays while an overlay
    /// mount uses it (any replica not yet deleted, running or not) or while the
    /// registry still holds its layer blob (the next replica of that image starts
    /// without unpacking); flattened snapshots stay only while mounted (they are
    /// hard links, quick to make again). Unfinished unpacks are removed too.
    pub async fn gc_images(&self) -> Result<crate::images::snapshots::GcReport, EngineError> {
        let images = self.images.clone().ok_or(EngineError::Unavailable("this engine has no image store"))?;
        let _exclusive = self.image_lock.write().await;
        tokio::task::spawn_blocking(move || collect_snapshots(&images.0, &images.1))
            .await
            .map_err(|e| EngineError::Task(e.to_string()))?
    }

    /// Re-adopts what survived a daemon restart; see the module docs.
    pub async fn reconcile(&self) -> Result<(), EngineError> {
        let rows = self.list().await?;
        for mut r in rows.clone() {
            if !matches!(r.state.as_str(), "starting" | "running") {
                continue;
            }
            let rid = r.id.clone();
            let status = self.blocking(move |rt| rt.status(&rid)).await?;
            match status.state {
                State::Running => {
                    r.state = "running".into();
                    r.pid = status.pid;
                    tracing::info!(replica = r.id, pid = ?status.pid, "re-adopted a running replica");
                }
                State::Exited => {
                    record_exit(&mut r, &status);
                    r.state = "exited".into();
                    tracing::info!(replica = r.id, code = ?r.exit_code, signal = ?r.signal, "replica exited while the daemon was away");
                }
                State::Lost | State::Created => {
                    const GONE: &str = "its supervisor went away without recording an exit (a host restart?)";
                    r.error = Some(GONE.into());
                    r.pid = None;
                    if self.config(&r.id).await?.restart == RestartPolicy::No {
                        r.state = "failed".into();
                        let (project, rid) = (r.project_id.clone(), r.id.clone());
                        let _ = self.blocking(move |rt| rt.delete(&project, &rid)).await;
                        self.detach(&r).await;
                    } else {
                        // An unknown end counts as a failure: the restart policy
                        // brings it back (on a fresh mount if the host restarted).
                        r.state = "exited".into();
                        r.exit_code = None;
                        r.signal = None;
                        r.finished_at = Some(crate::ids::now_rfc3339());
                        tracing::warn!(
                            replica = r.id,
                            "replica lost while the daemon was away; its restart policy applies"
                        );
                    }
                }
            }
            self.save(&r).await?;
        }
        // Container state on disk that no replica row owns is a leftover.
        let known: std::collections::HashSet<String> = rows.iter().map(|r| r.id.clone()).collect();
        let on_disk = self.blocking(|rt| rt.list()).await?;
        for id in on_disk.into_iter().filter(|id| !known.contains(id)) {
            tracing::warn!(container = id, "removing container state no replica owns");
            let _ = self.blocking(move |rt| rt.delete("orphans", &id)).await;
        }
        Ok(())
    }

    /// Notices exits and applies restart policies; call about once a second.
    pub async fn tick(&self) -> Result<(), EngineError> {
        let now = crate::ids::unix_now();
        for mut r in self.list().await? {
            match r.state.as_str() {
                "running" => {
                    let rid = r.id.clone();
                    let status = self.blocking(move |rt| rt.status(&rid)).await?;
                    if status.state == State::Running {
                        continue;
                    }
                    record_exit(&mut r, &status);
                    r.state = "exited".into();
                    self.save(&r).await?;
                }
                "exited" => {}
                _ => continue,
            }
            let cfg = self.config(&r.id).await?;
            let failed = r.exit_code != Some(0) || r.signal.is_some();
            let wants = match cfg.restart {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => failed,
                RestartPolicy::Always => true,
            };
            if !wants {
                continue;
            }
            if r.window_start.is_none_or(|w| now - w > CRASH_WINDOW) {
                r.window_start = Some(now);
                r.window_restarts = 0;
            }
            if r.window_restarts >= CRASH_RESTARTS {
                r.state = "crash_loop".into();
                r.error = Some(format!("restarted {CRASH_RESTARTS} times within {CRASH_WINDOW} s; not restarting"));
                self.save(&r).await?;
                tracing::warn!(replica = r.id, "crash loop detected");
                continue;
            }
            let due = *r.next_restart_at.get_or_insert(now + backoff(self.backoff_start_s, r.window_restarts));
            if now < due {
                self.save(&r).await?;
                continue;
            }
            let (project, rid) = (r.project_id.clone(), r.id.clone());
            let rid2 = rid.clone();
            let restarted = if self.blocking(move |rt| rt.can_restart(&rid2)).await? {
                self.blocking(move |rt| rt.restart(&project, &rid)).await?.map_err(EngineError::from)
            } else {
                self.revive(&mut r).await
            };
            match restarted {
                Ok(s) => {
                    r.state = "running".into();
                    r.pid = Some(s.pid);
                    r.started_at = Some(s.started_at);
                    r.restarts += 1;
                    r.window_restarts += 1;
                    r.next_restart_at = None;
                    tracing::info!(replica = r.id, restarts = r.restarts, "replica restarted");
                }
                Err(e) => {
                    r.error = Some(e.to_string());
                    r.window_restarts += 1;
                    r.next_restart_at = Some(now + backoff(self.backoff_start_s, r.window_restarts));
                }
            }
            self.save(&r).await?;
        }
        Ok(())
    }

    /// Starts a replica's container again whose mount or network namespace went
    /// away (every replica after a host restart), from its stored configuration:
    /// the image's layers mounted again under the same writable layer, the same
    /// address on a network namespace made anew, the same logs.
    async fn revive(&self, r: &mut Replica) -> Result<crate::runtime::shim::Started, EngineError> {
        let mut cfg = self.config(&r.id).await?;
        let _images = self.image_lock.read().await;
        let lowers = self.resolve_image(&mut cfg).await?;
        self.attach(&mut cfg, r).await?;
        let (project, rid) = (r.project_id.clone(), r.id.clone());
        tracing::info!(replica = r.id, "starting the replica again on a fresh mount and network namespace");
        Ok(self.blocking(move |rt| rt.revive(&project, &rid, &lowers)).await??)
    }

    async fn config(&self, id: &str) -> Result<ReplicaConfig, EngineError> {
        let rid = id.to_string();
        let json = self
            .store
            .read(move |c| replicas::config(c, &rid))
            .await?
            .ok_or_else(|| EngineError::NotFound(id.into()))?;
        serde_json::from_str(&json).map_err(|e| EngineError::Task(format!("stored config of {id}: {e}")))
    }
}

/// Reads an image's manifest from the blob store and unpacks its layers.
fn prepare_blocking(images: &(BlobStore, SnapshotStore), manifest: &str) -> Result<image::Prepared, EngineError> {
    let d = crate::oci::Digest::parse(manifest)
        .map_err(|_| EngineError::Image(format!("{manifest} is not a sha256 digest")))?;
    let bytes = images
        .0
        .read_small(&d, crate::oci::MAX_MANIFEST_BYTES as u64)
        .map_err(|e| EngineError::Image(e.to_string()))?;
    image::prepare(&images.0, &images.1, bytes)
}

/// Seconds to wait before the next restart: 1 s doubling up to 5 minutes.
fn backoff(start: i64, restarts_in_window: i64) -> i64 {
    (start << restarts_in_window.clamp(0, 16)).min(BACKOFF_MAX)
}

fn record_exit(r: &mut Replica, s: &crate::runtime::shim::Status) {
    if let Some(e) = &s.exit {
        r.exit_code = e.exit_code;
        r.signal = e.signal;
        r.oom_killed = e.oom_killed;
        r.finished_at = Some(e.finished_at.clone());
        if e.error.is_some() {
            r.error = e.error.clone();
        }
    }
}

fn container_spec(id: &str, cfg: &ReplicaConfig) -> ContainerSpec {
    ContainerSpec {
        id: id.to_string(),
        hostname: cfg.service.clone(),
        args: cfg.args.clone(),
        env: cfg.env.clone(),
        cwd: cfg.cwd.clone(),
        uid: cfg.uid,
        gid: cfg.gid,
        additional_gids: vec![],
        rootfs: match &cfg.root {
            RootSource::Rootfs(p) => p.clone(),
            RootSource::Layers(_) | RootSource::Image { .. } => PathBuf::new(),
        },
        hosts_file: cfg.hosts_file.clone(),
        resolv_file: cfg.resolv_file.clone(),
        volumes: cfg.volumes.clone(),
        netns: cfg.netns.clone(),
        limits: Limits { memory_bytes: cfg.memory_bytes, cpus: cfg.cpus, pids: cfg.pids },
        cgroups_path: String::new(),
    }
}

/// The work of [`Engine::gc_images`], for a caller that holds the image store alone
/// (`berth admin gc` with no daemon running): keeps what an overlay mount uses and
/// the layers whose blobs the registry still has, removes the rest.
pub fn collect_snapshots(
    blobs: &BlobStore,
    snapshots: &SnapshotStore,
) -> Result<crate::images::snapshots::GcReport, EngineError> {
    let mut keep = std::collections::HashSet::new();
    for path in crate::runtime::rootfs::mounted_lowers() {
        if path.parent() != Some(snapshots.root()) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        keep.insert(match name.strip_prefix("flat-") {
            Some(hex) => format!("flat:{hex}"),
            None => format!("sha256:{name}"),
        });
    }
    for digest in snapshots.list().map_err(|e| EngineError::Image(e.to_string()))? {
        let in_registry = crate::oci::Digest::parse(&digest).is_ok_and(|d| blobs.exists(&d));
        if in_registry {
            keep.insert(digest);
        }
    }
    let report = snapshots.gc(&keep).map_err(|e| EngineError::Image(e.to_string()))?;
    if !report.removed.is_empty() || report.stale_tmp > 0 {
        tracing::info!(removed = report.removed.len(), stale = report.stale_tmp, "image snapshots collected");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let seq: Vec<i64> = (0..12).map(|n| super::backoff(1, n)).collect();
        assert_eq!(&seq[..5], &[1, 2, 4, 8, 16]);
        assert_eq!(seq[11], 300);
    }
}
