//! `/v1/jobs`: commands run to completion in fresh containers, on a cron schedule
//! and/or on demand. Handlers validate and store; `engine::jobs::Jobs` runs them
//! (adr/033).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Extension, IntoResponse};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, Kind};
use super::extract::{AuditNote, Caller, JsonBody, ListParams, Paginated};
use super::middleware::require_role;
use super::services::{REDACTED, check_argv, check_env_keys, check_name, check_resources, project, seal_env};
use crate::auth::Role;
use crate::engine::jobs::{Concurrency, JobError, JobSpec, Missed, Schedule};
use crate::engine::service::{EnvVar, Resources};
use crate::store::jobs::{JobRow, RunLogLine, RunRow};
use crate::store::projects::Project;

const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
const MAX_RETRIES: u32 = 10;
const MAX_KEEP_RUNS: u32 = 1000;
const STATUSES: &[&str] = &["queued", "running", "succeeded", "failed", "timed_out", "cancelled", "skipped"];

/// `Some(None)` for an explicit `null` (clear the field), `None` when absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub project_id: String,
    /// A DNS label, unique in the project.
    pub name: String,
    /// The whole argv run in the container (replaces the image's Entrypoint and Cmd).
    pub command: Vec<String>,
    /// A hosted (`alpha/web:v1`, `alpha/web@sha256:…`) or fully qualified external
    /// (`docker.io/library/busybox:1.36`) image. Give this or `service_id`.
    pub image: Option<String>,
    /// Run the service's current image, with its env and limits under the job's own.
    pub service_id: Option<String>,
    /// A cron expression: 5 fields (minute first) or 6 (seconds first). Without
    /// one the job runs only on demand.
    pub schedule: Option<String>,
    /// `UTC` (the default) or an IANA time zone such as `Europe/Paris`.
    pub timezone: Option<String>,
    /// Seconds a run may take before it is killed (`timed_out`); 1-604800, default 3600.
    pub timeout_s: Option<u64>,
    /// A run due while another is going: `forbid` (the default, it is `skipped`),
    /// `allow` or `replace`.
    pub concurrency: Option<Concurrency>,
    pub env: Option<Vec<EnvVar>>,
    pub resources: Option<Resources>,
    /// Tries after a failed or timed-out run, 1 s doubling between them; 0-10, default 0.
    pub retries: Option<u32>,
    /// Fire times missed while the daemon was down: `skip` (the default) or `run_once`.
    pub missed: Option<Missed>,
    /// Runs kept with their logs; 1-1000, default 20.
    pub keep_runs: Option<u32>,
}

/// Any subset of a job's settings; `null` clears `image`, `service_id` and
/// `schedule`. A secret env value sent as `"***"` keeps the value stored under
/// that key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobChanges {
    pub name: Option<String>,
    pub command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub image: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub service_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub schedule: Option<Option<String>>,
    pub timezone: Option<String>,
    pub timeout_s: Option<u64>,
    pub concurrency: Option<Concurrency>,
    pub env: Option<Vec<EnvVar>>,
    pub resources: Option<Resources>,
    pub retries: Option<u32>,
    pub missed: Option<Missed>,
    pub keep_runs: Option<u32>,
}

/// A run of a job.
#[derive(Serialize, ToSchema)]
pub struct Run {
    pub id: String,
    pub job_id: String,
    /// `queued`, `running`, `succeeded`, `failed`, `timed_out`, `cancelled` or `skipped`.
    pub status: String,
    /// `schedule`, `manual`, `catch_up` (a fire time missed while the daemon was
    /// down) or `retry`.
    pub trigger: String,
    /// 1 for a first try.
    pub attempt: i64,
    /// The fire time it ran for (scheduled runs).
    pub scheduled_for: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why it failed, timed out, was cancelled or skipped.
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl From<RunRow> for Run {
    fn from(r: RunRow) -> Self {
        Run {
            id: r.id,
            job_id: r.job_id,
            status: r.status,
            trigger: r.trigger,
            attempt: r.attempt,
            scheduled_for: r.scheduled_for,
            exit_code: r.exit_code,
            signal: r.signal,
            error: r.error,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// A job as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub command: Vec<String>,
    pub image: Option<String>,
    pub service_id: Option<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub timeout_s: u64,
    pub concurrency: Concurrency,
    /// Secret values read `"***"`.
    pub env: Vec<EnvVar>,
    pub resources: Resources,
    pub retries: u32,
    pub missed: Missed,
    pub keep_runs: u32,
    /// The next fire time of its schedule.
    pub next_run_at: Option<String>,
    pub last_run: Option<Run>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct RunLogEntry {
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub log: String,
}

#[derive(Serialize, ToSchema)]
pub struct RunLogs {
    /// Oldest first.
    pub lines: Vec<RunLogEntry>,
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound(m) => ApiError::not_found(m),
            JobError::Store(e) => e.into(),
            JobError::Engine(e) => ApiError::internal(e),
        }
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::invalid(m)
}

/// Checks the settings on their own and against the project: its limits, and the
/// image or service the job runs (which must be the project's).
async fn check_spec(state: &AppState, spec: &JobSpec, project: &Project) -> ApiResult<()> {
    check_argv("command", &spec.command)?;
    match (&spec.image, &spec.service_id) {
        (Some(_), Some(_)) => return Err(invalid("a job takes an image or a service_id, not both")),
        (None, None) => return Err(invalid("a job needs an image (or a service_id to run a service's image)")),
        (Some(image), None) => check_image(state, &project.id, image).await?,
        (None, Some(svc)) => {
            let missing = || ApiError::unprocessable(format!("service {svc} not found in this project"));
            if !crate::ids::has_shape(svc, "svc") {
                return Err(missing());
            }
            let row = super::services::service_row(state, svc).await.map_err(|_| missing())?;
            if row.project_id != project.id {
                return Err(missing());
            }
        }
    }
    match &spec.schedule {
        Some(expr) => Schedule::parse(expr, &spec.timezone).map(drop).map_err(invalid)?,
        None => Schedule::parse("0 0 * * *", &spec.timezone).map(drop).map_err(invalid)?,
    }
    if !(1..=MAX_TIMEOUT_S).contains(&spec.timeout_s) {
        return Err(invalid(format!("timeout_s must be between 1 and {MAX_TIMEOUT_S}")));
    }
    if spec.retries > MAX_RETRIES {
        return Err(invalid(format!("retries must be between 0 and {MAX_RETRIES}")));
    }
    if !(1..=MAX_KEEP_RUNS).contains(&spec.keep_runs) {
        return Err(invalid(format!("keep_runs must be between 1 and {MAX_KEEP_RUNS}")));
    }
    check_env_keys(&spec.env)?;
    check_resources(&spec.resources, project, 1)
}

/// A hosted image must exist in the project's repositories now (a malformed
/// reference is 400, one that names nothing 422); an external one must parse and
/// have a usable login (its pull happens at each run).
async fn check_image(state: &AppState, project_id: &str, image: &str) -> ApiResult<()> {
    if crate::images::remote::is_external(image) {
        return super::deployments::check_external(state, project_id, image, None).await;
    }
    let (repository, reference) = crate::engine::jobs::split_hosted(image);
    match super::deployments::resolve_image(state, project_id, &repository, &reference).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind == Kind::NotFound => Err(ApiError::unprocessable(format!(
            "image {image} not found: {} (push it to the hosted registry first)",
            e.message
        ))),
        Err(e) => Err(e),
    }
}

async fn job_row(state: &AppState, id: &str) -> ApiResult<JobRow> {
    let lookup = id.to_string();
    state
        .store
        .read(move |c| crate::store::jobs::get(c, &lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))
}

/// What the API shows of a job.
async fn view(state: &AppState, row: JobRow) -> ApiResult<Job> {
    let spec = JobSpec::from_json(&row.spec).map_err(ApiError::internal)?;
    let id = row.id.clone();
    let last_run = state.store.read(move |c| crate::store::jobs::last_run(c, &id)).await?.map(Run::from);
    let next_run_at = crate::engine::jobs::next_run(&row);
    let env = spec.env.into_iter().map(|v| if v.secret { EnvVar { value: REDACTED.into(), ..v } } else { v }).collect();
    Ok(Job {
        id: row.id,
        project_id: row.project_id,
        name: row.name,
        command: spec.command,
        image: spec.image,
        service_id: spec.service_id,
        schedule: spec.schedule,
        timezone: spec.timezone,
        timeout_s: spec.timeout_s,
        concurrency: spec.concurrency,
        env,
        resources: spec.resources,
        retries: spec.retries,
        missed: spec.missed,
        keep_runs: spec.keep_runs,
        next_run_at,
        last_run,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// The jobs of the projects you belong to (every one for super-admins);
/// `?project_id=` narrows to one project.
#[utoipa::path(get, operation_id = "jobs_list", path = "/v1/jobs", tag = "jobs",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query), ("project_id" = Option<String>, Query)),
    responses((status = 200, body = Paginated<Job>)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    params: ListParams,
) -> ApiResult<Json<Paginated<Job>>> {
    let q = params.page_query();
    let project = params.filter("project_id").map(str::to_string);
    let (uid, all) = (p.user.id.clone(), p.user.super_admin);
    let page = state
        .store
        .read(move |c| {
            let visible = crate::store::projects::visible_project_ids(c, &uid, all)?;
            crate::store::jobs::list(c, visible.as_deref(), project.as_deref(), &q)
        })
        .await?;
    let has_more = page.has_more;
    let mut rows = Vec::with_capacity(page.rows.len());
    for row in page.rows {
        rows.push(view(&state, row).await?);
    }
    Ok(Json(Paginated::from_page(crate::store::Page { rows, has_more }, |j| &j.id)))
}

/// Creates a job (Operator in its project). A scheduled job's first run is its
/// schedule's first fire time after now.
#[utoipa::path(post, operation_id = "jobs_create", path = "/v1/jobs", tag = "jobs", request_body = NewJob,
    responses((status = 201, body = Job), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<NewJob>,
) -> ApiResult<impl IntoResponse> {
    let hidden = ApiError::not_found(format!("project {} not found", body.project_id));
    require_role(&state, &p, &body.project_id, Role::Operator, hidden).await?;
    check_name(&body.name)?;
    let project = project(&state, &body.project_id).await?;
    let spec = JobSpec {
        command: body.command,
        image: body.image,
        service_id: body.service_id,
        schedule: body.schedule,
        timezone: body.timezone.unwrap_or_else(crate::engine::jobs::utc),
        timeout_s: body.timeout_s.unwrap_or(crate::engine::jobs::DEFAULT_TIMEOUT_S),
        concurrency: body.concurrency.unwrap_or_default(),
        env: seal_env(&state, body.env.unwrap_or_default(), &[])?,
        resources: body.resources.unwrap_or_default(),
        retries: body.retries.unwrap_or(0),
        missed: body.missed.unwrap_or_default(),
        keep_runs: body.keep_runs.unwrap_or(crate::engine::jobs::DEFAULT_KEEP_RUNS),
    };
    check_spec(&state, &spec, &project).await?;
    let now = crate::ids::now_rfc3339();
    let row = JobRow {
        id: crate::ids::new_id("job"),
        project_id: project.id.clone(),
        name: body.name,
        schedule: spec.schedule.clone(),
        schedule_cursor: spec.schedule.as_ref().map(|_| crate::ids::unix_now()),
        spec: spec.to_json(),
        created_at: now.clone(),
        updated_at: now,
    };
    let r = row.clone();
    state.store.write(move |c| crate::store::jobs::insert(c, &r)).await?;
    let note =
        AuditNote { target: Some(row.id.clone()), project_id: Some(row.project_id.clone()), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(view(&state, row).await?)))
}

/// One job with its last run and next fire time.
#[utoipa::path(get, operation_id = "jobs_get", path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Job), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    let row = job_row(&state, &id).await?;
    Ok(Json(view(&state, row).await?))
}

/// Changes a job. A new schedule or time zone counts from now: fire times before
/// the change do not run. Runs going on keep the settings they started with.
#[utoipa::path(put, operation_id = "jobs_update", path = "/v1/jobs/{id}", tag = "jobs", request_body = JobChanges,
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Job), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<JobChanges>,
) -> ApiResult<impl IntoResponse> {
    let mut row = job_row(&state, &id).await?;
    let before = JobSpec::from_json(&row.spec).map_err(ApiError::internal)?;
    let project = project(&state, &row.project_id).await?;
    let mut spec = before.clone();
    if let Some(n) = body.name {
        check_name(&n)?;
        row.name = n;
    }
    if let Some(c) = body.command {
        spec.command = c;
    }
    if let Some(i) = body.image {
        spec.image = i;
    }
    if let Some(s) = body.service_id {
        spec.service_id = s;
    }
    if let Some(s) = body.schedule {
        spec.schedule = s;
    }
    if let Some(t) = body.timezone {
        spec.timezone = t;
    }
    if let Some(t) = body.timeout_s {
        spec.timeout_s = t;
    }
    if let Some(c) = body.concurrency {
        spec.concurrency = c;
    }
    if let Some(e) = body.env {
        spec.env = seal_env(&state, e, &before.env)?;
    }
    if let Some(r) = body.resources {
        spec.resources = r;
    }
    if let Some(r) = body.retries {
        spec.retries = r;
    }
    if let Some(m) = body.missed {
        spec.missed = m;
    }
    if let Some(k) = body.keep_runs {
        spec.keep_runs = k;
    }
    check_spec(&state, &spec, &project).await?;
    if spec.schedule != before.schedule || spec.timezone != before.timezone {
        row.schedule_cursor = spec.schedule.as_ref().map(|_| crate::ids::unix_now());
    }
    row.schedule = spec.schedule.clone();
    row.spec = spec.to_json();
    row.updated_at = crate::ids::now_rfc3339();
    let r = row.clone();
    state.store.write(move |c| crate::store::jobs::update(c, &r)).await?;
    let note =
        AuditNote { target: Some(row.id.clone()), project_id: Some(row.project_id.clone()), ..Default::default() };
    Ok((Extension(note), Json(view(&state, row).await?)))
}

/// Deletes a job: its runs going on are stopped (their containers removed), then
/// the job, its runs and their logs go.
#[utoipa::path(delete, operation_id = "jobs_delete", path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let job = job_row(&state, &id).await?;
    state.jobs.stop_runs(&id).await;
    let gone = id.clone();
    state.store.write(move |c| crate::store::jobs::delete(c, &gone)).await?;
    // A run the scheduler started meanwhile goes too.
    state.jobs.stop_runs(&id).await;
    let note = AuditNote { target: Some(job.id), project_id: Some(job.project_id), ..Default::default() };
    Ok((StatusCode::NO_CONTENT, Extension(note)))
}

/// Starts a run now, under the job's concurrency policy: 201 with the run,
/// `queued` (it starts at once) or `skipped` (`forbid`, and a run is going).
#[utoipa::path(post, operation_id = "jobs_run", path = "/v1/jobs/{id}/run", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 201, body = Run), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn run(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let job = job_row(&state, &id).await?;
    let run = state.jobs.start(&job, "manual", None, 1).await?;
    let note = AuditNote { target: Some(job.id.clone()), project_id: Some(job.project_id), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(Run::from(run))))
}

/// The job's runs, newest first; `?status=` narrows to one status.
#[utoipa::path(get, operation_id = "jobs_runs", path = "/v1/jobs/{id}/runs", tag = "jobs",
    params(("id" = String, Path, description = "job id"), ("limit" = Option<u32>, Query),
        ("cursor" = Option<String>, Query), ("status" = Option<String>, Query)),
    responses((status = 200, body = Paginated<Run>), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn runs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: ListParams,
) -> ApiResult<Json<Paginated<Run>>> {
    let status = params.filter("status").map(str::to_string);
    if let Some(s) = &status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(invalid(format!("status must be one of {}", STATUSES.join(", "))));
        }
    }
    let q = params.page_query();
    let page = state.store.read(move |c| crate::store::jobs::list_runs(c, &id, status.as_deref(), &q)).await?;
    let rows = page.rows.into_iter().map(Run::from).collect();
    Ok(Json(Paginated::from_page(crate::store::Page { rows, has_more: page.has_more }, |r| &r.id)))
}

/// A run's output (stdout and stderr, oldest first): live while it runs, kept
/// with the run after (its last 10000 lines).
#[utoipa::path(get, operation_id = "jobs_run_logs", path = "/v1/jobs/{id}/runs/{run_id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "job id"), ("run_id" = String, Path, description = "run id")),
    responses((status = 200, body = RunLogs), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn run_logs(
    State(state): State<AppState>,
    Path((id, run_id)): Path<(String, String)>,
) -> ApiResult<Json<RunLogs>> {
    let lookup = run_id.clone();
    let run = state
        .store
        .read(move |c| crate::store::jobs::get_run(c, &lookup))
        .await?
        .filter(|r| r.job_id == id)
        .ok_or_else(|| ApiError::not_found(format!("run {run_id} not found")))?;
    let lines = state.jobs.logs(&run).await?;
    Ok(Json(RunLogs {
        lines: lines
            .into_iter()
            .map(|l: RunLogLine| RunLogEntry { time: l.time, stream: l.stream, log: l.line })
            .collect(),
    }))
}
