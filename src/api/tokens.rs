//! API tokens: minted by their owner, shown once, stored hashed, narrowed by scopes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Extension, IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AuditNote, Caller, JsonBody, ListParams, Paginated};
use crate::auth::{self, CredentialKind, Scope, scopes::WILDCARD};
use crate::store::auth::ApiToken;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    /// Scope names (see the ADR on scopes); omitted means `["*"]`.
    pub scopes: Option<Vec<String>>,
    /// RFC 3339; omitted means the token does not expire.
    pub expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    /// The secret token, shown only in this response.
    pub token: String,
    pub api_token: ApiToken,
}

/// Lists your API tokens (never their secrets).
#[utoipa::path(get, operation_id = "tokens_list", path = "/v1/api-tokens", tag = "auth",
    params(("limit" = Option<u32>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = Paginated<ApiToken>)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    params: ListParams,
) -> ApiResult<Json<Paginated<ApiToken>>> {
    let q = params.page_query();
    let uid = p.user.id.clone();
    let page = state.store.read(move |c| crate::store::auth::list_tokens(c, &uid, &q)).await?;
    Ok(Json(Paginated::from_page(page, |t| &t.id)))
}

/// Checks requested scope names and applies the caller's own ceiling.
fn resolve_scopes(requested: Option<Vec<String>>, caller: &Option<Vec<Scope>>) -> ApiResult<Vec<String>> {
    let requested = requested.unwrap_or_else(|| vec![WILDCARD.to_string()]);
    if requested.is_empty() {
        return Err(ApiError::invalid("scopes must not be empty; omit it for every scope"));
    }
    let mut out: Vec<String> = Vec::new();
    for name in requested {
        if name != WILDCARD && Scope::parse(&name).is_none() {
            let known: Vec<&str> = auth::scopes::ALL.iter().map(|(_, n)| *n).collect();
            return Err(ApiError::invalid(format!("unknown scope {name:?}; known scopes: *, {}", known.join(", "))));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.iter().any(|s| s == WILDCARD) {
        out = vec![WILDCARD.to_string()];
    }
    if let Some(ceiling) = caller {
        let within = out.iter().all(|n| Scope::parse(n).is_some_and(|s| ceiling.contains(&s)));
        if !within {
            return Err(ApiError::forbidden("a token cannot grant scopes it does not hold itself"));
        }
    }
    Ok(out)
}

/// Mints an API token for yourself.
#[utoipa::path(post, operation_id = "tokens_create", path = "/v1/api-tokens", tag = "auth", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    JsonBody(body): JsonBody<NewToken>,
) -> ApiResult<impl IntoResponse> {
    let name = body.name.trim().to_string();
    if name.is_empty() || !crate::validate::is_name_text(&name, 64) {
        return Err(ApiError::invalid(
            "name must be 1-64 printable characters on one line, without invisible or bidirectional control characters",
        ));
    }
    let scopes = resolve_scopes(body.scopes, &p.scopes)?;
    let requested = match body.expires_at {
        None => None,
        Some(s) => {
            let t = crate::ids::parse_time(&s)
                .ok_or_else(|| ApiError::invalid(format!("expires_at {s:?} is not an RFC 3339 time")))?;
            if t <= time::OffsetDateTime::now_utc() {
                return Err(ApiError::unprocessable("expires_at is in the past"));
            }
            Some(t)
        }
    };
    let expires_at = child_expiry(requested, p.token_id().and(p.expires_unix))?.map(crate::ids::format_time);
    let id = crate::ids::new_id("tok");
    let secret = auth::new_secret();
    let token = auth::format_token(&CredentialKind::ApiToken(id.clone()), &secret);
    let api_token = ApiToken {
        prefix: format!("{}{}_{}", auth::TOKEN_PREFIX, id, &secret[..4]),
        id,
        name,
        scopes,
        expires_at,
        last_used_at: None,
        created_at: crate::ids::now_rfc3339(),
    };
    let (t, uid, hash) = (api_token.clone(), p.user.id.clone(), auth::hash_secret(&secret));
    let parent = p.token_id().map(str::to_string);
    let max = state.config.api.max_tokens_per_user;
    state
        .store
        .write(move |c| {
            if crate::store::auth::count_tokens(c, &uid)? >= max {
                return Err(crate::store::StoreError::Conflict(format!(
                    "you hold {max} API tokens, the most one user may; revoke one first"
                )));
            }
            crate::store::auth::insert_token(c, &uid, &t, &hash, parent.as_deref())
        })
        .await?;
    let note = AuditNote { target: Some(api_token.id.clone()), ..Default::default() };
    Ok((StatusCode::CREATED, Extension(note), Json(CreatedToken { token, api_token })))
}

/// The expiry of a token minted by a credential expiring at `parent` (Unix
/// seconds; `None` for a session or a token that never expires): a token never
/// outlives the token that minted it, and inherits its expiry when none is asked for.
fn child_expiry(
    requested: Option<time::OffsetDateTime>,
    parent: Option<i64>,
) -> ApiResult<Option<time::OffsetDateTime>> {
    let Some(parent) = parent else { return Ok(requested) };
    let ceiling = time::OffsetDateTime::from_unix_timestamp(parent).map_err(ApiError::internal)?;
    match requested {
        None => Ok(Some(ceiling)),
        Some(t) if t <= ceiling => Ok(Some(t)),
        Some(_) => Err(ApiError::unprocessable(format!(
            "a token cannot outlive the token that mints it; this one expires at {}",
            crate::ids::format_time(ceiling)
        ))),
    }
}

/// Revokes one of your API tokens, effective at once, and every token minted with it.
#[utoipa::path(delete, operation_id = "tokens_revoke", path = "/v1/api-tokens/{token_id}", tag = "auth",
    params(("token_id" = String, Path)),
    responses((status = 204), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    Caller(p): Caller,
    Path(token_id): Path<String>,
) -> ApiResult<StatusCode> {
    let uid = p.user.id.clone();
    let tid = token_id.clone();
    if !state.store.write(move |c| crate::store::auth::delete_token(c, &uid, &tid)).await? {
        return Err(ApiError::not_found(format!("api token {token_id} not found")));
    }
    state.gate.auth.invalidate_all();
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_and_capped() {
        assert_eq!(resolve_scopes(None, &None).unwrap(), vec!["*"]);
        assert!(resolve_scopes(Some(vec![]), &None).is_err());
        assert!(resolve_scopes(Some(vec!["root".into()]), &None).is_err());
        let got = resolve_scopes(Some(vec!["projects:read".into(), "projects:read".into()]), &None).unwrap();
        assert_eq!(got, vec!["projects:read"]);
        let ceiling = Some(vec![Scope::ProjectsRead]);
        assert!(resolve_scopes(Some(vec!["projects:read".into()]), &ceiling).is_ok());
        assert!(resolve_scopes(Some(vec!["projects:write".into()]), &ceiling).is_err());
        assert!(resolve_scopes(None, &ceiling).is_err());
    }

    #[test]
    fn a_child_token_never_outlives_its_parent() {
        let now = time::OffsetDateTime::now_utc();
        let parent = (now + time::Duration::hours(1)).unix_timestamp();
        let inherited = child_expiry(None, Some(parent)).unwrap().unwrap();
        assert_eq!(inherited.unix_timestamp(), parent);
        let sooner = now + time::Duration::minutes(10);
        assert_eq!(child_expiry(Some(sooner), Some(parent)).unwrap(), Some(sooner));
        let later = now + time::Duration::hours(2);
        assert_eq!(child_expiry(Some(later), Some(parent)).unwrap_err().kind, super::super::error::Kind::Unprocessable);
        // Minted from a session or a token without expiry: as asked.
        assert_eq!(child_expiry(None, None).unwrap(), None);
        assert_eq!(child_expiry(Some(later), None).unwrap(), Some(later));
    }
}
