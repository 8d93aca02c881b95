//! Services and deployments over the engine: rollouts, scaling, start/stop/restart,
//! health after going live, the routing table, and recovery after a restart.
//!
//! Design (adr/021):
//! - A deployment is a row moving `queued → [building →] pulling → starting → live |
//!   failed | cancelled` (`superseded` once a later one is live), with a log of numbered
//!   lines. One task drives it; every step is written before the next one starts,
//!   so a daemon that dies mid-rollout finds the deployment in flight at start-up
//!   and ends it as `failed` ("interrupted by a daemon restart").
//! - `Upload` and `Git` sources are built first (`building`, adr/030) through the
//!   [`Builds`] hook, outside the service's turn; the build's output goes into the
//!   deployment's log and the image's digest onto the deployment, so a rollback
//!   runs it again with no rebuild.
//! - A rollout starts the service's replica count with the new image, waits for
//!   each to pass its health check, records the switch in one transaction (the new
//!   deployment `live`, the previous one `superseded`, the service's current
//!   deployment), points the routing table at the new replicas in one
//!   `set_service`, then drains the old replicas for a grace period and removes
//!   them. A rollout that fails or is cancelled removes its own replicas and
//!   touches nothing else: the previous deployment keeps serving.
//! - Each replica records its service and deployment in its stored configuration,
//!   so the database alone says which replicas belong where: at start-up every
//!   replica that belongs to no live deployment is removed, and the routing table is
//!   rebuilt from the live deployments' running replicas.
//! - Rollouts, scaling, restarts and deletes of one service take turns on a
//!   per-service lock; the routing table is written only from the in-memory
//!   serving sets kept here, by whoever holds a change (rollout, scale, health).
//! - After going live, the health worker probes every serving replica at its
//!   check's interval; a replica failing `failure_threshold` probes in a row (or
//!   not running) leaves the routing table until it passes again. Crashed replicas
//!   are restarted by the engine's restart policy, at the same address.
//! - A service's verified custom domains (adr/027) are routed beside its default
//!   hostname: kept here per service, read from the store by `reroute` (after a
//!   verify or a delete, serialized so an older read never lands last) and at
//!   recovery, and added to the hosts on every publish, so a rollout that read its
//!   hosts before a domain went cannot bring the domain back.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

use super::health::{self, Probe};
use super::service::{HealthCheck, ServiceSpec, Source};
use super::{Engine, EngineError, ReplicaConfig, RootSource};
use crate::ingress::routes::{Backend, RoutingTable};
use crate::metrics::{Metrics, Outcome};
use crate::store::deployments::{self as sql, DeploymentRow, IN_FLIGHT, Member};
use crate::store::domains as domains_sql;
use crate::store::replicas::Replica;
use crate::store::services::{self as services_sql, ServiceRow};
use crate::store::{Store, StoreError};

const NO_ENGINE: &str = "this node does not run containers (it needs root and runc)";
/// How often a starting replica is probed while nothing listens on its port.
const READY_POLL: Duration = Duration::from_millis(250);
/// How long a cancel waits for the rollout to wind down before answering.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What the daemon's config says about rollouts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default hostnames are `<service>.<project>.<apps_domain>`.
    pub apps_domain: String,
    /// Named volumes live in `<volumes_dir>/<service id>/<name>`.
    pub volumes_dir: PathBuf,
    /// How long old replicas keep running after the switch, for requests in flight.
    pub drain: Duration,
    /// SIGTERM to SIGKILL when a replica is stopped.
    pub stop_grace: Duration,
    /// Longest a new replica may take to pass its health check.
    pub health_deadline: Duration,
}

/// What one service serves: the replicas the routing table may send it to.
struct Serving {
    project_id: String,
    deployment_id: String,
    hosts: Vec<String>,
    port: u16,
    check: HealthCheck,
    /// (replica, address), in start order.
    replicas: Vec<(String, Option<IpAddr>)>,
}

#[derive(Debug, Clone)]
struct Health {
    healthy: bool,
    failures: u32,
    next_probe: Instant,
}

/// Why a rollout stopped short of `live`.
enum Stop {
    Cancelled,
    Failed(String),
}

/// One replica of a service, as `GET /v1/services/{id}` lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Instance {
    pub id: String,
    /// The engine's state (`running`, `exited`, `crash_loop`, …), or `unhealthy`
    /// (running but failing its health check) or `draining` (running, of a
    /// deployment that is no longer live).
    pub status: String,
    /// `ip:port` on the project network.
    pub address: Option<String>,
    pub deployment_id: Option<String>,
    pub started_at: Option<String>,
    pub restarts: i64,
    pub error: Option<String>,
}

/// One line of a service's merged log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServiceLogLine {
    pub time: String,
    pub replica_id: String,
    pub stream: String,
    pub log: String,
    /// Where the line sits in the merged log (the SSE event id).
    pub cursor: String,
}

/// The order of a service's merged log: time (seconds), then replica, then the
/// line's place among that replica's lines of the same second.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogCursor {
    pub time: String,
    pub replica: String,
    pub n: usize,
}

impl LogCursor {
    pub fn render(&self) -> String {
        format!("{}~{}~{}", self.time, self.replica, self.n)
    }

    pub fn parse(s: &str) -> Option<LogCursor> {
        let mut it = s.splitn(3, '~');
        let (time, replica, n) = (it.next()?, it.next()?, it.next()?);
        crate::ids::parse_time(time)?;
        Some(LogCursor { time: time.into(), replica: replica.into(), n: n.parse().ok()? })
    }
}

/// What fetching an external image did, for the deployment's log.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The manifest (an index or the image manifest) the deployment runs.
    pub digest: String,
    pub blobs_fetched: u32,
    pub bytes_fetched: u64,
}

/// Fetches an external image into the blob store with the project's credentials.
/// The daemon's state implements it (the registry client, the sealed logins), so
/// this module knows neither.
pub trait ExternalImages: Send + Sync {
    fn fetch<'a>(
        &'a self,
        project_id: &'a str,
        image: &'a str,
        registry_id: Option<&'a str>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Fetched, String>> + Send + 'a>>;
}

/// What a build is asked: the deployment it is for and the source to build.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub deployment_id: String,
    pub project_id: String,
    pub service_id: String,
    pub source: Source,
}

/// Builds `Upload` and `Git` sources into an image of the hosted registry and
/// returns the image's manifest digest. Implemented in `build` (buildah), so this
/// module knows nothing of how. Output lines go to `log`; the build stops when
/// `cancel` turns true.
pub trait Builds: Send + Sync {
    fn build<'a>(
        &'a self,
        job: BuildJob,
        log: tokio::sync::mpsc::Sender<String>,
        cancel: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, crate::build::Stop>> + Send + 'a>>;
}

pub struct Deployer {
    store: Store,
    external: Option<Arc<dyn ExternalImages>>,
    builds: Option<Arc<dyn Builds>>,
    engine: Option<Arc<Engine>>,
    routes: Arc<RoutingTable>,
    settings: Settings,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cancels: Mutex<HashMap<String, watch::Sender<bool>>>,
    serving: Mutex<HashMap<String, Serving>>,
    health: Mutex<HashMap<String, Health>>,
    /// Services whose replicas are to be replaced one by one (restart).
    restarts: Mutex<HashSet<String>>,
    /// Flips when the daemon shuts down (streams end).
    stopping: watch::Sender<bool>,
    /// Replicas of a replaced deployment serving their last requests: scaling leaves
    /// them to their rollout, which removes them once the drain is over.
    draining: Mutex<HashSet<String>>,
    /// Deployments finished, by outcome (`GET /metrics`).
    metrics: Arc<Metrics>,
    /// Each service's verified custom domains, routed beside its default hostname.
    /// Written only by [`Deployer::reroute`] (and recovery), from the store.
    domains: Mutex<HashMap<String, Vec<String>>>,
    /// Serializes reroutes, so an older read of a service's domains never lands
    /// after a newer one.
    reroutes: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves when `cancel` says so; never when its sender is gone.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn now() -> String {
    crate::ids::now_rfc3339()
}

fn address(r: &Replica) -> Option<IpAddr> {
    r.address.as_deref().and_then(|a| a.parse().ok())
}

/// How a replica that stopped running ended, for a log line.
fn ended(r: &Replica) -> String {
    let how = match (r.exit_code, r.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => r.state.clone(),
    };
    match &r.error {
        Some(e) => format!("{how} ({e})"),
        None => how,
    }
}

impl Deployer {
    pub fn new(
        store: Store,
        engine: Option<Arc<Engine>>,
        routes: Arc<RoutingTable>,
        settings: Settings,
        external: Option<Arc<dyn ExternalImages>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Deployer {
            store,
            external,
            builds: None,
            engine,
            routes,
            settings,
            locks: Mutex::default(),
            cancels: Mutex::default(),
            serving: Mutex::default(),
            health: Mutex::default(),
            restarts: Mutex::default(),
            stopping: watch::channel(false).0,
            draining: Mutex::default(),
            metrics,
            domains: Mutex::default(),
            reroutes: tokio::sync::Mutex::new(()),
        }
    }

    /// Builds `Upload` and `Git` deployments with `builds`.
    pub fn with_builds(mut self, builds: Arc<dyn Builds>) -> Self {
        self.builds = Some(builds);
        self
    }

    /// Says the daemon is shutting down: log streams end.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// Flips to true when the daemon shuts down.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `<service>.<project>.<apps_domain>`.
    pub fn default_hostname(&self, service: &str, project: &str) -> String {
        format!("{service}.{project}.{}", self.settings.apps_domain)
    }

    fn lock_for(&self, service_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(service_id.to_string()).or_default().clone()
    }

    /// Appends a line to a deployment's log (and the daemon's).
    async fn log(&self, deployment: &str, line: impl Into<String>) {
        let (id, line, at) = (deployment.to_string(), line.into(), now());
        tracing::info!(deployment = id, "{line}");
        if let Err(e) = self.store.write(move |c| sql::log(c, &id, &at, &line).map(|_| ())).await {
            tracing::warn!(deployment, error = %e, "could not write the deployment log");
        }
    }

    /// A service and its settings.
    async fn load(&self, service_id: &str) -> Result<Option<(ServiceRow, ServiceSpec)>, DeployError> {
        let id = service_id.to_string();
        let Some(row) = self.store.read(move |c| services_sql::get(c, &id)).await? else { return Ok(None) };
        let spec = ServiceSpec::from_json(&row.spec)?;
        Ok(Some((row, spec)))
    }

    /// The host names a service answers to.
    async fn hosts(&self, svc: &ServiceRow) -> Result<Vec<String>, DeployError> {
        let project = svc.project_id.clone();
        let name = self
            .store
            .read(move |c| services_sql::project_name(c, &project))
            .await?
            .ok_or_else(|| DeployError::NotFound(format!("project {} not found", svc.project_id)))?;
        Ok(vec![self.default_hostname(&svc.name, &name)])
    }

    async fn members(&self, service_id: &str) -> Result<Vec<Member>, DeployError> {
        let id = service_id.to_string();
        Ok(self.store.read(move |c| sql::members_of_service(c, &id)).await?)
    }

    // ---- deployments ----------------------------------------------------------

    /// Records a deployment and starts driving it. `digest` is the image when it
    /// is already known (a hosted image resolved by the caller, a rollback).
    pub async fn deploy(
        self: &Arc<Self>,
        svc: &ServiceRow,
        source: Source,
        digest: Option<String>,
        rollback_of: Option<String>,
    ) -> Result<DeploymentRow, DeployError> {
        let row = DeploymentRow {
            id: crate::ids::new_id("dep"),
            service_id: svc.id.clone(),
            project_id: svc.project_id.clone(),
            source: source.to_json(),
            status: "queued".into(),
            image_digest: digest.clone(),
            error: None,
            rollback_of: rollback_of.clone(),
            created_at: now(),
            started_at: None,
            finished_at: None,
        };
        let r = row.clone();
        self.store.write(move |c| sql::insert(c, &r)).await?;
        let (tx, rx) = watch::channel(false);
        lock(&self.cancels).insert(row.id.clone(), tx);
        let what = match (&rollback_of, &digest) {
            (Some(from), Some(d)) => format!("queued: rollback to {d} (the image of {from})"),
            (_, Some(d)) => format!("queued: {} ({d})", source.describe()),
            _ => format!("queued: {}", source.describe()),
        };
        self.log(&row.id, what).await;
        let me = self.clone();
        let dep = row.clone();
        tokio::spawn(async move { me.run(dep, source, rx).await });
        Ok(row)
    }

    async fn run(self: Arc<Self>, dep: DeploymentRow, source: Source, mut cancel: watch::Receiver<bool>) {
        let end = match self.rollout(&dep, &source, &mut cancel).await {
            Ok(()) => None,
            Err(Stop::Cancelled) => Some((Outcome::Cancelled, "cancelled", None, "cancelled".to_string())),
            Err(Stop::Failed(m)) => Some((Outcome::Failed, "failed", Some(m.clone()), format!("failed: {m}"))),
        };
        if let Some((outcome, status, error, line)) = end {
            self.log(&dep.id, line).await;
            let (id, at) = (dep.id.clone(), now());
            match self.store.write(move |c| sql::finish(c, &id, status, error.as_deref(), &at)).await {
                Ok(true) => self.metrics.deployment_finished(outcome),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(deployment = dep.id, error = %e, "could not record the end of a deployment")
                }
            }
        }
        lock(&self.cancels).remove(&dep.id);
    }

    async fn advance(&self, dep: &str, status: &'static str, cancel: &watch::Receiver<bool>) -> Result<(), Stop> {
        if *cancel.borrow() {
            return Err(Stop::Cancelled);
        }
        let (id, at) = (dep.to_string(), now());
        match self.store.write(move |c| sql::advance(c, &id, status, &at)).await {
            Ok(true) => {
                self.log(dep, status).await;
                Ok(())
            }
            Ok(false) => Err(Stop::Cancelled),
            Err(e) => Err(Stop::Failed(format!("record the deployment's state: {e}"))),
        }
    }

    /// Pulls an external image through the layer cache and records its digest on
    /// the deployment, so a rollback later runs exactly it without pulling.
    async fn fetch_external(
        &self,
        dep: &DeploymentRow,
        image: &str,
        registry_id: Option<&str>,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<String, Stop> {
        let external = self.external.clone().ok_or_else(|| Stop::Failed("this node cannot pull images".into()))?;
        self.log(&dep.id, format!("pulling {image}")).await;
        let fetched = tokio::select! {
            r = external.fetch(&dep.project_id, image, registry_id) => r.map_err(|e| Stop::Failed(format!("pull {image}: {e}")))?,
            _ = cancelled(cancel) => return Err(Stop::Cancelled),
        };
        self.log(
            &dep.id,
            format!(
                "pulled {image}: {} ({} blob(s), {} byte(s) fetched)",
                fetched.digest, fetched.blobs_fetched, fetched.bytes_fetched
            ),
        )
        .await;
        let (id, digest) = (dep.id.clone(), fetched.digest.clone());
        self.store
            .write(move |c| sql::set_digest(c, &id, &digest))
            .await
            .map_err(|e| Stop::Failed(format!("record the image's digest: {e}")))?;
        Ok(fetched.digest)
    }

    /// Builds an `Upload` or `Git` source (`building`), its output lines going into
    /// the deployment's log, and records the image's digest on the deployment, so a
    /// rollback later runs exactly it without a rebuild.
    async fn build(
        &self,
        dep: &DeploymentRow,
        source: &Source,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<String, Stop> {
        let builds = self.builds.clone().ok_or_else(|| Stop::Failed("this node does not build images".into()))?;
        self.advance(&dep.id, "building", cancel).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
        let job = BuildJob {
            deployment_id: dep.id.clone(),
            project_id: dep.project_id.clone(),
            service_id: dep.service_id.clone(),
            source: source.clone(),
        };
        let built = {
            let build = builds.build(job, tx, cancel.clone());
            tokio::pin!(build);
            // The lines are written as they come, in order, while the build runs.
            let mut open = true;
            loop {
                tokio::select! {
                    r = &mut build => break r,
                    line = rx.recv(), if open => match line {
                        Some(l) => self.log(&dep.id, l).await,
                        None => open = false,
                    },
                }
            }
        };
        while let Ok(l) = rx.try_recv() {
            self.log(&dep.id, l).await;
        }
        let digest = built.map_err(|e| match e {
            crate::build::Stop::Cancelled => Stop::Cancelled,
            crate::build::Stop::Failed(m) => Stop::Failed(m),
        })?;
        let (id, d) = (dep.id.clone(), digest.clone());
        self.store
            .write(move |c| sql::set_digest(c, &id, &d))
            .await
            .map_err(|e| Stop::Failed(format!("record the image's digest: {e}")))?;
        self.log(&dep.id, format!("built {digest}")).await;
        Ok(digest)
    }

    async fn rollout(
        self: &Arc<Self>,
        dep: &DeploymentRow,
        source: &Source,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        // A build holds no turn of the service: scaling and restarts of what is
        // live go on meanwhile.
        let built = match (&dep.image_digest, source) {
            (None, Source::Upload { .. } | Source::Git { .. }) => Some(self.build(dep, source, cancel).await?),
            _ => None,
        };
        let service_lock = self.lock_for(&dep.service_id);
        let turn = tokio::select! {
            g = service_lock.lock_owned() => g,
            _ = cancelled(cancel) => return Err(Stop::Cancelled),
        };
        self.advance(&dep.id, "pulling", cancel).await?;
        let digest = match (built, &dep.image_digest, source) {
            (Some(d), _, _) => d,
            (None, Some(d), _) => d.clone(),
            (None, None, Source::ExternalImage { image, registry_id }) => {
                self.fetch_external(dep, image, registry_id.as_deref(), cancel).await?
            }
            (None, None, other) => return Err(Stop::Failed(format!("{} names no image to run", other.describe()))),
        };
        let engine = self.engine.clone().ok_or_else(|| Stop::Failed(NO_ENGINE.into()))?;
        self.log(&dep.id, format!("preparing image {digest}")).await;
        let config = tokio::select! {
            r = engine.prepare_image(&digest) => r.map_err(|e| Stop::Failed(format!("image {digest}: {e}")))?,
            _ = cancelled(cancel) => return Err(Stop::Cancelled),
        };
        let (svc, spec) = match self.load(&dep.service_id).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(Stop::Failed("the service was deleted".into())),
            Err(e) => return Err(Stop::Failed(e.to_string())),
        };
        if spec.command.is_none() && config.command(spec.args.as_deref()).is_none() {
            return Err(Stop::Failed(
                "the image sets neither Entrypoint nor Cmd and the service gives no command".into(),
            ));
        }
        self.advance(&dep.id, "starting", cancel).await?;
        let want = if svc.desired == "running" { spec.replicas as usize } else { 0 };
        if want == 0 {
            self.log(&dep.id, "the service runs no replicas (replicas 0 or stopped); going live without any").await;
        }
        let mut started = Vec::new();
        let outcome = self.start_ready(&engine, &svc, &spec, &digest, &dep.id, want, &mut started, cancel).await;
        if let Err(e) = outcome {
            self.remove_deployment_replicas(&engine, &svc.id, &dep.id).await;
            return Err(e);
        }
        let hosts = match self.hosts(&svc).await {
            Ok(h) => h,
            Err(e) => {
                self.remove_deployment_replicas(&engine, &svc.id, &dep.id).await;
                return Err(Stop::Failed(e.to_string()));
            }
        };
        let (id, at) = (dep.id.clone(), now());
        match self.store.write(move |c| sql::go_live(c, &id, &at)).await {
            Ok(true) => self.metrics.deployment_finished(Outcome::Live),
            Ok(false) => {
                self.remove_deployment_replicas(&engine, &svc.id, &dep.id).await;
                return Err(Stop::Cancelled);
            }
            Err(e) => {
                self.remove_deployment_replicas(&engine, &svc.id, &dep.id).await;
                return Err(Stop::Failed(format!("record the switch: {e}")));
            }
        }
        self.serve(&svc, &spec, &dep.id, hosts.clone(), &started);
        self.log(&dep.id, format!("live: {} routed to {} replica(s)", hosts.join(", "), started.len())).await;
        // The previous deployment's replicas finish what they were asked, then go.
        let old: Vec<String> = match self.members(&svc.id).await {
            Ok(m) => {
                m.into_iter().filter(|m| m.deployment_id.as_deref() != Some(&dep.id)).map(|m| m.replica_id).collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list the previous replicas");
                Vec::new()
            }
        };
        if old.is_empty() {
            // Changes made while the rollout ran (a new replica count, a stop) apply now.
            self.reconcile_locked(&svc.id).await;
            return Ok(());
        }
        // The next change of the service need not wait for the drain.
        lock(&self.draining).extend(old.iter().cloned());
        drop(turn);
        self.log(
            &dep.id,
            format!(
                "draining {} replica(s) of the previous deployment for {} s",
                old.len(),
                self.settings.drain.as_secs()
            ),
        )
        .await;
        tokio::time::sleep(self.settings.drain).await;
        self.remove_replicas(&engine, &old, self.settings.stop_grace).await;
        {
            let mut draining = lock(&self.draining);
            for id in &old {
                draining.remove(id);
            }
        }
        self.log(&dep.id, "the previous deployment's replicas are stopped and removed").await;
        self.reconcile_soon(&svc.id);
        Ok(())
    }

    /// Starts `n` replicas of the service's settings with `digest` for `deployment`
    /// and waits for each to pass its health check. Every replica made is pushed to
    /// `started`, ready or not.
    #[expect(clippy::too_many_arguments, reason = "one call site per kind of change, each naming what it starts")]
    async fn start_ready(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        svc: &ServiceRow,
        spec: &ServiceSpec,
        digest: &str,
        deployment: &str,
        n: usize,
        started: &mut Vec<Replica>,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        if n == 0 {
            return Ok(());
        }
        let cfg = self.replica_config(svc, spec, digest, deployment).await.map_err(|e| Stop::Failed(e.to_string()))?;
        let mut creating = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (engine, cfg) = (engine.clone(), cfg.clone());
            creating.spawn(async move { engine.create(cfg).await });
        }
        let mut problem = None;
        while let Some(res) = creating.join_next().await {
            match res {
                Ok(Ok(r)) => {
                    if r.state == "running" {
                        let at = r.address.clone().unwrap_or_else(|| "no address".into());
                        self.log(deployment, format!("replica {} started at {at}", r.id)).await;
                    } else {
                        problem.get_or_insert(format!("replica {} did not start: {}", r.id, ended(&r)));
                    }
                    started.push(r);
                }
                Ok(Err(e)) => {
                    problem.get_or_insert(format!("start a replica: {e}"));
                }
                Err(e) => {
                    problem.get_or_insert(format!("start a replica: {e}"));
                }
            }
        }
        if let Some(p) = problem {
            return Err(Stop::Failed(p));
        }
        if *cancel.borrow() {
            return Err(Stop::Cancelled);
        }
        let check = spec.check();
        let host = self.hosts(svc).await.ok().and_then(|h| h.into_iter().next()).unwrap_or_default();
        let deadline = Instant::now() + self.settings.health_deadline;
        let mut waiting = tokio::task::JoinSet::new();
        for r in started.iter() {
            let me = self.clone();
            let (engine, id, ip, host, check) = (engine.clone(), r.id.clone(), address(r), host.clone(), check.clone());
            let port = spec.port;
            waiting.spawn(
                async move { (id.clone(), me.wait_ready(&engine, &id, ip, port, &host, &check, deadline).await) },
            );
        }
        loop {
            tokio::select! {
                res = waiting.join_next() => match res {
                    None => return Ok(()),
                    Some(Ok((id, Ok(())))) => self.log(deployment, format!("replica {id} passed its health check")).await,
                    Some(Ok((_, Err(m)))) => {
                        waiting.abort_all();
                        return Err(Stop::Failed(m));
                    }
                    Some(Err(e)) => {
                        waiting.abort_all();
                        return Err(Stop::Failed(format!("health check: {e}")));
                    }
                },
                _ = cancelled(cancel) => {
                    waiting.abort_all();
                    return Err(Stop::Cancelled);
                }
            }
        }
    }

    /// Probes a new replica until it passes, fails its threshold, stops running or
    /// runs out of time.
    #[expect(clippy::too_many_arguments, reason = "the probe's whole context")]
    async fn wait_ready(
        &self,
        engine: &Arc<Engine>,
        id: &str,
        ip: Option<IpAddr>,
        port: u16,
        host: &str,
        check: &HealthCheck,
        deadline: Instant,
    ) -> Result<(), String> {
        let ip = ip.ok_or_else(|| format!("replica {id} has no address to check"))?;
        let addr = SocketAddr::new(ip, port);
        let mut failures = 0;
        let mut last = "no probe answered yet".to_string();
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "replica {id} did not pass its health check within {} s (last: {last})",
                    self.settings.health_deadline.as_secs()
                ));
            }
            match engine.get(id).await {
                Ok(r) if r.state == "running" => {}
                Ok(r) => return Err(format!("replica {id} {} before passing its health check", ended(&r))),
                Err(e) => return Err(e.to_string()),
            }
            match health::probe(engine, id, addr, host, check).await {
                Probe::Pass => return Ok(()),
                Probe::NotReady(m) => {
                    last = m;
                    tokio::time::sleep(READY_POLL).await;
                }
                Probe::Fail(m) => {
                    failures += 1;
                    if failures >= check.failure_threshold {
                        return Err(format!("replica {id} failed its health check {failures} time(s) in a row: {m}"));
                    }
                    last = m;
                    tokio::time::sleep(Duration::from_secs(u64::from(check.interval_s))).await;
                }
            }
        }
    }

    /// The configuration of a new replica: the image, the service's command, env
    /// (the project's shared env under the service's own; secret values stay
    /// sealed, marked for the shim to open), limits (unset ones take the project's),
    /// volumes and restart policy, on the project network.
    async fn replica_config(
        &self,
        svc: &ServiceRow,
        spec: &ServiceSpec,
        digest: &str,
        deployment: &str,
    ) -> Result<ReplicaConfig, DeployError> {
        let pid = svc.project_id.clone();
        let project = self
            .store
            .read(move |c| crate::store::projects::get(c, &pid))
            .await?
            .ok_or_else(|| DeployError::NotFound(format!("project {} not found", svc.project_id)))?;
        let mut env: Vec<(String, String)> = project.env.into_iter().collect();
        for v in &spec.env {
            let value = if v.secret {
                format!("{}{}", crate::runtime::shim::SEALED_ENV_PREFIX, v.value)
            } else {
                v.value.clone()
            };
            env.retain(|(k, _)| *k != v.key);
            env.push((v.key.clone(), value));
        }
        let mut volumes = Vec::new();
        for v in &spec.volumes {
            volumes.push((self.settings.volumes_dir.join(&svc.id).join(&v.name), v.path.clone()));
        }
        let dirs: Vec<PathBuf> = volumes.iter().map(|(d, _)| d.clone()).collect();
        tokio::task::spawn_blocking(move || -> Result<(), EngineError> {
            for d in dirs {
                std::fs::create_dir_all(&d).map_err(|e| EngineError::Task(format!("{}: {e}", d.display())))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| EngineError::Task(e.to_string()))??;
        let (args, cmd) = match (&spec.command, &spec.args) {
            (Some(command), args) => (command.iter().chain(args.iter().flatten()).cloned().collect(), None),
            (None, args) => (Vec::new(), args.clone()),
        };
        Ok(ReplicaConfig {
            project_id: svc.project_id.clone(),
            service: svc.name.clone(),
            root: RootSource::Image { manifest: digest.to_string() },
            args,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: String::new(),
            uid: 0,
            gid: 0,
            memory_bytes: spec.resources.memory_mb.or(project.limits.memory_mb).map(|m| (m as i64) << 20),
            cpus: spec.resources.cpus.or(project.limits.cpus),
            pids: spec.resources.pids.or(project.limits.pids).map(|p| p as i64),
            restart: spec.restart_policy,
            network: true,
            netns: None,
            hosts_file: None,
            resolv_file: None,
            volumes,
            cmd,
            service_id: Some(svc.id.clone()),
            deployment_id: Some(deployment.to_string()),
            job_run: None,
        })
    }

    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes replicas.
    async fn remove_replicas(&self, engine: &Arc<Engine>, ids: &[String], grace: Duration) {
        let mut stopping = tokio::task::JoinSet::new();
        for id in ids {
            let (engine, id) = (engine.clone(), id.clone());
            stopping.spawn(async move {
                if !grace.is_zero() {
                    let _ = engine.stop(&id, grace).await;
                }
                if let Err(e) = engine.delete(&id).await {
                    if !matches!(e, EngineError::NotFound(_)) {
                        tracing::warn!(replica = id, error = %e, "could not remove a replica");
                    }
                }
            });
        }
        while stopping.join_next().await.is_some() {}
        let mut health = lock(&self.health);
        for id in ids {
            health.remove(id);
        }
    }

    /// Removes every replica a deployment made (a rollout that did not go live).
    async fn remove_deployment_replicas(&self, engine: &Arc<Engine>, service_id: &str, deployment: &str) {
        let ids: Vec<String> = match self.members(service_id).await {
            Ok(m) => {
                m.into_iter().filter(|m| m.deployment_id.as_deref() == Some(deployment)).map(|m| m.replica_id).collect()
            }
            Err(e) => {
                tracing::error!(deployment, error = %e, "could not list a deployment's replicas to remove them");
                return;
            }
        };
        if !ids.is_empty() {
            self.log(deployment, format!("removing {} replica(s) of this deployment", ids.len())).await;
            self.remove_replicas(engine, &ids, Duration::ZERO).await;
        }
    }

    /// Cancels a deployment in flight and waits (a while) for it to wind down.
    pub async fn cancel(&self, id: &str) -> Result<DeploymentRow, DeployError> {
        let get = |id: String| async move { self.store.read(move |c| sql::get(c, &id)).await };
        let dep =
            get(id.to_string()).await?.ok_or_else(|| DeployError::NotFound(format!("deployment {id} not found")))?;
        if !IN_FLIGHT.contains(&dep.status.as_str()) {
            return Err(DeployError::Conflict(format!(
                "deployment {id} is {}; only a queued, building, pulling or starting deployment can be cancelled",
                dep.status
            )));
        }
        let sender = lock(&self.cancels).get(id).cloned();
        match sender {
            Some(tx) => {
                let _ = tx.send(true);
            }
            None => {
                // No task drives it (it cannot have started); end it here.
                let (i, at) = (id.to_string(), now());
                if self.store.write(move |c| sql::finish(c, &i, "cancelled", None, &at)).await? {
                    self.metrics.deployment_finished(Outcome::Cancelled);
                }
            }
        }
        let deadline = Instant::now() + CANCEL_WAIT;
        loop {
            let d = get(id.to_string())
                .await?
                .ok_or_else(|| DeployError::NotFound(format!("deployment {id} not found")))?;
            if d.status == "cancelled" || Instant::now() >= deadline {
                return Ok(d);
            }
            if !IN_FLIGHT.contains(&d.status.as_str()) {
                return Err(DeployError::Conflict(format!(
                    "deployment {id} ended {} before it could be cancelled",
                    d.status
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- the serving set and the routing table ---------------------------------

    /// Makes `replicas` (healthy) what the service serves.
    fn serve(&self, svc: &ServiceRow, spec: &ServiceSpec, deployment: &str, hosts: Vec<String>, replicas: &[Replica]) {
        let check = spec.check();
        {
            let mut health = lock(&self.health);
            for r in replicas {
                health.insert(r.id.clone(), Health { healthy: true, failures: 0, next_probe: next_probe(&check) });
            }
        }
        lock(&self.serving).insert(
            svc.id.clone(),
            Serving {
                project_id: svc.project_id.clone(),
                deployment_id: deployment.to_string(),
                hosts,
                port: spec.port,
                check,
                replicas: replicas.iter().map(|r| (r.id.clone(), address(r))).collect(),
            },
        );
        self.publish(&svc.id);
    }

    /// Writes the service's routes from its serving set: its hosts and verified
    /// domains → its healthy replicas.
    fn publish(&self, service_id: &str) {
        let serving = lock(&self.serving);
        let health = lock(&self.health);
        let domains = lock(&self.domains);
        match serving.get(service_id) {
            None => self.routes.remove_service(service_id),
            Some(s) => {
                let backends = s
                    .replicas
                    .iter()
                    .filter(|(id, _)| health.get(id).is_none_or(|h| h.healthy))
                    .filter_map(|(id, ip)| {
                        ip.map(|ip| Backend { replica_id: id.clone(), addr: SocketAddr::new(ip, s.port) })
                    })
                    .collect();
                let mut hosts = s.hosts.clone();
                hosts.extend(domains.get(service_id).into_iter().flatten().cloned());
                self.routes.set_service(service_id, &s.project_id, &hosts, backends);
            }
        }
    }

    /// Routes the service at its verified domains as the store now lists them (after
    /// a domain is verified or deleted): a domain that went stops routing at once.
    /// A service that serves nothing yet gets its domains' routes with its first
    /// deployment.
    pub async fn reroute(&self, service_id: &str) -> Result<(), DeployError> {
        let _turn = self.reroutes.lock().await;
        let id = service_id.to_string();
        let routed = self.store.read(move |c| domains_sql::routed(c, &id)).await?;
        {
            let mut domains = lock(&self.domains);
            if routed.is_empty() {
                domains.remove(service_id);
            } else {
                domains.insert(service_id.to_string(), routed);
            }
        }
        self.publish(service_id);
        Ok(())
    }

    /// The service's verified domains as routed now.
    pub fn routed_domains(&self, service_id: &str) -> Vec<String> {
        lock(&self.domains).get(service_id).cloned().unwrap_or_default()
    }

    // ---- scaling, start/stop, restart -----------------------------------------

    /// Brings the service to what it should be (replica count, running or stopped,
    /// a pending restart), soon, in the background.
    pub fn reconcile_soon(self: &Arc<Self>, service_id: &str) {
        let me = self.clone();
        let id = service_id.to_string();
        tokio::spawn(async move {
            let service_lock = me.lock_for(&id);
            let _turn = service_lock.lock().await;
            me.reconcile_locked(&id).await;
        });
    }

    /// Replaces the service's replicas one at a time (each new one healthy before
    /// the old one goes), with the current settings and the same image.
    pub fn restart(self: &Arc<Self>, service_id: &str) {
        lock(&self.restarts).insert(service_id.to_string());
        self.reconcile_soon(service_id);
    }

    async fn reconcile_locked(self: &Arc<Self>, service_id: &str) {
        if let Err(e) = self.reconcile_inner(service_id).await {
            tracing::warn!(service = service_id, error = %e, "could not bring the service to its desired state");
        }
    }

    async fn reconcile_inner(self: &Arc<Self>, service_id: &str) -> Result<(), DeployError> {
        let Some((svc, spec)) = self.load(service_id).await? else { return Ok(()) };
        let Some(live) = svc.current_deployment_id.clone() else { return Ok(()) };
        let l = live.clone();
        let Some(dep) = self.store.read(move |c| sql::get(c, &l)).await? else { return Ok(()) };
        let (Some(digest), "live") = (dep.image_digest.clone(), dep.status.as_str()) else { return Ok(()) };
        let Some(engine) = self.engine.clone() else { return Ok(()) };
        let members = self.members(&svc.id).await?;
        let strays: Vec<String> = {
            let draining = lock(&self.draining);
            members
                .iter()
                .filter(|m| m.deployment_id.as_deref() != Some(&live) && !draining.contains(&m.replica_id))
                .map(|m| m.replica_id.clone())
                .collect()
        };
        if !strays.is_empty() {
            self.remove_replicas(&engine, &strays, self.settings.stop_grace).await;
        }
        let mut current = Vec::new();
        for m in members.iter().filter(|m| m.deployment_id.as_deref() == Some(&live)) {
            if let Ok(r) = engine.get(&m.replica_id).await {
                current.push(r);
            }
        }
        // The serving set follows the current settings (port, hosts, check).
        let hosts = self.hosts(&svc).await?;
        self.refresh_serving(&svc, &spec, &live, hosts, &current);
        let want = if svc.desired == "running" { spec.replicas as usize } else { 0 };
        let restart = lock(&self.restarts).remove(&svc.id);
        if restart && want > 0 {
            self.log(&live, format!("restarting {} replica(s) one at a time", current.len().min(want))).await;
            for old in current.iter().take(want) {
                if let Err(m) = self.replace(&engine, &svc, &spec, &digest, &live, old).await {
                    self.log(&live, format!("restart stopped: {m}; the remaining replicas keep running")).await;
                    break;
                }
            }
            self.log(&live, "restart done").await;
            current = Vec::new();
            for m in self.members(&svc.id).await?.iter().filter(|m| m.deployment_id.as_deref() == Some(&live)) {
                if let Ok(r) = engine.get(&m.replica_id).await {
                    current.push(r);
                }
            }
        }
        let have = current.len();
        if have < want {
            self.log(&live, format!("scaling from {have} to {want} replica(s)")).await;
            let mut started = Vec::new();
            let (_keep, mut never) = watch::channel(false);
            match self.start_ready(&engine, &svc, &spec, &digest, &live, want - have, &mut started, &mut never).await {
                Ok(()) => {
                    self.add_serving(&svc.id, &spec, &started);
                    self.log(&live, format!("scaled to {want} replica(s)")).await;
                }
                Err(e) => {
                    let m = match e {
                        Stop::Failed(m) => m,
                        Stop::Cancelled => "cancelled".into(),
                    };
                    let ids: Vec<String> = started.iter().map(|r| r.id.clone()).collect();
                    self.remove_replicas(&engine, &ids, Duration::ZERO).await;
                    self.log(&live, format!("scaling failed: {m}")).await;
                }
            }
        } else if have > want {
            // The newest go first; they leave the routing table before they stop.
            let extra: Vec<String> = current.iter().rev().take(have - want).map(|r| r.id.clone()).collect();
            self.drop_serving(&svc.id, &extra);
            let what = if want == 0 && svc.desired == "stopped" { "stopping" } else { "scaling down" };
            self.log(&live, format!("{what}: removing {} replica(s)", extra.len())).await;
            self.remove_replicas(&engine, &extra, self.settings.stop_grace).await;
            self.log(&live, format!("{want} replica(s) left")).await;
        }
        Ok(())
    }

    /// Replaces one replica: the new one must pass its health check before the old
    /// one leaves the routing table and stops.
    async fn replace(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        svc: &ServiceRow,
        spec: &ServiceSpec,
        digest: &str,
        deployment: &str,
        old: &Replica,
    ) -> Result<(), String> {
        let mut started = Vec::new();
        let (_keep, mut never) = watch::channel(false);
        match self.start_ready(engine, svc, spec, digest, deployment, 1, &mut started, &mut never).await {
            Ok(()) => {
                self.add_serving(&svc.id, spec, &started);
                self.drop_serving(&svc.id, std::slice::from_ref(&old.id));
                self.remove_replicas(engine, std::slice::from_ref(&old.id), self.settings.stop_grace).await;
                Ok(())
            }
            Err(e) => {
                let ids: Vec<String> = started.iter().map(|r| r.id.clone()).collect();
                self.remove_replicas(engine, &ids, Duration::ZERO).await;
                Err(match e {
                    Stop::Failed(m) => m,
                    Stop::Cancelled => "cancelled".into(),
                })
            }
        }
    }

    fn refresh_serving(
        &self,
        svc: &ServiceRow,
        spec: &ServiceSpec,
        deployment: &str,
        hosts: Vec<String>,
        current: &[Replica],
    ) {
        let check = spec.check();
        {
            let mut serving = lock(&self.serving);
            let entry = serving.entry(svc.id.clone()).or_insert_with(|| Serving {
                project_id: svc.project_id.clone(),
                deployment_id: deployment.to_string(),
                hosts: Vec::new(),
                port: spec.port,
                check: check.clone(),
                replicas: Vec::new(),
            });
            entry.deployment_id = deployment.to_string();
            entry.hosts = hosts;
            entry.port = spec.port;
            entry.check = check.clone();
            entry.replicas = current.iter().map(|r| (r.id.clone(), address(r))).collect();
            let mut health = lock(&self.health);
            for r in current {
                health.entry(r.id.clone()).or_insert(Health {
                    healthy: r.state == "running",
                    failures: 0,
                    next_probe: next_probe(&check),
                });
            }
        }
        self.publish(&svc.id);
    }

    fn add_serving(&self, service_id: &str, spec: &ServiceSpec, replicas: &[Replica]) {
        let check = spec.check();
        {
            let mut serving = lock(&self.serving);
            let mut health = lock(&self.health);
            if let Some(s) = serving.get_mut(service_id) {
                for r in replicas {
                    s.replicas.push((r.id.clone(), address(r)));
                    health.insert(r.id.clone(), Health { healthy: true, failures: 0, next_probe: next_probe(&check) });
                }
            }
        }
        self.publish(service_id);
    }

    fn drop_serving(&self, service_id: &str, ids: &[String]) {
        if let Some(s) = lock(&self.serving).get_mut(service_id) {
            s.replicas.retain(|(id, _)| !ids.contains(id));
        }
        self.publish(service_id);
    }

    // ---- deletion ---------------------------------------------------------------

    /// Deletes a service: its row, deployments and logs (409 while a deployment is
    /// in flight), then its routes, replicas and volumes.
    pub async fn delete_service(&self, service_id: &str) -> Result<(), DeployError> {
        let service_lock = self.lock_for(service_id);
        let _turn = service_lock.lock().await;
        let members = self.members(service_id).await?;
        let id = service_id.to_string();
        self.store.write(move |c| services_sql::delete(c, &id)).await?;
        lock(&self.serving).remove(service_id);
        lock(&self.domains).remove(service_id);
        self.routes.remove_service(service_id);
        if let Some(engine) = &self.engine {
            let ids: Vec<String> = members.into_iter().map(|m| m.replica_id).collect();
            self.remove_replicas(engine, &ids, Duration::ZERO).await;
        }
        let dir = self.settings.volumes_dir.join(service_id);
        let _ = tokio::task::spawn_blocking(move || remove_dir(&dir)).await;
        lock(&self.restarts).remove(service_id);
        lock(&self.locks).remove(service_id);
        Ok(())
    }

    // ---- what a service looks like ----------------------------------------------

    /// The service's replicas with their state.
    pub async fn instances(&self, svc: &ServiceRow) -> Result<Vec<Instance>, DeployError> {
        let Some(engine) = &self.engine else { return Ok(Vec::new()) };
        let port = ServiceSpec::from_json(&svc.spec).map(|s| s.port).unwrap_or(0);
        let mut out = Vec::new();
        for m in self.members(&svc.id).await? {
            let Ok(r) = engine.get(&m.replica_id).await else { continue };
            let healthy = lock(&self.health).get(&r.id).is_none_or(|h| h.healthy);
            let status = match r.state.as_str() {
                "running" if m.deployment_id != svc.current_deployment_id => "draining".to_string(),
                "running" if !healthy => "unhealthy".to_string(),
                other => other.to_string(),
            };
            out.push(Instance {
                id: r.id.clone(),
                status,
                address: r.address.as_ref().map(|a| format!("{a}:{port}")),
                deployment_id: m.deployment_id,
                started_at: r.started_at.clone(),
                restarts: r.restarts,
                error: r.error.clone(),
            });
        }
        Ok(out)
    }

    /// `deploying`, `not_deployed`, `stopped`, `running` (every wanted replica
    /// healthy) or `degraded`.
    pub async fn status(&self, svc: &ServiceRow, instances: &[Instance]) -> Result<&'static str, DeployError> {
        let id = svc.id.clone();
        if self.store.read(move |c| sql::in_flight(c, &id)).await?.is_some() {
            return Ok("deploying");
        }
        if svc.current_deployment_id.is_none() {
            return Ok("not_deployed");
        }
        if svc.desired == "stopped" {
            return Ok("stopped");
        }
        let want = ServiceSpec::from_json(&svc.spec).map(|s| s.replicas as usize).unwrap_or(0);
        let healthy =
            instances.iter().filter(|i| i.status == "running" && i.deployment_id == svc.current_deployment_id).count();
        Ok(if healthy >= want { "running" } else { "degraded" })
    }

    /// Per-replica usage of the service's replicas.
    pub async fn metrics(
        &self,
        service_id: &str,
    ) -> Result<Vec<(String, Option<String>, crate::runtime::cgroups::Metrics)>, DeployError> {
        let Some(engine) = &self.engine else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for m in self.members(service_id).await? {
            if let Ok(metrics) = engine.metrics(&m.replica_id).await {
                out.push((m.replica_id, m.deployment_id, metrics));
            }
        }
        Ok(out)
    }

    /// The service's replicas' log lines, merged in [`LogCursor`] order: of each
    /// replica at most its last `per_replica` lines (a window that starts inside a
    /// second drops that second, whose lines it cannot number).
    pub async fn logs(&self, service_id: &str, per_replica: usize) -> Result<Vec<ServiceLogLine>, DeployError> {
        let Some(engine) = &self.engine else { return Ok(Vec::new()) };
        let mut out: Vec<(LogCursor, ServiceLogLine)> = Vec::new();
        for m in self.members(service_id).await? {
            let Ok(lines) = engine.logs(&m.replica_id, per_replica).await else { continue };
            let partial = lines.len() >= per_replica;
            let first = lines.first().map(|l| l.time.clone());
            let mut n = 0;
            let mut last_time = String::new();
            for l in lines {
                if l.time != last_time {
                    n = 0;
                    last_time = l.time.clone();
                } else {
                    n += 1;
                }
                if partial && Some(&l.time) == first.as_ref() {
                    continue;
                }
                let cursor = LogCursor { time: l.time.clone(), replica: m.replica_id.clone(), n };
                out.push((
                    cursor.clone(),
                    ServiceLogLine {
                        time: l.time,
                        replica_id: m.replica_id.clone(),
                        stream: l.stream,
                        log: l.log,
                        cursor: cursor.render(),
                    },
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out.into_iter().map(|(_, l)| l).collect())
    }

    // ---- health after live ------------------------------------------------------

    /// Probes the serving replicas that are due; a replica failing its threshold
    /// (or not running) leaves the routing table, and comes back when it passes.
    pub async fn probe_due(self: &Arc<Self>) {
        let Some(engine) = self.engine.clone() else { return };
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let serving = lock(&self.serving);
            let health = lock(&self.health);
            for (svc, s) in serving.iter() {
                for (id, _) in &s.replicas {
                    if health.get(id).is_none_or(|h| h.next_probe <= now) {
                        let host = s.hosts.first().cloned().unwrap_or_default();
                        due.push((svc.clone(), id.clone(), s.port, host, s.check.clone()));
                    }
                }
            }
        }
        if due.is_empty() {
            return;
        }
        let mut probes = tokio::task::JoinSet::new();
        for (svc, id, port, host, check) in due {
            let engine = engine.clone();
            probes.spawn(async move {
                let (outcome, ip) = match engine.get(&id).await {
                    Ok(r) if r.state == "running" => match address(&r) {
                        Some(ip) => {
                            (health::probe(&engine, &id, SocketAddr::new(ip, port), &host, &check).await, Some(ip))
                        }
                        None => (Probe::Fail("no address".into()), None),
                    },
                    Ok(r) => (Probe::Fail(format!("replica is {}", r.state)), address(&r)),
                    Err(e) => (Probe::Fail(e.to_string()), None),
                };
                (svc, id, check, outcome, ip)
            });
        }
        let mut changed = HashSet::new();
        while let Some(done) = probes.join_next().await {
            let Ok((svc, id, check, outcome, ip)) = done else { continue };
            let mut serving = lock(&self.serving);
            let mut health = lock(&self.health);
            // Removed while it was probed: nothing to record.
            if !serving.get(&svc).is_some_and(|s| s.replicas.iter().any(|(r, _)| *r == id)) {
                continue;
            }
            let h = health.entry(id.clone()).or_insert(Health { healthy: true, failures: 0, next_probe: now });
            let was = h.healthy;
            match &outcome {
                Probe::Pass => {
                    h.failures = 0;
                    h.healthy = true;
                }
                Probe::Fail(m) | Probe::NotReady(m) => {
                    h.failures += 1;
                    let down = m.starts_with("replica is");
                    if down || h.failures >= check.failure_threshold {
                        if h.healthy {
                            tracing::warn!(replica = id, reason = m, "replica unhealthy; out of the routing table");
                        }
                        h.healthy = false;
                    }
                }
            }
            if h.healthy && !was {
                tracing::info!(replica = id, "replica healthy again; back in the routing table");
            }
            h.next_probe = Instant::now() + Duration::from_secs(u64::from(check.interval_s));
            if h.healthy != was {
                changed.insert(svc.clone());
            }
            if let (Some(s), Some(ip)) = (serving.get_mut(&svc), ip) {
                for entry in s.replicas.iter_mut().filter(|(r, _)| *r == id) {
                    if entry.1 != Some(ip) {
                        entry.1 = Some(ip);
                        changed.insert(svc.clone());
                    }
                }
            }
        }
        for svc in changed {
            self.publish(&svc);
        }
    }

    // ---- recovery -----------------------------------------------------------------

    /// At start-up: ends the deployments a previous run left in flight, removes
    /// every replica that belongs to no live deployment (and the volumes of deleted
    /// services), rebuilds the routing table from the live deployments' running
    /// replicas, then brings every service to its desired state in the background.
    pub async fn recover(self: &Arc<Self>) -> Result<(), DeployError> {
        for d in self.store.read(sql::all_in_flight).await? {
            const WHY: &str = "interrupted by a daemon restart";
            self.log(&d.id, format!("failed: {WHY}")).await;
            let (id, at) = (d.id.clone(), now());
            if self.store.write(move |c| sql::finish(c, &id, "failed", Some(WHY), &at)).await? {
                self.metrics.deployment_finished(Outcome::Failed);
            }
        }
        let services = self.store.read(services_sql::all).await?;
        {
            let verified = self.store.read(domains_sql::all).await?;
            let mut domains = lock(&self.domains);
            for d in verified.into_iter().filter(|d| d.status == "verified") {
                domains.entry(d.service_id).or_default().push(d.hostname);
            }
        }
        let current: HashMap<String, Option<String>> =
            services.iter().map(|s| (s.id.clone(), s.current_deployment_id.clone())).collect();
        let members = self.store.read(sql::all_members).await?;
        if let Some(engine) = self.engine.clone() {
            let orphans: Vec<String> = members
                .iter()
                .filter(|m| match current.get(&m.service_id) {
                    Some(Some(live)) => m.deployment_id.as_deref() != Some(live),
                    _ => true,
                })
                .map(|m| m.replica_id.clone())
                .collect();
            if !orphans.is_empty() {
                tracing::info!(count = orphans.len(), "removing replicas of no live deployment");
                self.remove_replicas(&engine, &orphans, Duration::ZERO).await;
            }
        }
        let dir = self.settings.volumes_dir.clone();
        let keep: HashSet<String> = current.keys().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    tracing::info!(volumes = %e.path().display(), "removing the volumes of a deleted service");
                    remove_dir(&e.path());
                }
            }
        })
        .await;
        for svc in &services {
            let Some(live) = &svc.current_deployment_id else { continue };
            let Ok(spec) = ServiceSpec::from_json(&svc.spec) else { continue };
            let mut replicas = Vec::new();
            if let Some(engine) = &self.engine {
                for m in members.iter().filter(|m| m.service_id == svc.id && m.deployment_id.as_ref() == Some(live)) {
                    if let Ok(r) = engine.get(&m.replica_id).await {
                        replicas.push(r);
                    }
                }
            }
            let hosts = self.hosts(svc).await?;
            self.refresh_serving(svc, &spec, live, hosts, &replicas);
        }
        for svc in &services {
            self.reconcile_soon(&svc.id);
        }
        Ok(())
    }

    /// Registry blobs that rollbacks may need, for registry GC to keep.
    pub async fn pinned_blobs(&self) -> Result<HashSet<String>, DeployError> {
        let Some(engine) = &self.engine else { return Ok(HashSet::new()) };
        let digests = self.store.read(sql::rollback_digests).await?;
        Ok(engine.pinned_blobs_with(digests).await?)
    }
}

fn next_probe(check: &HealthCheck) -> Instant {
    Instant::now() + Duration::from_secs(u64::from(check.interval_s))
}

fn remove_dir(dir: &std::path::Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %dir.display(), error = %e, "could not remove a service's volumes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_cursors_order_by_time_then_replica_then_place() {
        let c = |t: &str, r: &str, n| LogCursor { time: t.into(), replica: r.into(), n };
        let mut v = [
            c("2026-01-01T00:00:01Z", "rep_a", 0),
            c("2026-01-01T00:00:00Z", "rep_b", 1),
            c("2026-01-01T00:00:00Z", "rep_b", 0),
            c("2026-01-01T00:00:00Z", "rep_a", 3),
        ];
        v.sort();
        assert_eq!(v[0], c("2026-01-01T00:00:00Z", "rep_a", 3));
        assert_eq!(v[3], c("2026-01-01T00:00:01Z", "rep_a", 0));
        let s = v[1].render();
        assert_eq!(LogCursor::parse(&s), Some(v[1].clone()));
        assert_eq!(LogCursor::parse("garbage"), None);
        assert_eq!(LogCursor::parse("2026-01-01T00:00:00Z~rep_a~x"), None);
    }
}
