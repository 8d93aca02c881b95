//! `/v1/services`: a project's apps. Handlers validate and hand the work to
//! `engine::deploy::Deployer` (rollouts, scaling, start/stop/restart, logs).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Extension, IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::deployments::{Deployment, sse_pause, sse_response};
use super::error::{ApiError, ApiResult};
use super::extract::{AuditNote, Caller, JsonBody, ListParams, Paginated, form_pairs};
use super::middleware::require_role;
use crate::auth::Role;
use crate::engine::RestartPolicy;
use crate::engine::deploy::{DeployError, Instance, LogCursor, ServiceLogLine};
use crate::engine::service::{EnvVar, Follow, HealthCheck, Resources, ServiceSpec, Volume};
use crate::store::projects::Project;
use crate::store::services::ServiceRow;
use crate::validate;

pub const MAX_REPLICAS: i64 = 64;
const MAX_ENV: usize = 200;
const MAX_ENV_VALUE: usize = 32 * 1024;
const MAX_ARGS: usize = 256;
const MAX_ARG: usize = 4096;
const MAX_VOLUMES: usize = 16;
/// What a secret value reads as, to everyone.
pub const REDACTED: &str = "***";

/// `Some(None)` for an explicit `null` (clear the field), `None` when absent.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewService {
    pub project_id: String,
    /// A DNS label, unique in the project.
    pub name: String,
    /// The port the app listens on (1-65535).
    pub port: i64,
    /// 0-64, default 1.
    pub replicas: Option<i64>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Option<Vec<EnvVar>>,
    pub resources: Option<Resources>,
    pub health_check: Option<HealthCheck>,
    pub restart_policy: Option<RestartPolicy>,
    pub volumes: Option<Vec<Volume>>,
    pub follow: Option<Follow>,
}

/// Any subset of a service's settings; `null` clears `command`, `args`,
/// `health_check` and `follow`. A secret env value sent as `"***"` keeps the value
/// stored under that key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceChanges {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub replicas: Option<i64>,
    #[serde(default, deserialize_with = "nullable")]
    pub command: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    pub args: Option<Option<Vec<String>>>,
    pub env: Option<Vec<EnvVar>>,
    pub resources: Option<Resources>,
    #[serde(default, deserialize_with = "nullable")]
    pub health_check: Option<Option<HealthCheck>>,
    pub restart_policy: Option<RestartPolicy>,
    pub volumes: Option<Vec<Volume>>,
    #[serde(default, deserialize_with = "nullable")]
    pub follow: Option<Option<Follow>>,
}

/// A service as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct Service {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub port: u16,
    pub replicas: u32,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// Secret values read `"***"`.
    pub env: Vec<EnvVar>,
    pub resources: Resources,
    pub health_check: Option<HealthCheck>,
    pub restart_policy: RestartPolicy,
    pub volumes: Vec<Volume>,
    pub follow: Option<Follow>,
    /// `not_deployed`, `deploying`, `running`, `degraded` or `stopped`.
    pub status: String,
    pub current_deployment_id: Option<String>,
    /// `<service>.<project>.<apps_domain>`.
    pub default_hostname: String,
    /// Custom domains routed to the service.
    pub domains: Vec<String>,
    pub instances: Vec<Instance>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::NotFound(m) => ApiError::not_found(m),
            DeployError::Conflict(m) => ApiError::conflict(m),
            DeployError::Store(e) => e.into(),
            DeployError::Engine(e) => ApiError::internal(e),
        }
    }
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::invalid(m)
}

pub(super) fn check_argv(what: &str, argv: &[String]) -> ApiResult<()> {
    if argv.is_empty() || argv.len() > MAX_ARGS {
        return Err(invalid(format!("{what} must have 1 to {MAX_ARGS} entries")));
    }
    if argv.iter().any(|a| a.len() > MAX_ARG || a.contains('\0')) {
        return Err(invalid(format!("each {what} entry must be under {MAX_ARG} bytes with no NUL")));
    }
    Ok(())
}

fn check_health(h: &HealthCheck) -> ApiResult<()> {
    match (&h.path, &h.command) {
        (Some(_), Some(_)) => return Err(invalid("health_check takes a path or a command, not both")),
        (None, None) => return Err(invalid("health_check needs a path (HTTP GET) or a command")),
        (Some(p), None) => {
            let ok = p.starts_with('/') && p.len() <= 1024 && p.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(invalid(
                    "health_check.path must start with '/' and hold at most 1024 visible ASCII characters",
                ));
            }
        }
        (None, Some(c)) => check_argv("health_check.command", c)?,
    }
    if !(1..=300).contains(&h.interval_s) {
        return Err(invalid("health_check.interval_s must be between 1 and 300"));
    }
    if !(1..=60).contains(&h.timeout_s) {
        return Err(invalid("health_check.timeout_s must be between 1 and 60"));
    }
    if !(1..=20).contains(&h.failure_threshold) {
        return Err(invalid("health_check.failure_threshold must be between 1 and 20"));
    }
    Ok(())
}

fn check_volumes(volumes: &[Volume]) -> ApiResult<()> {
    if volumes.len() > MAX_VOLUMES {
        return Err(invalid(format!("a service has at most {MAX_VOLUMES} volumes")));
    }
    let mut names = std::collections::HashSet::new();
    let mut paths = std::collections::HashSet::new();
    for v in volumes {
        if !validate::is_dns_label(&v.name) {
            return Err(invalid(format!("volume name {:?} must be a DNS label", v.name)));
        }
        let p = v.path.trim_end_matches('/');
        let ok = v.path.starts_with('/')
            && !p.is_empty()
            && v.path.len() <= 1024
            && !v.path.contains('\0')
            && !v.path.split('/').any(|c| c == ".." || c == ".");
        if !ok {
            return Err(invalid(format!("volume path {:?} must be absolute, not '/', with no '.' or '..'", v.path)));
        }
        if !names.insert(v.name.clone()) || !paths.insert(p.to_string()) {
            return Err(invalid(format!("volume {} is named or mounted twice", v.name)));
        }
    }
    Ok(())
}

/// Environment names are well formed and given once.
pub(super) fn check_env_keys(env: &[EnvVar]) -> ApiResult<()> {
    let mut keys = std::collections::HashSet::new();
    for v in env {
        if !validate::is_env_key(&v.key) {
            return Err(invalid(format!("env name {:?} must match [A-Za-z_][A-Za-z0-9_]*", v.key)));
        }
        if !keys.insert(v.key.as_str()) {
            return Err(invalid(format!("env {} is given twice", v.key)));
        }
    }
    Ok(())
}

/// Limits in range, and `replicas` containers of them within the project's.
pub(super) fn check_resources(r: &Resources, project: &Project, replicas: u32) -> ApiResult<()> {
    if r.memory_mb.is_some_and(|m| !(4..=1 << 24).contains(&m)) {
        return Err(invalid("resources.memory_mb must be between 4 and 16777216"));
    }
    if r.cpus.is_some_and(|c| !c.is_finite() || !(0.01..=1024.0).contains(&c)) {
        return Err(invalid("resources.cpus must be between 0.01 and 1024"));
    }
    if r.pids.is_some_and(|p| !(1..=4_194_304).contains(&p)) {
        return Err(invalid("resources.pids must be between 1 and 4194304"));
    }
    let over = |what: &str, mine: String, theirs: String| {
        ApiError::unprocessable(format!(
            "resources.{what} {mine} is above the project's limit of {theirs} (each replica must fit in the project)"
        ))
    };
    let limits = &project.limits;
    if let (Some(m), Some(l)) = (r.memory_mb, limits.memory_mb) {
        if m > l {
            return Err(over("memory_mb", m.to_string(), l.to_string()));
        }
        if m.saturating_mul(u64::from(replicas)) > l {
            return Err(ApiError::unprocessable(format!(
                "{} replicas of {m} MB need more than the project's memory limit of {l} MB",
                replicas
            )));
        }
    }
    if let (Some(c), Some(l)) = (r.cpus, limits.cpus) {
        if c > l {
            return Err(over("cpus", c.to_string(), l.to_string()));
        }
    }
    if let (Some(p), Some(l)) = (r.pids, limits.pids) {
        if p > l {
            return Err(over("pids", p.to_string(), l.to_string()));
        }
    }
    Ok(())
}

/// Checks the settings on their own and against the project (its limits, its
/// repositories).
fn check_spec(spec: &ServiceSpec, project: &Project) -> ApiResult<()> {
    if let Some(c) = &spec.command {
        check_argv("command", c)?;
    }
    if let Some(a) = &spec.args {
        if a.len() > MAX_ARGS || a.iter().any(|x| x.len() > MAX_ARG || x.contains('\0')) {
            return Err(invalid(format!("args must have at most {MAX_ARGS} entries, each under {MAX_ARG} bytes")));
        }
    }
    if spec.env.len() > MAX_ENV {
        return Err(invalid(format!("env may hold at most {MAX_ENV} variables")));
    }
    check_env_keys(&spec.env)?;
    check_resources(&spec.resources, project, spec.replicas)?;
    if let Some(h) = &spec.health_check {
        check_health(h)?;
    }
    check_volumes(&spec.volumes)?;
    if let Some(f) = &spec.follow {
        if !crate::registry::names::is_repository(&f.repository) || !crate::registry::names::is_tag(&f.tag) {
            return Err(invalid("follow needs a repository (<project>/<name>) and a tag"));
        }
        if f.repository.split('/').next() != Some(project.name.as_str()) {
            return Err(ApiError::unprocessable(format!(
                "follow.repository must be a repository of project {} ({}/…)",
                project.name, project.name
            )));
        }
    }
    Ok(())
}

pub(super) fn check_name(name: &str) -> ApiResult<()> {
    if !validate::is_dns_label(name) {
        return Err(invalid("name must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"));
    }
    Ok(())
}

fn check_port(port: i64) -> ApiResult<u16> {
    u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| invalid("port must be between 1 and 65535"))
}

fn check_replicas(n: i64) -> ApiResult<u32> {
    if !(0..=MAX_REPLICAS).contains(&n) {
        return Err(invalid(format!("replicas must be between 0 and {MAX_REPLICAS}")));
    }
    Ok(n as u32)
}

/// Seals the secret values; a secret sent as `"***"` keeps what `before` holds
/// under its key (so a service read back and sent again keeps its secrets).
pub(super) fn seal_env(state: &AppState, env: Vec<EnvVar>, before: &[EnvVar]) -> ApiResult<Vec<EnvVar>> {
    let mut out = Vec::with_capacity(env.len());
    for mut v in env {
        if v.value.len() > MAX_ENV_VALUE || v.value.contains('\0') {
            return Err(invalid(format!("env {}: value must be under {MAX_ENV_VALUE} bytes with no NUL", v.key)));
        }
        if v.secret {
            let kept = before.iter().find(|b| b.secret && b.key == v.key && v.value == REDACTED);
            v.value = match kept {
                Some(b) => b.value.clone(),
                None => state.sealer.seal(v.value.as_bytes()).map_err(ApiError::internal)?,
            };
        }
        out.push(v);
    }
    Ok(out)
}

pub(super) async fn project(state: &AppState, id: &str) -> ApiResult<Project> {
    let lookup = id.to_string();
    state
        .store
        .read(move |c| crate::store::projects::get(c, &lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {id} not found")))
}

/// The service row, which the route's access check found.
pub async fn service_row(state: &AppState, id: &str) -> ApiResult<ServiceRow> {
    let lookup = id.to_string();
    state
        .store
        .read(move |c| crate::store::services::get(c, &lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("service {id} not found")))
}

/// What the API shows of a service.
pub async fn view(state: &AppState, row: ServiceRow) -> ApiResult<Service> {
    let spec = ServiceSpec::from_json(&row.spec).map_err(ApiError::internal)?;
    let pid = row.project_id.clone();
    let project_name =
        state.store.read(move |c| crate::store::services::project_name(c, &pid)).await?.unwrap_or_default();
    let instances = state.deployer.instances(&row).await?;
    let status = state.deployer.status(&row, &instances).await?;
    let env = spec.env.into_iter().map(|v| if v.secret { EnvVar { value: REDACTED.into(), ..v } } else { v }).collect();
    let domains = state.deployer.routed_domains(&row.id);
    Ok(Service {
        default_hostname: state.deployer.default_hostname(&row.name, &project_name),
        id: row.id,
        project_id: row.project_id,
        name: row.name,
        port: spec.port,
        replicas: spec.replicas,
        command: spec.command,
        args: spec.args,
        env,
        resources: spec.resources,
        health_check: spec.health_check,
        restart_policy: spec.restart_policy,
        volumes: spec.volumes,
        follow: spec.follow,
        status: status.into(),
        current_deployment_id: row.current_deployment_id,
        domains,
        instances,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// The services of the projects you belong to (every one for super-admins);
/// `?project_id=` narrows to one project.
#[utoipa::path(get, operation_id = "services_list", path = "/v1/services", tag = "services",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query), ("project_id" = Option<String>, Query)),
    responses((status = 200, body = Paginated<Service>)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    params: ListParams,
) -> ApiResult<Json<Paginated<Service>>> {
    let q = params.page_query();
    let project = params.filter("project_id").map(str::to_string);
    let (uid, all) = (p.user.id.clone(), p.user.super_admin);
    let page = state
        .store
        .read(move |c| {
            let visible = crate::store::projects::visible_project_ids(c, &uid, all)?;
            crate::store::services::list(c, visible.as_deref(), project.as_deref(), &q)
        })
        .await?;
    let has_more = page.has_more;
    let mut rows = Vec::with_capacity(page.rows.len());
    for row in page.rows {
        rows.push(view(&state, row).await?);
    }
    Ok(Json(Paginated::from_page(crate::store::Page { rows, has_more }, |s| &s.id)))
}

/// Creates a service (Operator in its project). Nothing runs until a deployment.
#[utoipa::path(post, operation_id = "services_create", path = "/v1/services", tag = "services", request_body = NewService,
    responses((status = 201, body = Service), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<NewService>,
) -> ApiResult<impl IntoResponse> {
    let hidden = ApiError::not_found(format!("project {} not found", body.project_id));
    require_role(&state, &p, &body.project_id, Role::Operator, hidden).await?;
    check_name(&body.name)?;
    let project = project(&state, &body.project_id).await?;
    let spec = ServiceSpec {
        port: check_port(body.port)?,
        replicas: check_replicas(body.replicas.unwrap_or(1))?,
        command: body.command,
        args: body.args,
        env: seal_env(&state, body.env.unwrap_or_default(), &[])?,
        resources: body.resources.unwrap_or_default(),
        health_check: body.health_check,
        restart_policy: body.restart_policy.unwrap_or_else(crate::engine::service::default_restart),
        volumes: body.volumes.unwrap_or_default(),
        follow: body.follow,
    };
    check_spec(&spec, &project)?;
    let now = crate::ids::now_rfc3339();
    let row = ServiceRow {
        id: crate::ids::new_id("svc"),
        project_id: project.id.clone(),
        name: body.name,
        spec: spec.to_json(),
        desired: "running".into(),
        current_deployment_id: None,
        follow: spec.follow.as_ref().map(|f| (f.repository.clone(), f.tag.clone())),
        created_at: now.clone(),
        updated_at: now,
    };
    let r = row.clone();
    state.store.write(move |c| crate::store::services::insert(c, &r)).await?;
    let note =
        AuditNote { target: Some(row.id.clone()), project_id: Some(row.project_id.clone()), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(view(&state, row).await?)))
}

/// One service with its instances.
#[utoipa::path(get, operation_id = "services_get", path = "/v1/services/{id}", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 200, body = Service), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Service>> {
    let row = service_row(&state, &id).await?;
    Ok(Json(view(&state, row).await?))
}

/// Changes a service. A new replica count applies at once; other changes to how
/// replicas run (command, env, limits, port, health check, volumes, restart
/// policy) restart the replicas one at a time, each new one healthy before an old
/// one goes.
#[utoipa::path(put, operation_id = "services_update", path = "/v1/services/{id}", tag = "services", request_body = ServiceChanges,
    params(("id" = String, Path, description = "service id")),
    responses((status = 200, body = Service), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ServiceChanges>,
) -> ApiResult<Json<Service>> {
    let mut row = service_row(&state, &id).await?;
    let before = ServiceSpec::from_json(&row.spec).map_err(ApiError::internal)?;
    let project = project(&state, &row.project_id).await?;
    let mut spec = before.clone();
    let old_name = row.name.clone();
    if let Some(n) = body.name {
        check_name(&n)?;
        row.name = n;
    }
    if let Some(p) = body.port {
        spec.port = check_port(p)?;
    }
    if let Some(n) = body.replicas {
        spec.replicas = check_replicas(n)?;
    }
    if let Some(c) = body.command {
        spec.command = c;
    }
    if let Some(a) = body.args {
        spec.args = a;
    }
    if let Some(e) = body.env {
        spec.env = seal_env(&state, e, &before.env)?;
    }
    if let Some(r) = body.resources {
        spec.resources = r;
    }
    if let Some(h) = body.health_check {
        spec.health_check = h;
    }
    if let Some(r) = body.restart_policy {
        spec.restart_policy = r;
    }
    if let Some(v) = body.volumes {
        spec.volumes = v;
    }
    if let Some(f) = body.follow {
        spec.follow = f;
    }
    check_spec(&spec, &project)?;
    let renamed = old_name != row.name;
    row.follow = spec.follow.as_ref().map(|f| (f.repository.clone(), f.tag.clone()));
    row.spec = spec.to_json();
    row.updated_at = crate::ids::now_rfc3339();
    let r = row.clone();
    state.store.write(move |c| crate::store::services::update(c, &r)).await?;
    let runs_differently = ServiceSpec { replicas: 0, follow: None, ..spec.clone() }
        != ServiceSpec { replicas: 0, follow: None, ..before.clone() };
    if runs_differently || renamed {
        state.deployer.restart(&id);
    } else if spec.replicas != before.replicas {
        state.deployer.reconcile_soon(&id);
    }
    Ok(Json(view(&state, row).await?))
}

/// Deletes a service: its replicas, routes, volumes, custom domains, deployments
/// and their logs. 409 while a deployment of it is in progress (cancel it first).
#[utoipa::path(delete, operation_id = "services_delete", path = "/v1/services/{id}", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 204), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let lookup = id.clone();
    let domains = state.store.read(move |c| crate::store::domains::of_service(c, &lookup)).await?;
    state.deployer.delete_service(&id).await?;
    state.access_log.forget(&id);
    for d in &domains {
        super::domains::forget(&state, d);
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct ServiceRequests {
    /// Newest first.
    pub data: Vec<crate::ingress::access_log::AccessEntry>,
}

/// The service's most recent requests through the ingress (newest first, `limit`
/// of them, 100 by default, at most 1000): method, path without its query, status,
/// duration, bytes, client, and the replica that answered. Kept in memory only.
#[utoipa::path(get, operation_id = "services_requests", path = "/v1/services/{id}/requests", tag = "services",
    params(("id" = String, Path, description = "service id"), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = ServiceRequests), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn requests(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<Json<ServiceRequests>> {
    let max = crate::ingress::access_log::PER_SERVICE;
    let mut limit = 100;
    for (k, v) in form_pairs(uri.query().unwrap_or("")) {
        match k.as_str() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=max).contains(l))
                    .ok_or_else(|| invalid(format!("limit must be an integer from 1 to {max}")))?;
            }
            other => return Err(invalid(format!("unknown query parameter {other:?}; requests take limit"))),
        }
    }
    Ok(Json(ServiceRequests { data: state.access_log.recent(&id, limit) }))
}

async fn set_desired(state: &AppState, id: &str, desired: &'static str) -> ApiResult<ServiceRow> {
    let (i, now) = (id.to_string(), crate::ids::now_rfc3339());
    state.store.write(move |c| crate::store::services::set_desired(c, &i, desired, &now)).await?;
    service_row(state, id).await
}

/// Starts the service's replicas again (of its current deployment); answers at
/// once, the replicas follow.
#[utoipa::path(post, operation_id = "services_start", path = "/v1/services/{id}/start", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 202, body = Service), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn start(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let row = set_desired(&state, &id, "running").await?;
    state.deployer.reconcile_soon(&id);
    Ok((StatusCode::ACCEPTED, Json(view(&state, row).await?)))
}

/// Stops and removes the service's replicas (its routes then answer 503); the
/// settings, volumes and current deployment stay for `start`.
#[utoipa::path(post, operation_id = "services_stop", path = "/v1/services/{id}/stop", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 202, body = Service), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stop(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let row = set_desired(&state, &id, "stopped").await?;
    state.deployer.reconcile_soon(&id);
    Ok((StatusCode::ACCEPTED, Json(view(&state, row).await?)))
}

/// Replaces the replicas one at a time with the same image and the current
/// settings; each new replica must pass its health check before an old one goes.
#[utoipa::path(post, operation_id = "services_restart", path = "/v1/services/{id}/restart", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 202, body = Service), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn restart(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let row = service_row(&state, &id).await?;
    state.deployer.restart(&id);
    Ok((StatusCode::ACCEPTED, Json(view(&state, row).await?)))
}

/// The service's deployments, newest first.
#[utoipa::path(get, operation_id = "services_deployments", path = "/v1/services/{id}/deployments", tag = "services",
    params(("id" = String, Path, description = "service id"), ("limit" = Option<u32>, Query),
        ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<Deployment>), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn deployments(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: ListParams,
) -> ApiResult<Json<Paginated<Deployment>>> {
    let q = params.page_query();
    let page = state.store.read(move |c| crate::store::deployments::list_for_service(c, &id, &q)).await?;
    let rows = page.rows.into_iter().map(Deployment::from).collect();
    Ok(Json(Paginated::from_page(crate::store::Page { rows, has_more: page.has_more }, |d| &d.id)))
}

#[derive(Serialize, ToSchema)]
pub struct ServiceLogs {
    /// Oldest first.
    pub lines: Vec<ServiceLogLine>,
}

/// Lines kept per replica when reading logs.
const LOG_WINDOW: usize = 10_000;

struct LogQuery {
    tail: usize,
    since: Option<String>,
}

fn log_query(query: Option<&str>) -> ApiResult<LogQuery> {
    let mut q = LogQuery { tail: 100, since: None };
    for (k, v) in form_pairs(query.unwrap_or("")) {
        match k.as_str() {
            "tail" => {
                q.tail = v
                    .parse()
                    .ok()
                    .filter(|t| *t <= LOG_WINDOW)
                    .ok_or_else(|| invalid(format!("tail must be an integer from 0 to {LOG_WINDOW}")))?;
            }
            "since" => {
                let t = crate::ids::parse_time(&v)
                    .ok_or_else(|| invalid("since must be an RFC 3339 time, e.g. 2026-01-02T03:04:05Z"))?;
                q.since = Some(crate::ids::format_time(t));
            }
            other => return Err(invalid(format!("unknown query parameter {other:?}; logs take tail and since"))),
        }
    }
    Ok(q)
}

/// The service's replicas' logs merged in time order: the last `tail` lines
/// (default 100), of those at or after `since` when given.
#[utoipa::path(get, operation_id = "services_logs", path = "/v1/services/{id}/logs", tag = "services",
    params(("id" = String, Path, description = "service id"), ("tail" = Option<u32>, Query),
        ("since" = Option<String>, Query)),
    responses((status = 200, body = ServiceLogs), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<Json<ServiceLogs>> {
    let q = log_query(uri.query())?;
    let mut lines = state.deployer.logs(&id, LOG_WINDOW).await?;
    if let Some(since) = &q.since {
        lines.retain(|l| l.time >= *since);
    }
    let skip = lines.len().saturating_sub(q.tail);
    Ok(Json(ServiceLogs { lines: lines.split_off(skip) }))
}

/// How long a second must be over before its lines are streamed: the shim stamps
/// a line with the second it writes it in, so a second is complete once it has
/// passed (with a margin for a slow write). Streaming only complete seconds keeps
/// the merged order fixed, so an event id is a place a client can resume from.
const SETTLE: Duration = Duration::from_secs(2);
const STREAM_POLL: Duration = Duration::from_millis(500);

/// Follows the service's merged logs as Server-Sent Events, one event per line
/// with its place as the `id:`; with `Last-Event-ID` it resumes right after that
/// line, else it starts with the last `tail` lines (default 100) or those since
/// `since`. Lines reach the stream about two seconds after they are written.
#[utoipa::path(get, operation_id = "services_logs_stream", path = "/v1/services/{id}/logs/stream", tag = "services",
    params(("id" = String, Path, description = "service id"), ("tail" = Option<u32>, Query),
        ("since" = Option<String>, Query), ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "text/event-stream of log lines"),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    let q = log_query(uri.query())?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(LogCursor::parse)
                .ok_or_else(|| invalid("Last-Event-ID is not an event id of this stream"))?,
        ),
        None => None,
    };
    let (tx, response) = sse_response();
    let mut stopping = state.deployer.stopping();
    tokio::spawn(async move {
        let mut cursor = resume;
        let mut first = cursor.is_none();
        loop {
            let settled = crate::ids::format_time(time::OffsetDateTime::now_utc() - SETTLE);
            let lines = match state.deployer.logs(&id, LOG_WINDOW).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(service = id, error = %e, "log stream stopped");
                    return;
                }
            };
            let mut fresh: Vec<ServiceLogLine> = lines
                .into_iter()
                .filter(|l| l.time <= settled)
                .filter(|l| match &cursor {
                    Some(c) => LogCursor::parse(&l.cursor).is_some_and(|lc| lc > *c),
                    None => q.since.as_ref().is_none_or(|s| l.time >= *s),
                })
                .collect();
            if first {
                let skip = if q.since.is_some() { 0 } else { fresh.len().saturating_sub(q.tail) };
                fresh.drain(..skip);
                first = false;
                if fresh.is_empty() {
                    // Nothing to replay: follow from the newest settled line.
                    cursor = state
                        .deployer
                        .logs(&id, LOG_WINDOW)
                        .await
                        .ok()
                        .and_then(|l| l.into_iter().rev().find(|l| l.time <= settled))
                        .and_then(|l| LogCursor::parse(&l.cursor));
                }
            }
            for l in fresh {
                cursor = LogCursor::parse(&l.cursor);
                let data = serde_json::to_string(&l).unwrap_or_default();
                if tx.send(format!("id: {}\ndata: {data}\n\n", l.cursor).into()).await.is_err() {
                    return;
                }
            }
            if !sse_pause(&tx, &mut stopping, STREAM_POLL).await {
                return;
            }
        }
    });
    Ok(response)
}

#[derive(Serialize, ToSchema)]
pub struct ReplicaMetrics {
    pub replica_id: String,
    pub deployment_id: Option<String>,
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub oom_kills: u64,
    pub net_rx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_bytes: u64,
    pub net_tx_packets: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ServiceMetrics {
    pub replicas: Vec<ReplicaMetrics>,
    /// What the ingress saw of the service's requests since the daemon started.
    pub requests: crate::ingress::access_log::RequestStats,
}

/// Usage of each replica: CPU, memory, pids, I/O (cgroup) and network (its namespace);
/// the requests the ingress routed to the service, by status class, with latency
/// percentiles over the most recent ones.
#[utoipa::path(get, operation_id = "services_metrics", path = "/v1/services/{id}/metrics", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 200, body = ServiceMetrics), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ServiceMetrics>> {
    let replicas = state
        .deployer
        .metrics(&id)
        .await?
        .into_iter()
        .map(|(replica_id, deployment_id, m)| ReplicaMetrics {
            replica_id,
            deployment_id,
            cpu_usage_ns: m.cpu_usage_ns,
            memory_bytes: m.memory_bytes,
            memory_limit_bytes: m.memory_limit_bytes,
            pids: m.pids,
            io_read_bytes: m.io_read_bytes,
            io_write_bytes: m.io_write_bytes,
            oom_kills: m.oom_kills,
            net_rx_bytes: m.net_rx_bytes,
            net_rx_packets: m.net_rx_packets,
            net_tx_bytes: m.net_tx_bytes,
            net_tx_packets: m.net_tx_packets,
        })
        .collect();
    let requests = state.access_log.stats(&id);
    Ok(Json(ServiceMetrics { replicas, requests }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        Project {
            id: "prj_1".into(),
            name: "alpha".into(),
            description: String::new(),
            env: Default::default(),
            limits: crate::store::projects::Limits { memory_mb: Some(512), cpus: Some(2.0), pids: None },
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn spec() -> ServiceSpec {
        ServiceSpec::from_json(r#"{"port":8080,"replicas":1}"#).unwrap()
    }

    #[test]
    fn settings_are_checked_against_themselves_and_the_project() {
        let p = project();
        assert!(check_spec(&spec(), &p).is_ok());
        let code = |s: &ServiceSpec| check_spec(s, &p).unwrap_err().kind;
        use super::super::error::Kind;
        let mut s = spec();
        s.resources.memory_mb = Some(1024);
        assert_eq!(code(&s), Kind::Unprocessable, "above the project's memory");
        s.resources.memory_mb = Some(256);
        s.replicas = 3;
        assert_eq!(code(&s), Kind::Unprocessable, "three replicas do not fit");
        let mut s = spec();
        s.resources.cpus = Some(4.0);
        assert_eq!(code(&s), Kind::Unprocessable);
        let mut s = spec();
        s.health_check =
            Some(HealthCheck { path: Some("/".into()), command: Some(vec!["true".into()]), ..Default::default() });
        assert_eq!(code(&s), Kind::InvalidInput, "path and command");
        s.health_check = Some(HealthCheck { path: Some("no-slash".into()), ..Default::default() });
        assert_eq!(code(&s), Kind::InvalidInput);
        s.health_check = Some(HealthCheck { path: Some("/h".into()), interval_s: 0, ..Default::default() });
        assert_eq!(code(&s), Kind::InvalidInput);
        let mut s = spec();
        s.volumes = vec![Volume { name: "data".into(), path: "/data/../etc".into() }];
        assert_eq!(code(&s), Kind::InvalidInput);
        s.volumes =
            vec![Volume { name: "a".into(), path: "/d".into() }, Volume { name: "b".into(), path: "/d/".into() }];
        assert_eq!(code(&s), Kind::InvalidInput, "one path twice");
        let mut s = spec();
        s.follow = Some(Follow { repository: "beta/web".into(), tag: "main".into() });
        assert_eq!(code(&s), Kind::Unprocessable, "another project's repository");
        s.follow = Some(Follow { repository: "alpha/web".into(), tag: "main".into() });
        assert!(check_spec(&s, &p).is_ok());
        let mut s = spec();
        s.env = vec![
            EnvVar { key: "A".into(), value: "1".into(), secret: false },
            EnvVar { key: "A".into(), value: "2".into(), secret: false },
        ];
        assert_eq!(code(&s), Kind::InvalidInput, "a key twice");
        assert!(check_port(0).is_err() && check_port(65536).is_err() && check_port(80).is_ok());
        assert!(check_replicas(65).is_err() && check_replicas(-1).is_err() && check_replicas(64).is_ok());
    }
}
