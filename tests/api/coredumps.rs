//! Core dump upload by devices and management by admins (issue #5): the checks in order, the
//! 413 before reading, golden rule 1 under an S3 outage, retention through the outbox, scoping
//! of devices and admin URLs, list/get/download/delete. Parsing is in `coredump_parse.rs`, the
//! sidecar in `coredump_sidecar.rs`; the helpers here are shared with both.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iotsupport::jobs::worker::JobRunner;
use iotsupport::layout::coredump_key;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::{ObjectKey, Operation};
use serde_json::{json, Value};

pub use crate::fleet::{device_of, model_with_device, TestDevice};
use crate::helpers::*;

/// `POST /api/iot/coredump?{query}` as `device`.
pub async fn upload(
    app: &TestApp,
    device: &TestDevice,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(&format!("/api/iot/coredump?{query}")))
        .bearer_auth(&device.credential)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads a dump that must be accepted; returns its id.
pub async fn upload_ok(app: &TestApp, device: &TestDevice, version: &str, dump: &[u8]) -> i64 {
    let (status, body) = upload(
        app,
        device,
        &format!("chip=esp32&firmware_version={version}"),
        dump.to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["coredump_id"].as_i64().unwrap()
}

pub async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn send(app: &TestApp, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = app
        .client
        .request(method, app.url(path))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn count(app: &TestApp, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(sql).fetch_one(p).await).unwrap()
}

pub async fn objects(app: &TestApp, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = app
        .state
        .storage
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    keys
}

pub async fn dump(app: &TestApp, device: &TestDevice, id: i64) -> Value {
    let (status, body) = get_json(app, &format!("/api/devices/{}/coredumps/{id}", device.id)).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until dump `id` has left `PENDING` and returns it.
pub async fn settled(app: &TestApp, device: &TestDevice, id: i64, within: Duration) -> Value {
    let done = eventually(within, || async {
        dump(app, device, id).await["parse_status"] != "PENDING"
    })
    .await;
    let body = dump(app, device, id).await;
    assert!(done, "still PENDING: {body}");
    body
}

/// Runs one due job with the default handlers built from the app's own state and config.
pub async fn run_one_job(app: &TestApp) -> Option<iotsupport::jobs::JobOutcome> {
    let handlers = iotsupport::coredumps::default_job_handlers(&app.state);
    let runner = JobRunner::new(app.db().clone(), handlers, Duration::from_secs(60));
    runner.run_one().await.unwrap().map(|(_, outcome)| outcome)
}

/// Makes every queued job due now (skips the retry backoff).
pub async fn make_jobs_due(app: &TestApp) {
    let now = iotsupport::db::now();
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "UPDATE jobs SET run_at = $1 WHERE status = 'queued'"
    )
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
}

/// An app whose workers do not parse: jobs stay queued until a test runs them.
pub async fn spawn_app_without_parsing(
    stack: Stack,
    test: &str,
    overrides: &[(&str, &str)],
) -> Option<TestApp> {
    let options = iotsupport::startup::BuildOptions {
        without_default_job_handlers: true,
        ..Default::default()
    };
    spawn_app_with(stack, test, overrides, options).await
}

/// One case of the ESP test data (`../shared/testdata/esp/coredump/<case>`), never copied into
/// the repository: (dump bytes, firmware ELF bytes), or `None` with a SKIP line.
pub fn testdata_case(case: &str, dump_file: &str, elf_file: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let dir = testdata_dir()?.join(case);
    match (
        std::fs::read(dir.join(dump_file)),
        std::fs::read(dir.join(elf_file)),
    ) {
        (Ok(dump), Ok(elf)) => Some((dump, elf)),
        _ => {
            eprintln!("SKIP: ESP testdata case {} is incomplete", dir.display());
            None
        }
    }
}

/// `../shared/testdata/esp/coredump`, or `None` with a SKIP line.
pub fn testdata_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/esp/coredump");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: ESP testdata not found at {}", dir.display());
        None
    }
}

/// Stores a model's firmware ELF directly (the firmware upload API is tested elsewhere).
pub async fn put_elf(app: &TestApp, code: &str, version: &str, elf: Vec<u8>) {
    let key = ObjectKey::parse(format!("firmware/{code}/{version}/firmware.elf")).unwrap();
    app.state.storage.put(&key, Bytes::from(elf)).await.unwrap();
}

/// Log lines written while the guard lives, for asserting structured log events.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// `tracing` caches each callsite's interest process-wide. While only one scoped subscriber
/// exists it asks just the *current thread's* subscriber, so an event first reached by another
/// test's thread (which has none) is cached as "never" and a test's own subscriber misses it. A
/// second, permanent scoped dispatcher makes `tracing` ask every registered subscriber instead.
fn make_tracing_ask_every_subscriber() {
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

#[tokio::test]
async fn a_device_uploads_a_dump_that_is_stored_queued_for_parsing_and_logged() {
    make_tracing_ask_every_subscriber();
    for stack in ALL_STACKS {
        // The test runtime is single-threaded, so the server's events reach this subscriber.
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let Some(app) = spawn_app_without_parsing(stack, "coredump_ingest", &[]).await else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let content = b"\x01\x02core dump bytes\xff".to_vec();
        let (status, body) = upload(
            &app,
            &device,
            "chip=esp32s3&firmware_version=1.2.3",
            content.clone(),
        )
        .await;
        assert_eq!(status, 201, "{stack:?}: {body}");
        let id = body["coredump_id"].as_i64().unwrap();
        assert_eq!(body, json!({"status": "ok", "coredump_id": id}));

        let key = coredump_key(&device.key, id).unwrap();
        let stored = app.state.storage.get(&key, None).await.unwrap();
        assert_eq!(stored.bytes().await.unwrap().as_ref(), content.as_slice());

        let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(jobs[0].kind, "parse_coredump");
        assert_eq!(
            serde_json::from_str::<Value>(&jobs[0].payload).unwrap(),
            json!({"coredump_id": id})
        );
        assert_eq!(jobs[0].status, "queued");

        let (status, list) = get_json(&app, &format!("/api/devices/{}/coredumps", device.id)).await;
        assert_eq!(status, 200);
        assert_eq!(list["count"], 1);
        let item = &list["coredumps"][0];
        let mut fields: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "chip",
                "created_at",
                "device_id",
                "firmware_version",
                "id",
                "parse_status",
                "parsed_at",
                "size",
                "uploaded_at"
            ]
        );
        assert_eq!(item["chip"], "esp32s3");
        assert_eq!(item["firmware_version"], "1.2.3");
        assert_eq!(item["size"], content.len());
        assert_eq!(item["parse_status"], "PENDING");
        assert_eq!(item["parsed_at"], Value::Null);
        assert!(
            item["uploaded_at"].as_str().unwrap().ends_with('Z'),
            "{item}"
        );

        let detail = dump(&app, &device, id).await;
        assert!(detail.get("filename").is_none(), "{detail}");
        assert_eq!(detail["parsed_output"], Value::Null);
        assert_eq!(detail["report"], Value::Null);
        assert!(detail["updated_at"].is_string());

        let log = logs.text();
        let line = log
            .lines()
            .find(|l| l.contains("\"coredump_s3_upload\""))
            .unwrap_or_else(|| panic!("{stack:?}: no coredump_s3_upload log in {log}"));
        let event: Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["device_key"], device.key.as_str(), "{line}");
        assert_eq!(event["coredump_id"], id, "{line}");
        assert_eq!(event["s3_key"], key.as_str(), "{line}");
        assert_eq!(event["size"], content.len(), "{line}");
        app.stop().await;
    }
}

#[tokio::test]
async fn uploads_are_checked_in_the_python_services_order_and_refusals_write_nothing() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_without_parsing(stack, "coredump_checks", &[]).await else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let long = "x".repeat(51);
        let cases: Vec<(String, &[u8], &str)> = vec![
            // Everything wrong at once: the chip is reported first.
            (String::new(), b"", "Missing required query parameter: chip"),
            (
                "chip=".into(),
                b"dump",
                "Missing required query parameter: chip",
            ),
            (
                "chip=esp32".into(),
                b"",
                "Missing required query parameter: firmware_version",
            ),
            (
                "chip=esp32&firmware_version=".into(),
                b"dump",
                "Missing required query parameter: firmware_version",
            ),
            (
                format!("chip={long}&firmware_version=1.0"),
                b"dump",
                "chip must be at most 50 characters",
            ),
            (
                format!("chip=esp32&firmware_version={long}"),
                b"dump",
                "must be at most 50 characters",
            ),
            (
                "chip=esp32&firmware_version=..%2F..%2Fetc".into(),
                b"dump",
                "must not contain",
            ),
            (
                "chip=esp32&firmware_version=1.0%0A".into(),
                b"dump",
                "must not contain control characters",
            ),
            (
                "chip=esp32&firmware_version=1.0".into(),
                b"",
                "No coredump content provided",
            ),
        ];
        for (query, body, expected) in cases {
            let (status, response) = upload(&app, &device, &query, body.to_vec()).await;
            assert_eq!(status, 400, "{stack:?} {query}: {response}");
            assert_eq!(response["code"], "VALIDATION_FAILED");
            let message = response["error"].as_str().unwrap();
            assert!(
                message.contains(expected),
                "{stack:?} {query}: {message:?} lacks {expected:?}"
            );
        }
        assert_eq!(count(&app, "coredumps").await, 0);
        assert_eq!(count(&app, "jobs").await, 0);
        assert!(objects(&app, "coredumps").await.is_empty());
        assert_eq!(app.faults.calls(Operation::Put), 0, "nothing uploaded");
        app.stop().await;
    }
}

#[tokio::test]
async fn an_oversized_dump_is_refused_with_413_without_reading_past_the_limit() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_without_parsing(
            stack,
            "coredump_too_large",
            &[("MAX_COREDUMP_BYTES", "1024")],
        )
        .await
        else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let query = "chip=esp32&firmware_version=1.0";

        // Refused from Content-Length alone.
        let (status, body) = upload(&app, &device, query, vec![7u8; 4096]).await;
        assert_eq!(status, 413, "{stack:?}: {body}");
        assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");

        // Chunked, with no Content-Length: refused once the stream passes the limit. The stream
        // would go on for 64 MiB; the server must answer long before it ends.
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let chunks = futures::stream::iter((0..1024).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 64 * 1024]))
        }));
        let response = app
            .client
            .post(app.url(&format!("/api/iot/coredump?{query}")))
            .bearer_auth(&device.credential)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await;
        match response {
            Ok(r) => assert_eq!(r.status(), 413, "{stack:?}"),
            // The server may close the connection after answering, before the client noticed.
            Err(e) => assert!(
                e.is_request() || e.is_body(),
                "{stack:?}: unexpected error {e}"
            ),
        }
        let pulled = pulled.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            pulled < 1024,
            "{stack:?}: the whole 64 MiB body was sent ({pulled} chunks)"
        );

        // Exactly at the limit is fine.
        let (status, body) = upload(&app, &device, query, vec![7u8; 1024]).await;
        assert_eq!(status, 201, "{stack:?}: {body}");
        assert_eq!(count(&app, "coredumps").await, 1);
        assert_eq!(count(&app, "jobs").await, 1);
        assert_eq!(objects(&app, "coredumps").await.len(), 1);
        app.stop().await;
    }
}

#[tokio::test]
async fn uploads_beyond_the_concurrency_limit_are_refused_with_503_and_write_nothing() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_without_parsing(
            stack,
            "coredump_busy",
            &[("MAX_CONCURRENT_COREDUMP_UPLOADS", "1")],
        )
        .await
        else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let query = "chip=esp32&firmware_version=1.0";

        // A slow device holds the only permit: the rest of its body comes when the test says so.
        let (more, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        more.send(Ok(Bytes::from_static(b"first half, ")))
            .await
            .unwrap();
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        let slow = tokio::spawn(
            app.client
                .post(app.url(&format!("/api/iot/coredump?{query}")))
                .bearer_auth(&device.credential)
                .body(reqwest::Body::wrap_stream(body))
                .send(),
        );

        // Once the server holds its permit (and waits for the rest of the body), the next upload
        // is refused before its body is read.
        let held = eventually(Duration::from_secs(20), || async {
            app.state.coredump_uploads.available_permits() == 0
        })
        .await;
        assert!(held, "{stack:?}: the slow upload never started");
        let (status, body) = upload(&app, &device, query, b"quick".to_vec()).await;
        assert_eq!(status, 503, "{stack:?}: {body}");
        assert_eq!(
            body["error"],
            "Too many core dump uploads are in progress; retry later"
        );
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");

        // The slow one finishes and is stored; the permit is free again.
        more.send(Ok(Bytes::from_static(b"second half")))
            .await
            .unwrap();
        drop(more);
        let response = slow.await.unwrap().unwrap();
        assert_eq!(response.status(), 201, "{stack:?}");
        let slow_id = response.json::<Value>().await.unwrap()["coredump_id"].clone();
        upload_ok(&app, &device, "1.0", b"after").await;

        // The refused upload wrote nothing: two rows, two jobs, two objects.
        assert_eq!(count(&app, "coredumps").await, 2, "{stack:?}");
        assert_eq!(count(&app, "jobs").await, 2, "{stack:?}");
        assert_eq!(objects(&app, "coredumps").await.len(), 2);
        let (_, dump) = get_json(
            &app,
            &format!("/api/devices/{}/coredumps/{slow_id}", device.id),
        )
        .await;
        assert_eq!(dump["size"], b"first half, second half".len(), "{dump}");
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains("coredump_uploads_refused_total"),
            "{stack:?}: refusals are counted"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn an_object_store_outage_during_upload_is_a_503_that_commits_nothing() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_without_parsing(stack, "coredump_s3_down", &[]).await else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        app.faults.inject(Fault::always(Operation::Put));
        let (status, body) = upload(
            &app,
            &device,
            "chip=esp32&firmware_version=1.0",
            b"dump".to_vec(),
        )
        .await;
        assert_eq!(status, 503, "{stack:?}: {body}");
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
        assert_eq!(count(&app, "coredumps").await, 0);
        assert_eq!(count(&app, "jobs").await, 0);
        assert!(objects(&app, "coredumps").await.is_empty());

        app.faults.heal();
        let id = upload_ok(&app, &device, "1.0", b"dump").await;
        assert!(app
            .state
            .storage
            .head(&coredump_key(&device.key, id).unwrap())
            .await
            .is_ok());
        assert_eq!(count(&app, "coredumps").await, 1);
        app.stop().await;
    }
}

#[tokio::test]
async fn retention_keeps_the_newest_dumps_of_each_device_and_deletes_the_rest_via_the_outbox() {
    for stack in ALL_STACKS {
        let Some(app) =
            spawn_app_without_parsing(stack, "coredump_retention", &[("MAX_COREDUMPS", "2")]).await
        else {
            continue;
        };
        let a = model_with_device(&app, "sensor").await;
        let b = device_of(&app, a.model_id).await;
        let other = upload_ok(&app, &b, "1.0", b"b's dump").await;
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(upload_ok(&app, &a, "1.0", format!("dump {n}").as_bytes()).await);
        }
        // The oldest row went in the third upload's transaction.
        let (_, list) = get_json(&app, &format!("/api/devices/{}/coredumps", a.id)).await;
        let listed: Vec<i64> = list["coredumps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_i64().unwrap())
            .collect();
        assert_eq!(listed, [ids[2], ids[1]], "{stack:?}: newest first");
        assert_eq!(list["count"], 2);
        // Its parse, still queued, was withdrawn with it; the others wait.
        let mut queued: Vec<i64> = iotsupport::jobs::list(app.db())
            .await
            .unwrap()
            .iter()
            .map(|j| {
                serde_json::from_str::<Value>(&j.payload).unwrap()["coredump_id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        queued.sort();
        let mut expected = vec![other, ids[1], ids[2]];
        expected.sort();
        assert_eq!(queued, expected, "{stack:?}");
        // Its object follows through the outbox.
        let oldest = coredump_key(&a.key, ids[0]).unwrap();
        let gone = eventually(Duration::from_secs(10), || async {
            app.state.storage.head(&oldest).await.is_err()
        })
        .await;
        assert!(gone, "{stack:?}: pruned object still there");
        for id in &ids[1..] {
            let key = coredump_key(&a.key, *id).unwrap();
            assert!(app.state.storage.head(&key).await.is_ok());
        }
        // Another device's dumps are not counted against this one.
        let (_, list) = get_json(&app, &format!("/api/devices/{}/coredumps", b.id)).await;
        assert_eq!(list["coredumps"][0]["id"], other);
        assert_eq!(
            get_json(&app, &format!("/api/devices/{}/coredumps/{}", a.id, ids[0]))
                .await
                .0,
            404
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn devices_act_only_as_themselves_and_admin_urls_are_scoped_to_their_device() {
    let token = "admin-token-for-tests-0123456789";
    let Some(app) = spawn_app_without_parsing(
        Stack::Production,
        "coredump_scoping",
        &[("ADMIN_TOKEN", token)],
    )
    .await
    else {
        return;
    };
    let admin = |method: reqwest::Method, path: &str| {
        app.client.request(method, app.url(path)).bearer_auth(token)
    };
    let model: Value = admin(reqwest::Method::POST, "/api/device-models")
        .json(&json!({"code": "sensor", "name": "S"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut devices = Vec::new();
    for _ in 0..2 {
        let body: Value = admin(reqwest::Method::POST, "/api/devices")
            .json(&json!({"device_model_id": model["id"], "config": "{}"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = body["key"].as_str().unwrap().to_string();
        devices.push(TestDevice {
            id: body["id"].as_i64().unwrap(),
            credential: format!("{key}.{}", body["device_secret"].as_str().unwrap()),
            key,
            model_id: model["id"].as_i64().unwrap(),
        });
    }
    let (a, b) = (&devices[0], &devices[1]);
    let query = "chip=esp32&firmware_version=1.0";

    // A's secret with B's key, no credential, the admin token: all refused, nothing written.
    let secret_of_a = a.credential.split_once('.').unwrap().1;
    let impostor = TestDevice {
        credential: format!("{}.{secret_of_a}", b.key),
        ..b.clone()
    };
    assert_eq!(upload(&app, &impostor, query, b"x".to_vec()).await.0, 401);
    let anonymous = app
        .client
        .post(app.url(&format!("/api/iot/coredump?{query}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let with_admin_token = TestDevice {
        credential: token.to_string(),
        ..a.clone()
    };
    assert_eq!(
        upload(&app, &with_admin_token, query, b"x".to_vec())
            .await
            .0,
        401
    );
    assert_eq!(count(&app, "coredumps").await, 0);

    // A device uploads as itself only: the dump is A's.
    let id = upload_ok(&app, a, "1.0", b"a's dump").await;
    let rows: Vec<i64> = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT device_id FROM coredumps"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    assert_eq!(rows, [a.id]);

    // Devices cannot read dumps through the admin API.
    let as_device = app
        .client
        .get(app.url(&format!("/api/devices/{}/coredumps", a.id)))
        .bearer_auth(&a.credential)
        .send()
        .await
        .unwrap();
    assert_eq!(as_device.status(), 401);

    // A's dump under B's URL does not exist, whatever the route.
    let under_b = format!("/api/devices/{}/coredumps/{id}", b.id);
    for (method, path) in [
        (reqwest::Method::GET, under_b.clone()),
        (reqwest::Method::GET, format!("{under_b}/download")),
        (reqwest::Method::POST, format!("{under_b}/reparse")),
        (reqwest::Method::DELETE, under_b.clone()),
    ] {
        let response = admin(method.clone(), &path).send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], format!("Coredump {id} was not found"));
        assert_eq!(body["code"], "RECORD_NOT_FOUND");
    }
    let list: Value = admin(
        reqwest::Method::GET,
        &format!("/api/devices/{}/coredumps", b.id),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(list["count"], 0);
    let response = admin(
        reqwest::Method::DELETE,
        &format!("/api/devices/{}/coredumps", b.id),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(count(&app, "coredumps").await, 1, "A's dump survives");

    // Unknown devices are named.
    for (method, path) in [
        (
            reqwest::Method::GET,
            "/api/devices/9999/coredumps".to_string(),
        ),
        (
            reqwest::Method::DELETE,
            "/api/devices/9999/coredumps".into(),
        ),
        (
            reqwest::Method::GET,
            format!("/api/devices/9999/coredumps/{id}"),
        ),
    ] {
        let response = admin(method.clone(), &path).send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "Device 9999 was not found");
    }
    // The admin still reads A's dump with the token.
    let ok = admin(
        reqwest::Method::GET,
        &format!("/api/devices/{}/coredumps/{id}", a.id),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn admins_download_dumps_whole_or_by_range() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_without_parsing(stack, "coredump_download", &[]).await else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let content: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let id = upload_ok(&app, &device, "1.0", &content).await;
        let path = format!("/api/devices/{}/coredumps/{id}/download", device.id);

        let response = app.get(&path).await;
        assert_eq!(response.status(), 200, "{stack:?}");
        assert_eq!(
            response.headers()["content-disposition"],
            format!("attachment; filename=coredump_{id}.dmp").as_str()
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        assert_eq!(response.bytes().await.unwrap().as_ref(), content.as_slice());

        let response = app
            .client
            .get(app.url(&path))
            .header("range", "bytes=100-199")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206, "{stack:?}");
        assert_eq!(response.headers()["content-range"], "bytes 100-199/5000");
        assert_eq!(response.bytes().await.unwrap().as_ref(), &content[100..200]);
        let ranged = app
            .faults
            .gets()
            .into_iter()
            .any(|(key, range)| key.ends_with(&format!("/{id}.dmp")) && range.is_some());
        assert!(
            ranged,
            "the range is asked of the store, not cut from a full read"
        );

        let response = app
            .client
            .get(app.url(&path))
            .header("range", "bytes=6000-")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 416);

        let response = app.client.head(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-length"], "5000");

        // The object store being down is a 503, not a 404.
        app.faults.inject(Fault::always(Operation::Get));
        assert_eq!(app.get(&path).await.status(), 503);
        app.faults.heal();
        assert_eq!(
            app.get(&format!(
                "/api/devices/{}/coredumps/{}/download",
                device.id,
                id + 1
            ))
            .await
            .status(),
            404
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn admins_delete_one_dump_or_all_and_the_objects_follow_through_the_outbox() {
    for stack in ALL_STACKS {
        let Some(app) = spawn_app_without_parsing(stack, "coredump_delete", &[]).await else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(upload_ok(&app, &device, "1.0", format!("dump {n}").as_bytes()).await);
        }
        let one = format!("/api/devices/{}/coredumps/{}", device.id, ids[0]);
        assert_eq!(send(&app, reqwest::Method::DELETE, &one).await.0, 204);
        let (status, body) = send(&app, reqwest::Method::DELETE, &one).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"], format!("Coredump {} was not found", ids[0]));
        assert_eq!(count(&app, "coredumps").await, 2);
        let first = coredump_key(&device.key, ids[0]).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || async {
                app.state.storage.head(&first).await.is_err()
            })
            .await,
            "{stack:?}: deleted dump's object left behind"
        );

        // The store being down does not block the delete; the outbox catches up later.
        app.faults.inject(Fault::always(Operation::Delete));
        let all = format!("/api/devices/{}/coredumps", device.id);
        assert_eq!(send(&app, reqwest::Method::DELETE, &all).await.0, 204);
        assert_eq!(count(&app, "coredumps").await, 0);
        let (_, list) = get_json(&app, &all).await;
        assert_eq!(list, json!({"coredumps": [], "count": 0}));
        app.faults.heal();
        // Outbox retries back off (5 s first); make them due now.
        let now = iotsupport::db::now();
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE object_deletions SET next_attempt_at = $1"
        )
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        assert!(
            eventually(Duration::from_secs(10), || async {
                objects(&app, "coredumps").await.is_empty()
            })
            .await,
            "{stack:?}: objects left behind"
        );
        app.stop().await;
    }
}
