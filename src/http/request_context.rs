//! The request id of the request being handled, for error envelopes and log spans.
//!
//! `X-Request-ID` is taken from the request or generated (a UUID) by the outer layers; this
//! middleware makes it available as a task-local while the request's handler runs, so
//! [`ApiError`](super::error::ApiError) can put it in `correlationId` without every handler
//! passing it along.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static CORRELATION_ID: String;
}

/// The current request's id, or a fresh UUID outside of a request.
pub fn correlation_id() -> String {
    CORRELATION_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string())
}

pub fn request_id_of(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_default()
}

pub async fn scope(request: Request, next: Next) -> Response {
    let id = request_id_of(&request);
    CORRELATION_ID.scope(id, next.run(request)).await
}
