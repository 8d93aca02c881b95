//! `/v2` errors: the distribution spec's codes and statuses, decided in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    BlobUnknown(String),
    #[error("{0}")]
    BlobUploadInvalid(String),
    #[error("{0}")]
    BlobUploadUnknown(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    ManifestBlobUnknown(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("{0}")]
    ManifestUnknown(String),
    #[error("{0}")]
    NameInvalid(String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("{0}")]
    SizeInvalid(String),
    /// 401 with this `WWW-Authenticate` challenge.
    #[error("authentication required")]
    Unauthorized { challenge: String },
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Unsupported(String),
    /// A chunk out of order or a range that cannot be served (416).
    #[error("{0}")]
    RangeInvalid(String),
    /// A manifest over the size cap (413).
    #[error("{0}")]
    TooLarge(String),
    #[error("too many requests")]
    TooManyRequests { retry_after: u64 },
    /// A request head over the listener's cap (431).
    #[error("{0}")]
    HeaderTooLarge(String),
    /// The request body arrived too slowly (408).
    #[error("{0}")]
    Timeout(String),

    /// The cause is logged; the client sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type RegistryResult<T> = Result<T, RegistryError>;

impl RegistryError {
    /// Status and OCI error code; exhaustive so a new variant cannot be forgotten.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RegistryError::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            RegistryError::BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            RegistryError::BlobUploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            RegistryError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            RegistryError::ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            RegistryError::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            RegistryError::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            RegistryError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            RegistryError::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            RegistryError::SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            RegistryError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            RegistryError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            RegistryError::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            RegistryError::RangeInvalid(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            RegistryError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            RegistryError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            RegistryError::HeaderTooLarge(_) => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "UNSUPPORTED"),
            RegistryError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "BLOB_UPLOAD_INVALID"),
            RegistryError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

impl From<crate::http::Rejection> for RegistryError {
    fn from(r: crate::http::Rejection) -> Self {
        use crate::http::Rejection;
        match r {
            Rejection::RateLimited { retry_after } => RegistryError::TooManyRequests { retry_after },
            Rejection::TooLarge { limit } => RegistryError::TooLarge(format!("the body is larger than {limit} bytes")),
            Rejection::HeadTooLarge => RegistryError::HeaderTooLarge(format!(
                "the request line and headers are larger than {} bytes",
                crate::http::serve::MAX_HEAD_BYTES
            )),
        }
    }
}

impl From<crate::http::body::BodyError> for RegistryError {
    fn from(e: crate::http::body::BodyError) -> Self {
        use crate::http::body::BodyError;
        match e {
            BodyError::TooLarge(_) => RegistryError::TooLarge(e.to_string()),
            BodyError::TimedOut => RegistryError::Timeout(e.to_string()),
            BodyError::Broken(_) => RegistryError::BlobUploadInvalid(e.to_string()),
        }
    }
}

impl From<crate::http::login::LoginError> for RegistryError {
    fn from(e: crate::http::login::LoginError) -> Self {
        use crate::http::login::LoginError;
        match e {
            LoginError::RateLimited(retry_after) => RegistryError::TooManyRequests { retry_after },
            LoginError::Busy => RegistryError::TooManyRequests { retry_after: 1 },
            LoginError::Store(e) => e.into(),
            LoginError::Internal(cause) => RegistryError::Internal(cause),
            // The caller turns these into a challenge.
            LoginError::TooLong | LoginError::Invalid => RegistryError::Denied(e.to_string()),
        }
    }
}

impl From<crate::error::PathError> for RegistryError {
    fn from(e: crate::error::PathError) -> Self {
        RegistryError::Internal(e.to_string())
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = match &self {
            RegistryError::Internal(cause) => {
                let request_id = crate::http::request_id();
                tracing::error!(request_id, error = %cause, "registry internal error");
                format!("internal error; quote request id {request_id} when reporting it")
            }
            other => other.to_string(),
        };
        let body = json!({"errors": [{"code": code, "message": message, "detail": null}]});
        let mut resp = (status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
        match &self {
            RegistryError::Unauthorized { challenge } => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    h.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            RegistryError::TooManyRequests { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        resp
    }
}
