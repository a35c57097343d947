//! The API's one error type and its envelope (SPEC §5):
//! `{"error": "<message>", "code": "<STABLE_CODE>", "details": {...}, "correlationId": "<id>"}`.
//!
//! Internal failures (database, storage) are logged once here with their cause chain and answered
//! with a generic message; "the store or the database is down" is always 503, never 400 or 404.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::db::DbError;
use crate::storage::StorageError;

use super::extract::Json;
use super::request_context;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation {
        message: String,
        details: Option<Value>,
    },
    #[error("{0}")]
    AuthenticationRequired(String),
    #[error("{0}")]
    AuthorizationFailed(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    RecordExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A failure throttle is closed for this caller (429 with `Retry-After`).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{message}")]
    Unavailable {
        message: String,
        details: Option<Value>,
    },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            details: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            message: message.into(),
            details: None,
        }
    }

    /// Attaches machine-readable details (only kept by variants that carry them).
    pub fn with_details(self, details: Value) -> Self {
        match self {
            ApiError::Validation { message, .. } => ApiError::Validation {
                message,
                details: Some(details),
            },
            ApiError::Unavailable { message, .. } => ApiError::Unavailable {
                message,
                details: Some(details),
            },
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::BAD_REQUEST,
            ApiError::AuthenticationRequired(_) => StatusCode::UNAUTHORIZED,
            ApiError::AuthorizationFailed(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RecordExists(_) | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "VALIDATION_FAILED",
            ApiError::AuthenticationRequired(_) => "AUTHENTICATION_REQUIRED",
            ApiError::AuthorizationFailed(_) => "AUTHORIZATION_FAILED",
            ApiError::NotFound(_) => "RECORD_NOT_FOUND",
            ApiError::RecordExists(_) => "RECORD_EXISTS",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::PayloadTooLarge(_) => "PAYLOAD_TOO_LARGE",
            ApiError::RequestTimeout(_) => "REQUEST_TIMEOUT",
            ApiError::RangeNotSatisfiable(_) => "RANGE_NOT_SATISFIABLE",
            ApiError::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            ApiError::TooManyRequests { .. } => "TOO_MANY_REQUESTS",
            ApiError::Unavailable { .. } => "SERVICE_UNAVAILABLE",
            ApiError::Internal(_) => "INTERNAL",
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A message for humans that names the thing, e.g. "DeviceModel 7 was not found".
    pub error: String,
    /// A stable code: VALIDATION_FAILED, AUTHENTICATION_REQUIRED, AUTHORIZATION_FAILED,
    /// RECORD_NOT_FOUND, RECORD_EXISTS, CONFLICT, PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT,
    /// TOO_MANY_REQUESTS, SERVICE_UNAVAILABLE, INTERNAL.
    pub code: String,
    #[schema(value_type = Object)]
    pub details: Value,
    /// The request's X-Request-ID, or the id generated for it.
    #[serde(rename = "correlationId")]
    pub correlation_id: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let details = match &self {
            ApiError::Validation {
                details: Some(d), ..
            }
            | ApiError::Unavailable {
                details: Some(d), ..
            } => d.clone(),
            _ => Value::Object(Default::default()),
        };
        let body = ErrorBody {
            error: self.to_string(),
            code: self.code().to_string(),
            details,
            correlation_id: request_context::correlation_id(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(*retry_after),
            );
        }
        response
    }
}

/// Logs an internal failure with its whole cause chain.
fn log_internal(what: &str, error: &dyn std::error::Error) {
    let chain = crate::storage::display_chain(error);
    tracing::error!(error = %chain, "{what}");
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            log_internal("database_unavailable", &e);
            ApiError::unavailable("The database is unavailable; try again later")
        } else {
            log_internal("database_error", &e);
            ApiError::Internal("Internal error".into())
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match &e {
            StorageError::Unavailable { .. } => {
                log_internal("object_store_unavailable", &e);
                ApiError::unavailable("The object store is unavailable; try again later")
            }
            StorageError::InvalidKey(k) => ApiError::validation(k.to_string()),
            StorageError::RangeNotSatisfiable { .. } => {
                ApiError::RangeNotSatisfiable("Requested range not satisfiable".into())
            }
            StorageError::Unlistable { .. } => {
                log_internal("object_store_unlistable", &e);
                ApiError::Internal(
                    "Internal error: the bucket holds a key that cannot be listed".into(),
                )
            }
            // A missing object behind an existing row breaks golden rule 3: not the caller's fault.
            StorageError::NotFound { .. } => {
                log_internal("object_missing", &e);
                ApiError::Internal("Internal error: a stored object is missing".into())
            }
        }
    }
}

/// The most characters of a request's own text (a path, a method, a parser's complaint quoting
/// the input) an error message repeats: enough to recognise it, never the 60 KB a client sent.
pub const MAX_ECHOED_CHARS: usize = 200;

/// `text`, cut to [`MAX_ECHOED_CHARS`] characters (with `…` when cut), for messages and logs that
/// repeat what a request said.
pub fn bounded(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

// The rejections of axum's extractors, as `crate::http::extract` reports them.

/// A body that stopped arriving in time (the server's idle timeout or whole-body deadline), as
/// an extractor's rejection wraps it: 408, as for the upload routes, not 400.
fn body_timed_out(rejection: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    super::body::is_timeout_source(rejection).then(|| {
        ApiError::RequestTimeout(
            "The request body did not arrive in time; the request was abandoned".into(),
        )
    })
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge("Request body is too large".into());
        }
        if let Some(timed_out) = body_timed_out(&rejection) {
            return timed_out;
        }
        ApiError::validation(format!(
            "Invalid JSON body: {}",
            bounded(&rejection.body_text())
        ))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        ApiError::validation(format!(
            "Invalid path parameter: {}",
            bounded(&rejection.body_text())
        ))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::validation(format!(
            "Invalid query: {}",
            bounded(&rejection.body_text())
        ))
    }
}

impl From<axum::extract::rejection::FormRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::FormRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge("Request body is too large".into());
        }
        if let Some(timed_out) = body_timed_out(&rejection) {
            return timed_out;
        }
        ApiError::validation(format!("Invalid form: {}", bounded(&rejection.body_text())))
    }
}

impl From<crate::storage::InvalidKey> for ApiError {
    fn from(e: crate::storage::InvalidKey) -> Self {
        ApiError::validation(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_text_is_cut_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(MAX_ECHOED_CHARS + 50);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_ECHOED_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(
            bounded(&"x".repeat(MAX_ECHOED_CHARS)).len(),
            MAX_ECHOED_CHARS
        );
    }
}
