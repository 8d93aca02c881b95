//! `/v1/deployments` (rollouts of an image to a service, cancel, rollback, the
//! deployment log over SSE) and `/v1/ingress/routes` (the live routing table).

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Extension, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AuditNote, Caller, JsonBody, ListParams, Paginated, parse_json, read_limited};
use super::middleware::require_role;
use super::services::service_row;
use crate::auth::Role;
use crate::engine::service::Source;
use crate::registry::names::{Digest, Reference};
use crate::store::deployments::{DeploymentRow, IN_FLIGHT};

/// A deployment as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    pub service_id: String,
    pub source: Source,
    /// `queued`, `building`, `pulling`, `starting`, `live`, `failed`, `cancelled` or `superseded`.
    pub status: String,
    /// The image manifest it runs, once known.
    pub image_digest: Option<String>,
    pub error: Option<String>,
    /// The deployment whose image this one redeploys (a rollback).
    pub rollback_of: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl From<DeploymentRow> for Deployment {
    fn from(d: DeploymentRow) -> Self {
        let source = serde_json::from_str(&d.source)
            .unwrap_or(Source::Image { repository: String::new(), reference: String::new() });
        Deployment {
            id: d.id,
            service_id: d.service_id,
            source,
            status: d.status,
            image_digest: d.image_digest,
            error: d.error,
            rollback_of: d.rollback_of,
            created_at: d.created_at,
            started_at: d.started_at,
            finished_at: d.finished_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    pub service_id: String,
    pub source: Source,
}

async fn deployment_row(state: &AppState, id: &str) -> ApiResult<DeploymentRow> {
    let lookup = id.to_string();
    state
        .store
        .read(move |c| crate::store::deployments::get(c, &lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("deployment {id} not found")))
}

/// The manifest digest `repository` holds under `reference` (a tag or a digest).
/// The repository must belong to `project_id`: one of another project is reported
/// exactly like one that does not exist.
pub(super) async fn resolve_image(
    state: &AppState,
    project_id: &str,
    repository: &str,
    reference: &str,
) -> ApiResult<String> {
    let unknown = || ApiError::not_found(format!("repository {repository} not found"));
    if !crate::registry::names::is_repository(repository) {
        return Err(ApiError::invalid(format!("{repository:?} is not a repository name (<project>/<name>)")));
    }
    let reference = if reference.starts_with("sha256:") {
        Reference::Digest(
            Digest::parse(reference).map_err(|_| ApiError::invalid(format!("{reference:?} is not a sha256 digest")))?,
        )
    } else if crate::registry::names::is_tag(reference) {
        Reference::Tag(reference.to_string())
    } else {
        return Err(ApiError::invalid(format!("{reference:?} is neither a tag nor a digest")));
    };
    let repo = state.registry.repo(repository).await.map_err(ApiError::internal)?.ok_or_else(unknown)?;
    if repo.project_id != project_id {
        return Err(unknown());
    }
    match state.registry.manifest_row(&repo, &reference).await {
        Ok(row) => Ok(row.digest),
        Err(crate::registry::error::RegistryError::ManifestUnknown(m)) => Err(ApiError::not_found(m)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

/// An external image reference and the login it would use, checked before a
/// deployment is created: a malformed reference is 400, an unknown login 404, a
/// login for another server or several candidates 422. The pull itself happens in
/// the rollout (`pulling`), and its errors go to the deployment's log.
pub(super) async fn check_external(
    state: &AppState,
    project_id: &str,
    image: &str,
    registry_id: Option<&str>,
) -> ApiResult<()> {
    use crate::secrets::credentials::{login_for_server, registry_login};
    let parsed = crate::images::remote::ImageRef::parse(image).map_err(|e| ApiError::invalid(e.to_string()))?;
    match registry_id {
        Some(id) => registry_login(&state.store, &state.sealer, project_id, id, &parsed.registry).await.map(drop)?,
        None => login_for_server(&state.store, &state.sealer, project_id, &parsed.registry).await.map(drop)?,
    }
    Ok(())
}

/// The parts of a build source checked before a deployment is created (422s): the
/// Dockerfile's path and the build args. A node without buildah takes the
/// deployment, which then fails at once with the message to install it.
fn check_build(
    dockerfile: Option<&str>,
    build_args: Option<&std::collections::BTreeMap<String, String>>,
) -> ApiResult<()> {
    if let Some(d) = dockerfile {
        crate::build::builder::check_dockerfile(d).map_err(ApiError::unprocessable)?;
    }
    if let Some(a) = build_args {
        crate::build::builder::check_build_args(a).map_err(ApiError::unprocessable)?;
    }
    Ok(())
}

/// Deploys an image to a service (Operator in the service's project). `Image` is a
/// repository of the service's project in the hosted registry, by tag or digest
/// (resolved now: the deployment runs that digest). `ExternalImage` is pulled
/// through the layer cache with the project's login for its server (or the one
/// `registry_id` names); its digest is recorded once pulled. `Upload` (an upload of the service) and
/// `Git` (an https or ssh repository at a ref) are built first (`building`) with the
/// Dockerfile at `dockerfile` (default `Dockerfile`) and `build_args`, into
/// `<project>/<service>:<deployment id>` of the hosted registry. One deployment per service at a time: 409 while one is in progress.
#[utoipa::path(post, operation_id = "deployments_create", path = "/v1/deployments", tag = "deployments",
    request_body = NewDeployment,
    responses((status = 201, body = Deployment), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<NewDeployment>,
) -> ApiResult<impl IntoResponse> {
    let hidden = || ApiError::not_found(format!("service {} not found", body.service_id));
    if !crate::ids::has_shape(&body.service_id, "svc") {
        return Err(hidden());
    }
    let svc = service_row(&state, &body.service_id).await.map_err(|_| hidden())?;
    require_role(&state, &p, &svc.project_id, Role::Operator, hidden()).await?;
    let digest = match &body.source {
        Source::Image { repository, reference } => {
            Some(resolve_image(&state, &svc.project_id, repository, reference).await?)
        }
        Source::ExternalImage { image, registry_id } => {
            check_external(&state, &svc.project_id, image, registry_id.as_deref()).await?;
            None
        }
        Source::Upload { upload_id, dockerfile, build_args } => {
            check_build(dockerfile.as_deref(), build_args.as_ref())?;
            state.uploads.check(&svc.id, upload_id).await.map_err(ApiError::unprocessable)?;
            None
        }
        Source::Git { repo_url, git_ref, dockerfile, build_args } => {
            check_build(dockerfile.as_deref(), build_args.as_ref())?;
            crate::build::git::check_url(repo_url).map_err(ApiError::unprocessable)?;
            crate::build::git::check_ref(git_ref).map_err(ApiError::unprocessable)?;
            None
        }
    };
    let row = state.deployer.deploy(&svc, body.source, digest, None).await?;
    let note =
        AuditNote { target: Some(row.id.clone()), project_id: Some(row.project_id.clone()), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(Deployment::from(row))))
}

/// One deployment.
#[utoipa::path(get, operation_id = "deployments_get", path = "/v1/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "deployment id")),
    responses((status = 200, body = Deployment), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Deployment>> {
    Ok(Json(deployment_row(&state, &id).await?.into()))
}

/// Cancels a deployment in progress: its new replicas are removed and the
/// previous deployment keeps serving. Answers once it has wound down. 409 when it
/// has already ended.
#[utoipa::path(post, operation_id = "deployments_cancel", path = "/v1/deployments/{id}/cancel", tag = "deployments",
    params(("id" = String, Path, description = "deployment id")),
    responses((status = 200, body = Deployment), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Deployment>> {
    Ok(Json(state.deployer.cancel(&id).await?.into()))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// When given, the service the caller means to roll back: a deployment of
    /// another service is refused (422).
    pub service_id: Option<String>,
}

/// Deploys again the exact image (digest) of an earlier deployment of the same
/// service: no registry lookup, no pull, no build. The deployment must have been
/// live once (`live` or `superseded`).
#[utoipa::path(post, operation_id = "deployments_rollback", path = "/v1/deployments/{id}/rollback", tag = "deployments",
    params(("id" = String, Path, description = "the deployment whose image to run again")),
    request_body(content = Option<RollbackRequest>),
    responses((status = 201, body = Deployment), (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rollback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<impl IntoResponse> {
    let bytes = read_limited(req.into_body(), state.config.api.body_limit_bytes).await?;
    let body: RollbackRequest =
        if bytes.iter().all(u8::is_ascii_whitespace) { RollbackRequest::default() } else { parse_json(&bytes)? };
    let target = deployment_row(&state, &id).await?;
    if let Some(s) = &body.service_id {
        if *s != target.service_id {
            return Err(ApiError::unprocessable(format!(
                "deployment {id} is a deployment of service {}, not of {s}; roll back to one of {s}'s own deployments",
                target.service_id
            )));
        }
    }
    let Some(digest) = target.image_digest.clone().filter(|_| matches!(target.status.as_str(), "live" | "superseded"))
    else {
        return Err(ApiError::unprocessable(format!(
            "deployment {id} is {} and never went live; roll back to a deployment that did",
            target.status
        )));
    };
    let svc = service_row(&state, &target.service_id).await?;
    let source: Source = serde_json::from_str(&target.source).map_err(ApiError::internal)?;
    let row = state.deployer.deploy(&svc, source, Some(digest), Some(target.id.clone())).await?;
    let note =
        AuditNote { target: Some(row.id.clone()), project_id: Some(row.project_id.clone()), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(Deployment::from(row))))
}

/// A response body fed by a task: one chunk per message, ending when the task
/// drops its sender; the task sees a send fail once the client has gone.
struct StreamBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A `text/event-stream` response and the sender its events go through.
pub fn sse_response() -> (tokio::sync::mpsc::Sender<Bytes>, Response) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut resp = Response::new(Body::new(StreamBody { rx }));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    (tx, resp)
}

const LOG_POLL: Duration = Duration::from_millis(300);

/// Between two polls of an SSE stream: a keep-alive comment, then `poll` or until
/// the daemon stops. False when the stream is over (the client left, or shutdown).
pub async fn sse_pause(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
    poll: Duration,
) -> bool {
    if tx.send(": keep-alive\n\n".into()).await.is_err() || *stopping.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(poll) => true,
        _ = stopping.changed() => false,
    }
}

/// The deployment's log as Server-Sent Events: each line an event whose `id:` is
/// its number, from the start or after `Last-Event-ID`; the stream ends with an
/// `end` event carrying the final status once the deployment has ended.
#[utoipa::path(get, operation_id = "deployments_logs_stream", path = "/v1/deployments/{id}/logs/stream", tag = "deployments",
    params(("id" = String, Path, description = "deployment id"), ("Last-Event-ID" = Option<String>, Header)),
    responses((status = 200, description = "text/event-stream of log lines"),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut after: i64 = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("Last-Event-ID must be the number of a log line"))?,
        None => 0,
    };
    deployment_row(&state, &id).await?;
    let (tx, response) = sse_response();
    let mut stopping = state.deployer.stopping();
    tokio::spawn(async move {
        loop {
            // Read the status first: lines written before it ended are all there
            // when the read after it finds them.
            let (i, lookup) = (id.clone(), id.clone());
            let Ok(Some(dep)) = state.store.read(move |c| crate::store::deployments::get(c, &lookup)).await else {
                return;
            };
            let Ok(lines) = state.store.read(move |c| crate::store::deployments::log_after(c, &i, after, 1000)).await
            else {
                return;
            };
            let more = lines.len() == 1000;
            for l in lines {
                after = l.seq;
                let data = serde_json::json!({"at": l.at, "line": l.line}).to_string();
                if tx.send(format!("id: {}\ndata: {data}\n\n", l.seq).into()).await.is_err() {
                    return;
                }
            }
            if !more && !IN_FLIGHT.contains(&dep.status.as_str()) {
                let data = serde_json::json!({"status": dep.status, "error": dep.error}).to_string();
                let _ = tx.send(format!("event: end\ndata: {data}\n\n").into()).await;
                return;
            }
            if !more && !sse_pause(&tx, &mut stopping, LOG_POLL).await {
                return;
            }
        }
    });
    Ok(response)
}

#[derive(Serialize, ToSchema)]
pub struct RouteReplica {
    /// The replica's id.
    pub id: String,
    /// `ip:port`.
    pub address: String,
}

#[derive(Serialize, ToSchema)]
pub struct IngressRoute {
    pub host: String,
    pub service_id: String,
    /// The service's name.
    pub service: String,
    pub project_id: String,
    /// `default` (`<service>.<project>.<apps_domain>`) or `domain` (a verified custom domain).
    pub kind: String,
    /// The healthy replicas requests go to; empty means 503.
    pub replicas: Vec<RouteReplica>,
    /// The host's certificate: `state` is `none` (ACME off or a name that gets none,
    /// and nothing installed), `pending`, `issued` or `error`, with the serial,
    /// validity and issuer of the one served and the last error with its backoff.
    pub certificate: crate::ingress::acme::CertificateStatus,
}

/// A host's certificate as the routes listing shows it: the ACME worker's record when
/// it has one, else what is installed (a certificate put in by other means), else
/// `pending` (ACME will ask for one) or `none`.
fn route_certificate(state: &AppState, host: &str) -> crate::ingress::acme::CertificateStatus {
    use crate::ingress::acme::{CertificateStatus, eligible};
    if let Some(s) = state.acme.status(host) {
        return s;
    }
    let installed = state.certs.lookup(host);
    let pending = state.config.acme.enabled && eligible(host);
    CertificateStatus {
        state: if installed.is_some() {
            "issued"
        } else if pending {
            "pending"
        } else {
            "none"
        }
        .into(),
        serial: None,
        not_before: installed.as_ref().map(|c| crate::ids::format_time(c.info.not_before)),
        not_after: installed.as_ref().map(|c| crate::ids::format_time(c.info.not_after)),
        issuer: installed.map(|c| c.info.issuer.clone()),
        error: None,
        failures: 0,
        next_attempt_at: None,
    }
}

/// The live routing table (host → service → healthy replicas, certificate state),
/// filtered to the projects you belong to, by host.
#[utoipa::path(get, operation_id = "ingress_routes", path = "/v1/ingress/routes", tag = "ingress",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query), ("project_id" = Option<String>, Query)),
    responses((status = 200, body = Paginated<IngressRoute>)),
    security(("bearer" = [])))]
pub async fn routes(
    State(state): State<AppState>,
    Caller(p): Caller,
    params: ListParams,
) -> ApiResult<Json<Paginated<IngressRoute>>> {
    let (uid, all) = (p.user.id.clone(), p.user.super_admin);
    let visible = state.store.read(move |c| crate::store::projects::visible_project_ids(c, &uid, all)).await?;
    let project = params.filter("project_id").map(str::to_string);
    let after = params.cursor.clone().unwrap_or_default();
    let names: std::collections::HashMap<String, (String, String)> = state
        .store
        .read(crate::store::domains::service_names)
        .await?
        .into_iter()
        .map(|(id, service, project)| (id, (service, project)))
        .collect();
    let mut rows: Vec<IngressRoute> = state
        .routes
        .snapshot()
        .into_iter()
        .filter(|r| visible.as_ref().is_none_or(|v| v.contains(&r.project_id)))
        .filter(|r| project.as_ref().is_none_or(|p| *p == r.project_id))
        .filter(|r| r.host > after)
        .take(params.limit as usize + 1)
        .map(|r| {
            let (service, default_host) = match names.get(&r.service_id) {
                Some((s, p)) => (s.clone(), state.deployer.default_hostname(s, p)),
                None => (String::new(), String::new()),
            };
            IngressRoute {
                host: r.host.clone(),
                service_id: r.service_id.clone(),
                service,
                project_id: r.project_id.clone(),
                kind: if r.host == default_host { "default" } else { "domain" }.into(),
                replicas: r
                    .backends
                    .iter()
                    .map(|b| RouteReplica { id: b.replica_id.clone(), address: b.addr.to_string() })
                    .collect(),
                certificate: route_certificate(&state, &r.host),
            }
        })
        .collect();
    let has_more = rows.len() > params.limit as usize;
    rows.truncate(params.limit as usize);
    Ok(Json(Paginated::from_page(crate::store::Page { rows, has_more }, |r| &r.host)))
}
