//! The `/v1` error envelope and the one place that maps errors to HTTP statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::store::StoreError;

pub use crate::http::REQUEST_ID;

/// Why a request failed; decides status and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidInput,
    MissingToken,
    InvalidToken,
    InvalidCredentials,
    TokenExpired,
    Forbidden,
    InsufficientScope,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    HeaderTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    Unprocessable,
    RateLimited,
    Internal,
    Unavailable,
}

impl Kind {
    /// Status and machine-readable code; exhaustive so a new kind cannot be forgotten.
    pub fn status_and_code(self) -> (StatusCode, &'static str) {
        match self {
            Kind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_input"),
            Kind::MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            Kind::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Kind::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Kind::TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired"),
            Kind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Kind::InsufficientScope => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Kind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Kind::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Kind::Conflict => (StatusCode::CONFLICT, "conflict"),
            Kind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Kind::HeaderTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "header_too_large"),
            Kind::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Kind::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Kind::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Kind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

/// An error answered to a `/v1` client.
#[derive(Debug)]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
    /// Seconds a client should wait (429).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), retry_after: None }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidInput, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unprocessable, message)
    }
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            kind: Kind::RateLimited,
            message: format!("too many requests; retry in {retry_after}s"),
            retry_after: Some(retry_after),
        }
    }
    /// A 500 whose cause is logged, never shown.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        tracing::error!(request_id, error = %cause, "internal error");
        Self::new(Kind::Internal, "internal error; quote the request id when reporting it")
    }
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `not_found`.
    pub code: String,
    pub message: String,
    pub request_id: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.kind.status_and_code();
        let request_id = REQUEST_ID.try_with(Clone::clone).unwrap_or_default();
        let body = ErrorBody { error: ErrorDetail { code: code.into(), message: self.message, request_id } };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Closed => ApiError::new(Kind::Unavailable, "the server is shutting down"),
            e @ (StoreError::Sqlite(_)
            | StoreError::Open { .. }
            | StoreError::Corrupt(_)
            | StoreError::NewerSchema { .. }) => ApiError::internal(e),
        }
    }
}

impl From<crate::http::body::BodyError> for ApiError {
    fn from(e: crate::http::body::BodyError) -> Self {
        use crate::http::body::BodyError;
        match e {
            BodyError::TooLarge(_) => ApiError::new(Kind::PayloadTooLarge, e.to_string()),
            BodyError::TimedOut => ApiError::new(Kind::RequestTimeout, e.to_string()),
            BodyError::Broken(_) => ApiError::invalid(e.to_string()),
        }
    }
}

impl From<crate::http::login::LoginError> for ApiError {
    fn from(e: crate::http::login::LoginError) -> Self {
        use crate::http::login::LoginError;
        match e {
            LoginError::RateLimited(retry) => ApiError::rate_limited(retry),
            LoginError::TooLong => ApiError::invalid(e.to_string()),
            LoginError::Invalid => ApiError::new(Kind::InvalidCredentials, e.to_string()),
            // Too many logins at once for the hashing pool: a rate limit of the node's.
            LoginError::Busy => ApiError { retry_after: Some(1), ..ApiError::new(Kind::RateLimited, e.to_string()) },
            LoginError::Store(e) => e.into(),
            LoginError::Internal(cause) => ApiError::internal(cause),
        }
    }
}

impl From<crate::http::Rejection> for ApiError {
    fn from(r: crate::http::Rejection) -> Self {
        use crate::http::Rejection;
        match r {
            Rejection::RateLimited { retry_after } => ApiError::rate_limited(retry_after),
            Rejection::TooLarge { limit } => {
                ApiError::new(Kind::PayloadTooLarge, format!("request body is larger than the {limit}-byte limit"))
            }
            Rejection::HeadTooLarge => ApiError::new(
                Kind::HeaderTooLarge,
                format!("the request line and headers are larger than {} bytes", crate::http::serve::MAX_HEAD_BYTES),
            ),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Malformed => ApiError::new(Kind::InvalidToken, "the bearer token is not a berth token"),
            AuthError::Invalid => ApiError::new(Kind::InvalidToken, "the bearer token is not valid or was revoked"),
            AuthError::Expired => ApiError::new(Kind::TokenExpired, "the bearer token has expired"),
            AuthError::Store(e) => e.into(),
        }
    }
}
