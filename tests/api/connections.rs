//! Hostile and broken clients at the connection level (hardening issue, item 1 and 4): half-sent
//! request heads, stalled bodies, clients that stop reading, one device hogging upload slots,
//! and shutdown with all of that going on.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::coredumps::{count, model_with_device, objects, upload, TestDevice};
use crate::helpers::*;

const HALF_HEAD: &[u8] = b"GET /health/healthz HTTP/1.1\r\nHost: x\r\nX-a: a";

fn host_port(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

/// Opens `n` connections that each send half a request head and then nothing.
async fn half_open(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(HALF_HEAD).await.expect("write half a head");
        streams.push(s);
    }
    streams
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // e.g. a 408 the server wrote before closing
        }
    }
}

async fn health_ok(client: &reqwest::Client, base: &str) -> bool {
    client
        .get(format!("{base}/health/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Sends a raw request (head plus the given body bytes) and returns the open stream.
async fn raw_request(addr: &str, head: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

/// Reads one HTTP response from `stream`: status and JSON body (Null when not JSON).
async fn read_response(stream: &mut TcpStream, within: Duration) -> Option<(u16, Value)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
        }
        if let Some(parsed) = parse_response(&raw) {
            return Some(parsed);
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Option<(u16, Value)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if body.len() < length {
        return None;
    }
    Some((
        status,
        serde_json::from_str(&body[..length]).unwrap_or(Value::Null),
    ))
}

/// Sends `head` and then a body of `length` bytes (`7`s) one byte every `every`, while waiting
/// (at most 15 s) for the answer; `None` if none came.
async fn trickled(addr: &str, head: &str, length: usize, every: Duration) -> Option<(u16, Value)> {
    let stream = raw_request(addr, head, &[7; 1]).await;
    let (mut reader, mut writer) = stream.into_split();
    let dripping = tokio::spawn(async move {
        for _ in 1..length {
            tokio::time::sleep(every).await;
            if writer.write_all(&[7]).await.is_err() {
                break;
            }
        }
        // Kept open: an answer must not wait for the client to close its side.
        std::future::pending::<()>().await;
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return parse_response(&raw),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if let Some(parsed) = parse_response(&raw) {
                return Some(parsed);
            }
        }
    })
    .await
    .ok()
    .flatten();
    dripping.abort();
    answer
}

fn coredump_head(addr: &str, device: &TestDevice, length: usize) -> String {
    format!(
        "POST /api/iot/coredump?chip=esp32&firmware_version=1.0 HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\n\r\n",
        device.credential
    )
}

#[tokio::test]
async fn half_sent_heads_are_closed_after_the_header_timeout_and_never_lock_out_health() {
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "half_open",
        &[
            ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "1"),
            ("HTTP_MAX_CONNECTIONS", "32"),
        ],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let addr = host_port(&app);
    // Four times the connection cap: without eviction the cap itself would lock everyone out.
    let mut stalled = half_open(&addr, 128).await;
    for _ in 0..5 {
        assert!(
            health_ok(&reqwest::Client::new(), &app.address).await,
            "health did not answer beside stalled connections"
        );
    }
    // The newest stalled connection is closed by the header-read timeout.
    let last = stalled.last_mut().unwrap();
    assert!(
        closed_by_server(last, Duration::from_secs(10)).await,
        "a half-sent head was kept open past the header timeout"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("http_connections_evicted_total"),
        "evictions are counted"
    );
    app.stop().await;
}

/// Raises this process's open-file limit so the test itself can hold `n` sockets; the child
/// `serve` inherits it.
fn raise_fd_limit(n: u64) -> bool {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < n {
        return false;
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n.max(limit.current.unwrap_or(0))),
            maximum: limit.maximum,
        },
    )
    .is_ok()
}

#[tokio::test]
async fn a_thousand_half_open_connections_leave_health_answering_and_sigterm_stops_within_the_grace_period(
) {
    if !raise_fd_limit(8192) {
        eprintln!("SKIP: the hard open-file limit is below 8192");
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_iotsupport"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PORT", &port)
        .env("LOG_FORMAT", "text")
        // Long enough that none of them times out during the test: only eviction and the grace
        // period can help.
        .env("HTTP_HEADER_READ_TIMEOUT_SECONDS", "120")
        .env("SHUTDOWN_GRACE_SECONDS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(30), || {
        let (client, base) = (client.clone(), base.clone());
        async move { health_ok(&client, &base).await }
    })
    .await;
    assert!(ready, "serve did not start");

    let addr = format!("127.0.0.1:{port}");
    let stalled = half_open(&addr, 1000).await;
    for _ in 0..5 {
        assert!(
            health_ok(&reqwest::Client::new(), &base).await,
            "health did not answer beside 1000 half-open connections"
        );
    }

    let pid = child.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exited = tokio::task::spawn_blocking(move || loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if sent.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    })
    .await
    .unwrap();
    let status = exited.expect("serve still running 20 s after SIGTERM with a 2 s grace period");
    assert!(status.success(), "exit status {status:?}");
    drop(stalled);
}

/// A JSON body that stops arriving is a 408 like an upload's, not a 400 "invalid JSON"; the token
/// endpoint answers its refusals (too slow, too large) as RFC 6749 errors, not axum's plain text.
#[tokio::test]
async fn stalled_and_oversized_small_bodies_get_the_right_answers() {
    TestApp::builder("stalled_small_bodies")
        .env("HTTP_IDLE_TIMEOUT_SECONDS", "1")
        .for_each_stack(async |app| {
            let addr = host_port(app);
            let auth = match &app.state.config.admin_token {
                Some(token) => format!("Authorization: Bearer {}\r\n", token.expose()),
                None => String::new(),
            };
            let head = |path: &str, content_type: &str, length: usize| {
                format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: {content_type}\r\n\
                     Content-Length: {length}\r\n\r\n"
                )
            };
            let json = head("/api/device-models", "application/json", 1000);
            let mut quiet = raw_request(&addr, &json, b"{\"code\": ").await;
            let (status, body) = read_response(&mut quiet, Duration::from_secs(10))
                .await
                .expect("an answer to a stalled JSON body");
            assert_eq!(status, 408, "{body}");
            assert_eq!(body["code"], "REQUEST_TIMEOUT", "{body}");

            let form = "application/x-www-form-urlencoded";
            let mut quiet = raw_request(&addr, &head("/api/iot/token", form, 1000), b"grant").await;
            let (status, body) = read_response(&mut quiet, Duration::from_secs(10))
                .await
                .expect("an answer to a stalled token request");
            assert_eq!(status, 408, "{body}");
            assert_eq!(body["error"], "invalid_request", "{body}");

            let mut large = raw_request(&addr, &head("/api/iot/token", form, 100_000), b"").await;
            let (status, body) = read_response(&mut large, Duration::from_secs(10))
                .await
                .expect("an answer to an oversized token request");
            assert_eq!(status, 413, "{body}");
            assert_eq!(body["error"], "invalid_request", "{body}");
            assert_eq!(count(app, "device_models").await, 0);
        })
        .await;
}

#[tokio::test]
async fn a_stalled_upload_body_is_408_and_nothing_is_stored() {
    TestApp::builder("stalled_body")
        .env("HTTP_IDLE_TIMEOUT_SECONDS", "1")
        .env("COREDUMP_UPLOAD_TIMEOUT_SECONDS", "2")
        .for_each_stack(async |app| {
            let device = model_with_device(app, "stall").await;
            let addr = host_port(app);

            // Ten bytes of a thousand, then silence: the idle timeout ends it.
            let mut quiet =
                raw_request(&addr, &coredump_head(&addr, &device, 1000), &[7; 10]).await;
            let (status, body) = read_response(&mut quiet, Duration::from_secs(10))
                .await
                .expect("an answer to a stalled upload");
            assert_eq!(status, 408, "{body}");
            assert_eq!(body["code"], "REQUEST_TIMEOUT");

            // A byte every 300 ms never trips the idle timeout, but the whole-body deadline ends
            // it.
            let head = coredump_head(&addr, &device, 1000);
            let (status, body) = trickled(&addr, &head, 1000, Duration::from_millis(300))
                .await
                .expect("an answer to a trickled upload");
            assert_eq!(status, 408, "{body}");

            assert_eq!(count(app, "coredumps").await, 0);
            assert_eq!(count(app, "jobs").await, 0);
            assert!(objects(app, "coredumps").await.is_empty());
        })
        .await;
}

/// A GET of the health check from `source` (another loopback address stands for another client):
/// its answer, `None` when the connection was closed without one.
async fn health_from(source: &str, addr: &str) -> Option<(u16, Value)> {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(format!("{source}:0").parse().expect("a source address"))
        .expect("bind to the source address");
    let mut stream = socket
        .connect(addr.parse().expect("the app address"))
        .await
        .ok()?;
    let head = format!("GET /health/healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    read_response(&mut stream, Duration::from_secs(2)).await
}

/// One client keeping every connection busy (stalled uploads here; slow reads of responses work
/// the same) must not lock another address out: the busiest address gives up its oldest.
#[tokio::test]
async fn one_address_keeping_every_connection_busy_does_not_lock_others_out() {
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "connection_fairness",
        &[
            ("HTTP_MAX_CONNECTIONS", "4"),
            // Loopback is a trusted proxy by default, whose connections are spared.
            ("TRUSTED_PROXIES", "192.0.2.1"),
            ("MAX_COREDUMP_UPLOADS_PER_DEVICE", "8"),
            ("HTTP_IDLE_TIMEOUT_SECONDS", "120"),
            ("COREDUMP_UPLOAD_TIMEOUT_SECONDS", "120"),
        ],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let device = model_with_device(&app, "hog").await;
    let addr = host_port(&app);
    let head = coredump_head(&addr, &device, 1000);
    let stalled = || raw_request(&addr, &head, &[1; 10]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stalled().await);
    }
    // Until all four hold a request in progress: then the same address is turned away (a
    // stalled one whose head was not read yet was idle, and was closed to make room for the
    // probe: open it again).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the stalled uploads never all got busy"
        );
        for stream in held.iter_mut() {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte));
            // Still waiting (no answer, not closed): it holds its request.
            if read.await.is_err() {
                continue;
            }
            *stream = stalled().await;
        }
        if health_from("127.0.0.1", &addr).await.is_none() {
            break;
        }
    }
    let answer = health_from("127.0.0.2", &addr).await;
    assert_eq!(
        answer.map(|(status, _)| status),
        Some(200),
        "another address was locked out"
    );
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn one_device_cannot_take_every_coredump_upload_slot() {
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "device_slots",
        &[
            ("MAX_CONCURRENT_COREDUMP_UPLOADS", "4"),
            ("MAX_COREDUMP_UPLOADS_PER_DEVICE", "2"),
            // The stalled uploads must outlive a slow, loaded run of this test.
            ("HTTP_IDLE_TIMEOUT_SECONDS", "120"),
            ("COREDUMP_UPLOAD_TIMEOUT_SECONDS", "120"),
        ],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let hog = model_with_device(&app, "hog").await;
    let other = crate::coredumps::device_of(&app, hog.model_id).await;
    let addr = host_port(&app);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(raw_request(&addr, &coredump_head(&addr, &hog, 1000), &[1; 10]).await);
    }
    // The two stalled uploads have their slots once the server has read their heads. A probe
    // that the server admits before it has read the second head takes that slot, and the second
    // stalled upload is refused instead: open it again, and probe until both hold a slot.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut refused = false;
    while !refused && std::time::Instant::now() < deadline {
        for stream in held.iter_mut() {
            if read_response(stream, Duration::from_millis(50))
                .await
                .is_some()
            {
                *stream = raw_request(&addr, &coredump_head(&addr, &hog, 1000), &[1; 10]).await;
            }
        }
        let (status, _) = upload(
            &app,
            &hog,
            "chip=esp32&firmware_version=1.0",
            vec![1u8; 100],
        )
        .await;
        refused = status == 503;
        if !refused {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(refused, "a third upload of the same device was not refused");
    let (status, body) = upload(
        &app,
        &hog,
        "chip=esp32&firmware_version=1.0",
        vec![1u8; 100],
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("This device already has"),
        "{body}"
    );
    // A body declared too large is refused for its size, busy or not.
    let mut oversized = raw_request(&addr, &coredump_head(&addr, &hog, 2 * 1024 * 1024), &[]).await;
    let (status, body) = read_response(&mut oversized, Duration::from_secs(30))
        .await
        .expect("an answer to the oversized upload");
    assert_eq!(status, 413, "{body}");
    let (status, body) = upload(
        &app,
        &other,
        "chip=esp32&firmware_version=1.0",
        vec![1u8; 100],
    )
    .await;
    assert_eq!(status, 201, "another device was locked out: {body}");
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_download_is_dropped_after_the_idle_timeout() {
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "slow_reader",
        &[
            ("HTTP_IDLE_TIMEOUT_SECONDS", "1"),
            ("MAX_COREDUMP_BYTES", "33554432"),
            ("COREDUMP_UPLOAD_TIMEOUT_SECONDS", "60"),
        ],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let device = model_with_device(&app, "reader").await;
    // Larger than what loopback socket buffers hold, so the server's writes block.
    let size = 24 * 1024 * 1024;
    let (status, body) = upload(
        &app,
        &device,
        "chip=esp32&firmware_version=1.0",
        vec![5u8; size],
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let cid = body["coredump_id"].as_i64().unwrap();

    let addr = host_port(&app);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let head = format!(
        "GET /api/devices/{}/coredumps/{cid}/download HTTP/1.1\r\nHost: {addr}\r\n\r\n",
        device.id
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    let n = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // Stop reading well past the idle timeout, then drain what was sent before the server gave up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = n;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
            Err(_) => panic!("the connection was neither finished nor closed"),
        }
    }
    assert!(
        received < size,
        "the whole {size}-byte body arrived ({received} bytes): the server never gave up"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_trickled_small_body_ends_at_the_body_deadline_and_uploads_keep_their_own() {
    TestApp::builder("body_deadline")
        .env("HTTP_BODY_TIMEOUT_SECONDS", "2")
        .for_each_stack(async |app| {
            let addr = host_port(app);
            // No credential needed: a token request whose body never finishes (a byte every
            // 250 ms never trips the idle timeout) is answered once the body deadline passes.
            let head = format!(
                "POST /api/iot/token HTTP/1.1\r\nHost: {addr}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
            );
            let answer = trickled(&addr, &head, 1000, Duration::from_millis(250)).await;
            let (status, _) = answer.expect("the trickled token request was never answered");
            assert!((400..500).contains(&status), "{status}");

            // A core-dump upload trickled past that deadline, within its own 30 s, is stored.
            let device = model_with_device(app, "slow").await;
            let head = coredump_head(&addr, &device, 24);
            let (status, body) = trickled(&addr, &head, 24, Duration::from_millis(150))
                .await
                .expect("an answer to the slow upload");
            assert_eq!(status, 201, "{body}");
            assert_eq!(count(app, "coredumps").await, 1);
        })
        .await;
}
