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
//! interrupted downloads this way. `If-None-Match: *` is 304 whenever the object exists, with an
//! ETag or without (a core dump's existence is asked of the store).
//!
//! Firmware images may instead come from memory ([`Source::Cache`], see `crate::firmware::cache`):
//! the same headers and statuses, computed from the cached bytes, and no store request at all.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_SECURITY_POLICY,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH, IF_RANGE, RANGE, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::error::ApiError;
use crate::firmware::cache::{FirmwareCache, Lookup, WholeImage};
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
    /// What a missing object means to the client: a 404 with this message (a core dump deleted
    /// while its download began), or `None`: a fault (500, the object a row names is gone).
    pub missing: Option<String>,
}

/// The answer to a store failure while serving `download` (see [`Download::missing`]).
fn store_failure(e: StorageError, download: &Download) -> ApiError {
    match (&e, &download.missing) {
        (StorageError::NotFound { .. }, Some(message)) => ApiError::NotFound(message.clone()),
        _ => e.into(),
    }
}

/// Parses a single-range `Range` header. `None` means "send the whole object". The unit is
/// case-insensitive (RFC 9110 §14.1); a last position past any size means "to the end".
pub fn parse_range(value: &str) -> Option<ByteRange> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let spec = spec.trim();
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
                end: last.saturating_add(1),
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

/// The headers of a download. What is downloaded came from CI or a device (an `sdkconfig` may
/// hold anything): `nosniff` and a sandboxing CSP keep a browser from running it as a script or
/// a page of this origin, where it could read our pages' CSRF token.
fn describe(response: &mut Response, download: &Download) {
    let headers = response.headers_mut();
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
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

/// Where the bytes of a download come from.
pub enum Source<'a> {
    /// Streamed from the object store.
    Store,
    /// The whole object, already in memory (a firmware cache hit).
    Memory(Bytes),
    /// The firmware cache, looked up by the artifact's SHA-256 and size (from its row): a hit is
    /// served from memory; a miss is streamed from the store exactly as [`Source::Store`] (a
    /// `Range` stays a ranged GET) and, for a GET, starts filling the cache in the background.
    Cache {
        cache: &'a Arc<FirmwareCache>,
        sha256: Option<&'a str>,
        size: Option<u64>,
    },
}

/// The 304 answer, when `If-None-Match` names the download's ETag.
pub fn not_modified(download: &Download, headers: &HeaderMap) -> Option<Response> {
    let (Some(etag), Some(value)) = (&download.etag, header(headers, IF_NONE_MATCH)) else {
        return None;
    };
    if !matches_etag(value, etag) {
        return None;
    }
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    describe(&mut response, download);
    Some(response)
}

/// Whether `If-None-Match` is `*`: "any current representation", which exists whenever the object
/// does, ETag or not.
fn asks_for_any_representation(headers: &HeaderMap) -> bool {
    header(headers, IF_NONE_MATCH)
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == "*"))
}

/// The single range to serve: `Range` if present, parseable, and allowed by `If-Range`.
fn requested_range(download: &Download, headers: &HeaderMap) -> Option<ByteRange> {
    // Present but not text (obs-text bytes): it cannot match our ETag, so no range either.
    let if_range = headers.get(IF_RANGE).map(|v| v.to_str().unwrap_or("\u{0}"));
    let range_allowed = match (if_range, &download.etag) {
        (None, _) => true,
        (Some(value), Some(etag)) => value.trim() == quoted(etag),
        // No validator to compare with: a conditional range cannot be honoured safely.
        (Some(_), None) => false,
    };
    header(headers, RANGE)
        .filter(|_| range_allowed)
        .and_then(parse_range)
}

fn range_not_satisfiable(size: u64) -> Response {
    let mut response =
        ApiError::RangeNotSatisfiable("Requested range not satisfiable".into()).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(CONTENT_RANGE, v);
    }
    response
}

/// The response headers and status for `served` bytes out of `total`.
fn body_response(
    body: Body,
    download: &Download,
    ranged: bool,
    served: std::ops::Range<u64>,
    total: u64,
) -> Response {
    let mut response = body.into_response();
    describe(&mut response, download);
    set_length(&mut response, served.end.saturating_sub(served.start));
    if ranged {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let last = served.end.saturating_sub(1);
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{last}/{total}", served.start)) {
            response.headers_mut().insert(CONTENT_RANGE, v);
        }
    }
    response
}

/// Answers a GET or HEAD for `download` from the store, according to the request's conditional
/// and range headers.
pub async fn respond(
    storage: &Storage,
    download: Download,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    respond_from(storage, Source::Store, download, method, headers).await
}

/// As [`respond`], with the bytes taken from `source`. With [`Source::Cache`], a GET for the whole
/// object that misses waits for the cache's single read of it (see `crate::firmware::cache`); a
/// ranged GET that misses reads only its range.
pub async fn respond_from(
    storage: &Storage,
    source: Source<'_>,
    download: Download,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(response) = not_modified(&download, headers) {
        return Ok(response);
    }
    // Without an ETag (core dumps), `*` is answered by whether the object exists: the store is
    // asked, unless the bytes are already in memory.
    if download.etag.is_none() && asks_for_any_representation(headers) {
        if !matches!(source, Source::Memory(_)) {
            storage
                .head(&download.key)
                .await
                .map_err(|e| store_failure(e, &download))?;
        }
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        describe(&mut response, &download);
        return Ok(response);
    }
    let range = requested_range(&download, headers);
    let memory = match source {
        Source::Store => None,
        Source::Memory(bytes) => Some(bytes),
        Source::Cache {
            cache,
            sha256,
            size,
        } => match (cache.lookup(sha256, size), sha256, size) {
            (Lookup::Hit(bytes), _, _) => Some(bytes),
            (Lookup::Miss, Some(sha256), Some(size)) if method == Method::GET => {
                let key = download.key.clone();
                if range.is_some() {
                    // Never more than the range for this request; the fill runs on its own.
                    cache.start_fill(storage.clone(), key, sha256, size);
                    None
                } else {
                    match cache
                        .fill_and_wait(storage.clone(), key, sha256, size)
                        .await
                    {
                        WholeImage::Ready(bytes) => Some(bytes),
                        WholeImage::Stream => None,
                        // Streamed, the bytes would go out under the row's ETag as if they were
                        // the image (a cache or proxy would keep them as such).
                        // The fill logged which object (a device is not told our keys).
                        WholeImage::Mismatch => {
                            return Err(ApiError::Internal(
                                "Internal error: the stored image does not match its record \
                                 (size or SHA-256): the object was changed or damaged in the \
                                 bucket"
                                    .into(),
                            ))
                        }
                    }
                }
            }
            _ => None,
        },
    };
    if let Some(bytes) = memory {
        return Ok(from_memory(bytes, download, method, range));
    }

    if method == Method::HEAD {
        let info = storage
            .head(&download.key)
            .await
            .map_err(|e| store_failure(e, &download))?;
        let mut response = StatusCode::OK.into_response();
        describe(&mut response, &download);
        set_length(&mut response, info.size);
        return Ok(response);
    }

    let read = match storage.get(&download.key, range).await {
        Ok(read) => read,
        Err(StorageError::RangeNotSatisfiable { size, .. }) => {
            return Ok(range_not_satisfiable(size));
        }
        Err(e) => return Err(store_failure(e, &download)),
    };
    let served = read.range.clone();
    let total = read.info.size;
    Ok(body_response(
        Body::from_stream(read.body),
        &download,
        range.is_some(),
        served,
        total,
    ))
}

/// Serves an object held in memory: no store request at all. The body shares the cached buffer
/// (a reference, not a copy), so hundreds of concurrent downloads of one image cost no more memory
/// than the image.
fn from_memory(
    bytes: Bytes,
    download: Download,
    method: &Method,
    range: Option<ByteRange>,
) -> Response {
    let total = bytes.len() as u64;
    if method == Method::HEAD {
        let mut response = StatusCode::OK.into_response();
        describe(&mut response, &download);
        set_length(&mut response, total);
        return response;
    }
    let served = match range {
        None => 0..total,
        Some(range) => match range.resolve(total) {
            Some(served) => served,
            None => return range_not_satisfiable(total),
        },
    };
    // Both ends are within `bytes` (`resolve` clamps to the length), so slicing cannot panic.
    let body = match (usize::try_from(served.start), usize::try_from(served.end)) {
        (Ok(start), Ok(end)) => bytes.slice(start..end),
        _ => Bytes::new(),
    };
    body_response(
        Body::new(Framed { rest: body }),
        &download,
        range.is_some(),
        served,
        total,
    )
}

/// The most bytes of an in-memory body handed to hyper at once.
const MEMORY_FRAME: usize = 64 * 1024;

/// In-memory bytes as a body of [`MEMORY_FRAME`]-sized frames (slices, no copies). As one frame
/// hyper took the whole image at once and dropped the body while the bytes still waited for the
/// client: the response counted as done, so its connection could be evicted as idle and its
/// device's download slot was free again, with most of the image unsent.
struct Framed {
    rest: Bytes,
}

impl http_body::Body for Framed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let take = self.rest.len().min(MEMORY_FRAME);
        let frame = self.rest.split_to(take);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.rest.len() as u64)
    }
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
        assert_eq!(
            parse_range("Bytes=0-99"),
            Some(ByteRange::Bounded { start: 0, end: 100 })
        );
        assert_eq!(
            parse_range("bytes=7-18446744073709551615"),
            Some(ByteRange::Bounded {
                start: 7,
                end: u64::MAX
            })
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
            "bytes0-1",
            "bytes=0-18446744073709551616",
        ] {
            assert_eq!(parse_range(value), None, "{value}");
        }
    }

    #[tokio::test]
    async fn a_missing_object_is_a_404_where_the_download_says_so_and_a_fault_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let local = crate::storage::backend::ObjectStoreBackend::local(dir.path()).unwrap();
        let storage: Storage = std::sync::Arc::new(local);
        let download = |missing: Option<&str>| Download {
            key: ObjectKey::parse("coredumps/abcd2345/7.dmp").unwrap(),
            etag: None,
            content_type: "application/octet-stream",
            filename: "coredump_7.dmp".into(),
            missing: missing.map(str::to_string),
        };
        for method in [Method::GET, Method::HEAD] {
            let gone = Some("Coredump 7 was not found");
            let response = respond(&storage, download(gone), &method, &HeaderMap::new()).await;
            let error = response.expect_err("an error");
            assert!(matches!(&error, ApiError::NotFound(m) if m == "Coredump 7 was not found"));
            let response = respond(&storage, download(None), &method, &HeaderMap::new()).await;
            assert!(
                matches!(response.err(), Some(ApiError::Internal(_))),
                "{method}"
            );
        }
    }

    #[test]
    fn ranges_resolve_against_an_in_memory_object_as_the_store_would() {
        let size = 100;
        let resolve = |r: ByteRange| r.resolve(size);
        assert_eq!(
            resolve(ByteRange::Bounded { start: 10, end: 20 }),
            Some(10..20)
        );
        assert_eq!(
            resolve(ByteRange::Bounded {
                start: 90,
                end: 200
            }),
            Some(90..100)
        );
        assert_eq!(
            resolve(ByteRange::Bounded {
                start: 100,
                end: 200
            }),
            None
        );
        assert_eq!(resolve(ByteRange::From { start: 99 }), Some(99..100));
        assert_eq!(resolve(ByteRange::From { start: 100 }), None);
        assert_eq!(resolve(ByteRange::Suffix { len: 10 }), Some(90..100));
        assert_eq!(resolve(ByteRange::Suffix { len: 500 }), Some(0..100));
        assert_eq!(resolve(ByteRange::Suffix { len: 0 }), None);
        assert_eq!(ByteRange::Suffix { len: 5 }.resolve(0), None);
    }

    #[test]
    fn only_a_star_asks_for_any_representation() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
            asks_for_any_representation(&headers)
        };
        assert!(with("*"));
        assert!(with(" * "));
        assert!(with("\"abc\", *"));
        assert!(!with("\"abc\""));
        assert!(!asks_for_any_representation(&HeaderMap::new()));
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
