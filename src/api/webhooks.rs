//! Push webhooks (adr/031): a service's Git settings and secret
//! (`POST|GET|DELETE /v1/services/{id}/webhook`), and the public receiver
//! `POST /v1/webhooks/git/{service_id}`, where the signature is the credential.
//!
//! The receiver answers 401 alike for a bad or missing signature, an unknown
//! service and a service without a webhook, so it tells nobody which services
//! exist; a verified push to the configured branch starts a `Git` deployment of
//! the pushed commit; other branches, tags and events are answered 200 `ignored`;
//! a delivery seen before is 409 and starts nothing.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, body::Bytes};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, Kind};
use super::extract::{AuditNote, JsonBody, read_limited};
use super::services::service_row;
use crate::build::git::{check_ref, check_url};
use crate::build::webhook::{self, Event};
use crate::engine::service::Source;
use crate::store::webhooks::{self as sql, WebhookRow};

/// How long a delivery is remembered for replay checks.
const DELIVERY_MEMORY: time::Duration = time::Duration::days(30);

/// A service's webhook settings (never its secret).
#[derive(Serialize, ToSchema)]
pub struct Webhook {
    pub service_id: String,
    /// The repository a push deploys from (https or ssh; ssh uses the project's
    /// deploy key).
    pub repo_url: String,
    /// Pushes to this branch deploy; others are ignored.
    pub branch: String,
    /// The Dockerfile's path in the repository (`Dockerfile` when unset).
    pub dockerfile: Option<String>,
    /// Where the Git host delivers pushes (a path on the API listener).
    pub url: String,
    /// False when the secret was sealed under another host key: enable it again.
    pub usable: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl Webhook {
    fn shown(row: WebhookRow, key_id: &str) -> Webhook {
        Webhook {
            url: format!("/v1/webhooks/git/{}", row.service_id),
            usable: row.sealed_by == key_id,
            service_id: row.service_id,
            repo_url: row.repo_url,
            branch: row.branch,
            dockerfile: row.dockerfile,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    pub repo_url: String,
    /// A branch name (`main`, or `refs/heads/main`).
    pub branch: String,
    pub dockerfile: Option<String>,
}

/// The webhook with its secret, shown once.
#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    /// The secret to give the Git host: GitHub's webhook "Secret" (it signs each
    /// delivery with it) or GitLab's "Secret token". Never shown again.
    pub secret: String,
    pub webhook: Webhook,
}

/// What the receiver did with a delivery.
#[derive(Serialize, ToSchema)]
pub struct WebhookOutcome {
    /// `deploying`, `ignored` or `pong`.
    pub status: String,
    pub reason: Option<String>,
    pub deployment_id: Option<String>,
    pub commit: Option<String>,
}

fn check_dockerfile(path: &str) -> ApiResult<()> {
    let ok = !path.is_empty()
        && path.len() <= 255
        && !path.starts_with('/')
        && !path.chars().any(char::is_control)
        && path.split('/').all(|c| !c.is_empty() && c != "..");
    if ok { Ok(()) } else { Err(ApiError::invalid("dockerfile must be a relative path inside the repository")) }
}

/// Enables the service's webhook (or replaces its settings), with a new secret
/// that is returned this once and kept sealed with the host key.
#[utoipa::path(post, operation_id = "webhook_enable", path = "/v1/services/{id}/webhook", tag = "services",
    request_body = NewWebhook,
    params(("id" = String, Path, description = "service id")),
    responses((status = 201, body = WebhookCreated), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn enable(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewWebhook>,
) -> ApiResult<impl IntoResponse> {
    let svc = service_row(&state, &id).await?;
    check_url(&body.repo_url).map_err(ApiError::unprocessable)?;
    let branch = body.branch.strip_prefix("refs/heads/").unwrap_or(&body.branch).to_string();
    check_ref(&branch).map_err(ApiError::unprocessable)?;
    if branch.starts_with("refs/") {
        return Err(ApiError::unprocessable("branch must name a branch"));
    }
    if let Some(d) = &body.dockerfile {
        check_dockerfile(d)?;
    }
    let secret = webhook::new_secret();
    let sealed = state.sealer.seal(secret.as_bytes()).map_err(ApiError::internal)?;
    let now = crate::ids::now_rfc3339();
    let row = WebhookRow {
        service_id: svc.id.clone(),
        repo_url: body.repo_url,
        branch,
        dockerfile: body.dockerfile,
        secret_sealed: sealed,
        sealed_by: state.sealer.key_id().to_string(),
        created_at: now.clone(),
        updated_at: now,
    };
    let (row, _) = state.store.write(move |c| sql::put(c, &row)).await?;
    let note = AuditNote {
        target: Some(format!("webhook of {}", svc.id)),
        project_id: Some(svc.project_id.clone()),
        ..Default::default()
    };
    let shown = WebhookCreated { secret, webhook: Webhook::shown(row, state.sealer.key_id()) };
    Ok((StatusCode::CREATED, Extension(note), Json(shown)))
}

/// The service's webhook settings (never the secret); 404 when it has none.
#[utoipa::path(get, operation_id = "webhook_get", path = "/v1/services/{id}/webhook", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 200, body = Webhook), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Webhook>> {
    let sid = id.clone();
    let row = state.store.read(move |c| sql::get(c, &sid)).await?.ok_or_else(|| no_webhook(&id))?;
    Ok(Json(Webhook::shown(row, state.sealer.key_id())))
}

/// Turns the service's webhook off; deliveries are refused from then on.
#[utoipa::path(delete, operation_id = "webhook_disable", path = "/v1/services/{id}/webhook", tag = "services",
    params(("id" = String, Path, description = "service id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn disable(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let svc = service_row(&state, &id).await?;
    let sid = id.clone();
    if !state.store.write(move |c| sql::delete(c, &sid)).await? {
        return Err(no_webhook(&id));
    }
    let note =
        AuditNote { target: Some(format!("webhook of {id}")), project_id: Some(svc.project_id), ..Default::default() };
    Ok((StatusCode::NO_CONTENT, Extension(note)))
}

fn no_webhook(id: &str) -> ApiError {
    ApiError::not_found(format!("service {id} has no webhook"))
}

/// The one answer for every delivery that does not prove itself.
fn unverified() -> ApiError {
    ApiError::new(Kind::InvalidCredentials, "webhook signature or token does not verify")
}

/// Receives a push from a Git host. No bearer token: the delivery's signature
/// (GitHub: `X-Hub-Signature-256`) or token (GitLab: `X-Gitlab-Token`) is the
/// credential.
#[utoipa::path(post, operation_id = "webhook_receive", path = "/v1/webhooks/git/{service_id}", tag = "services",
    params(("service_id" = String, Path, description = "service id"),
        ("X-Hub-Signature-256" = Option<String>, Header, description = "GitHub: sha256=<hex HMAC-SHA256 of the body>"),
        ("X-GitHub-Event" = Option<String>, Header, description = "GitHub: push, ping, …"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "GitHub: the delivery id"),
        ("X-Gitlab-Token" = Option<String>, Header, description = "GitLab: the secret token"),
        ("X-Gitlab-Event" = Option<String>, Header, description = "GitLab: Push Hook, …"),
        ("X-Gitlab-Event-UUID" = Option<String>, Header, description = "GitLab: the delivery id")),
    request_body(content = Object, description = "the Git host's push event, as it sent it"),
    responses((status = 202, body = WebhookOutcome), (status = 200, body = WebhookOutcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    Path(service_id): Path<String>,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let headers: HeaderMap = parts.headers;
    let body: Bytes = read_limited(body, state.config.api.body_limit_bytes).await?;
    let found = if crate::ids::has_shape(&service_id, "svc") {
        let (sid, sid2) = (service_id.clone(), service_id.clone());
        let hook = state.store.read(move |c| sql::get(c, &sid)).await?;
        let svc = state.store.read(move |c| crate::store::services::get(c, &sid2)).await?;
        hook.zip(svc)
    } else {
        None
    };
    let Some(style) = webhook::style(&headers) else {
        return Err(unverified());
    };
    let Some((hook, svc)) = found else {
        // The same work as a real check, so the time taken does not tell either.
        let _ = webhook::verify(style, &headers, &body, b"no webhook here");
        return Err(unverified());
    };
    let secret = state.sealer.open(&hook.secret_sealed).map_err(|_| {
        tracing::warn!(service_id = %hook.service_id, "webhook secret sealed under another host key: enable it again");
        unverified()
    })?;
    if !webhook::verify(style, &headers, &body, &secret) {
        return Err(unverified());
    }
    let answer = |status: &str, reason: Option<String>| {
        let outcome = WebhookOutcome { status: status.into(), reason, deployment_id: None, commit: None };
        (StatusCode::OK, Json(outcome)).into_response()
    };
    let (git_ref, after) = match webhook::event(style, &headers, &body).map_err(ApiError::invalid)? {
        Event::Ping => return Ok(answer("pong", None)),
        Event::Other(name) => return Ok(answer("ignored", Some(format!("event {name:?} does not deploy")))),
        Event::Push { deleted: true, git_ref, .. } => {
            return Ok(answer("ignored", Some(format!("{git_ref} was deleted"))));
        }
        Event::Push { git_ref, after, .. } => (git_ref, after),
    };
    let wanted = format!("refs/heads/{}", hook.branch);
    if git_ref != wanted {
        return Ok(answer("ignored", Some(format!("a push to {git_ref}, not {wanted}"))));
    }
    if !(after.len() == 40 || after.len() == 64) || !after.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid("push event: after is not a commit id"));
    }
    let keys = webhook::delivery_keys(style, &headers, &body);
    let now = time::OffsetDateTime::now_utc();
    let (at, forget) = (crate::ids::format_time(now), crate::ids::format_time(now - DELIVERY_MEMORY));
    let (sid, k) = (svc.id.clone(), keys.clone());
    if !state.store.write(move |c| sql::claim(c, &sid, &k, &at, &forget)).await? {
        return Err(ApiError::conflict("this delivery was received before; nothing was started"));
    }
    let source = Source::Git {
        repo_url: hook.repo_url.clone(),
        git_ref: after.clone(),
        dockerfile: hook.dockerfile,
        build_args: None,
    };
    let dep = match state.deployer.deploy(&svc, source, None, None).await {
        Ok(d) => d,
        Err(e) => {
            let (sid, k) = (svc.id.clone(), keys);
            let _ = state.store.write(move |c| sql::release(c, &sid, &k)).await;
            return Err(e.into());
        }
    };
    let note = AuditNote {
        target: Some(dep.id.clone()),
        project_id: Some(svc.project_id.clone()),
        actor: Some((format!("webhook:{}", svc.id), format!("git push to {} ({after})", hook.branch))),
    };
    let outcome =
        WebhookOutcome { status: "deploying".into(), reason: None, deployment_id: Some(dep.id), commit: Some(after) };
    Ok((StatusCode::ACCEPTED, Extension(note), Json(outcome)).into_response())
}
