//! The build pipeline: a deployment's source becomes an image of the hosted
//! registry, `<project>/<service>:<deployment id>`.
//!
//! One build: wait for a slot (`[build] concurrency`), put the context in
//! `<data_dir>/builds/tmp/<deployment>` (an upload unpacked or a shallow clone),
//! point each `FROM` at a local OCI layout of its base (hosted, or pulled through
//! the layer cache), run `buildah bud` and `buildah push` in a cgroup of the build's
//! own with `[build]`'s limits, read the pushed layout into the registry, forget the
//! image in buildah's storage, remove the temp dir. A cancel, the timeout or the
//! daemon's shutdown kills every process of the cgroup. Afterwards, build storage
//! past `[build] storage_max_bytes` is emptied while no build runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use utoipa::ToSchema;

use super::buildah::{self, Buildah};
use super::dockerfile::{Base, Dockerfile, MAX_DOCKERFILE_BYTES};
use super::{LogTx, Stop, git, layout};
use crate::config::BuildConfig;
use crate::engine::deploy::{BuildJob, Builds, ExternalImages};
use crate::engine::service::Source;
use crate::registry::Registry;
use crate::registry::names::{Digest, Reference};
use crate::runtime::cgroups::{Layout, Limits};
use crate::runtime::confined::{Exit, Job, Run};
use crate::secrets::Sealer;
use crate::store::Store;

/// Said when a build is asked of a node without buildah.
pub const MISSING: &str = "building needs buildah, which this node does not have: install it \
     (apt-get install buildah) or set [build] buildah to its path";
/// The cgroup level under berth's subtree that holds one cgroup per build.
const CGROUP_GROUP: &str = "builds";
/// Most build args a deployment may pass.
pub const MAX_BUILD_ARGS: usize = 64;

/// Whether a builder is here, for `GET /v1/node`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BuilderInfo {
    /// Whether `Upload` and `Git` deployments can be built on this node.
    pub available: bool,
    /// buildah's version, when found.
    pub version: Option<String>,
}

/// Build storage and the queue, for `GET /v1/builds/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BuildStatus {
    pub builder: BuilderInfo,
    /// Builds running now.
    pub running: usize,
    /// Builds waiting for a slot.
    pub waiting: usize,
    pub concurrency: u32,
    /// Bytes buildah's storage took when last measured (after the last build).
    pub storage_bytes: u64,
    pub storage_max_bytes: u64,
    /// Collections of build storage since the daemon started.
    pub storage_collections: u64,
}

/// Everything a build needs from the rest of the daemon.
pub struct Parts {
    pub config: BuildConfig,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Where build cgroups go; `None` where the node runs no containers.
    pub layout: Option<Layout>,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub sealer: Arc<Sealer>,
    pub uploads: Arc<super::uploads::Uploads>,
    pub external: Option<Arc<dyn ExternalImages>>,
}

pub struct Builder {
    config: BuildConfig,
    buildah: Option<Buildah>,
    version: Option<String>,
    tmp: PathBuf,
    layout: Option<Layout>,
    store: Store,
    registry: Arc<Registry>,
    sealer: Arc<Sealer>,
    uploads: Arc<super::uploads::Uploads>,
    external: Option<Arc<dyn ExternalImages>>,
    slots: Arc<Semaphore>,
    running: AtomicUsize,
    waiting: AtomicUsize,
    storage: Arc<Storage>,
    stopping: watch::Sender<bool>,
}

/// Build storage's size and collections, shared with the collection that runs in
/// the background after a build.
#[derive(Default)]
struct Storage {
    bytes: AtomicU64,
    collections: AtomicU64,
}

/// Why a build's processes were stopped from outside.
enum Halt {
    Cancelled,
    Timeout,
    Shutdown,
}

/// Resolves when the deployment is cancelled, the deadline passes or the daemon
/// stops.
async fn halted(cancel: &mut watch::Receiver<bool>, stopping: &mut watch::Receiver<bool>, deadline: Instant) -> Halt {
    async fn flips(rx: &mut watch::Receiver<bool>) {
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
    tokio::select! {
        () = flips(cancel) => Halt::Cancelled,
        () = flips(stopping) => Halt::Shutdown,
        () = tokio::time::sleep_until(deadline.into()) => Halt::Timeout,
    }
}

/// The temp dir of one build, removed whatever happens.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "could not remove a build's temp dir");
            }
        }
    }
}

/// A build's cgroup, its processes killed and the cgroup removed when dropped.
struct JobGuard(Job);

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.remove() {
            tracing::warn!(error = %e, "could not remove a build's cgroup");
        }
    }
}

/// Checks a `dockerfile` path of a source: relative, inside the context. The
/// message is for a 422.
pub fn check_dockerfile(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() || path.len() > 255 || path.chars().any(char::is_control) {
        return Err("dockerfile must be a path of 1 to 255 characters".into());
    }
    if p.is_absolute()
        || p.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
    {
        return Err(format!("dockerfile {path:?} must be a relative path inside the context (no .., not absolute)"));
    }
    Ok(())
}

/// Checks build args: at most [`MAX_BUILD_ARGS`], names like shell variables,
/// values of at most 4 KiB without NUL. The message is for a 422.
pub fn check_build_args(args: &BTreeMap<String, String>) -> Result<(), String> {
    if args.len() > MAX_BUILD_ARGS {
        return Err(format!("at most {MAX_BUILD_ARGS} build args"));
    }
    for (k, v) in args {
        let name_ok = k.len() <= 128
            && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(format!("build arg name {k:?} must be letters, digits and _ (not starting with a digit)"));
        }
        if v.len() > 4096 || v.contains('\0') {
            return Err(format!("build arg {k}: a value of at most 4096 bytes, without NUL"));
        }
    }
    Ok(())
}

impl Builder {
    pub fn new(parts: Parts) -> Builder {
        let Parts { config, data_dir, run_dir, layout, store, registry, sealer, uploads, external } = parts;
        let program = buildah::locate(&config.buildah);
        let version = program
            .as_deref()
            .and_then(|p| crate::runtime::confined::first_line(p, &["--version"]))
            .and_then(|l| buildah::parse_version(&l));
        let builds = data_dir.join("builds");
        let buildah = program.filter(|_| version.is_some()).map(|program| Buildah {
            program,
            root: builds.join("storage"),
            runroot: run_dir.join("builds"),
            policy: builds.join("policy.json"),
        });
        let concurrency = config.concurrency.max(1) as usize;
        Builder {
            buildah,
            version,
            tmp: builds.join("tmp"),
            layout,
            store,
            registry,
            sealer,
            uploads,
            external,
            slots: Arc::new(Semaphore::new(concurrency)),
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            storage: Arc::default(),
            stopping: watch::channel(false).0,
            config,
        }
    }

    /// Clears what builds a previous daemon left (their deployments end as failed
    /// at recovery): temp dirs, and the processes and cgroups of builds. Measures
    /// build storage.
    pub async fn recover(&self) {
        let (tmp, layout, storage) =
            (self.tmp.clone(), self.layout.clone(), self.buildah.as_ref().map(|b| b.root.clone()));
        let measured = tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&tmp) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %tmp.display(), error = %e, "could not clear the builds' temp dir");
                }
            }
            if let Some(layout) = layout {
                clear_cgroups(&layout);
            }
            storage.map(|s| crate::metrics::disk_usage(&s)).unwrap_or(0)
        })
        .await
        .unwrap_or(0);
        self.storage.bytes.store(measured, Ordering::Relaxed);
    }

    /// Whether builds can run here, and buildah's version.
    pub fn info(&self) -> BuilderInfo {
        BuilderInfo { available: self.buildah.is_some(), version: self.version.clone() }
    }

    pub fn status(&self) -> BuildStatus {
        BuildStatus {
            builder: self.info(),
            running: self.running.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            concurrency: self.config.concurrency.max(1),
            storage_bytes: self.storage.bytes.load(Ordering::Relaxed),
            storage_max_bytes: self.config.storage_max_bytes,
            storage_collections: self.storage.collections.load(Ordering::Relaxed),
        }
    }

    /// Stops every build (their processes are killed) and waits a while for them
    /// to wind down.
    pub async fn shut_down(&self) {
        self.stopping.send_replace(true);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.running.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Builds `job`'s source; returns the digest of the image stored in the hosted
    /// registry.
    pub async fn build(&self, job: &BuildJob, log: &LogTx, cancel: watch::Receiver<bool>) -> Result<String, Stop> {
        self.run_build(job, None, log, cancel).await
    }

    /// Builds the directory `context` (copied first) with the Dockerfile path and
    /// build args of `job`'s source, like [`Builder::build`] does an upload or a
    /// clone.
    pub async fn build_dir(
        &self,
        job: &BuildJob,
        context: &Path,
        log: &LogTx,
        cancel: watch::Receiver<bool>,
    ) -> Result<String, Stop> {
        self.run_build(job, Some(context), log, cancel).await
    }

    async fn run_build(
        &self,
        job: &BuildJob,
        local: Option<&Path>,
        log: &LogTx,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<String, Stop> {
        let buildah = self.buildah.clone().ok_or_else(|| Stop::Failed(MISSING.into()))?;
        let layout = self.layout.clone().ok_or_else(|| {
            Stop::Failed("building needs cgroups to confine the build, and this node runs no containers".into())
        })?;
        let mut stopping = self.stopping.subscribe();
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let ahead = self.waiting.fetch_add(1, Ordering::Relaxed);
                let _ = log
                    .send(format!(
                        "waiting for a build slot: {} build(s) running, {ahead} waiting before this one",
                        self.running.load(Ordering::Relaxed)
                    ))
                    .await;
                let got = tokio::select! {
                    p = self.slots.clone().acquire_owned() => p.map_err(|_| Stop::Failed("the build queue is closed".into())),
                    halt = halted(&mut cancel, &mut stopping, Instant::now() + Duration::from_secs(365 * 86_400)) => Err(match halt {
                        Halt::Cancelled => Stop::Cancelled,
                        _ => Stop::Failed("the daemon stopped before the build could start".into()),
                    }),
                };
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                got?
            }
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(self.config.timeout_seconds);
        let started = Instant::now();
        let _ = log
            .send(format!(
                "building (limits: {} MiB, {} CPU, {} processes, {} s)",
                self.config.memory_mb, self.config.cpus, self.config.pids, self.config.timeout_seconds
            ))
            .await;
        let dir = self.tmp.join(&job.deployment_id);
        let result = self.steps(&buildah, &layout, job, local, &dir, log, &mut cancel, &mut stopping, deadline).await;
        let d = dir.clone();
        let _ = tokio::task::spawn_blocking(move || drop(TempDir(d))).await;
        self.running.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
        if result.is_ok() {
            let _ = log.send(format!("build done in {:.1} s", started.elapsed().as_secs_f64())).await;
        }
        // Measured and collected in the background: the deployment does not wait.
        let (slots, storage) = (self.slots.clone(), self.storage.clone());
        let (max, all, memory_mb) =
            (self.config.storage_max_bytes, self.config.concurrency.max(1), self.config.memory_mb);
        tokio::spawn(async move { collect_if_over(&buildah, &layout, slots, storage, max, all, memory_mb).await });
        result
    }

    #[expect(clippy::too_many_arguments, reason = "one build's whole context")]
    async fn steps(
        &self,
        buildah: &Buildah,
        layout: &Layout,
        job: &BuildJob,
        local: Option<&Path>,
        dir: &Path,
        log: &LogTx,
        cancel: &mut watch::Receiver<bool>,
        stopping: &mut watch::Receiver<bool>,
        deadline: Instant,
    ) -> Result<String, Stop> {
        let stop_for = |h: Halt| match h {
            Halt::Cancelled => Stop::Cancelled,
            Halt::Timeout => Stop::Failed(format!(
                "the build took longer than {} s ([build] timeout_seconds) and was stopped",
                self.config.timeout_seconds
            )),
            Halt::Shutdown => Stop::Failed("the daemon stopped during the build".into()),
        };
        macro_rules! guarded {
            ($fut:expr) => {
                tokio::select! {
                    r = $fut => r,
                    h = halted(cancel, stopping, deadline) => return Err(stop_for(h)),
                }
            };
        }
        let context = dir.join("context");
        let scratch = dir.join("scratch");
        let (d, c, s, policy) = (dir.to_path_buf(), context.clone(), scratch.clone(), buildah.policy.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if d.exists() {
                std::fs::remove_dir_all(&d)?;
            }
            std::fs::create_dir_all(&c)?;
            std::fs::create_dir_all(&s)?;
            if let Some(p) = policy.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&policy, buildah::POLICY)
        })
        .await
        .map_err(|e| Stop::Failed(format!("prepare the build dir: {e}")))?
        .map_err(|e| Stop::Failed(format!("prepare the build dir: {e}")))?;

        // The context.
        let (dockerfile, args) = match (&job.source, local) {
            (
                Source::Upload { dockerfile, build_args, .. } | Source::Git { dockerfile, build_args, .. },
                Some(from),
            ) => {
                let (f, c) = (from.to_path_buf(), context.clone());
                tokio::task::spawn_blocking(move || copy_tree(&f, &c))
                    .await
                    .map_err(|e| Stop::Failed(e.to_string()))?
                    .map_err(|e| Stop::Failed(format!("copy the context: {e}")))?;
                (dockerfile.clone(), build_args.clone().unwrap_or_default())
            }
            (Source::Upload { upload_id, dockerfile, build_args }, None) => {
                let _ = log.send(format!("unpacking upload {upload_id}")).await;
                guarded!(self.uploads.unpack(&job.service_id, upload_id, &context))?;
                (dockerfile.clone(), build_args.clone().unwrap_or_default())
            }
            (Source::Git { repo_url, git_ref, dockerfile, build_args }, None) => {
                let key = crate::secrets::credentials::git_key(&self.store, &self.sealer, &job.project_id)
                    .await
                    .map_err(|e| Stop::Failed(format!("the project's deploy key: {e}")))?;
                let _ = log.send(format!("cloning {repo_url} at {git_ref}")).await;
                let fetch = git::Fetch::new(repo_url, git_ref, key.as_ref(), &self.config);
                // The timeout and the daemon's shutdown stop a clone too (the clone
                // itself stops on a cancel).
                let mut for_git = cancel.clone();
                let commit = guarded!(git::fetch(&fetch, &context, &scratch, log, &mut for_git))?;
                let _ = log.send(format!("at commit {commit}")).await;
                (dockerfile.clone(), build_args.clone().unwrap_or_default())
            }
            (other, _) => return Err(Stop::Failed(format!("{} is not built", other.describe()))),
        };
        let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".into());
        check_dockerfile(&dockerfile).map_err(Stop::Failed)?;
        let (ctx, name) = (context.clone(), dockerfile.clone());
        let text = tokio::task::spawn_blocking(move || read_dockerfile(&ctx, &name))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(Stop::Failed)?;
        let parsed = Dockerfile::parse(&text, &args).map_err(Stop::Failed)?;

        // The bases, as local layouts.
        let mut images = BTreeMap::new();
        for from in &parsed.froms {
            let manifest = match &from.base {
                Base::Scratch | Base::Stage(_) => continue,
                Base::Hosted { repository, reference } => {
                    self.hosted_base(&job.project_id, &from.image, repository, reference).await?
                }
                Base::External(image) => {
                    let external = self
                        .external
                        .clone()
                        .ok_or_else(|| Stop::Failed(format!("FROM {image}: this node cannot pull images")))?;
                    let _ = log.send(format!("fetching {image} through the layer cache")).await;
                    match guarded!(external.fetch(&job.project_id, image, None)) {
                        Ok(fetched) => fetched.digest,
                        Err(e) => match self.cached_image(image).await {
                            // A registry out of reach does not stop a build whose base
                            // is in the cache (the tag as last pulled).
                            Some(digest) => {
                                let _ = log.send(format!("{e}; building on the cached {digest} of {image}")).await;
                                digest
                            }
                            None => return Err(Stop::Failed(format!("FROM {image}: {e}"))),
                        },
                    }
                }
            };
            let (blobs, out_root) = (self.registry.blobs.clone(), dir.join("bases"));
            let m = manifest.clone();
            let digest = tokio::task::spawn_blocking(move || -> Result<Digest, String> {
                let tmp = out_root.join("pending");
                let _ = std::fs::remove_dir_all(&tmp);
                let d = layout::export(&blobs, &m, &tmp)?;
                let dest = out_root.join(d.hex());
                if dest.exists() {
                    let _ = std::fs::remove_dir_all(&tmp);
                } else {
                    std::fs::rename(&tmp, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                }
                Ok(d)
            })
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("FROM {}: {e}", from.image)))?;
            let _ = log.send(format!("FROM {} is {digest}", from.image)).await;
            // A relative path (buildah names the image after it, so it must be
            // lowercase), content-addressed: the same base is the same name.
            images.insert(from.line, format!("oci:bases/{}:{}", digest.hex(), layout::BASE_REF));
        }
        let generated = dir.join("Dockerfile.berth");
        let text = parsed.rewrite(&images);
        let g = generated.clone();
        tokio::task::spawn_blocking(move || std::fs::write(&g, text))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("write the Dockerfile: {e}")))?;

        // buildah, in the build's cgroup.
        let limits = Limits {
            memory_bytes: Some((self.config.memory_mb as i64) << 20),
            cpus: Some(self.config.cpus),
            pids: Some(self.config.pids as i64),
        };
        let (l, name) = (layout.clone(), cgroup_name(&job.deployment_id));
        let cgroup = tokio::task::spawn_blocking(move || Job::create(&l, CGROUP_GROUP, &name, &limits))
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?
            .map_err(|e| Stop::Failed(format!("the build's cgroup: {e}")))?;
        let cgroup = JobGuard(cgroup);
        let image = format!("berth-build/{}", job.deployment_id.to_ascii_lowercase());
        let args: Vec<(String, String)> = args.into_iter().collect();
        let run = |a: Vec<std::ffi::OsString>| Run {
            program: buildah.program.clone(),
            args: a,
            cwd: dir.to_path_buf(),
            env: buildah::env(),
        };
        let exit = cgroup
            .0
            .run(&run(buildah.bud(&generated, &image, &context, &args)), log, halted(cancel, stopping, deadline))
            .await
            .map_err(|e| Stop::Failed(format!("run buildah: {e}")))?;
        let outcome = match exit {
            Exit::Code(0) => Ok(()),
            Exit::Stopped => Err(stop_for(halted_now(cancel, stopping))),
            _ if cgroup.0.oom_kills() > 0 => Err(Stop::Failed(format!(
                "the build ran out of memory (limit {} MiB, [build] memory_mb)",
                self.config.memory_mb
            ))),
            Exit::Code(c) => Err(Stop::Failed(format!("the build failed (buildah exited with code {c}); see the log"))),
            Exit::Signal(s) => Err(Stop::Failed(format!("the build failed (buildah was killed by signal {s})"))),
        };
        let pushed = match outcome {
            Ok(()) => {
                let out = dir.join("out");
                let exit = cgroup
                    .0
                    .run(&run(buildah.push(&image, &out)), log, halted(cancel, stopping, deadline))
                    .await
                    .map_err(|e| Stop::Failed(format!("run buildah: {e}")))?;
                match exit {
                    Exit::Code(0) => Ok(out),
                    Exit::Stopped => Err(stop_for(halted_now(cancel, stopping))),
                    _ => Err(Stop::Failed("buildah could not write the built image".into())),
                }
            }
            Err(e) => Err(e),
        };
        // The image lives on in the hosted registry, not in buildah's storage.
        let quiet = tokio::sync::mpsc::channel(16).0;
        let _ = cgroup.0.run(&run(buildah.rmi(&image)), &quiet, tokio::time::sleep(Duration::from_secs(60))).await;
        let _ = tokio::task::spawn_blocking(move || drop(cgroup)).await;
        let out = pushed?;
        let digest = guarded!(self.import(job, &out))?;
        let _ = log.send(format!("stored as {digest}")).await;
        Ok(digest)
    }

    /// The manifest digest of a hosted base: it must be a repository of the
    /// build's own project. Any other is reported as not found, whether it exists
    /// or not.
    async fn hosted_base(
        &self,
        project_id: &str,
        image: &str,
        repository: &str,
        reference: &str,
    ) -> Result<String, Stop> {
        let unknown = || Stop::Failed(format!("FROM {image}: no such image in this project's registry"));
        let reference = if reference.starts_with("sha256:") {
            Reference::Digest(Digest::parse(reference).map_err(|_| unknown())?)
        } else if crate::registry::names::is_tag(reference) {
            Reference::Tag(reference.to_string())
        } else {
            return Err(unknown());
        };
        let repo = self.registry.repo(repository).await.map_err(|e| Stop::Failed(format!("FROM {image}: {e}")))?;
        let repo = repo.filter(|r| r.project_id == project_id).ok_or_else(unknown)?;
        let row = self.registry.manifest_row(&repo, &reference).await.map_err(|_| unknown())?;
        Ok(row.digest)
    }

    /// The image the layer cache holds for the external reference `image`: the
    /// digest it names, or the one last pulled for its tag.
    async fn cached_image(&self, image: &str) -> Option<String> {
        let parsed = crate::images::remote::ImageRef::parse(image).ok()?;
        let found = match &parsed.digest {
            Some(d) => Some(d.to_string()),
            None => {
                let source = parsed.to_string();
                self.store.read(move |c| crate::store::cache::image_for_source(c, &source)).await.ok()?
            }
        }?;
        let d = Digest::parse(&found).ok()?;
        self.registry.blobs.exists(&d).then_some(found)
    }

    /// Stores the layout buildah pushed as `<project>/<service>:<deployment>`.
    async fn import(&self, job: &BuildJob, out: &Path) -> Result<String, Stop> {
        let failed = |e: String| Stop::Failed(format!("store the built image: {e}"));
        let o = out.to_path_buf();
        let pushed = tokio::task::spawn_blocking(move || layout::read(&o))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(failed)?;
        let (p, s) = (job.project_id.clone(), job.service_id.clone());
        let names = self
            .store
            .read(move |c| {
                let project = crate::store::services::project_name(c, &p)?;
                let service = crate::store::services::get(c, &s)?.map(|r| r.name);
                Ok(project.zip(service))
            })
            .await
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| Stop::Failed("the service or its project was deleted".into()))?;
        let repository = format!("{}/{}", names.0, names.1);
        let repo =
            self.registry.repo_for_push(&repository, &job.project_id).await.map_err(|e| failed(e.to_string()))?;
        for (digest, path) in &pushed.blobs {
            self.registry.import_blob(&repo, digest, path).await.map_err(|e| failed(e.to_string()))?;
        }
        let (digest, _) = self
            .registry
            .put_manifest(&repo, &Reference::Tag(job.deployment_id.clone()), Some(&pushed.media_type), pushed.manifest)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(digest.to_string())
    }
}

/// Empties build storage when it has grown past `max` bytes, with every build slot
/// (`all` of them) held, so no build runs meanwhile.
async fn collect_if_over(
    buildah: &Buildah,
    layout: &Layout,
    slots: Arc<Semaphore>,
    storage: Arc<Storage>,
    max: u64,
    all: u32,
    memory_mb: u64,
) {
    let root = buildah.root.clone();
    let size = tokio::task::spawn_blocking(move || crate::metrics::disk_usage(&root)).await.unwrap_or(0);
    storage.bytes.store(size, Ordering::Relaxed);
    if size <= max {
        return;
    }
    let Ok(_all) = slots.acquire_many_owned(all).await else { return };
    tracing::info!(bytes = size, max, "build storage is over its limit; emptying it");
    let (l, name) = (layout.clone(), "gc".to_string());
    let limits = Limits { memory_bytes: Some((memory_mb as i64) << 20), cpus: None, pids: None };
    if let Ok(Ok(job)) = tokio::task::spawn_blocking(move || Job::create(&l, CGROUP_GROUP, &name, &limits)).await {
        let job = JobGuard(job);
        let quiet = tokio::sync::mpsc::channel(16).0;
        let run = |a| Run { program: buildah.program.clone(), args: a, cwd: PathBuf::from("/"), env: buildah::env() };
        for args in [buildah.rm_all(), buildah.rmi_all()] {
            let _ = job.0.run(&run(args), &quiet, tokio::time::sleep(Duration::from_secs(300))).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(job)).await;
    }
    let root = buildah.root.clone();
    let size = tokio::task::spawn_blocking(move || crate::metrics::disk_usage(&root)).await.unwrap_or(0);
    storage.bytes.store(size, Ordering::Relaxed);
    storage.collections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(bytes = size, "build storage collected");
}

/// Why the processes were stopped, read right after they were.
fn halted_now(cancel: &watch::Receiver<bool>, stopping: &watch::Receiver<bool>) -> Halt {
    if *cancel.borrow() {
        Halt::Cancelled
    } else if *stopping.borrow() {
        Halt::Shutdown
    } else {
        Halt::Timeout
    }
}

/// A cgroup name from a deployment id (ids are `[a-z0-9_]`; anything else goes).
fn cgroup_name(deployment: &str) -> String {
    deployment.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}

/// Reads the Dockerfile at `name` in `context`, refusing one that is not a regular
/// file inside the context (a symlink out of it included).
fn read_dockerfile(context: &Path, name: &str) -> Result<String, String> {
    let path = context.join(name);
    let missing = || format!("the context has no {name}");
    let real = std::fs::canonicalize(&path).map_err(|_| missing())?;
    let root = std::fs::canonicalize(context).map_err(|e| format!("the context: {e}"))?;
    if !real.starts_with(&root) {
        return Err(format!("{name} points outside the context"));
    }
    let meta = std::fs::metadata(&real).map_err(|_| missing())?;
    if !meta.is_file() {
        return Err(format!("{name} is not a file"));
    }
    if meta.len() > MAX_DOCKERFILE_BYTES as u64 {
        return Err(format!("{name} is larger than {} KiB", MAX_DOCKERFILE_BYTES >> 10));
    }
    let bytes = std::fs::read(&real).map_err(|e| format!("read {name}: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8 text"))
}

/// Copies the tree at `from` into the directory `to`: directories, regular files
/// and symlinks (as links); anything else is skipped.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        }
    }
    Ok(())
}

/// Kills the processes of every build cgroup a previous daemon left, and removes
/// the cgroups.
fn clear_cgroups(layout: &Layout) {
    let parent = format!("{}/{CGROUP_GROUP}", layout.base);
    for (_, dir) in layout.dirs(&parent) {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Err(e) = Job::existing(layout, CGROUP_GROUP, &name).remove() {
                    tracing::warn!(cgroup = name, error = %e, "could not remove a build's cgroup");
                }
            }
        }
    }
}

impl Builds for Builder {
    fn build<'a>(
        &'a self,
        job: BuildJob,
        log: tokio::sync::mpsc::Sender<String>,
        cancel: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, Stop>> + Send + 'a>> {
        Box::pin(async move { Builder::build(self, &job, &log, cancel).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_paths_stay_in_the_context() {
        for ok in ["Dockerfile", "docker/Dockerfile.prod", "./Dockerfile"] {
            assert!(check_dockerfile(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../Dockerfile", "a/../../b", "a\nb"] {
            assert!(check_dockerfile(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn build_args_are_capped_and_named_like_variables() {
        let ok = BTreeMap::from([("VERSION".to_string(), "1.2".to_string()), ("_x1".into(), String::new())]);
        assert!(check_build_args(&ok).is_ok());
        for bad in ["1A", "A-B", "", "A B"] {
            assert!(check_build_args(&BTreeMap::from([(bad.to_string(), "v".to_string())])).is_err(), "{bad:?}");
        }
        assert!(check_build_args(&BTreeMap::from([("A".to_string(), "x".repeat(5000))])).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_BUILD_ARGS).map(|i| (format!("A{i}"), "v".into())).collect();
        assert!(check_build_args(&many).is_err());
    }

    #[test]
    fn a_dockerfile_outside_the_context_is_refused() {
        let t = std::env::temp_dir().join(crate::ids::new_id("bctx"));
        let ctx = t.join("context");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(t.join("secret"), "FROM x/y\n").unwrap();
        std::os::unix::fs::symlink("../secret", ctx.join("Dockerfile")).unwrap();
        assert!(read_dockerfile(&ctx, "Dockerfile").unwrap_err().contains("outside"));
        assert!(read_dockerfile(&ctx, "Nope").unwrap_err().contains("no Nope"));
        std::fs::write(ctx.join("D2"), "FROM a/b\n").unwrap();
        assert_eq!(read_dockerfile(&ctx, "D2").unwrap(), "FROM a/b\n");
        std::fs::remove_dir_all(&t).unwrap();
    }
}
