//! The request id of the request being handled, for error envelopes and log spans.
//!
//! `X-Request-ID` is taken from the request or generated (a UUID) by the outer layers; a client's
//! id is taken only when it is short and printable ([`acceptable_request_id`]), because it is
//! echoed on the response and written into every log line of the request. [`scope`] makes it
//! available as a task-local while the request's handler runs, so
//! [`ApiError`](super::error::ApiError) can put it in `correlationId` without every handler
//! passing it along.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client-chosen request id kept: a UUID is 36 characters, a trace id 32, a W3C
/// `traceparent` 55.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Whether a client's `X-Request-ID` is kept: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII
/// characters (no space, control or non-ASCII byte).
pub fn acceptable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
}

/// Removes an `X-Request-ID` that is not [acceptable](acceptable_request_id) (or given more than
/// once), so that the next layer generates one, which is then echoed and logged instead.
pub async fn drop_unacceptable_request_id(mut request: Request, next: Next) -> Response {
    let mut ids = request.headers().get_all(REQUEST_ID_HEADER).iter();
    let acceptable = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(id), None) => acceptable_request_id(id),
        (Some(_), Some(_)) => false,
    };
    if !acceptable {
        request.headers_mut().remove(REQUEST_ID_HEADER);
    }
    next.run(request).await
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_visible_ascii_ids_are_acceptable_and_nothing_else() {
        let ok = |v: &[u8]| acceptable_request_id(&HeaderValue::from_bytes(v).unwrap());
        assert!(ok(b"req-123"));
        assert!(ok(b"0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(ok("!".repeat(MAX_REQUEST_ID_LEN).as_bytes()));
        assert!(!ok("a".repeat(MAX_REQUEST_ID_LEN + 1).as_bytes()));
        assert!(!ok(b""));
        assert!(!ok(b"with space"));
        assert!(!ok(b"tab\there"));
        assert!(!ok("caf\u{e9}".as_bytes()));
    }
}
