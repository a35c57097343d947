//! Core dump uploads by devices (issue #5): stored, queued for parsing and logged; the Python
//! service's checks in order; 413 before reading past the limit; 503 beyond the concurrency
//! limit; golden rule 1 under an S3 outage. After every refusal, nothing is written.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use iotsupport::layout::coredump_key;
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::Operation;
use serde_json::{json, Value};

use crate::coredumps::*;
use crate::helpers::*;

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
    let builder = TestApp::builder("coredump_ingest").without_default_job_handlers();
    builder
        .for_each_stack(async |app| {
            // The test runtime is single-threaded, so the server's events reach this subscriber.
            let logs = Captured::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_writer(move || writer.clone())
                .finish();
            let _guard = tracing::subscriber::set_default(subscriber);

            let device = model_with_device(app, "sensor").await;
            let content = b"\x01\x02core dump bytes\xff".to_vec();
            let (status, body) = upload(
                app,
                &device,
                "chip=esp32s3&firmware_version=1.2.3",
                content.clone(),
            )
            .await;
            assert_eq!(status, 201, "{body}");
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

            let (status, list) = app.list_coredumps(device.id).await;
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
                    "crash_group_id",
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
            assert_eq!(
                item["crash_group_id"],
                Value::Null,
                "not grouped until parsed"
            );
            assert!(
                item["uploaded_at"].as_str().unwrap().ends_with('Z'),
                "{item}"
            );

            let detail = dump(app, &device, id).await;
            assert!(detail.get("filename").is_none(), "{detail}");
            assert_eq!(detail["parsed_output"], Value::Null);
            assert_eq!(detail["report"], Value::Null);
            assert!(detail["updated_at"].is_string());

            let log = logs.text();
            let line = log
                .lines()
                .find(|l| l.contains("\"coredump_s3_upload\""))
                .unwrap_or_else(|| panic!("no coredump_s3_upload log in {log}"));
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["device_key"], device.key.as_str(), "{line}");
            assert_eq!(event["coredump_id"], id, "{line}");
            assert_eq!(event["s3_key"], key.as_str(), "{line}");
            assert_eq!(event["size"], content.len(), "{line}");
        })
        .await;
}

#[tokio::test]
async fn uploads_are_checked_in_the_python_services_order_and_refusals_write_nothing() {
    TestApp::builder("coredump_checks")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
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
                let (status, response) = upload(app, &device, &query, body.to_vec()).await;
                assert_eq!(status, 400, "{query}: {response}");
                assert_eq!(response["code"], "VALIDATION_FAILED");
                let message = response["error"].as_str().unwrap();
                assert!(
                    message.contains(expected),
                    "{query}: {message:?} lacks {expected:?}"
                );
            }
            assert_eq!(count(app, "coredumps").await, 0);
            assert_eq!(count(app, "jobs").await, 0);
            assert!(objects(app, "coredumps").await.is_empty());
            assert_eq!(app.faults.calls(Operation::Put), 0, "nothing uploaded");
        })
        .await;
}

#[tokio::test]
async fn an_oversized_dump_is_refused_with_413_without_reading_past_the_limit() {
    TestApp::builder("coredump_too_large")
        .env("MAX_COREDUMP_BYTES", "1024")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
            let query = "chip=esp32&firmware_version=1.0";

            // Refused from Content-Length alone.
            let (status, body) = upload(app, &device, query, vec![7u8; 4096]).await;
            assert_eq!(status, 413, "{body}");
            assert_eq!(body["code"], "PAYLOAD_TOO_LARGE");

            // Chunked, with no Content-Length: refused once the stream passes the limit. The stream
            // would go on for 64 MiB; the server must answer long before it ends.
            let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = pulled.clone();
            let chunks = futures::stream::iter((0..1024).map(move |_| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 64 * 1024]))
            }));
            let path = format!("/api/iot/coredump?{query}");
            let response = app
                .device_request(Method::POST, &path, &device.credential)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await;
            match response {
                Ok(r) => assert_eq!(r.status(), 413),
                // The server may close the connection after answering, before the client noticed.
                Err(e) => assert!(e.is_request() || e.is_body(), "unexpected error {e}"),
            }
            let pulled = pulled.load(std::sync::atomic::Ordering::SeqCst);
            assert!(
                pulled < 1024,
                "the whole 64 MiB body was sent ({pulled} chunks)"
            );

            // Exactly at the limit is fine.
            let (status, body) = upload(app, &device, query, vec![7u8; 1024]).await;
            assert_eq!(status, 201, "{body}");
            assert_eq!(count(app, "coredumps").await, 1);
            assert_eq!(count(app, "jobs").await, 1);
            assert_eq!(objects(app, "coredumps").await.len(), 1);
        })
        .await;
}

#[tokio::test]
async fn uploads_beyond_the_concurrency_limit_are_refused_with_503_and_write_nothing() {
    TestApp::builder("coredump_busy")
        .env("MAX_CONCURRENT_COREDUMP_UPLOADS", "1")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
            let query = "chip=esp32&firmware_version=1.0";

            // A slow device holds the only permit: the rest of its body comes when the test says
            // so.
            let (more, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            more.send(Ok(Bytes::from_static(b"first half, ")))
                .await
                .unwrap();
            let body = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            });
            let path = format!("/api/iot/coredump?{query}");
            let slow = tokio::spawn(
                app.device_request(Method::POST, &path, &device.credential)
                    .body(reqwest::Body::wrap_stream(body))
                    .send(),
            );

            // Once the server holds its permit (and waits for the rest of the body), the next
            // upload is refused before its body is read.
            let held = eventually(Duration::from_secs(20), || async {
                app.state.coredump_uploads.available_permits() == 0
            })
            .await;
            assert!(held, "the slow upload never started");
            let (status, body) = upload(app, &device, query, b"quick".to_vec()).await;
            assert_eq!(status, 503, "{body}");
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
            assert_eq!(response.status(), 201);
            let slow_id = response.json::<Value>().await.unwrap()["coredump_id"].clone();
            upload_ok(app, &device, "1.0", b"after").await;

            // The refused upload wrote nothing: two rows, two jobs, two objects.
            assert_eq!(count(app, "coredumps").await, 2);
            assert_eq!(count(app, "jobs").await, 2);
            assert_eq!(objects(app, "coredumps").await.len(), 2);
            let (_, dump) = app.get_coredump(device.id, slow_id.as_i64().unwrap()).await;
            assert_eq!(dump["size"], b"first half, second half".len(), "{dump}");
            let metrics = app.metrics().await;
            assert!(
                metrics.contains("coredump_uploads_refused_total"),
                "refusals are counted"
            );
        })
        .await;
}

#[tokio::test]
async fn an_object_store_outage_during_upload_is_a_503_that_commits_nothing() {
    TestApp::builder("coredump_s3_down")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
            app.faults.inject(Fault::always(Operation::Put));
            let (status, body) = upload(
                app,
                &device,
                "chip=esp32&firmware_version=1.0",
                b"dump".to_vec(),
            )
            .await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
            assert_eq!(count(app, "coredumps").await, 0);
            assert_eq!(count(app, "jobs").await, 0);
            assert!(objects(app, "coredumps").await.is_empty());

            app.faults.heal();
            let id = upload_ok(app, &device, "1.0", b"dump").await;
            // The failed upload's id (1) is used up, not handed out again: a PUT or cleanup of
            // it still under way at the store must never land on this dump's object (SQLite
            // rolls its id counter back with the transaction, so the failure commits instead).
            assert_eq!(id, 2, "{:?}", app.stack);
            assert!(app
                .state
                .storage
                .head(&coredump_key(&device.key, id).unwrap())
                .await
                .is_ok());
            assert_eq!(count(app, "coredumps").await, 1);
        })
        .await;
}

/// A device deleted after it authenticated, before its dump's row is written: the upload says the
/// device was not found, and neither the row nor the object (on PostgreSQL written before the
/// row) is left behind.
#[tokio::test]
async fn a_dump_of_a_device_deleted_meanwhile_leaves_nothing() {
    for_each_stack("coredump_device_gone", &[], async |app| {
        let meta =
            iotsupport::coredumps::ingest::DumpMeta::parse(Some("esp32"), Some("1.0.0")).unwrap();
        let gone = iotsupport::coredumps::ingest::Uploader {
            device_id: 999_999,
            device_key: "gone1234",
            device_model_id: 999_999,
        };
        let stored = iotsupport::coredumps::ingest::store(
            app.db(),
            &app.state.storage,
            &app.state.dump_handoff,
            20,
            gone,
            &meta,
            Bytes::from_static(b"\x7fELF a dump"),
        )
        .await;
        assert!(
            matches!(
                stored,
                Err(iotsupport::coredumps::ingest::IngestError::DeviceGone(_))
            ),
            "{:?} on {:?}",
            stored.map_err(|e| e.to_string()),
            app.stack
        );
        assert_eq!(count(app, "coredumps").await, 0);
        assert!(
            objects(app, "coredumps/").await.is_empty(),
            "{:?}",
            app.stack
        );
    })
    .await;
}

/// A device deleted while one of its dumps is being recorded (the upload's transaction holds the
/// device's dump lock and has inserted the row, not yet committed, as
/// `db::coredumps::lock_device_and_insert` leaves it): the deletion waits for that upload and
/// schedules its dump's object for deletion with the others, so none is left without a row.
#[tokio::test]
async fn a_device_deleted_while_a_dump_is_recorded_leaves_no_object_behind() {
    let Some(app) = spawn_app(Stack::Production, "coredump_device_deleted_during_upload").await
    else {
        return;
    };
    let app = &app;
    let model = crate::fleet::create_model(app, "delrace", None).await;
    let device = crate::fleet::create_device(app, model, "{}").await;
    let id = device["id"].as_i64().unwrap();
    let key = device["key"].as_str().unwrap().to_string();
    let iotsupport::db::Db::Postgres(pool) = app.db() else {
        unreachable!("the production stack runs on PostgreSQL")
    };
    let mut upload = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM devices WHERE id = $1 FOR NO KEY UPDATE")
        .bind(id)
        .execute(&mut *upload)
        .await
        .unwrap();
    let dump: i64 = sqlx::query_scalar(
        "INSERT INTO coredumps (device_id, chip, firmware_version, size, parse_status,
                                uploaded_at, created_at, updated_at)
         VALUES ($1, 'esp32', '1.0.0', 11, 'PENDING', now(), now(), now()) RETURNING id",
    )
    .bind(id)
    .fetch_one(&mut *upload)
    .await
    .unwrap();
    // The object goes first (golden rule 1).
    let object = coredump_key(&key, dump).unwrap();
    app.state
        .storage
        .put(&object, Bytes::from_static(b"\x7fELF a dump"))
        .await
        .unwrap();

    let commit_once_the_deletion_waits = async {
        assert!(
            eventually(Duration::from_secs(20), || async {
                waiting_for_a_lock(app).await >= 1
            })
            .await,
            "the deletion did not wait for the upload"
        );
        upload.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(app.delete_device(id), commit_once_the_deletion_waits);
    assert_eq!(status, 204, "{body}");
    assert_eq!(count(app, "coredumps").await, 0);
    assert!(
        eventually(Duration::from_secs(20), || async {
            objects(app, "coredumps/").await.is_empty()
        })
        .await,
        "the dump's object was left behind: {:?}",
        objects(app, "coredumps/").await
    );
}

/// A deletion of the key an upload is handed still queued in the outbox (a database restored
/// with its id sequence turned back, after a repair had queued the newer ids' objects as
/// orphans): the upload withdraws it before it writes, so the outbox never deletes the new dump.
#[tokio::test]
async fn a_queued_deletion_of_the_key_an_upload_gets_never_deletes_its_dump() {
    for_each_stack("coredump_queued_deletion_withdrawn", &[], async |app| {
        let device = crate::fleet::model_with_device(app, "sensor").await;
        // Deletions queued for the keys of the next ids, due later.
        let later = iotsupport::db::now() + chrono::Duration::hours(1);
        for id in 1..=5 {
            let key = coredump_key(&device.key, id).unwrap().to_string();
            iotsupport::on_pool!(app.db(), |p| sqlx::query(
                "INSERT INTO object_deletions (object_key, next_attempt_at, created_at)
                 VALUES ($1, $2, $2)"
            )
            .bind(&key)
            .bind(later)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
            .unwrap();
        }
        let id = upload_ok(app, &device, "1.0", b"\x7fELF a dump").await;
        assert!((1..=5).contains(&id), "{id} on {:?}", app.stack);
        let object = coredump_key(&device.key, id).unwrap().to_string();

        // The others fall due and run; the dump's object stays.
        make_deletions_due(app).await;
        assert!(
            eventually(Duration::from_secs(20), || async {
                iotsupport::outbox::pending(app.db())
                    .await
                    .unwrap()
                    .is_empty()
            })
            .await,
            "the outbox did not run on {:?}",
            app.stack
        );
        assert_eq!(
            objects(app, "coredumps/").await,
            [object],
            "on {:?}",
            app.stack
        );
    })
    .await;
}

/// An id sequence behind the table (a data-only restore that did not carry it, a promoted
/// logical replica): an upload skips the ids rows already have. Before, it wrote its object over
/// the key of the same device's dump with that id, failed the insert with a 500, and its cleanup
/// deleted that dump's object.
#[tokio::test]
async fn an_id_sequence_behind_the_table_skips_the_ids_in_use() {
    let Some(app) = spawn_app(Stack::Production, "coredump_sequence_behind").await else {
        return;
    };
    let device = crate::fleet::model_with_device(&app, "sensor").await;
    let first = upload_ok(&app, &device, "1.0", b"\x7fELF first").await;
    let second = upload_ok(&app, &device, "1.0", b"\x7fELF second").await;
    // The crash-group ledger names the id after them: a dump that had it was grouped and then
    // deleted (the ledger outlives dumps).
    let grouped_then_deleted = second + 1;
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "WITH g AS (
             INSERT INTO crash_groups (device_model_id, signature_hash, signature, title,
                                       first_seen_at, last_seen_at, coredump_count, device_count)
             SELECT device_model_id, 'h', 's', 't', now(), now(), 1, 1 FROM devices WHERE id = $1
             RETURNING id)
         INSERT INTO crash_group_members (coredump_id, crash_group_id, device_id,
                                          firmware_version, uploaded_at)
         SELECT $2, g.id, $1, '1.0', now() FROM g"
    )
    .bind(device.id)
    .bind(grouped_then_deleted)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    // Turned back: the next id handed out is the first dump's.
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "SELECT setval(pg_get_serial_sequence('coredumps', 'id'), $1, false)"
    )
    .bind(first)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let third = upload_ok(&app, &device, "1.0", b"\x7fELF third").await;
    assert!(third > second, "{third} after {first}, {second}");
    // Only the ids in use were skipped: one id drawn per candidate, none more.
    assert_eq!(third, grouped_then_deleted + 1, "after {first}, {second}");
    let fourth = upload_ok(&app, &device, "1.0", b"\x7fELF fourth").await;
    assert_eq!(fourth, third + 1);
    let key = |id| coredump_key(&device.key, id).unwrap().to_string();
    let mut expected = vec![key(first), key(second), key(third), key(fourth)];
    expected.sort();
    assert_eq!(objects(&app, "coredumps/").await, expected);
    for (id, bytes) in [
        (first, &b"\x7fELF first"[..]),
        (third, &b"\x7fELF third"[..]),
    ] {
        let stored = crate::firmware_support::object(&app, &key(id)).await;
        assert_eq!(stored, bytes, "dump {id}");
    }
    app.stop().await;
}

/// A device that stops waiting once its body went out (ESP-IDF's HTTP client gives up after 5 s)
/// must not cut the store off between the PUT and the commit: that left an object no row names
/// (and on SQLite an id that is handed out again). The store runs to its end on its own.
#[tokio::test]
async fn a_device_that_stops_waiting_leaves_its_dump_stored_whole() {
    TestApp::builder("coredump_client_gone")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "gone").await;
            app.faults.slow_put_answers(Duration::from_millis(1500));
            let sent = app
                .client
                .post(app.url("/api/iot/coredump?chip=esp32&firmware_version=1.0"))
                .bearer_auth(&device.credential)
                .body(b"a dump".to_vec())
                .timeout(Duration::from_millis(300))
                .send()
                .await;
            assert!(sent.is_err(), "the client was to give up first: {sent:?}");
            let stored = eventually(Duration::from_secs(10), || async {
                count(app, "coredumps").await == 1
            })
            .await;
            assert!(stored, "the dump's row was never committed");
            let id: i64 =
                iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar("SELECT id FROM coredumps")
                    .fetch_one(p)
                    .await)
                .unwrap();
            let key = coredump_key(&device.key, id).unwrap();
            assert!(app.state.storage.head(&key).await.is_ok());
        })
        .await;
}
