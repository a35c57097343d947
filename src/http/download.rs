//! Streaming an object to an HTTP client: the one implementation behind every download route
//! (firmware artifacts, OTA images, core dumps).
//!
//! The body is streamed from the object store chunk by chunk, so memory stays bounded whatever the
//! object's size. `HEAD` answers from the store's metadata. A single `Range` (`bytes=a-b`,
//! `bytes=a-`, `bytes=-n`) becomes a ranged GET on the store — never a full read — and a 206 with
//! `Content-Range`; an unsatisfiable one is 416 with `Content-Range: bytes */size`. Several ranges,
//! or a malformed header, are ignored and the whole object is sent (RFC 9110 allows it). With an
//! `etag` (the artifact's SHA-256), `If-None-Match` can answer 304 without touching the store and
//! `If-Range` only honours `Range` while the ETag still matches — ESP-IDF's OTA client resumes
//! interrupted downloads this way.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{
    ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, IF_RANGE, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::error::ApiError;
use crate::storage::{ByteRange, ObjectKey, Storage, StorageError};

/// What to send and how to describe it.
#[derive(Debug, Clone)]
pub struct Download {
    pub key: ObjectKey,
    /// A strong validator for the content, unquoted (the artifact's SHA-256 in hex).
    pub etag: Option<String>,
    pub content_type: &'static str,
    /// Offered as `Content-Disposition: attachment; filename=…`.
    pub filename: String,
}

/// Parses a single-range `Range` header. `None` means "send the whole object".
pub fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    match (start.is_empty(), end.is_empty()) {
        (true, false) => Some(ByteRange::Suffix {
            len: end.parse().ok()?,
        }),
        (false, true) => Some(ByteRange::From {
            start: start.parse().ok()?,
        }),
        (false, false) => {
            let (start, last): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
            (start <= last).then_some(ByteRange::Bounded {
                start,
                end: last.checked_add(1)?,
            })
        }
        (true, true) => None,
    }
}

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
}

/// Whether an `If-None-Match` / `If-Range` value names this ETag (weak or strong form, or `*`).
fn matches_etag(header: &str, etag: &str) -> bool {
    let wanted = quoted(etag);
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*"
            || candidate == wanted
            || candidate.strip_prefix("W/") == Some(wanted.as_str())
    })
}

fn header(headers: &HeaderMap, name: http::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn describe(response: &mut Response, download: &Download) {
    let headers = response.headers_mut();
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(download.content_type),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={}", download.filename)) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    if let Some(etag) = &download.etag {
        if let Ok(v) = HeaderValue::from_str(&quoted(etag)) {
            headers.insert(ETAG, v);
        }
    }
}

fn set_length(response: &mut Response, length: u64) {
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(length));
}

/// Answers a GET or HEAD for `download` according to the request's conditional and range headers.
pub async fn respond(
    storage: &Storage,
    download: Download,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if let (Some(etag), Some(value)) = (&download.etag, header(headers, IF_NONE_MATCH)) {
        if matches_etag(value, etag) {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            describe(&mut response, &download);
            return Ok(response);
        }
    }

    if method == Method::HEAD {
        let info = storage.head(&download.key).await?;
        let mut response = StatusCode::OK.into_response();
        describe(&mut response, &download);
        set_length(&mut response, info.size);
        return Ok(response);
    }

    let range_allowed = match (header(headers, IF_RANGE), &download.etag) {
        (None, _) => true,
        (Some(value), Some(etag)) => value.trim() == quoted(etag),
        // No validator to compare with: a conditional range cannot be honoured safely.
        (Some(_), None) => false,
    };
    let range = header(headers, RANGE)
        .filter(|_| range_allowed)
        .and_then(parse_range);

    let read = match storage.get(&download.key, range).await {
        Ok(read) => read,
        Err(StorageError::RangeNotSatisfiable { size, .. }) => {
            let mut response =
                ApiError::RangeNotSatisfiable("Requested range not satisfiable".into())
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(CONTENT_RANGE, v);
            }
            return Ok(response);
        }
        Err(e) => return Err(e.into()),
    };
    let served = read.range.clone();
    let total = read.info.size;
    let mut response = Body::from_stream(read.body).into_response();
    describe(&mut response, &download);
    set_length(&mut response, served.end.saturating_sub(served.start));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let last = served.end.saturating_sub(1);
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{last}/{total}", served.start)) {
            response.headers_mut().insert(CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_are_understood() {
        assert_eq!(
            parse_range("bytes=0-99"),
            Some(ByteRange::Bounded { start: 0, end: 100 })
        );
        assert_eq!(
            parse_range("bytes=100-"),
            Some(ByteRange::From { start: 100 })
        );
        assert_eq!(
            parse_range("bytes=-16"),
            Some(ByteRange::Suffix { len: 16 })
        );
        assert_eq!(
            parse_range(" bytes= 5 - 9 "),
            Some(ByteRange::Bounded { start: 5, end: 10 })
        );
    }

    #[test]
    fn other_ranges_mean_the_whole_object() {
        for value in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=9-5",
            "bytes=-",
            "bytes=a-b",
            "bytes=0-18446744073709551615",
        ] {
            assert_eq!(parse_range(value), None, "{value}");
        }
    }

    #[test]
    fn etags_match_strong_weak_and_star() {
        assert!(matches_etag("\"abc\"", "abc"));
        assert!(matches_etag("W/\"abc\"", "abc"));
        assert!(matches_etag("\"x\", \"abc\"", "abc"));
        assert!(matches_etag("*", "abc"));
        assert!(!matches_etag("\"abd\"", "abc"));
    }
}
