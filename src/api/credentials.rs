//! A project's registry credentials and Git deploy key (adr/018).
//!
//! Write-only: a password or private key goes in, is sealed with the host key
//! before it reaches the store, and never comes out through the API, not even
//! masked. Responses show what identifies a credential (name, server, username;
//! a key's type and fingerprint) and whether this host's key can open it
//! (`usable`). Viewers may list them; only Admins change them (the route table).
//! Audit entries name the credential by id and name.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Extension, IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{AuditNote, JsonBody, ListParams, Paginated};
use crate::secrets::Zeroizing;
use crate::secrets::credentials::{self as creds, CredentialError};
use crate::store::credentials::{self as sql, GitKeyRow, RegistryRow, RegistryUpdate};

/// A login to an external registry, as shown: never the password.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegistryCredential {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// The registry host, normalized: Docker Hub is always `docker.io`.
    pub server: String,
    pub username: String,
    /// False when the password was sealed under another host key (the state was
    /// restored without `secrets/host.key`, or the key was replaced): set it again.
    pub usable: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl RegistryCredential {
    fn shown(row: RegistryRow, key_id: &str) -> Self {
        RegistryCredential {
            usable: row.sealed_by == key_id,
            id: row.id,
            project_id: row.project_id,
            name: row.name,
            server: row.server,
            username: row.username,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRegistryCredential {
    /// A DNS label, unique in the project.
    pub name: String,
    /// `host[:port]`: `docker.io`, `ghcr.io`, `127.0.0.1:5000`; no scheme or path.
    pub server: String,
    pub username: String,
    /// Sealed at rest; never returned.
    #[schema(format = Password, write_only)]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentialChanges {
    pub name: Option<String>,
    /// A new server needs the password again: a stored password is only ever sent
    /// to the server it was entered for.
    pub server: Option<String>,
    pub username: Option<String>,
    #[schema(format = Password, write_only)]
    pub password: Option<String>,
}

/// A project's Git deploy key, as shown: never the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct GitCredential {
    pub project_id: String,
    pub name: String,
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, …
    pub key_type: String,
    /// The public key's `SHA256:` fingerprint, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub known_hosts: Option<String>,
    /// False when the key was sealed under another host key: set it again.
    pub usable: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl GitCredential {
    fn shown(row: GitKeyRow, key_id: &str) -> Self {
        GitCredential {
            usable: row.sealed_by == key_id,
            project_id: row.project_id,
            name: row.name,
            key_type: row.key_type,
            fingerprint: row.fingerprint,
            known_hosts: row.known_hosts,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGitCredential {
    /// A label; `deploy-key` when left out.
    pub name: Option<String>,
    /// An unencrypted SSH private key: OpenSSH format, or PEM (RSA, EC, PKCS#8).
    #[schema(format = Password, write_only)]
    pub private_key: String,
    /// Host keys to trust for the Git server, in OpenSSH `known_hosts` format.
    pub known_hosts: Option<String>,
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::NotFound(_) => ApiError::not_found(e.to_string()),
            // The state of the credential (sealed under another key) stands in the way;
            // the message names it and says how to repair it.
            CredentialError::Unreadable { .. } => ApiError::conflict(e.to_string()),
            CredentialError::Ambiguous { .. } | CredentialError::OtherServer { .. } => {
                ApiError::unprocessable(e.to_string())
            }
            CredentialError::Invalid(m) => ApiError::invalid(m),
            CredentialError::Store(e) => e.into(),
        }
    }
}

fn not_found(registry_id: &str) -> ApiError {
    ApiError::not_found(format!("registry credential {registry_id} not found"))
}

/// Seals a secret with the host key: `(sealed, key_id)`.
fn seal(state: &AppState, plaintext: &[u8]) -> ApiResult<(String, String)> {
    let sealed = state.sealer.seal(plaintext).map_err(ApiError::internal)?;
    Ok((sealed, state.sealer.key_id().to_string()))
}

fn audit_note(project_id: &str, id: &str, name: &str) -> AuditNote {
    AuditNote { target: Some(format!("{id} ({name})")), project_id: Some(project_id.to_string()), ..Default::default() }
}

/// The project's registry credentials.
#[utoipa::path(get, operation_id = "registries_list", path = "/v1/projects/{id}/registries", tag = "credentials",
    params(("id" = String, Path, description = "project id"), ("limit" = Option<u32>, Query),
        ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<RegistryCredential>), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_registries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: ListParams,
) -> ApiResult<Json<Paginated<RegistryCredential>>> {
    let q = params.page_query();
    let page = state.store.read(move |c| sql::list_registries(c, &id, &q)).await?;
    let key_id = state.sealer.key_id();
    let page = crate::store::Page {
        rows: page.rows.into_iter().map(|r| RegistryCredential::shown(r, key_id)).collect(),
        has_more: page.has_more,
    };
    Ok(Json(Paginated::from_page(page, |r| &r.id)))
}

/// Stores a login to an external registry; the password is sealed and never shown again.
#[utoipa::path(post, operation_id = "registries_create", path = "/v1/projects/{id}/registries", tag = "credentials",
    request_body = NewRegistryCredential,
    params(("id" = String, Path, description = "project id")),
    responses((status = 201, body = RegistryCredential), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_registry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewRegistryCredential>,
) -> ApiResult<impl IntoResponse> {
    let password = Zeroizing::new(body.password);
    creds::check_name(&body.name).map_err(ApiError::invalid)?;
    let server = creds::normalize_server(&body.server).map_err(ApiError::invalid)?;
    creds::check_username(&body.username).map_err(ApiError::invalid)?;
    creds::check_password(&password).map_err(ApiError::invalid)?;
    let (password_sealed, sealed_by) = seal(&state, password.as_bytes())?;
    let now = crate::ids::now_rfc3339();
    let row = RegistryRow {
        id: crate::ids::new_id("reg"),
        project_id: id.clone(),
        name: body.name,
        server,
        username: body.username,
        password_sealed,
        sealed_by,
        created_at: now.clone(),
        updated_at: now,
    };
    let stored = row.clone();
    state.store.write(move |c| sql::insert_registry(c, &stored)).await?;
    let note = audit_note(&id, &row.id, &row.name);
    Ok((StatusCode::CREATED, Extension(note), Json(RegistryCredential::shown(row, state.sealer.key_id()))))
}

/// One registry credential of the project.
#[utoipa::path(get, operation_id = "registries_get", path = "/v1/projects/{id}/registries/{registry_id}",
    tag = "credentials",
    params(("id" = String, Path, description = "project id"), ("registry_id" = String, Path)),
    responses((status = 200, body = RegistryCredential), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_registry(
    State(state): State<AppState>,
    Path((id, registry_id)): Path<(String, String)>,
) -> ApiResult<Json<RegistryCredential>> {
    if !crate::ids::has_shape(&registry_id, "reg") {
        return Err(not_found(&registry_id));
    }
    let rid = registry_id.clone();
    let row =
        state.store.read(move |c| sql::get_registry(c, &id, &rid)).await?.ok_or_else(|| not_found(&registry_id))?;
    Ok(Json(RegistryCredential::shown(row, state.sealer.key_id())))
}

/// Changes any of name, server, username and password.
#[utoipa::path(put, operation_id = "registries_update", path = "/v1/projects/{id}/registries/{registry_id}",
    tag = "credentials", request_body = RegistryCredentialChanges,
    params(("id" = String, Path, description = "project id"), ("registry_id" = String, Path)),
    responses((status = 200, body = RegistryCredential), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_registry(
    State(state): State<AppState>,
    Path((id, registry_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<RegistryCredentialChanges>,
) -> ApiResult<impl IntoResponse> {
    if !crate::ids::has_shape(&registry_id, "reg") {
        return Err(not_found(&registry_id));
    }
    let password = body.password.map(Zeroizing::new);
    if let Some(n) = &body.name {
        creds::check_name(n).map_err(ApiError::invalid)?;
    }
    let server = body.server.as_deref().map(creds::normalize_server).transpose().map_err(ApiError::invalid)?;
    if let Some(u) = &body.username {
        creds::check_username(u).map_err(ApiError::invalid)?;
    }
    if let Some(p) = &password {
        creds::check_password(p).map_err(ApiError::invalid)?;
    }
    let new_password = password.is_some();
    let update = RegistryUpdate {
        name: body.name,
        server,
        username: body.username,
        password: password.map(|p| seal(&state, p.as_bytes())).transpose()?,
        updated_at: crate::ids::now_rfc3339(),
    };
    let (pid, rid) = (id.clone(), registry_id.clone());
    let row = state
        .store
        .write(move |c| {
            sql::update_registry(c, &pid, &rid, update, |old, new| {
                if old.server != new.server && !new_password {
                    return Err(format!(
                        "changing server from {} to {} needs the password too: a stored password is only \
                         ever sent to the server it was entered for",
                        old.server, new.server
                    ));
                }
                Ok(())
            })
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound(_) => not_found(&registry_id),
            e => e.into(),
        })?
        .map_err(ApiError::unprocessable)?;
    let note = audit_note(&id, &row.id, &row.name);
    Ok((Extension(note), Json(RegistryCredential::shown(row, state.sealer.key_id()))))
}

/// Deletes a registry credential.
#[utoipa::path(delete, operation_id = "registries_delete", path = "/v1/projects/{id}/registries/{registry_id}",
    tag = "credentials",
    params(("id" = String, Path, description = "project id"), ("registry_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_registry(
    State(state): State<AppState>,
    Path((id, registry_id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    if !crate::ids::has_shape(&registry_id, "reg") {
        return Err(not_found(&registry_id));
    }
    let (pid, rid) = (id.clone(), registry_id.clone());
    let row = state
        .store
        .write(move |c| sql::delete_registry(c, &pid, &rid))
        .await?
        .ok_or_else(|| not_found(&registry_id))?;
    Ok((StatusCode::NO_CONTENT, Extension(audit_note(&id, &row.id, &row.name))))
}

fn no_git_key(project_id: &str) -> ApiError {
    ApiError::not_found(format!("project {project_id} has no git deploy key"))
}

/// Whether the project has a Git deploy key, and which (its fingerprint, never the key).
#[utoipa::path(get, operation_id = "git_credential_get", path = "/v1/projects/{id}/credentials/git",
    tag = "credentials",
    params(("id" = String, Path, description = "project id")),
    responses((status = 200, body = GitCredential), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_git(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<GitCredential>> {
    let pid = id.clone();
    let row = state.store.read(move |c| sql::get_git(c, &pid)).await?.ok_or_else(|| no_git_key(&id))?;
    Ok(Json(GitCredential::shown(row, state.sealer.key_id())))
}

/// Sets the project's Git deploy key (201), or replaces the one it has (200).
#[utoipa::path(post, operation_id = "git_credential_set", path = "/v1/projects/{id}/credentials/git",
    tag = "credentials", request_body = NewGitCredential,
    params(("id" = String, Path, description = "project id")),
    responses((status = 201, body = GitCredential), (status = 200, body = GitCredential),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_git(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewGitCredential>,
) -> ApiResult<impl IntoResponse> {
    let private_key = Zeroizing::new(body.private_key);
    let name = body.name.unwrap_or_else(|| "deploy-key".to_string());
    creds::check_key_name(&name).map_err(ApiError::invalid)?;
    let info = crate::secrets::ssh::inspect(&private_key).map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Some(k) = &body.known_hosts {
        creds::check_known_hosts(k).map_err(ApiError::invalid)?;
    }
    let (private_key_sealed, sealed_by) = seal(&state, private_key.as_bytes())?;
    let now = crate::ids::now_rfc3339();
    let row = GitKeyRow {
        project_id: id.clone(),
        name,
        key_type: info.key_type,
        fingerprint: info.fingerprint,
        private_key_sealed,
        known_hosts: body.known_hosts,
        sealed_by,
        created_at: now.clone(),
        updated_at: now,
    };
    let (row, replaced) = state.store.write(move |c| sql::put_git(c, &row)).await?;
    let status = if replaced { StatusCode::OK } else { StatusCode::CREATED };
    let note = AuditNote {
        target: Some(format!("git deploy key {}", row.fingerprint)),
        project_id: Some(id),
        ..Default::default()
    };
    Ok((status, Extension(note), Json(GitCredential::shown(row, state.sealer.key_id()))))
}

/// Removes the project's Git deploy key.
#[utoipa::path(delete, operation_id = "git_credential_delete", path = "/v1/projects/{id}/credentials/git",
    tag = "credentials",
    params(("id" = String, Path, description = "project id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_git(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let pid = id.clone();
    let row = state.store.write(move |c| sql::delete_git(c, &pid)).await?.ok_or_else(|| no_git_key(&id))?;
    let note = AuditNote {
        target: Some(format!("git deploy key {}", row.fingerprint)),
        project_id: Some(id),
        ..Default::default()
    };
    Ok((StatusCode::NO_CONTENT, Extension(note)))
}
