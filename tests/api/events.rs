//! The admin UI's live stream: first the version, then committed changes only, from every
//! `serve` process sharing the database.

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use iotsupport::http::error::ApiError;
use iotsupport::startup::BuildOptions;
use iotsupport::state::AppState;
use serde_json::{json, Value};

use crate::fleet::model_with_device;
use crate::helpers::*;

/// Reads `data:` messages from a `text/event-stream` response.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    /// The last id a page's script saw: browsers dispatch only messages with data (our UI
    /// listens to unnamed ones and `log-position`).
    script_id: Option<String>,
}

impl SseReader {
    pub async fn open(app: &TestApp) -> SseReader {
        Self::open_as(app, "01TEST").await
    }

    /// A stream with this `request_id` (the id live device logs are subscribed for).
    pub async fn open_as(app: &TestApp, request_id: &str) -> SseReader {
        Self::open_with(app, request_id, None).await
    }

    /// A stream resumed as a reconnecting `EventSource` does: `Last-Event-ID: last`.
    pub async fn resume(app: &TestApp, last: &str) -> SseReader {
        Self::open_with(app, "01TEST", Some(last)).await
    }

    /// A stream with this `request_id` resumed with `Last-Event-ID: last`.
    pub async fn resume_as(app: &TestApp, request_id: &str, last: &str) -> SseReader {
        Self::open_with(app, request_id, Some(last)).await
    }

    /// A stream with this `request_id` resumed from `last` given as the `last_event_id` query
    /// parameter (a new `EventSource` after the last one gave up).
    pub async fn resume_by_query(app: &TestApp, request_id: &str, last: &str) -> SseReader {
        let path = format!(
            "{request_id}&last_event_id={}",
            form_urlencoded::byte_serialize(last.as_bytes()).collect::<String>()
        );
        Self::open_with(app, &path, None).await
    }

    /// The id of the last message with data (what `event.lastEventId` showed a script).
    pub fn script_id(&self) -> Option<&str> {
        self.script_id.as_deref()
    }

    async fn open_with(app: &TestApp, request_id: &str, last: Option<&str>) -> SseReader {
        let mut request = app
            .client
            .get(app.url(&format!("/api/sse/stream?request_id={request_id}")));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        SseReader {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            script_id: None,
        }
    }

    /// The next `data:` payload, or `None` if nothing arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        self.next_with_id(wait).await.map(|(_, data)| data)
    }

    /// The next message with a `data:` payload, and its SSE `id` if it has one.
    pub async fn next_with_id(&mut self, wait: Duration) -> Option<(Option<String>, Value)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let message: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| -> Vec<String> {
                    message
                        .lines()
                        .filter_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                        .collect()
                };
                let data = field("data:");
                let id = field("id:").pop();
                if data.is_empty() {
                    continue;
                }
                if id.is_some() {
                    self.script_id = id.clone();
                }
                // A named message goes to its own listener, not to `onmessage`.
                if !field("event:").is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data.join("\n")).expect("data is JSON");
                return Some((id, data));
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        }
    }
}

async fn record_then_fail(State(state): State<AppState>) -> Result<(), ApiError> {
    let mut tx = state.db.begin().await?;
    iotsupport::events::record(
        &mut tx,
        "device_model_created",
        &json!({"id": -1, "code": "ghost"}),
    )
    .await?;
    Err(ApiError::validation(
        "deliberate failure after recording an event",
    ))
}

#[tokio::test]
async fn the_stream_starts_with_the_version_and_carries_committed_changes_only() {
    TestApp::builder("sse_committed")
        .options(|| BuildOptions {
            extra_routes: Some(Router::new().route("/test/ghost", post(record_then_fail))),
            ..Default::default()
        })
        .for_each_stack(async |app| {
            let mut stream = SseReader::open(app).await;
            let first = stream
                .next(Duration::from_secs(5))
                .await
                .expect("version event");
            assert_eq!(first["type"], "version");
            assert_eq!(first["payload"]["version"], env!("CARGO_PKG_VERSION"));

            assert_eq!(
                app.client
                    .post(app.url("/test/ghost"))
                    .send()
                    .await
                    .unwrap()
                    .status(),
                400
            );
            let (status, created) = app.create_model("live", "Live", None).await;
            assert_eq!(status, 201, "{created}");

            let event = stream
                .next(Duration::from_secs(10))
                .await
                .expect("model event");
            assert_eq!(event["type"], "device_model_created", "{event}");
            assert_eq!(
                event["payload"]["code"], "live",
                "the rolled-back event leaked: {event}"
            );

            let model_id = event["payload"]["id"].as_i64().unwrap();
            let (status, device) = app.create_device(model_id, "{}").await;
            assert_eq!(status, 201, "{device}");
            let event = stream
                .next(Duration::from_secs(10))
                .await
                .expect("device event");
            assert_eq!(event["type"], "device_created");
            assert!(event["payload"]["key"].is_string());
            assert!(
                event["payload"].get("device_secret").is_none(),
                "secrets never go on the stream"
            );
        })
        .await;
}

#[tokio::test]
async fn events_reach_subscribers_of_another_serve_process() {
    let Some(a) = spawn_app(Stack::Production, "sse_two_processes").await else {
        return;
    };
    let iotsupport::config::StorageConfig::S3(s3) = &a.state.config.storage else {
        panic!("S3 expected")
    };
    let url = a.state.config.database_url.expose().to_string();
    let bucket = s3.bucket.clone();
    let b = spawn_app_with(
        Stack::Production,
        "sse_two_processes",
        &[("DATABASE_URL", &url), ("S3_BUCKET_NAME", &bucket)],
        BuildOptions::default(),
    )
    .await
    .unwrap();
    let mut stream = SseReader::open(&b).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap()["type"],
        "version"
    );
    let (status, created) = a.create_model("elsewhere", "E", None).await;
    assert_eq!(status, 201, "{created}");
    let started = std::time::Instant::now();
    let event = stream
        .next(Duration::from_secs(10))
        .await
        .expect("event from process A");
    assert_eq!(event["payload"]["code"], "elsewhere");
    eprintln!("cross-process event latency: {:?}", started.elapsed());
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn the_stream_ends_when_the_server_shuts_down() {
    let Some(app) = spawn_app(Stack::Embedded, "sse_shutdown").await else {
        return;
    };
    let mut stream = SseReader::open(&app).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap()["type"],
        "version"
    );
    app.shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while stream.body.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "stream still open after shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(10), app.server).await;
}

#[tokio::test]
async fn core_dump_uploads_parses_and_deletes_reach_the_stream() {
    let Some(app) = spawn_app(Stack::Production, "sse_coredumps").await else {
        return;
    };
    let device = model_with_device(&app, "m").await;
    let mut stream = SseReader::open(&app).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap()["type"],
        "version"
    );

    let (status, uploaded) = app
        .iot_upload_coredump(
            &device.credential,
            "chip=esp32&firmware_version=1.0.0",
            "not a core dump",
        )
        .await;
    assert_eq!(status, 201, "{uploaded}");
    let stored = stream
        .next(Duration::from_secs(10))
        .await
        .expect("stored event");
    assert_eq!(stored["type"], "coredump_stored", "{stored}");
    let id = stored["payload"]["id"].as_i64().unwrap();
    // No firmware ELF was uploaded for 1.0.0: the parse ends in ERROR, and says so on the stream.
    let parsed = stream
        .next(Duration::from_secs(20))
        .await
        .expect("parsed event");
    assert_eq!(parsed["type"], "coredump_parsed", "{parsed}");
    assert_eq!(parsed["payload"]["id"], id);
    assert_eq!(parsed["payload"]["parse_status"], "ERROR");
    // Both say whose dump it is: a page of another device or model ignores them.
    for event in [&stored, &parsed] {
        assert_eq!(event["payload"]["device_id"], device.id, "{event}");
        assert_eq!(
            event["payload"]["device_model_id"], device.model_id,
            "{event}"
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "coredump_parse_duration_seconds_count{parser=\"builtin\",outcome=\"error\"}"
        ),
        "{metrics}"
    );

    assert_eq!(app.delete_coredump(device.id, id).await.0, 204);
    let deleted = stream
        .next(Duration::from_secs(10))
        .await
        .expect("deleted event");
    assert_eq!(deleted["type"], "coredump_deleted");
    assert_eq!(deleted["payload"]["ids"][0], id);
    app.stop().await;
}

/// The dumps retention prunes reach the stream as an admin's deletions do: a page open on one of
/// them (the report, the crash group's list) learns it is gone.
#[tokio::test]
async fn dumps_pruned_by_retention_reach_the_stream_as_deleted() {
    for_each_stack("sse_pruned", &[("MAX_COREDUMPS", "1")], async |app| {
        let device = model_with_device(app, "m").await;
        let mut stream = SseReader::open(app).await;
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (status, body) = app
                .iot_upload_coredump(
                    &device.credential,
                    "chip=esp32&firmware_version=1.0.0",
                    "not a core dump",
                )
                .await;
            assert_eq!(status, 201, "{body}");
            ids.push(body["coredump_id"].as_i64().expect("the dump's id"));
        }
        let mut seen = Vec::new();
        let deleted = loop {
            let event = stream.next(Duration::from_secs(20)).await;
            let event = event.unwrap_or_else(|| panic!("no coredump_deleted among {seen:?}"));
            if event["type"] == "coredump_deleted" {
                break event;
            }
            seen.push(event["type"].clone());
        };
        assert_eq!(deleted["payload"]["ids"], json!([ids[0]]), "{deleted}");
        assert_eq!(deleted["payload"]["device_id"], device.id, "{deleted}");
    })
    .await;
}

/// Event ids come from a sequence when the row is inserted, not when its transaction commits: a
/// change whose transaction took its id first but committed after a later one's still reaches the
/// stream (a subscriber reading "after the last id it sent" would skip it for good). Production
/// stack: SQLite has one writer at a time.
#[tokio::test]
async fn an_event_committed_after_a_later_one_still_reaches_the_stream() {
    let Some(app) = spawn_app(Stack::Production, "events_out_of_commit_order").await else {
        return;
    };
    let OutOfOrder {
        mut stream,
        slow,
        quick_id,
    } = out_of_order(&app).await;
    slow.commit().await.unwrap();
    let (slow_id, event) = stream
        .next_with_id(Duration::from_secs(10))
        .await
        .expect("the event committed last, with the smaller id");
    assert_eq!(event["payload"]["code"], "slow", "{event}");
    // The id a reconnecting client sends back never goes back: resuming from it must not send
    // the quick event again. The quick event's id also named the slow one as awaited
    // (`quick;slow`); the slow event's names nothing more.
    let (slow_id, quick_id) = (slow_id.expect("an id"), quick_id.expect("an id"));
    let (resume_at, awaited) = quick_id.split_once(';').expect("the slow id awaited");
    assert_eq!(slow_id, resume_at);
    assert!(awaited.parse::<i64>().unwrap() < resume_at.parse::<i64>().unwrap());
    app.stop().await;
}

/// The event in flight commits while the client is away: resuming with the last id it got
/// (which names the event it still awaited) delivers it. With only the highest id, the event's
/// row existed by then, nothing marked it as missing, and it was never sent.
#[tokio::test]
async fn an_event_that_committed_while_the_client_was_away_reaches_it_on_resume() {
    resume_around_a_late_commit("events_while_away", CommitLate::WhileAway).await;
}

/// The same across a reconnect: the stream dropped after the later event arrived, and the
/// reconnecting client resumes after it (`Last-Event-ID`); the event still in flight then reaches
/// the new stream when it commits.
#[tokio::test]
async fn an_event_in_flight_across_a_reconnect_still_reaches_the_stream() {
    resume_around_a_late_commit("events_across_reconnect", CommitLate::AfterResuming).await;
}

/// A client that reconnects before any event reached it (a deploy, a dropped network on a quiet
/// fleet) resumes as `EventSource` does, from the last id it got (the version message's), and
/// gets what committed while it was away. The version message had no id, the client sent no
/// `Last-Event-ID`, and the new stream started after the newest event: those were lost.
#[tokio::test]
async fn a_client_that_reconnects_before_any_event_gets_what_committed_meanwhile() {
    TestApp::builder("sse_quiet_reconnect")
        .for_each_stack(async |app| {
            let mut stream = SseReader::open(app).await;
            let (id, version) = stream.next_with_id(Duration::from_secs(5)).await.unwrap();
            assert_eq!(version["type"], "version");
            drop(stream);
            let (status, created) = app.create_model("while_away", "Away", None).await;
            assert_eq!(status, 201, "{created}");
            let mut resumed = match id.as_deref() {
                Some(id) => SseReader::resume(app, id).await,
                None => SseReader::open(app).await,
            };
            assert_eq!(
                resumed.next(Duration::from_secs(5)).await.unwrap()["type"],
                "version"
            );
            let event = resumed
                .next(Duration::from_secs(5))
                .await
                .expect("the event committed while the client was away");
            assert_eq!(event["payload"]["code"], "while_away", "{event}");
        })
        .await;
}

/// An id past every event (the database was restored to an earlier point since the client got
/// it) starts the stream at the newest event: new events reach it, though their ids are lower.
#[tokio::test]
async fn a_resume_id_past_every_event_starts_at_the_newest() {
    TestApp::builder("sse_resume_past_newest")
        .for_each_stack(async |app| {
            let mut stream = SseReader::resume(app, "900000;899990").await;
            let (id, version) = stream.next_with_id(Duration::from_secs(5)).await.unwrap();
            assert_eq!(version["type"], "version");
            assert_eq!(
                id.as_deref(),
                Some("0"),
                "the stream starts at the newest event"
            );
            let (status, created) = app.create_model("after_restore", "Restored", None).await;
            assert_eq!(status, 201, "{created}");
            let event = stream
                .next(Duration::from_secs(5))
                .await
                .expect("a new event with a lower id");
            assert_eq!(event["payload"]["code"], "after_restore", "{event}");
        })
        .await;
}

/// When the slow transaction of [`out_of_order`] commits, relative to the reconnect.
#[derive(PartialEq)]
enum CommitLate {
    WhileAway,
    AfterResuming,
}

/// Drops the stream after the quick event, resumes with its id, and expects the slow event.
async fn resume_around_a_late_commit(test: &str, when: CommitLate) {
    let Some(app) = spawn_app(Stack::Production, test).await else {
        return;
    };
    let OutOfOrder {
        stream,
        slow,
        quick_id,
    } = out_of_order(&app).await;
    drop(stream);
    let mut slow = Some(slow);
    if when == CommitLate::WhileAway {
        slow.take().unwrap().commit().await.unwrap();
    }
    let mut resumed = SseReader::resume(&app, &quick_id.expect("an id")).await;
    assert_eq!(
        resumed.next(Duration::from_secs(5)).await.unwrap()["type"],
        "version"
    );
    if let Some(slow) = slow {
        slow.commit().await.unwrap();
    }
    let event = resumed
        .next(Duration::from_secs(10))
        .await
        .expect("the event committed late, with the smaller id");
    assert_eq!(event["payload"]["code"], "slow", "{event}");
    app.stop().await;
}

/// A stream that has received the event of a transaction that took its id after `slow`'s, while
/// `slow` is still open.
struct OutOfOrder {
    stream: SseReader,
    slow: iotsupport::db::Tx,
    /// The SSE id the quick event came with.
    quick_id: Option<String>,
}

async fn out_of_order(app: &TestApp) -> OutOfOrder {
    let mut stream = SseReader::open(app).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap()["type"],
        "version"
    );
    let mut slow = app.db().begin().await.unwrap();
    record_model_event(&mut slow, "slow").await;
    let mut quick = app.db().begin().await.unwrap();
    record_model_event(&mut quick, "quick").await;
    quick.commit().await.unwrap();
    let (quick_id, event) = stream
        .next_with_id(Duration::from_secs(10))
        .await
        .expect("the quick event");
    assert_eq!(event["payload"]["code"], "quick", "{event}");
    OutOfOrder {
        stream,
        slow,
        quick_id,
    }
}

async fn record_model_event(tx: &mut iotsupport::db::Tx, code: &str) {
    iotsupport::events::record(tx, "device_model_created", &json!({"code": code}))
        .await
        .unwrap();
}

#[tokio::test]
async fn live_streams_take_at_most_half_the_connections() {
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "stream_slots",
        &[("HTTP_MAX_CONNECTIONS", "8")],
        Default::default(),
    )
    .await
    else {
        return;
    };
    // Streams never end on their own: four of the eight connections, then 503.
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(SseReader::open(&app).await);
    }
    let refused = app.get("/api/sse/stream?request_id=fifth").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(app.get("/health/healthz").await.status(), 200);
    // A stream's place is given back when it ends.
    drop(open);
    let reopened = eventually(Duration::from_secs(40), || async {
        app.get("/api/sse/stream?request_id=again").await.status() == 200
    })
    .await;
    assert!(reopened, "the closed streams kept their places");
    app.stop().await;
}

/// Forwards every connection made to `port` on 127.0.0.1 to `target` (`host:port`), from now on.
async fn forward(port: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarding port");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test]
async fn a_listen_that_failed_at_start_is_made_once_the_database_answers() {
    let Some((admin_url, _)) = production_services("listen_retried") else {
        return;
    };
    // The database behind a port that nothing answers on yet (a process started before it).
    let (prefix, rest) = admin_url.split_once('@').expect("a URL with credentials");
    let (address, path) = rest.split_once('/').expect("a URL with a database");
    let port = free_port();
    let late_url = format!("{prefix}@127.0.0.1:{port}/{path}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&late_url)
        .unwrap();
    let db = iotsupport::db::Db::Postgres(pool);
    let mut listen = iotsupport::db::listen::Listen::start(&db, "listen_test", "test").await;
    assert!(listen.listener().is_none(), "nothing answers yet");

    // The database comes up; the next try after the back-off makes the LISTEN.
    let _forwarding = forward(port, address.to_string()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while listen.listener().is_none() {
        assert!(std::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
        listen.retry(&db).await;
    }
    // And it hears notifications.
    let mut direct = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query("NOTIFY listen_test, 'hello'")
        .execute(&mut direct)
        .await
        .unwrap();
    let heard = tokio::time::timeout(
        Duration::from_secs(10),
        listen.listener().expect("listening").recv(),
    )
    .await
    .expect("a notification within 10 s")
    .unwrap();
    assert_eq!(heard.payload(), "hello");
}
