//! The HTTP client the S3 backend talks through: hyper's, with a bounded read buffer.
//!
//! object_store's default client (reqwest over hyper) reads responses into an adaptive buffer
//! that grows to about 400 KiB per connection and cannot be configured. Downloads stream S3
//! bodies straight to devices, so with 256 image downloads at once that buffer alone was
//! ~100 MiB of the service's memory (bench/README.md). This client is hyper's own, with
//! [`READ_BUFFER_MAX`] as the most one connection buffers, plugged into object_store through its
//! `HttpConnector` seam, so signing, retries and the rest of object_store stay as they are.
//!
//! Sockets are `TCP_NODELAY` (a request's head and body are never held back by Nagle's
//! algorithm). Timeouts: `S3_TIMEOUT_SECONDS` for each stage that waits on the store, never for
//! the whole of a transfer that keeps moving: the request body fails when the store takes none of
//! it for that long (it is handed to hyper in parts of [`SEND_PART`] bytes, so that taking them
//! shows), the answer's head must come within that time of the body's end, and the response body
//! fails when nothing of it arrives for as long. A timeout over the whole request (reqwest's, and
//! until stop 34 one over the body's sending) cut a large PUT on a slow uplink however healthy
//! the store: an 8 MiB part at 2 Mbit/s takes 34 s. `https://` endpoints use rustls with the
//! system's roots.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::client::{
    HttpClient, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::ClientOptions;

/// The most one connection buffers of a response (hyper's `max_buf_size`). Measured with 256
/// concurrent image downloads and the caches off (bench/README.md): peak RSS 70 MiB at 64 KiB,
/// 56 MiB at 32 KiB, 48 MiB at 16 KiB, throughput within the noise of the shared machine. 16 KiB
/// since the peak at 32 KiB came within 1 MiB of the 64 MB goal (58–63 MiB against 56–57).
pub const READ_BUFFER_MAX: usize = 16 * 1024;

/// Makes the bounded client for object_store (`AmazonS3Builder::with_http_connector`).
#[derive(Debug, Clone, Copy)]
pub struct BoundedConnector {
    pub connect_timeout: Duration,
    /// For the answer's head, and between two parts of a body.
    pub timeout: Duration,
}

impl object_store::client::HttpConnector for BoundedConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client =
            bounded_client(self.connect_timeout).map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(BoundedClient {
            client,
            timeout: self.timeout,
        }))
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The most of a request body handed to hyper at a time (see the module documentation): hyper
/// asks for the next part as it writes the earlier ones to the socket.
const SEND_PART: usize = 64 * 1024;

/// hyper's client with [`READ_BUFFER_MAX`], `TCP_NODELAY` and rustls, for request bodies of
/// type `B`.
fn bounded_client<B>(connect_timeout: Duration) -> Result<Client<Connector, B>, rustls::Error>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .http1_max_buf_size(READ_BUFFER_MAX)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// A request body streamed from a fallible stream of chunks.
type StreamedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// Sends PUTs whose body is still being produced: object_store's `put` takes a whole payload, so
/// a single PUT that starts before its content is complete (the firmware image while the bundle
/// is still arriving, `crate::firmware::early`) goes to a presigned URL through this client.
/// The `Content-Length` is declared up front: a body that ends short or goes past it, or fails,
/// aborts the request, and the store keeps no object (a PUT is all or nothing).
#[derive(Debug, Clone)]
pub struct StreamingPut {
    client: Client<Connector, StreamedBody>,
    /// For the answer's head once the body has been sent.
    timeout: Duration,
}

impl StreamingPut {
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Result<Self, rustls::Error> {
        Ok(StreamingPut {
            client: bounded_client(connect_timeout)?,
            timeout,
        })
    }

    /// PUTs exactly `len` bytes of `body` to `url`; the error says why it failed (never the URL,
    /// which carries a signature).
    pub async fn put(
        &self,
        url: &str,
        len: u64,
        body: futures::stream::BoxStream<'static, std::io::Result<Bytes>>,
    ) -> Result<(), String> {
        use futures::{StreamExt, TryStreamExt};
        let progress = Progress::shared();
        let seen = progress.clone();
        let mut body = body;
        let mut sent = 0u64;
        let body = futures::stream::poll_fn(move |cx| {
            let mut next = body.poll_next_unpin(cx);
            // hyper writes no more than the declared length and drops the rest: a body that goes
            // past it fails here instead, so the store keeps no object cut short of its content.
            if let Poll::Ready(Some(Ok(chunk))) = &next {
                sent = sent.saturating_add(chunk.len() as u64);
                if sent > len {
                    next = Poll::Ready(Some(Err(std::io::Error::other(format!(
                        "the body is longer than its declared {len} bytes"
                    )))));
                }
            }
            Progress::polled(&seen, &next, false);
            next
        });
        let body = http_body_util::StreamBody::new(body.map_ok(Frame::data));
        let request = http::Request::put(url)
            .header(http::header::CONTENT_LENGTH, len)
            .body(http_body_util::BodyExt::boxed_unsync(body))
            .map_err(|e| format!("invalid request: {e}"))?;
        let answer = self.client.request(request);
        let stalled = stalled(progress, self.timeout);
        let response = tokio::select! {
            response = answer => response.map_err(|e| super::display_chain(&e))?,
            why = stalled => return Err(why.into()),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The refusal's text, if it comes in time: a store that sends part of it and then
        // nothing must not hold the upload (and the model lock behind it) for good.
        let detail = tokio::time::timeout(self.timeout, read_some(response.into_body(), 512))
            .await
            .unwrap_or_else(|_| "(no complete answer within the request timeout)".into());
        Err(format!("the object store answered {status}: {detail}"))
    }
}

/// How far a streamed PUT's body has got: when the client last asked for a part of it, whether
/// it is waiting for the next part, and whether it has ended.
struct Progress {
    since: tokio::time::Instant,
    waiting_for_body: bool,
    ended: bool,
}

impl Progress {
    /// A request's, from now, shared between its body and [`stalled`].
    fn shared() -> Arc<std::sync::Mutex<Progress>> {
        Arc::new(std::sync::Mutex::new(Progress {
            since: tokio::time::Instant::now(),
            waiting_for_body: false,
            ended: false,
        }))
    }

    /// Notes that the body was just asked for a part and answered `next`; `ended`: the body
    /// knows it has no more (hyper asks for no end past a body of its declared length).
    fn polled<T, E>(
        progress: &std::sync::Mutex<Progress>,
        next: &Poll<Option<Result<T, E>>>,
        ended: bool,
    ) {
        let mut progress = progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.since = tokio::time::Instant::now();
        progress.waiting_for_body = next.is_pending();
        progress.ended |= ended || matches!(next, Poll::Ready(None | Some(Err(_))));
    }
}

/// Resolves, saying why, when the store has stopped reading the body (no part asked for in
/// `timeout` although one was ready) or has not answered within `timeout` of its end. A body
/// that is slow to come (the uploading client) is not the store's fault: that wait is bounded
/// by the body's own deadline.
async fn stalled(progress: Arc<std::sync::Mutex<Progress>>, timeout: Duration) -> &'static str {
    let check = (timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(check).await;
        let progress = progress.lock().unwrap_or_else(|p| p.into_inner());
        if progress.waiting_for_body || progress.since.elapsed() < timeout {
            continue;
        }
        return if progress.ended {
            "the object store did not answer within the request timeout"
        } else {
            "the object store stopped reading the body for the request timeout"
        };
    }
}

/// Up to `max` bytes of a response body, as text (for an error message).
async fn read_some(mut body: hyper::body::Incoming, max: usize) -> String {
    use http_body_util::BodyExt;
    let mut text = Vec::new();
    while text.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    text.truncate(max);
    String::from_utf8_lossy(&text).into_owned()
}

/// rustls with the aws-lc-rs provider (named, not the process default) and the system's trusted
/// roots, as `crate::mqtt::tls` does for `mqtts://` (storage refers to no other module of the
/// crate). Without any root, `http://` endpoints still work and an `https://` one fails to
/// connect, saying why.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        tracing::debug!(errors = ?loaded.errors, "s3_client_without_tls_roots");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Debug)]
struct BoundedClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, SentInParts>,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpService for BoundedClient {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let progress = Progress::shared();
        let request = request.map(|body| SentInParts {
            inner: body,
            part: Bytes::new(),
            progress: progress.clone(),
        });
        let answer = self.client.request(request);
        let stalled = stalled(progress, self.timeout);
        let response = tokio::select! {
            answer = answer => match answer {
                Ok(response) => response,
                Err(e) => {
                    let kind = if e.is_connect() {
                        HttpErrorKind::Connect
                    } else {
                        HttpErrorKind::Request
                    };
                    return Err(HttpError::new(kind, e));
                }
            },
            why = stalled => {
                return Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, why),
                ))
            }
        };
        let (parts, body) = response.into_parts();
        let body = IdleTimeout::new(body, self.timeout);
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// A request body handed to hyper [`SEND_PART`] bytes at a time, noting in `progress` when hyper
/// last took a part (object_store's bodies are whole payloads, one frame each, which hyper would
/// take at once however long writing it then takes).
struct SentInParts {
    inner: HttpRequestBody,
    /// What is left of the frame taken from `inner`.
    part: Bytes,
    progress: Arc<std::sync::Mutex<Progress>>,
}

impl Body for SentInParts {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        let next = if this.part.is_empty() {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.part = data;
                        None
                    }
                    Err(frame) => Some(Poll::Ready(Some(Ok(frame)))),
                },
                other => Some(other),
            }
        } else {
            None
        };
        let next = next.unwrap_or_else(|| {
            let len = this.part.len().min(SEND_PART);
            Poll::Ready(Some(Ok(Frame::data(this.part.split_to(len)))))
        });
        // hyper asks for no end past a body of exactly the declared length: its last part
        // ends it.
        let ended = this.part.is_empty() && this.inner.is_end_stream();
        Progress::polled(&this.progress, &next, ended);
        next
    }

    fn is_end_stream(&self) -> bool {
        self.part.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let left = self.part.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(left));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(left));
        }
        hint
    }
}

/// A response body that fails when no part of it arrives for `timeout`.
struct IdleTimeout {
    inner: hyper::body::Incoming,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimeout {
    fn new(inner: hyper::body::Incoming, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
                Poll::Ready(
                    frame.map(|f| f.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e))),
                )
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the object store sent nothing for the request timeout",
                    ),
                )))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::{bounded_client, BoundedClient, StreamingPut};
    use object_store::client::HttpService;

    /// A server on 127.0.0.1 that reads the request head and then does what `then` says.
    async fn server<F, Fut>(then: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        serve_one(TcpListener::bind("127.0.0.1:0").await.unwrap(), then)
    }

    /// Accepts one connection on `listener`, reads its request head and then does what `then`
    /// says; the URL to send the request to.
    fn serve_one<F, Fut>(listener: TcpListener, then: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let url = format!("http://{}/bucket/key", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            then(socket).await;
        });
        url
    }

    /// Reads `len` body bytes, then answers `status`.
    async fn read_and_answer(mut socket: tokio::net::TcpStream, len: usize, status: &str) {
        let mut body = vec![0u8; len];
        socket.read_exact(&mut body).await.unwrap();
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 4\r\n\r\nnope");
        socket.write_all(answer.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    fn client(timeout: Duration) -> StreamingPut {
        StreamingPut::new(Duration::from_secs(1), timeout).unwrap()
    }

    #[tokio::test]
    async fn a_store_that_stops_reading_the_body_fails_the_put() {
        // Reads nothing of the body; 64 MiB fill any socket buffers.
        let url = server(|socket| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        })
        .await;
        let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
        let body = futures::stream::repeat(chunk).take(64).map(Ok).boxed();
        let started = std::time::Instant::now();
        let error = client(Duration::from_millis(300))
            .put(&url, 64 * 1024 * 1024, body)
            .await
            .unwrap_err();
        assert!(error.contains("stopped reading the body"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(20), "it gave up");
    }

    #[tokio::test]
    async fn a_body_that_is_slow_to_come_is_not_the_stores_fault() {
        let url = server(|socket| read_and_answer(socket, 8, "200 OK")).await;
        // The first half, then a pause three times the timeout, then the rest.
        let body = futures::stream::iter([Ok(Bytes::from_static(b"1234"))])
            .chain(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                Ok(Bytes::from_static(b"5678"))
            }))
            .boxed();
        client(Duration::from_millis(200))
            .put(&url, 8, body)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_body_longer_than_declared_fails_the_put() {
        // The store reads the declared 4 bytes and would answer 200 for them.
        let url = server(|socket| read_and_answer(socket, 4, "200 OK")).await;
        let body = futures::stream::iter([Ok(Bytes::from_static(b"datamore"))]).boxed();
        let error = client(Duration::from_secs(5))
            .put(&url, 4, body)
            .await
            .unwrap_err();
        assert!(
            error.contains("longer than its declared 4 bytes"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_refusal_says_the_status_and_what_the_store_said() {
        let url = server(|socket| read_and_answer(socket, 4, "403 Forbidden")).await;
        let body = futures::stream::iter([Ok(Bytes::from_static(b"data"))]).boxed();
        let error = client(Duration::from_secs(5))
            .put(&url, 4, body)
            .await
            .unwrap_err();
        assert!(error.contains("403"), "{error}");
        assert!(error.contains("nope"), "{error}");
    }

    #[tokio::test]
    async fn a_refusal_whose_text_never_ends_fails_within_the_timeout() {
        let url = server(|mut socket| async move {
            let mut body = [0u8; 4];
            socket.read_exact(&mut body).await.unwrap();
            let answer = "HTTP/1.1 503 Slow Down\r\ncontent-length: 100\r\n\r\npartial";
            socket.write_all(answer.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let body = futures::stream::iter([Ok(Bytes::from_static(b"data"))]).boxed();
        let started = std::time::Instant::now();
        let error = client(Duration::from_millis(300))
            .put(&url, 4, body)
            .await
            .unwrap_err();
        assert!(error.contains("503"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(20), "it gave up");
    }

    /// A server on 127.0.0.1 with a small receive buffer (so that what it has not read stays
    /// with the client), which reads the request head and then does what `then` says.
    async fn small_buffer_server<F, Fut>(then: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        serve_one(socket.listen(4).unwrap(), then)
    }

    /// object_store's client as the S3 backend makes it, with `timeout`.
    fn bounded(timeout: Duration) -> BoundedClient {
        BoundedClient {
            client: bounded_client(Duration::from_secs(1)).unwrap(),
            timeout,
        }
    }

    fn put_request(url: &str, len: usize) -> object_store::client::HttpRequest {
        http::Request::put(url)
            .body(object_store::client::HttpRequestBody::from(Bytes::from(
                vec![7u8; len],
            )))
            .unwrap()
    }

    #[tokio::test]
    async fn a_put_that_keeps_moving_may_take_longer_than_the_timeout() {
        // 24 MiB, taken 2 MiB every 100 ms: about 1.2 s in all against a timeout of 700 ms.
        // What the client's socket holds when hyper has handed it all over (at most 4 MiB here)
        // is read within the timeout.
        const LEN: usize = 24 * 1024 * 1024;
        let url = small_buffer_server(|mut socket| async move {
            let mut taken = 0;
            let mut buf = vec![0u8; 2 * 1024 * 1024];
            while taken < LEN {
                let want = buf.len().min(LEN - taken);
                socket.read_exact(&mut buf[..want]).await.unwrap();
                taken += want;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let started = std::time::Instant::now();
        let response = bounded(Duration::from_millis(700))
            .call(put_request(&url, LEN))
            .await
            .expect("a transfer that keeps moving is not timed out");
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() > Duration::from_millis(700),
            "the test's premise"
        );
    }

    #[tokio::test]
    async fn a_store_that_stops_taking_the_body_or_answering_fails_within_the_timeout() {
        // Takes nothing of the body.
        let url = small_buffer_server(|socket| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        })
        .await;
        let started = std::time::Instant::now();
        let error = bounded(Duration::from_millis(300))
            .call(put_request(&url, 24 * 1024 * 1024))
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("stopped reading the body"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(20), "it gave up");
        // Takes the body and never answers.
        let url = small_buffer_server(|mut socket| async move {
            let mut body = vec![0u8; 4];
            socket.read_exact(&mut body).await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let error = bounded(Duration::from_millis(300))
            .call(put_request(&url, 4))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("did not answer"), "{error}");
    }

    #[tokio::test]
    async fn a_body_that_fails_aborts_the_put() {
        let url = server(|mut socket| async move {
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        })
        .await;
        let body = futures::stream::iter([
            Ok(Bytes::from_static(b"half")),
            Err(std::io::Error::other("the source broke")),
        ])
        .boxed();
        let error = client(Duration::from_secs(5))
            .put(&url, 8, body)
            .await
            .unwrap_err();
        assert!(!error.is_empty());
    }
}
