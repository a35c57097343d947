//! Reading upload bodies within bounds: the one reader behind firmware and core-dump uploads.
//!
//! A body is refused with 413 from its `Content-Length` alone, or as soon as the stream passes the
//! limit (never by reading it all); it must arrive whole within a deadline (408), and every body
//! already fails when its client sends nothing for `HTTP_IDLE_TIMEOUT_SECONDS`
//! (`crate::http::server` wraps it). [`LimitedBody`] is the stream, for callers that feed it to a
//! parser (multipart) or spool it; [`read_to_bytes`] buffers a small body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::HeaderMap;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// More than the limit (declared or sent).
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The body did not arrive within the upload deadline, or its client went quiet.
    #[error("the request body did not arrive in time")]
    TimedOut,
    /// The connection failed while the body was read.
    #[error("could not read the request body: {0}")]
    Read(String),
}

impl From<BodyError> for super::error::ApiError {
    fn from(e: BodyError) -> Self {
        use super::error::ApiError;
        match e {
            BodyError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
            BodyError::TimedOut => ApiError::RequestTimeout(
                "The request body did not arrive in time; the upload was abandoned".into(),
            ),
            BodyError::Read(_) => ApiError::validation(e.to_string()),
        }
    }
}

/// The declared `Content-Length`, if any and readable.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Refuses a body whose declared length (`Content-Length`) is over `limit`. Upload routes call it
/// before they wait for an upload slot: such a body is a 413 however busy the service is.
pub fn refuse_declared_over(headers: &HeaderMap, limit: u64) -> Result<(), BodyError> {
    match declared_length(headers) {
        Some(n) if n > limit => Err(BodyError::TooLarge(limit)),
        _ => Ok(()),
    }
}

/// A body stream that ends with an error past `limit` bytes or past `deadline`. The first error
/// is also kept in [`LimitedBody::failure`], for callers whose parser wraps stream errors in its
/// own type (multipart).
pub struct LimitedBody {
    inner: BodyDataStream,
    limit: u64,
    received: u64,
    deadline: Pin<Box<tokio::time::Sleep>>,
    failure: Arc<Mutex<Option<BodyError>>>,
    done: bool,
}

impl LimitedBody {
    /// 413 at once when `Content-Length` is over `limit`.
    pub fn new(
        headers: &HeaderMap,
        body: Body,
        limit: u64,
        deadline: Duration,
    ) -> Result<Self, BodyError> {
        refuse_declared_over(headers, limit)?;
        Ok(LimitedBody {
            inner: body.into_data_stream(),
            limit,
            received: 0,
            deadline: Box::pin(tokio::time::sleep(deadline)),
            failure: Arc::new(Mutex::new(None)),
            done: false,
        })
    }

    /// A handle on the reason the stream failed, readable after the stream was moved away.
    pub fn failure_handle(&self) -> FailureHandle {
        FailureHandle(self.failure.clone())
    }

    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.done = true;
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(error.clone());
        }
        Poll::Ready(Some(Err(error)))
    }
}

/// See [`LimitedBody::failure_handle`].
#[derive(Clone)]
pub struct FailureHandle(Arc<Mutex<Option<BodyError>>>);

impl FailureHandle {
    pub fn get(&self) -> Option<BodyError> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

impl Stream for LimitedBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return self.fail(BodyError::TimedOut);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let error = if is_timeout(&e) {
                    BodyError::TimedOut
                } else {
                    BodyError::Read(e.to_string())
                };
                self.fail(error)
            }
            Poll::Ready(Some(Ok(chunk))) => {
                self.received += chunk.len() as u64;
                if self.received > self.limit {
                    let limit = self.limit;
                    return self.fail(BodyError::TooLarge(limit));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
        }
    }
}

use std::future::Future;

/// Whether a body error is the idle timeout of `crate::http::server` (tower-http's `TimeoutBody`)
/// or its whole-body deadline ([`DeadlineBody`]).
fn is_timeout(error: &axum::Error) -> bool {
    is_timeout_source(error)
}

/// Whether `error`, or an error it was caused by, is a body timeout (see `is_timeout`): what an
/// extractor's rejection wraps when the body stopped in time.
pub fn is_timeout_source(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>()
            || e.downcast_ref::<BodyError>() == Some(&BodyError::TimedOut)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Reads a whole (small) body into memory within `limit` and `deadline`.
pub async fn read_to_bytes(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    let capacity = declared_length(headers).unwrap_or(0).min(limit) as usize;
    let mut stream = LimitedBody::new(headers, body, limit, deadline)?;
    let mut buffer = BytesMut::with_capacity(capacity);
    while let Some(chunk) = stream.next().await {
        buffer.extend_from_slice(&chunk?);
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(len: Option<u64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(len) = len {
            h.insert(http::header::CONTENT_LENGTH, len.into());
        }
        h
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let e = read_to_bytes(
            &headers(Some(11)),
            Body::from("x"),
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e, BodyError::TooLarge(10));
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_is_refused() {
        let e = read_to_bytes(
            &headers(None),
            Body::from("x".repeat(11)),
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e, BodyError::TooLarge(10));
    }

    #[tokio::test]
    async fn a_body_within_bounds_is_read_whole() {
        let got = read_to_bytes(
            &headers(Some(5)),
            Body::from("hello"),
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(&got[..], b"hello");
    }

    #[tokio::test]
    async fn a_body_that_does_not_finish_in_time_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        tx.send(Ok(Bytes::from_static(b"part"))).await.unwrap();
        let body = Body::from_stream(tokio_stream_from(rx));
        let mut stream =
            LimitedBody::new(&headers(None), body, 100, Duration::from_millis(200)).unwrap();
        let handle = stream.failure_handle();
        assert_eq!(stream.next().await, Some(Ok(Bytes::from_static(b"part"))));
        assert_eq!(stream.next().await, Some(Err(BodyError::TimedOut)));
        assert_eq!(handle.get(), Some(BodyError::TimedOut));
        drop(tx);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

/// A response body that holds `held` (a permit) until it is done or dropped: a limit on
/// responses in progress must last as long as their bodies are being sent, not only as long as
/// the handler runs.
pub struct HeldBody<H> {
    body: axum::body::Body,
    _held: H,
}

impl<H: Send + Unpin + 'static> HeldBody<H> {
    pub fn wrap(response: axum::response::Response, held: H) -> axum::response::Response {
        response.map(|body| axum::body::Body::new(HeldBody { body, _held: held }))
    }
}

impl<H: Unpin> http_body::Body for HeldBody<H> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The whole-body deadline every request body gets from `crate::http::server`
/// (`HTTP_BODY_TIMEOUT_SECONDS`), unless its route lifts it ([`lift_body_deadline`]): the upload
/// routes, which read their bodies with deadlines of their own ([`LimitedBody`]).
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    lifted: Arc<std::sync::atomic::AtomicBool>,
}

/// In a request's extensions: lifts its [`DeadlineBody`]'s deadline.
#[derive(Clone)]
pub struct BodyDeadline(Arc<std::sync::atomic::AtomicBool>);

impl DeadlineBody {
    /// `body` with a deadline of `within` from now, and the handle that lifts it.
    pub fn new(body: Body, within: Duration) -> (Self, BodyDeadline) {
        let lifted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(within)),
            lifted: lifted.clone(),
        };
        (body, BodyDeadline(lifted))
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if !self.lifted.load(std::sync::atomic::Ordering::Relaxed)
            && self.deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(axum::Error::new(BodyError::TimedOut))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware (`route_layer`) for the upload routes: lifts the server's whole-body deadline,
/// since they read their bodies against their own (`FIRMWARE_UPLOAD_TIMEOUT_SECONDS`,
/// `COREDUMP_UPLOAD_TIMEOUT_SECONDS`).
pub async fn lift_body_deadline(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(BodyDeadline(lifted)) = request.extensions().get::<BodyDeadline>() {
        lifted.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    next.run(request).await
}
