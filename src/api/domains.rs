//! `/v1/services/{id}/domains`: custom domains attached to a service, and the
//! ownership check that lets one be routed (adr/027). The rules and the check live
//! in `engine::domains`; the rows in `store::domains`; the routes are the
//! deployer's (`Deployer::reroute`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Extension, IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AuditNote, JsonBody, ListParams, Paginated};
use super::services::service_row;
use crate::engine::domains::{Reserved, check_hostname, check_ownership, new_token};
use crate::ingress::challenge::BERTH_PREFIX;
use crate::store::domains::{self as sql, DomainRow};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    /// A DNS name of at least two labels that is not an IP address, `localhost`,
    /// under the apps domain, or the control domain; unique on the node.
    pub hostname: String,
}

#[derive(Serialize, ToSchema)]
pub struct DomainCertificate {
    /// RFC 3339.
    pub not_after: String,
    pub issuer: String,
}

/// A custom domain as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct Domain {
    pub id: String,
    pub service_id: String,
    pub hostname: String,
    /// `pending` (not checked yet), `verified` (routed), `issued` (verified, with a
    /// certificate of its own installed) or `error` (the last check failed; see `error`).
    pub status: String,
    /// What the check expects at `verification_url`.
    pub verification_token: String,
    /// Why the last check failed.
    pub error: Option<String>,
    /// The certificate installed for the hostname, if any.
    pub certificate: Option<DomainCertificate>,
    /// What `POST …/verify` fetches. berth's ingress answers it itself once the
    /// hostname's DNS points at this host.
    pub verification_url: String,
    /// What to do next, in a sentence.
    pub instructions: String,
    pub created_at: String,
    pub verified_at: Option<String>,
}

fn view(state: &AppState, d: DomainRow) -> Domain {
    let port = state.config.ingress.challenge_port;
    let authority = if port == 80 { d.hostname.clone() } else { format!("{}:{port}", d.hostname) };
    let verification_url = format!("http://{authority}{BERTH_PREFIX}{}", d.verification_token);
    let installed = state.certs.get(&d.hostname);
    let status = match (d.status.as_str(), &installed) {
        ("verified", Some(_)) => "issued".to_string(),
        (s, _) => s.to_string(),
    };
    let instructions = match status.as_str() {
        "verified" | "issued" => format!("{} is verified and routed to the service", d.hostname),
        _ => format!(
            "point {} at this host (an A/AAAA or CNAME record), then POST /v1/services/{}/domains/{}/verify: berth \
             fetches {verification_url} and expects the token",
            d.hostname, d.service_id, d.id
        ),
    };
    Domain {
        certificate: installed.map(|c| DomainCertificate {
            not_after: crate::ids::format_time(c.info.not_after),
            issuer: c.info.issuer.clone(),
        }),
        id: d.id,
        service_id: d.service_id,
        hostname: d.hostname,
        status,
        verification_token: d.verification_token,
        error: d.error,
        verification_url,
        instructions,
        created_at: d.created_at,
        verified_at: d.verified_at,
    }
}

async fn domain_row(state: &AppState, service_id: &str, id: &str) -> ApiResult<DomainRow> {
    let (s, i) = (service_id.to_string(), id.to_string());
    state
        .store
        .read(move |c| sql::get(c, &s, &i))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("domain {id} not found")))
}

/// The service's custom domains.
#[utoipa::path(get, operation_id = "domains_list", path = "/v1/services/{id}/domains", tag = "domains",
    params(("id" = String, Path, description = "service id"), ("limit" = Option<u32>, Query),
        ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<Domain>), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: ListParams,
) -> ApiResult<Json<Paginated<Domain>>> {
    let q = params.page_query();
    let page = state.store.read(move |c| sql::list(c, &id, &q)).await?;
    let rows = page.rows.into_iter().map(|d| view(&state, d)).collect();
    Ok(Json(Paginated::from_page(crate::store::Page { rows, has_more: page.has_more }, |d| &d.id)))
}

/// Attaches a hostname to the service as `pending`, with a fresh token that berth's
/// ingress answers at once on `/.well-known/berth-challenge/<token>` for that host.
/// The domain is routed once `POST …/verify` finds the token there. A hostname
/// belongs to one service on the node: 409 when any service of any project has it.
#[utoipa::path(post, operation_id = "domains_create", path = "/v1/services/{id}/domains", tag = "domains",
    request_body = NewDomain, params(("id" = String, Path, description = "service id")),
    responses((status = 201, body = Domain), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewDomain>,
) -> ApiResult<impl IntoResponse> {
    let ingress = &state.config.ingress;
    let reserved = Reserved { apps_domain: &ingress.apps_domain, control_domain: ingress.control_domain.as_deref() };
    let hostname = check_hostname(&body.hostname, &reserved).map_err(ApiError::invalid)?;
    let svc = service_row(&state, &id).await?;
    let row = DomainRow {
        id: crate::ids::new_id("dom"),
        service_id: svc.id,
        project_id: svc.project_id,
        hostname,
        status: "pending".into(),
        verification_token: new_token(),
        error: None,
        created_at: crate::ids::now_rfc3339(),
        verified_at: None,
    };
    let r = row.clone();
    state.store.write(move |c| sql::insert(c, &r)).await?;
    state.challenges.put_berth(&row.hostname, &row.verification_token);
    let note = AuditNote {
        target: Some(format!("{} ({})", row.id, row.hostname)),
        project_id: Some(row.project_id.clone()),
        ..Default::default()
    };
    Ok((StatusCode::CREATED, Extension(note), Json(view(&state, row))))
}

/// One custom domain of the service.
#[utoipa::path(get, operation_id = "domains_get", path = "/v1/services/{id}/domains/{domain_id}", tag = "domains",
    params(("id" = String, Path, description = "service id"), ("domain_id" = String, Path)),
    responses((status = 200, body = Domain), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Path((id, domain_id)): Path<(String, String)>,
) -> ApiResult<Json<Domain>> {
    let row = domain_row(&state, &id, &domain_id).await?;
    Ok(Json(view(&state, row)))
}

/// Detaches the domain: it stops routing at once (the ingress answers 404 for it),
/// its challenge answer and its certificate go.
#[utoipa::path(delete, operation_id = "domains_delete", path = "/v1/services/{id}/domains/{domain_id}", tag = "domains",
    params(("id" = String, Path, description = "service id"), ("domain_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Path((id, domain_id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let (s, i) = (id.clone(), domain_id.clone());
    let gone = state.store.write(move |c| sql::delete(c, &s, &i)).await?;
    forget(&state, &gone);
    state.deployer.reroute(&id).await?;
    let note = AuditNote {
        target: Some(format!("{} ({})", gone.id, gone.hostname)),
        project_id: Some(gone.project_id),
        ..Default::default()
    };
    Ok((StatusCode::NO_CONTENT, Extension(note)))
}

/// Checks that the hostname reaches this host: fetches
/// `http://<hostname>/.well-known/berth-challenge/<token>` (resolving the name
/// through `[dns] overrides` first) and expects the token. One request, no
/// redirects, at most 4 KiB read, 10 s in all. Answers 200 either way: `status`
/// says `verified` (now routed) or `error`, with `error` saying what happened.
/// A verified domain may be checked again; a failed re-check stops its routing.
#[utoipa::path(post, operation_id = "domains_verify", path = "/v1/services/{id}/domains/{domain_id}/verify", tag = "domains",
    params(("id" = String, Path, description = "service id"), ("domain_id" = String, Path)),
    responses((status = 200, body = Domain), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    Path((id, domain_id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let row = domain_row(&state, &id, &domain_id).await?;
    let resolver = crate::outbound::Resolver::new(std::sync::Arc::new(state.config.dns.overrides.clone()));
    let port = state.config.ingress.challenge_port;
    let outcome = check_ownership(&resolver, &row.hostname, port, &row.verification_token).await;
    if let Err(why) = &outcome {
        tracing::info!(domain = row.id, hostname = row.hostname, error = why, "domain verification failed");
    }
    let (s, i, now) = (id.clone(), domain_id.clone(), crate::ids::now_rfc3339());
    let checked = state
        .store
        .write(move |c| sql::record_check(c, &s, &i, outcome.as_ref().map(|_| ()).map_err(String::as_str), &now))
        .await?;
    state.deployer.reroute(&id).await?;
    let note = AuditNote {
        target: Some(format!("{} ({}): {}", checked.id, checked.hostname, checked.status)),
        project_id: Some(checked.project_id.clone()),
        ..Default::default()
    };
    Ok((Extension(note), Json(view(&state, checked))))
}

/// Forgets what memory holds for a domain that is gone: its challenge answer and
/// its certificate.
pub fn forget(state: &AppState, d: &DomainRow) {
    state.challenges.remove_berth(&d.verification_token);
    state.certs.remove(&d.hostname);
}

/// At start-up, before the listeners accept: every stored domain's challenge
/// answer. (Their routes come back with the deployer's recovery.)
pub async fn restore(state: &AppState) -> Result<usize, crate::store::StoreError> {
    let all = state.store.read(sql::all).await?;
    for d in &all {
        state.challenges.put_berth(&d.hostname, &d.verification_token);
    }
    Ok(all.len())
}
