//! Jobs: a command run to completion in a fresh container, on a cron schedule
//! and/or on demand (adr/033).
//!
//! - A job's settings are one JSON document ([`JobSpec`]); its schedule is a cron
//!   expression of 5 fields (minute first) or 6 (seconds first), evaluated in UTC or
//!   a named time zone from the system's tz database (DST included: a wall time that
//!   does not exist runs once at the first instant after the gap, one that repeats
//!   runs once, at its first occurrence).
//! - A run is a row (`queued → running → succeeded | failed | timed_out |
//!   cancelled`, or `skipped`) and one replica made through [`Engine::create`] with
//!   restart policy `no`, on the project's network. One task per run watches its
//!   container: at its exit, its timeout (stopped, `timed_out`) or a cancel
//!   (`replace`, a job deleted: stopped, `cancelled`) it copies the container's log
//!   into the run's record, removes the container and records the end. A failed or
//!   timed-out run is tried again `retries` times, 1 s doubling between tries.
//! - Concurrency is decided under one admission lock from the runs this daemon
//!   watches: `forbid` records a run due while another is going as `skipped`,
//!   `replace` cancels the going ones and starts, `allow` starts (up to
//!   [`MAX_CONCURRENT_RUNS`] runs of a job at once; past that it is `skipped` too).
//! - The scheduler ticks four times a second. Each job keeps a cursor (the last fire
//!   time handled, in the store): a fire time at or before now starts a run and moves
//!   the cursor; several passed at once (the daemon was busy) make one run.
//! - At start-up ([`Jobs::recover`]): runs whose container is still going are watched
//!   again (their timeout counted from their start), other unfinished runs end as
//!   `failed` ("interrupted by a daemon restart"), containers of no running run are
//!   removed, and the fire times missed while the daemon was down follow each job's
//!   `missed` policy: `skip` runs none, `run_once` runs exactly one.
//! - The runs kept per job are the newest `keep_runs` (default 20) with their logs;
//!   older ended runs are pruned as each run ends.
//!
//! Limits: a retry waiting out its backoff is lost if the daemon stops meanwhile;
//! job containers get no volumes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::ToSchema;

use super::deploy::ExternalImages;
use super::service::{EnvVar, Resources, ServiceSpec};
use super::{Engine, EngineError, ReplicaConfig, RestartPolicy, RootSource};
use crate::runtime::shim::State;
use crate::store::jobs::{self as sql, JobRow, RunLogLine, RunRow};
use crate::store::{Store, StoreError};

const NO_ENGINE: &str = "this node does not run containers (it needs root and runc)";
/// How often a running job's container is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How often the scheduler looks for due runs.
pub const TICK: Duration = Duration::from_millis(250);
/// Lines of a run's log kept with the run.
pub const MAX_LOG_LINES: usize = 10_000;
/// The longest wait between two tries of a failing run.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Runs of one job going at once, at most (`allow` would otherwise let a
/// frequent schedule of a long command fill the node).
pub const MAX_CONCURRENT_RUNS: usize = 64;

pub const DEFAULT_TIMEOUT_S: u64 = 3600;
pub const DEFAULT_KEEP_RUNS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a job does when a run falls due while another is going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// The new run is recorded as `skipped`.
    #[default]
    Forbid,
    /// Both run.
    Allow,
    /// The going run is stopped (`cancelled`) and the new one starts.
    Replace,
}

/// What a job does at start-up with the fire times the daemon was down for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// None of them runs.
    #[default]
    Skip,
    /// One run catches up for all of them.
    RunOnce,
}

/// Everything about a job but its name and project, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    /// The whole argv (replaces the image's Entrypoint and Cmd).
    pub command: Vec<String>,
    /// A hosted (`alpha/web:v1`, `alpha/web@sha256:…`) or external
    /// (`docker.io/library/busybox:1.36`) image reference.
    #[serde(default)]
    pub image: Option<String>,
    /// Run the service's current image with its env and limits.
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Secret values sealed.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Unset limits take the service's (for a service's image), then the project's.
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub missed: Missed,
    #[serde(default = "default_keep")]
    pub keep_runs: u32,
}

pub fn utc() -> String {
    "UTC".into()
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}
fn default_keep() -> u32 {
    DEFAULT_KEEP_RUNS
}

impl JobSpec {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<JobSpec, EngineError> {
        serde_json::from_str(text).map_err(|e| EngineError::Task(format!("stored job settings: {e}")))
    }
}

/// A parsed schedule: a cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: jiff::tz::TimeZone,
}

impl Schedule {
    /// Parses `expr` (5 fields, or 6 with seconds first) in `timezone` (`UTC` or an
    /// IANA name such as `Europe/Paris`); the error says what is wrong.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) || expr.contains('@') {
            return Err(format!(
                "schedule {expr:?} must have 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first)"
            ));
        }
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build();
        let cron = parser.parse(expr).map_err(|e| format!("schedule {expr:?} is not a valid cron expression: {e}"))?;
        let tz = if timezone == "UTC" {
            jiff::tz::TimeZone::UTC
        } else {
            jiff::tz::TimeZone::get(timezone).map_err(|_| {
                format!("timezone {timezone:?} is not a known time zone (use UTC or an IANA name such as Europe/Paris)")
            })?
        };
        // An expression that never fires (30 February) is refused now, not at run time.
        let s = Schedule { cron, tz };
        if s.next_after(crate::ids::unix_now()).is_none() {
            return Err(format!("schedule {expr:?} never fires"));
        }
        Ok(s)
    }

    /// The first fire time strictly after `unix` (seconds), as unix seconds.
    pub fn next_after(&self, unix: i64) -> Option<i64> {
        let from = jiff::Timestamp::from_second(unix).ok()?.to_zoned(self.tz.clone());
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        Some(next.timestamp().as_second())
    }

    /// The last fire time in `(after, until]`, found backwards from `until` (a
    /// daemon down for a year does not step over every second of it).
    pub fn last_between(&self, after: i64, until: i64) -> Option<i64> {
        let to = jiff::Timestamp::from_second(until).ok()?.to_zoned(self.tz.clone());
        let last = self.cron.find_previous_occurrence(&to, true).ok()?.timestamp().as_second();
        (last > after).then_some(last)
    }
}

/// Unix seconds as RFC 3339.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix).map(crate::ids::format_time).unwrap_or_default()
}

/// When the job runs next on its schedule, if it has one.
pub fn next_run(job: &JobRow) -> Option<String> {
    let spec = JobSpec::from_json(&job.spec).ok()?;
    let schedule = Schedule::parse(spec.schedule.as_deref()?, &spec.timezone).ok()?;
    let from = job.schedule_cursor.unwrap_or(0).max(crate::ids::unix_now());
    schedule.next_after(from).map(rfc3339)
}

/// What the daemon's config says about runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// SIGTERM to SIGKILL when a run is stopped (timeout, cancel).
    pub stop_grace: Duration,
    /// The wait before the first retry (doubling after).
    pub retry_backoff: Duration,
}

/// How a run ended.
struct End {
    status: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    error: Option<String>,
}

impl End {
    fn failed(why: impl Into<String>) -> End {
        End { status: "failed", exit_code: None, signal: None, error: Some(why.into()) }
    }
}

/// Why a watched run stopped being watched before its container ended.
enum Interrupt {
    Cancelled,
    TimedOut,
}

struct Active {
    job_id: String,
    cancel: watch::Sender<bool>,
}

pub struct Jobs {
    store: Store,
    engine: Option<Arc<Engine>>,
    registry: Arc<crate::registry::Registry>,
    external: Option<Arc<dyn ExternalImages>>,
    settings: Settings,
    /// Runs ended, by status (`GET /metrics`).
    metrics: Arc<crate::metrics::Metrics>,
    /// Held while a run is admitted: the concurrency decision and the run's
    /// registration in `active` happen together.
    admission: tokio::sync::Mutex<()>,
    /// Runs this daemon watches, by run id.
    active: Mutex<HashMap<String, Active>>,
    /// Flips when the daemon shuts down: watchers let their runs go on (the next
    /// daemon watches them again).
    stopping: watch::Sender<bool>,
    /// Parsed schedules by job, with the settings they were parsed from: the
    /// scheduler ticks four times a second and a schedule changes rarely.
    parsed: Mutex<HashMap<String, (String, Option<Schedule>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> String {
    crate::ids::now_rfc3339()
}

/// Splits a hosted reference into repository and tag or digest (`latest` when it
/// names neither).
pub fn split_hosted(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

impl Jobs {
    pub fn new(
        store: Store,
        engine: Option<Arc<Engine>>,
        registry: Arc<crate::registry::Registry>,
        external: Option<Arc<dyn ExternalImages>>,
        settings: Settings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Jobs {
            store,
            engine,
            registry,
            external,
            settings,
            metrics,
            admission: tokio::sync::Mutex::new(()),
            active: Mutex::default(),
            stopping: watch::channel(false).0,
            parsed: Mutex::default(),
        }
    }

    /// Says the daemon is shutting down: watchers stop, their runs go on.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    fn running_of(&self, job_id: &str) -> Vec<String> {
        let mut ids: Vec<String> =
            lock(&self.active).iter().filter(|(_, a)| a.job_id == job_id).map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    }

    /// Starts a run of `job` now, under its concurrency policy: the run as recorded
    /// (`queued`, or `skipped` under `forbid` while another is going).
    pub fn start<'a>(
        self: &'a Arc<Self>,
        job: &'a JobRow,
        trigger: &'static str,
        scheduled_for: Option<String>,
        attempt: i64,
    ) -> Pin<Box<dyn Future<Output = Result<RunRow, JobError>> + Send + 'a>> {
        // Boxed: a run's end may start its retry, which is a run again.
        Box::pin(self.admit(job, trigger, scheduled_for, attempt))
    }

    async fn admit(
        self: &Arc<Self>,
        job: &JobRow,
        trigger: &'static str,
        scheduled_for: Option<String>,
        attempt: i64,
    ) -> Result<RunRow, JobError> {
        let spec = JobSpec::from_json(&job.spec)?;
        let _turn = self.admission.lock().await;
        let going = self.running_of(&job.id);
        let mut run = RunRow {
            id: crate::ids::new_id("run"),
            job_id: job.id.clone(),
            project_id: job.project_id.clone(),
            trigger: trigger.into(),
            status: "queued".into(),
            attempt,
            scheduled_for,
            replica_id: None,
            exit_code: None,
            signal: None,
            error: None,
            created_at: now(),
            started_at: None,
            finished_at: None,
        };
        let cap = (spec.concurrency == Concurrency::Allow && going.len() >= MAX_CONCURRENT_RUNS)
            .then(|| format!("{MAX_CONCURRENT_RUNS} runs of this job are going, the most that run at once"));
        let forbidden = going
            .first()
            .filter(|_| spec.concurrency == Concurrency::Forbid)
            .map(|first| format!("run {first} of this job was still running (concurrency forbid)"));
        if let Some(why) = forbidden.or(cap) {
            run.status = "skipped".into();
            run.error = Some(why);
            run.finished_at = Some(now());
            let r = run.clone();
            let keep = spec.keep_runs;
            self.store
                .write(move |c| {
                    sql::insert_run(c, &r)?;
                    sql::prune_runs(c, &r.job_id, keep).map(drop)
                })
                .await?;
            self.metrics.job_run_finished("skipped");
            tracing::info!(job = job.id, run = run.id, reason = run.error, "run skipped");
            return Ok(run);
        }
        if spec.concurrency == Concurrency::Replace {
            for id in &going {
                self.cancel(id);
            }
        }
        let r = run.clone();
        self.store.write(move |c| sql::insert_run(c, &r)).await?;
        let (tx, rx) = watch::channel(false);
        lock(&self.active).insert(run.id.clone(), Active { job_id: job.id.clone(), cancel: tx });
        let (this, r, j) = (self.clone(), run.clone(), job.clone());
        tokio::spawn(async move { this.execute(r, j, spec, rx).await });
        Ok(run)
    }

    /// Asks a run to stop (it ends `cancelled`).
    fn cancel(&self, run_id: &str) {
        if let Some(a) = lock(&self.active).get(run_id) {
            a.cancel.send_replace(true);
        }
    }

    /// Stops the job's runs and waits (a while) for them to end: before a job is deleted.
    pub async fn stop_runs(&self, job_id: &str) {
        for id in self.running_of(job_id) {
            self.cancel(&id);
        }
        let deadline = tokio::time::Instant::now() + self.settings.stop_grace + Duration::from_secs(30);
        while !self.running_of(job_id).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn save(&self, run: &RunRow) {
        let r = run.clone();
        if let Err(e) = self.store.write(move |c| sql::update_run(c, &r)).await {
            tracing::warn!(run = run.id, error = %e, "could not record a run's progress");
        }
    }

    /// Drives one run from `queued` to its end.
    async fn execute(self: Arc<Self>, mut run: RunRow, job: JobRow, spec: JobSpec, mut cancel: watch::Receiver<bool>) {
        let end = match self.launch(&mut run, &job, &spec, &mut cancel).await {
            Ok(Some(replica)) => match self.watch(&run, &replica, spec.timeout_s, &mut cancel).await {
                Some(end) => end,
                // The daemon is stopping: the run goes on for the next one to watch.
                None => {
                    lock(&self.active).remove(&run.id);
                    return;
                }
            },
            Ok(None) => End { status: "cancelled", exit_code: None, signal: None, error: Some("cancelled".into()) },
            Err(why) => End::failed(why),
        };
        self.finish(run, &job, &spec, end).await;
    }

    /// Resolves the image and starts the container: its replica id, `None` when
    /// cancelled first, or why it could not start.
    async fn launch(
        &self,
        run: &mut RunRow,
        job: &JobRow,
        spec: &JobSpec,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<Option<String>, String> {
        let engine = self.engine.clone().ok_or_else(|| NO_ENGINE.to_string())?;
        let cfg = tokio::select! {
            c = self.replica_config(run, job, spec) => c?,
            _ = cancelled(cancel) => return Ok(None),
        };
        let replica = engine.create(cfg).await.map_err(|e| format!("start the container: {e}"))?;
        run.replica_id = Some(replica.id.clone());
        if replica.state == "failed" {
            let why = replica.error.clone().unwrap_or_else(|| "the container did not start".into());
            let _ = engine.delete(&replica.id).await;
            return Err(format!("start the container: {why}"));
        }
        run.status = "running".into();
        run.started_at = Some(replica.started_at.clone().unwrap_or_else(now));
        self.save(run).await;
        tracing::info!(job = job.id, run = run.id, replica = replica.id, "job run started");
        Ok(Some(replica.id))
    }

    /// The image a run uses: a manifest digest.
    async fn image(&self, job: &JobRow, spec: &JobSpec) -> Result<(String, Option<ServiceSpec>), String> {
        if let Some(svc_id) = &spec.service_id {
            let id = svc_id.clone();
            let svc = self
                .store
                .read(move |c| crate::store::services::get(c, &id))
                .await
                .map_err(|e| e.to_string())?
                .filter(|s| s.project_id == job.project_id)
                .ok_or_else(|| format!("service {svc_id} no longer exists"))?;
            let live =
                svc.current_deployment_id.clone().ok_or_else(|| format!("service {svc_id} has no deployment"))?;
            let dep = self
                .store
                .read(move |c| crate::store::deployments::get(c, &live))
                .await
                .map_err(|e| e.to_string())?
                .and_then(|d| d.image_digest)
                .ok_or_else(|| format!("service {svc_id}'s deployment has no image"))?;
            let svc_spec = ServiceSpec::from_json(&svc.spec).map_err(|e| e.to_string())?;
            return Ok((dep, Some(svc_spec)));
        }
        let image = spec.image.clone().ok_or_else(|| "the job names neither an image nor a service".to_string())?;
        if crate::images::remote::is_external(&image) {
            let external = self.external.clone().ok_or_else(|| "this node cannot pull images".to_string())?;
            let fetched =
                external.fetch(&job.project_id, &image, None).await.map_err(|e| format!("pull {image}: {e}"))?;
            return Ok((fetched.digest, None));
        }
        Ok((self.hosted(&job.project_id, &image).await?, None))
    }

    /// The manifest digest a hosted reference names, in the job's project only.
    async fn hosted(&self, project_id: &str, image: &str) -> Result<String, String> {
        use crate::registry::names::{Digest, Reference};
        let (repository, reference) = split_hosted(image);
        let missing = || format!("image {image} not found");
        let reference = if reference.starts_with("sha256:") {
            Reference::Digest(Digest::parse(&reference).map_err(|_| missing())?)
        } else {
            Reference::Tag(reference)
        };
        let repo = self.registry.repo(&repository).await.map_err(|e| e.to_string())?.ok_or_else(missing)?;
        if repo.project_id != project_id {
            return Err(missing());
        }
        match self.registry.manifest_row(&repo, &reference).await {
            Ok(row) => Ok(row.digest),
            Err(crate::registry::error::RegistryError::ManifestUnknown(_)) => Err(missing()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The container of a run: the image, the command, env (the project's shared
    /// env, under the service's when it runs a service's image, under the job's
    /// own; secret values stay sealed for the shim to open) and limits (the job's,
    /// else the service's, else the project's), on the project network.
    async fn replica_config(&self, run: &RunRow, job: &JobRow, spec: &JobSpec) -> Result<ReplicaConfig, String> {
        let (digest, service) = self.image(job, spec).await?;
        let pid = job.project_id.clone();
        let project = self
            .store
            .read(move |c| crate::store::projects::get(c, &pid))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("project {} not found", job.project_id))?;
        let mut env: Vec<(String, String)> = project.env.into_iter().collect();
        let sealed = |v: &EnvVar| {
            if v.secret { format!("{}{}", crate::runtime::shim::SEALED_ENV_PREFIX, v.value) } else { v.value.clone() }
        };
        for v in service.iter().flat_map(|s| s.env.iter()).chain(spec.env.iter()) {
            env.retain(|(k, _)| *k != v.key);
            env.push((v.key.clone(), sealed(v)));
        }
        let svc_res = service.as_ref().map(|s| s.resources.clone()).unwrap_or_default();
        let r = &spec.resources;
        Ok(ReplicaConfig {
            project_id: job.project_id.clone(),
            service: format!("job-{}", job.name),
            root: RootSource::Image { manifest: digest },
            args: spec.command.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: String::new(),
            uid: 0,
            gid: 0,
            memory_bytes: r.memory_mb.or(svc_res.memory_mb).or(project.limits.memory_mb).map(|m| (m as i64) << 20),
            cpus: r.cpus.or(svc_res.cpus).or(project.limits.cpus),
            pids: r.pids.or(svc_res.pids).or(project.limits.pids).map(|p| p as i64),
            restart: RestartPolicy::No,
            network: true,
            netns: None,
            hosts_file: None,
            resolv_file: None,
            volumes: Vec::new(),
            cmd: None,
            service_id: None,
            deployment_id: None,
            job_run: Some(run.id.clone()),
        })
    }

    /// Watches a run's container until it ends, times out or is cancelled; `None`
    /// when the daemon stops first.
    async fn watch(
        &self,
        run: &RunRow,
        replica: &str,
        timeout_s: u64,
        cancel: &mut watch::Receiver<bool>,
    ) -> Option<End> {
        let Some(engine) = self.engine.clone() else { return Some(End::failed(NO_ENGINE)) };
        let started = run
            .started_at
            .as_deref()
            .and_then(crate::ids::parse_time)
            .map_or_else(crate::ids::unix_now, |t| t.unix_timestamp());
        let deadline = started.saturating_add(i64::try_from(timeout_s).unwrap_or(i64::MAX));
        let mut stopping = self.stopping.subscribe();
        let interrupt = loop {
            if *stopping.borrow_and_update() {
                return None;
            }
            match engine.status(replica).await {
                Ok(s) if s.state == State::Running => {}
                Ok(s) => return Some(ended(s)),
                Err(e) => return Some(End::failed(format!("the container went away: {e}"))),
            }
            if crate::ids::unix_now() >= deadline {
                break Interrupt::TimedOut;
            }
            tokio::select! {
                _ = cancelled(cancel) => break Interrupt::Cancelled,
                _ = stopping.changed() => return None,
                _ = tokio::time::sleep(POLL) => {}
            }
        };
        let stopped = engine.stop(replica, self.settings.stop_grace).await;
        let (exit_code, signal) = match &stopped {
            Ok(r) => (r.exit_code, r.signal),
            Err(e) => {
                tracing::warn!(run = run.id, replica, error = %e, "could not stop a job's container");
                (None, None)
            }
        };
        Some(match interrupt {
            Interrupt::TimedOut => End {
                status: "timed_out",
                exit_code,
                signal,
                error: Some(format!("killed after its timeout of {timeout_s} s")),
            },
            Interrupt::Cancelled => End { status: "cancelled", exit_code, signal, error: Some("cancelled".into()) },
        })
    }

    /// Records a run's end: its log copied in, its container removed, older runs
    /// pruned, a retry scheduled when one is due.
    async fn finish(self: Arc<Self>, mut run: RunRow, job: &JobRow, spec: &JobSpec, end: End) {
        if let (Some(engine), Some(replica)) = (self.engine.clone(), run.replica_id.clone()) {
            match engine.logs(&replica, MAX_LOG_LINES).await {
                Ok(lines) => {
                    let lines: Vec<RunLogLine> =
                        lines.into_iter().map(|l| RunLogLine { time: l.time, stream: l.stream, line: l.log }).collect();
                    let id = run.id.clone();
                    if let Err(e) = self.store.write(move |c| sql::set_logs(c, &id, &lines)).await {
                        tracing::warn!(run = run.id, error = %e, "could not keep a run's log");
                    }
                }
                Err(EngineError::NotFound(_)) => {}
                Err(e) => tracing::warn!(run = run.id, error = %e, "could not read a run's log"),
            }
            if let Err(e) = engine.delete(&replica).await {
                if !matches!(e, EngineError::NotFound(_)) {
                    tracing::warn!(run = run.id, replica, error = %e, "could not remove a job's container");
                }
            }
        }
        run.status = end.status.into();
        run.exit_code = end.exit_code;
        run.signal = end.signal;
        run.error = end.error;
        run.finished_at = Some(now());
        self.save(&run).await;
        lock(&self.active).remove(&run.id);
        self.metrics.job_run_finished(&run.status);
        let (id, keep) = (job.id.clone(), spec.keep_runs);
        if let Err(e) = self.store.write(move |c| sql::prune_runs(c, &id, keep)).await {
            tracing::warn!(job = job.id, error = %e, "could not prune old runs");
        }
        tracing::info!(job = job.id, run = run.id, status = run.status, exit_code = ?run.exit_code, "job run ended");
        let failed = matches!(run.status.as_str(), "failed" | "timed_out");
        let tries = i64::from(spec.retries) + 1;
        if failed && run.attempt < tries {
            let wait =
                self.settings.retry_backoff.saturating_mul(1 << (run.attempt - 1).clamp(0, 16)).min(RETRY_BACKOFF_MAX);
            let (this, job_id) = (self.clone(), job.id.clone());
            let mut stopping = self.stopping.subscribe();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopping.changed() => return,
                }
                // The job may have changed or gone meanwhile.
                let id = job_id.clone();
                let Ok(Some(job)) = this.store.read(move |c| sql::get(c, &id)).await else { return };
                if let Err(e) = this.start(&job, "retry", run.scheduled_for.clone(), run.attempt + 1).await {
                    tracing::warn!(job = job_id, error = %e, "could not retry a failed run");
                }
            });
        }
    }

    /// The job's schedule and cursor, parsed once per change of the job.
    fn schedule_of(&self, job: &JobRow) -> Option<(Schedule, i64)> {
        let cursor = job.schedule_cursor.unwrap_or_else(crate::ids::unix_now);
        if let Some((at, s)) = lock(&self.parsed).get(&job.id) {
            if *at == job.spec {
                return s.clone().map(|s| (s, cursor));
            }
        }
        let s = parse_stored(job);
        lock(&self.parsed).insert(job.id.clone(), (job.spec.clone(), s.clone()));
        s.map(|s| (s, cursor))
    }

    /// Starts the runs whose fire time has come; call every [`TICK`].
    pub async fn tick(self: &Arc<Self>) {
        let jobs = match self.store.read(sql::scheduled).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: could not read the jobs");
                return;
            }
        };
        let ids: std::collections::HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        lock(&self.parsed).retain(|id, _| ids.contains(id.as_str()));
        let now = crate::ids::unix_now();
        for job in jobs {
            let Some((schedule, cursor)) = self.schedule_of(&job) else { continue };
            let Some(fire) = schedule.last_between(cursor, now) else { continue };
            let id = job.id.clone();
            if let Err(e) = self.store.write(move |c| sql::advance_cursor(c, &id, fire)).await {
                tracing::warn!(job = job.id, error = %e, "scheduler: could not record a fire time");
                continue;
            }
            if let Err(e) = self.start(&job, "schedule", Some(rfc3339(fire)), 1).await {
                tracing::warn!(job = job.id, error = %e, "scheduler: could not start a run");
            }
        }
    }

    /// At start-up; see the module docs.
    pub async fn recover(self: &Arc<Self>) -> Result<(), JobError> {
        const WHY: &str = "interrupted by a daemon restart";
        let mut watched = std::collections::HashSet::new();
        for mut run in self.store.read(sql::active_runs).await? {
            let id = run.job_id.clone();
            let job = self.store.read(move |c| sql::get(c, &id)).await?;
            let alive = match (&self.engine, &run.replica_id, run.status.as_str()) {
                (Some(engine), Some(replica), "running") => {
                    engine.status(replica).await.is_ok_and(|s| s.state == State::Running)
                        || engine.get(replica).await.is_ok()
                }
                _ => false,
            };
            match (job, alive, run.replica_id.clone()) {
                (Some(job), true, Some(replica)) => {
                    let spec = JobSpec::from_json(&job.spec)?;
                    watched.insert(replica.clone());
                    let (tx, mut rx) = watch::channel(false);
                    lock(&self.active).insert(run.id.clone(), Active { job_id: job.id.clone(), cancel: tx });
                    tracing::info!(run = run.id, replica, "watching a job run that outlived the daemon");
                    let this = self.clone();
                    tokio::spawn(async move {
                        match this.watch(&run, &replica, spec.timeout_s, &mut rx).await {
                            Some(end) => this.finish(run, &job, &spec, end).await,
                            None => {
                                lock(&this.active).remove(&run.id);
                            }
                        }
                    });
                }
                _ => {
                    if let (Some(engine), Some(replica)) = (&self.engine, &run.replica_id) {
                        let _ = engine.delete(replica).await;
                    }
                    run.status = "failed".into();
                    run.error = Some(WHY.into());
                    run.finished_at = Some(now());
                    self.save(&run).await;
                }
            }
        }
        // Containers of runs that are not going on any more.
        if let Some(engine) = &self.engine {
            for (replica, _run) in self.store.read(sql::run_replicas).await? {
                if !watched.contains(&replica) {
                    tracing::info!(replica, "removing the container of an ended job run");
                    let _ = engine.delete(&replica).await;
                }
            }
        }
        // Fire times missed while the daemon was down.
        let now = crate::ids::unix_now();
        for job in self.store.read(sql::scheduled).await? {
            let Some((schedule, cursor)) = self.schedule_of(&job) else { continue };
            let missed = schedule.last_between(cursor, now);
            let id = job.id.clone();
            self.store.write(move |c| sql::advance_cursor(c, &id, now)).await?;
            let Some(fire) = missed else { continue };
            let policy = JobSpec::from_json(&job.spec).map(|s| s.missed).unwrap_or_default();
            tracing::info!(
                job = job.id,
                last_missed = rfc3339(fire),
                ?policy,
                "fire times missed while the daemon was down"
            );
            if policy == Missed::RunOnce {
                self.start(&job, "catch_up", Some(rfc3339(fire)), 1).await?;
            }
        }
        Ok(())
    }

    /// A run's log: from its container while it runs, else as kept.
    pub async fn logs(&self, run: &RunRow) -> Result<Vec<RunLogLine>, JobError> {
        if run.status == "running" {
            if let (Some(engine), Some(replica)) = (&self.engine, &run.replica_id) {
                if let Ok(lines) = engine.logs(replica, MAX_LOG_LINES).await {
                    return Ok(lines
                        .into_iter()
                        .map(|l| RunLogLine { time: l.time, stream: l.stream, line: l.log })
                        .collect());
                }
            }
        }
        let id = run.id.clone();
        Ok(self.store.read(move |c| sql::logs(c, &id)).await?)
    }
}

/// A job's stored schedule, parsed: `None` (with a warning) when it no longer
/// parses (a time zone removed from the system).
fn parse_stored(job: &JobRow) -> Option<Schedule> {
    let spec = JobSpec::from_json(&job.spec).ok()?;
    match Schedule::parse(spec.schedule.as_deref()?, &spec.timezone) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(job = job.id, error = e, "the job's schedule does not parse; not scheduling it");
            None
        }
    }
}

/// How an exited container ended, as a run's end.
fn ended(s: crate::runtime::shim::Status) -> End {
    let Some(exit) = s.exit else {
        return End::failed("the container went away without recording an exit (a host restart?)");
    };
    if let Some(e) = exit.error {
        return End { status: "failed", exit_code: exit.exit_code, signal: exit.signal, error: Some(e) };
    }
    let error = match (exit.exit_code, exit.signal) {
        (Some(0), _) => None,
        (Some(c), _) => Some(format!("exited with code {c}")),
        (None, Some(sig)) => {
            Some(format!("killed by signal {sig}{}", if exit.oom_killed { " (out of memory)" } else { "" }))
        }
        (None, None) => Some("ended without an exit status".into()),
    };
    End {
        status: if error.is_none() { "succeeded" } else { "failed" },
        exit_code: exit.exit_code,
        signal: exit.signal,
        error,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        crate::ids::parse_time(s).unwrap().unix_timestamp()
    }

    #[test]
    fn five_and_six_fields_in_utc_and_named_zones() {
        let every_second = Schedule::parse("* * * * * *", "UTC").unwrap();
        let t = at("2026-03-01T10:00:00Z");
        assert_eq!(every_second.next_after(t), Some(t + 1));
        let hourly = Schedule::parse("30 * * * *", "UTC").unwrap();
        assert_eq!(hourly.next_after(t), Some(at("2026-03-01T10:30:00Z")));
        let six = Schedule::parse("15 30 * * * *", "UTC").unwrap();
        assert_eq!(six.next_after(t), Some(at("2026-03-01T10:30:15Z")));
        // 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
        let paris = Schedule::parse("0 9 * * *", "Europe/Paris").unwrap();
        assert_eq!(paris.next_after(at("2026-01-10T12:00:00Z")), Some(at("2026-01-11T08:00:00Z")));
        assert_eq!(paris.next_after(at("2026-07-10T12:00:00Z")), Some(at("2026-07-11T07:00:00Z")));
    }

    #[test]
    fn dst_gaps_run_once_after_the_gap_and_repeated_hours_run_once() {
        // 2026-03-29: Paris jumps from 02:00 to 03:00; 02:30 does not exist.
        let s = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
        let next = s.next_after(at("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(next, at("2026-03-29T01:00:00Z"), "{}", rfc3339(next));
        assert_eq!(s.next_after(next), Some(at("2026-03-30T00:30:00Z")));
        // 2026-10-25: 02:30 happens twice; it runs once.
        let first = s.next_after(at("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-10-25T00:30:00Z"), "{}", rfc3339(first));
        assert_eq!(s.next_after(first), Some(at("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_say_what_is_wrong() {
        for bad in ["", "* * * *", "* * * * * * *", "61 * * * *", "* * * * * 9", "@daily", "a b c d e"] {
            let e = Schedule::parse(bad, "UTC").unwrap_err();
            assert!(e.contains("schedule"), "{bad}: {e}");
        }
        assert!(Schedule::parse("0 0 30 2 *", "UTC").unwrap_err().contains("never fires"));
        let e = Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("Mars/Olympus"), "{e}");
    }

    #[test]
    fn several_passed_fire_times_make_one_and_none_before_its_time() {
        let s = Schedule::parse("*/10 * * * * *", "UTC").unwrap();
        let t = at("2026-03-01T10:00:00Z");
        assert_eq!(s.last_between(t, t + 9), None);
        assert_eq!(s.last_between(t, t + 10), Some(t + 10));
        assert_eq!(s.last_between(t, t + 35), Some(t + 30));
        // A year of a schedule every second: the last one, at once.
        let every = Schedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(every.last_between(t - 365 * 86_400, t), Some(t));
        // Across a DST gap, backwards too.
        let paris = Schedule::parse("30 2 * * *", "Europe/Paris").unwrap();
        let after_gap = at("2026-03-29T01:00:00Z");
        assert_eq!(paris.last_between(after_gap - 86_400, after_gap + 3600), Some(after_gap));
    }

    #[test]
    fn hosted_references_split_into_repository_and_tag_or_digest() {
        assert_eq!(split_hosted("alpha/web:v1"), ("alpha/web".into(), "v1".into()));
        assert_eq!(split_hosted("alpha/web"), ("alpha/web".into(), "latest".into()));
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(split_hosted(&format!("alpha/web@{d}")), ("alpha/web".into(), d));
    }

    #[test]
    fn exits_map_to_statuses() {
        let exit = |code: Option<i32>, signal: Option<i32>| crate::runtime::shim::Status {
            state: State::Exited,
            pid: None,
            started_at: None,
            exit: Some(crate::runtime::shim::Exit {
                exit_code: code,
                signal,
                oom_killed: false,
                finished_at: String::new(),
                error: None,
            }),
        };
        assert_eq!(ended(exit(Some(0), None)).status, "succeeded");
        let e = ended(exit(Some(3), None));
        assert_eq!((e.status, e.exit_code, e.error.as_deref()), ("failed", Some(3), Some("exited with code 3")));
        let e = ended(exit(None, Some(9)));
        assert_eq!((e.status, e.signal), ("failed", Some(9)));
    }
}
