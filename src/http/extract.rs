//! The extractors handlers take their input with: axum's `Json`, `Form`, `Path` and `Query` with our
//! rejection, so a body, a path parameter or a query that does not parse is a 400 envelope
//! (`VALIDATION_FAILED`) like every other error. axum's own rejections are `text/plain`.
//!
//! `Path` and `Query` also refuse NUL characters (`%00`) in any parameter: a parameter names a
//! key, a version or a code, none of which can hold one, and PostgreSQL refuses NUL in text
//! outright (a lookup with one would be a 500 there and a 404 on SQLite).
//!
//! `tests/layering.rs` refuses axum's `Json`, `Path`, `Query` (and the other extractors whose
//! rejection is plain text) everywhere else in `src/http/`, so a handler cannot pick up axum's by
//! accident.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{bounded, ApiError};

/// A JSON body whose rejections use our envelope (400 with the parser's reason, 413 past the
/// body limit). Also the JSON response type of handlers.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A form body (`application/x-www-form-urlencoded`) whose rejections use our envelope.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Form), rejection(ApiError))]
pub struct Form<T>(pub T);

/// Path parameters, deserialized as axum's `Path` does; a parameter that does not parse (`abc`
/// for an id) or holds a NUL is a 400 envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::validation(format!(
                    "Invalid path parameter: {}",
                    bounded(&e.body_text())
                ))
            })?;
        if let Some((name, _)) = raw.iter().find(|(_, value)| value.contains('\0')) {
            return Err(ApiError::validation(format!(
                "Invalid path parameter: {} must not contain NUL characters",
                bounded(name)
            )));
        }
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// The query string, deserialized as axum's `Query` does; a value that does not parse, a
/// repeated parameter or a NUL is a 400 envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let nul = form_urlencoded::parse(query.as_bytes())
            .find(|(name, value)| name.contains('\0') || value.contains('\0'));
        if let Some((name, _)) = nul {
            return Err(ApiError::validation(format!(
                "Invalid query: {} must not contain NUL characters",
                bounded(&name)
            )));
        }
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}
