//! Parsing uploaded dumps in the background with the built-in parser (issue #5, #6): real dumps
//! and ELFs from `../shared/testdata/esp/coredump`, the `ERROR` reasons, retries after a transient
//! object store failure, reparse, deleted rows, and jobs that outlive a restart.

use std::time::Duration;

use iotsupport::jobs::JobOutcome;
use iotsupport::layout::coredump_key;
use iotsupport::startup::{open_storage, Application, BuildOptions};
use iotsupport::storage::faulty::Fault;
use iotsupport::storage::Operation;
use serde_json::Value;

use crate::coredumps::*;
use crate::helpers::*;

const CASE: &str = "esp32_elf_crc32_abort";

fn esp32_case() -> Option<(Vec<u8>, Vec<u8>)> {
    testdata_case(CASE, "coredump.bin", "esp32.elf")
}

/// An app whose workers do not parse (on the production stack), with one device and one dump
/// that is not a dump (so each parse ends `ERROR` at once): the dump's id.
async fn app_with_one_dump(test: &str) -> Option<(TestApp, TestDevice, i64)> {
    let app = spawn_app_without_parsing(Stack::Production, test, &[]).await?;
    let device = model_with_device(&app, "sensor").await;
    let id = upload_ok(&app, &device, "1.0", b"not a dump").await;
    Some((app, device, id))
}

#[tokio::test]
async fn an_uploaded_dump_is_parsed_with_the_models_elf_into_a_text_and_a_structured_report() {
    let Some((dump_bytes, elf)) = esp32_case() else {
        return;
    };
    for_each_stack("coredump_parse_builtin", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        put_elf(app, "sensor", "1.0.0", elf.clone()).await;
        let id = upload_ok(app, &device, "1.0.0", &dump_bytes).await;

        let body = settled(app, &device, id, Duration::from_secs(30)).await;
        assert_eq!(body["parse_status"], "PARSED", "{body}");
        let text = body["parsed_output"].as_str().unwrap();
        assert!(text.contains("name: 'main'"), "crashed task named: {text}");
        assert!(text.contains("abort() was called"), "{text}");
        assert!(body["parsed_at"].as_str().unwrap().ends_with('Z'));
        let report = &body["report"];
        assert_eq!(report["chip"], "esp32", "{report}");
        assert_eq!(report["crashed_task_name"], "main");
        assert_eq!(report["build_check"], "match");
        assert!(report["tasks"].as_array().is_some_and(|t| !t.is_empty()));
        let warnings = report["warnings"].to_string();
        assert!(!warnings.contains("reported chip"), "{warnings}");
        // The list shows the status too, and the finished job is gone.
        let (_, list) = app.list_coredumps(device.id).await;
        assert_eq!(list["coredumps"][0]["parse_status"], "PARSED");
        assert!(list["coredumps"][0]["parsed_at"].is_string());
        assert!(list["coredumps"][0].get("report").is_none());
        assert!(
            eventually(Duration::from_secs(5), || async {
                count(app, "jobs").await == 0
            })
            .await
        );

        // The same dump reported as another chip: parsed all the same, with a warning.
        let (status, body) = upload(
            app,
            &device,
            "chip=esp32c3&firmware_version=1.0.0",
            dump_bytes.clone(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["coredump_id"].as_i64().unwrap();
        let body = settled(app, &device, id, Duration::from_secs(30)).await;
        assert_eq!(body["parse_status"], "PARSED", "{body}");
        let expected =
            "the device reported chip \"esp32c3\" with its upload, but the dump is from an esp32";
        assert!(
            body["report"]["warnings"]
                .as_array()
                .is_some_and(|w| w.iter().any(|w| w == expected)),
            "{}",
            body["report"]
        );
        assert!(body["parsed_output"].as_str().unwrap().contains(expected));
    })
    .await;
}

#[tokio::test]
async fn a_missing_elf_is_an_error_naming_the_model_and_version_until_a_reparse_finds_it() {
    let Some((dump_bytes, elf)) = esp32_case() else {
        return;
    };
    for_each_stack("coredump_parse_no_elf", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        let id = upload_ok(app, &device, "2.0.1", &dump_bytes).await;
        let body = settled(app, &device, id, Duration::from_secs(30)).await;
        assert_eq!(body["parse_status"], "ERROR", "{body}");
        let message = body["parsed_output"].as_str().unwrap();
        assert!(
            message.contains("model sensor version 2.0.1")
                && message.contains("firmware/sensor/2.0.1/firmware.elf"),
            "{message}"
        );
        assert!(body["parsed_at"].is_string());
        assert_eq!(body["report"], Value::Null);

        // The build is uploaded later; a reparse picks it up.
        put_elf(app, "sensor", "2.0.1", elf.clone()).await;
        let (status, queued) = app.reparse_coredump(device.id, id).await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(queued["id"], id);
        let body = settled(app, &device, id, Duration::from_secs(30)).await;
        assert_eq!(body["parse_status"], "PARSED", "{body}");
        assert!(body["report"].is_object());
    })
    .await;
}

#[tokio::test]
async fn reparse_resets_the_dump_to_pending_and_queues_a_job() {
    let Some((app, device, id)) = app_with_one_dump("coredump_reparse").await else {
        return;
    };
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    let body = dump(&app, &device, id).await;
    assert_eq!(body["parse_status"], "ERROR");
    assert_eq!(count(&app, "jobs").await, 0);

    let (status, body) = app.reparse_coredump(device.id, id).await;
    assert_eq!(status, 202);
    assert_eq!(body["parse_status"], "PENDING");
    assert_eq!(body["parsed_output"], Value::Null);
    assert_eq!(body["parsed_at"], Value::Null);
    let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].kind, "parse_coredump");
    let (status, body) = app.reparse_coredump(device.id, id + 100).await;
    assert_eq!(status, 404);
    assert_eq!(
        body["error"],
        format!("Coredump {} was not found", id + 100)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_dump_and_a_missing_dump_object_are_errors_that_say_so() {
    let Some((_, elf)) = esp32_case() else {
        return;
    };
    TestApp::builder("coredump_parse_errors")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
            put_elf(app, "sensor", "1.0", elf.clone()).await;

            let malformed = upload_ok(app, &device, "1.0", b"this is not a core dump").await;
            assert_eq!(run_one_job(app).await, Some(JobOutcome::Completed));
            let body = dump(app, &device, malformed).await;
            assert_eq!(body["parse_status"], "ERROR", "{body}");
            let message = body["parsed_output"].as_str().unwrap();
            assert!(message.starts_with("Malformed core dump"), "{message}");

            let vanished = upload_ok(app, &device, "1.0", b"whatever").await;
            let key = coredump_key(&device.key, vanished).unwrap();
            app.state.storage.delete(&key).await.unwrap();
            // As in a process that did not store it: the parse reads the object.
            assert!(app.state.dump_handoff.take(&key).is_some());
            // While the store does not answer (a missing bucket, a proxy's 404 for a store that
            // is away, say "not found" of everything), missing is not taken for good.
            app.faults.inject(Fault::always(Operation::Check));
            let outcome = run_one_job(app).await;
            assert!(
                matches!(outcome, Some(JobOutcome::Retry { .. })),
                "{outcome:?}"
            );
            assert_eq!(
                dump(app, &device, vanished).await["parse_status"],
                "PENDING"
            );
            app.faults.heal();
            make_jobs_due(app).await;
            assert_eq!(run_one_job(app).await, Some(JobOutcome::Completed));
            let body = dump(app, &device, vanished).await;
            assert_eq!(body["parse_status"], "ERROR", "{body}");
            let message = body["parsed_output"].as_str().unwrap();
            assert!(
                message.contains(key.as_str()) && message.contains("missing"),
                "{message}"
            );
            assert_eq!(count(app, "jobs").await, 0);
        })
        .await;
}

/// The process that stored a dump parses it from the bytes it was given: its object is not read
/// back (one S3 GET fewer per dump, issue 18). Another process's parse, or one after the bytes
/// were given up, reads the object.
#[tokio::test]
async fn a_dump_is_parsed_from_the_upload_that_stored_it_without_reading_it_back() {
    let Some((dump_bytes, elf)) = esp32_case() else {
        return;
    };
    TestApp::builder("coredump_parse_handoff")
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            let device = model_with_device(app, "sensor").await;
            put_elf(app, "sensor", "1.0", elf.clone()).await;
            // Every read of a dump object fails, as if S3 were down for reads.
            app.faults
                .inject(Fault::always(Operation::Get).for_keys_containing(".dmp"));

            let handed = upload_ok(app, &device, "1.0", &dump_bytes).await;
            assert_eq!(
                run_one_job(app).await,
                Some(JobOutcome::CompletedInTransaction)
            );
            let body = dump(app, &device, handed).await;
            assert_eq!(body["parse_status"], "PARSED", "{body}");

            let read = upload_ok(app, &device, "1.0", &dump_bytes).await;
            let key = coredump_key(&device.key, read).unwrap();
            assert!(app.state.dump_handoff.take(&key).is_some());
            let outcome = run_one_job(app).await;
            assert!(
                matches!(outcome, Some(JobOutcome::Retry { .. })),
                "the object was read: {outcome:?}"
            );
            app.faults.heal();
            make_jobs_due(app).await;
            assert_eq!(
                run_one_job(app).await,
                Some(JobOutcome::CompletedInTransaction)
            );
            let body = dump(app, &device, read).await;
            assert_eq!(body["parse_status"], "PARSED", "{body}");
            assert_eq!(count(app, "jobs").await, 0);
        })
        .await;
}

#[tokio::test]
async fn a_transient_object_store_failure_during_parsing_is_retried_until_it_succeeds() {
    let Some((dump_bytes, elf)) = esp32_case() else {
        return;
    };
    for_each_stack("coredump_parse_retry", &[], async |app| {
        let device = model_with_device(app, "sensor").await;
        put_elf(app, "sensor", "1.0", elf.clone()).await;
        // The first read of the ELF fails as if S3 were down.
        app.faults.inject(
            Fault::always(Operation::Get)
                .for_keys_containing("firmware.elf")
                .times(1),
        );
        let id = upload_ok(app, &device, "1.0", &dump_bytes).await;
        let retried = eventually(Duration::from_secs(10), || async {
            iotsupport::jobs::list(app.db())
                .await
                .unwrap()
                .iter()
                .any(|j| j.attempts == 1 && j.last_error.is_some())
        })
        .await;
        assert!(retried, "no retry recorded");
        assert_eq!(dump(app, &device, id).await["parse_status"], "PENDING");
        // The backoff is 2 s; then it succeeds.
        let body = settled(app, &device, id, Duration::from_secs(30)).await;
        assert_eq!(body["parse_status"], "PARSED", "{body}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                count(app, "jobs").await == 0
            })
            .await
        );
    })
    .await;
}

#[tokio::test]
async fn a_job_whose_dump_was_deleted_meanwhile_completes_quietly() {
    let Some(app) =
        spawn_app_without_parsing(Stack::Production, "coredump_parse_deleted", &[]).await
    else {
        return;
    };
    let device = model_with_device(&app, "sensor").await;
    let id = upload_ok(&app, &device, "1.0", b"dump").await;
    assert_eq!(app.delete_coredump(device.id, id).await.0, 204);
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    assert_eq!(count(&app, "jobs").await, 0);
    assert_eq!(count(&app, "coredumps").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_queued_parse_survives_a_restart_and_runs_in_the_next_process() {
    let Some((dump_bytes, elf)) = esp32_case() else {
        return;
    };
    for stack in ALL_STACKS {
        let Some(TestConfig { config, dir: _dir }) =
            test_config(stack, "coredump_parse_restart", &[]).await
        else {
            continue;
        };
        // First process: accepts the upload but stops before any worker parses it.
        let first = Application::build_with(
            config.clone(),
            BuildOptions {
                without_default_job_handlers: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let address = format!("http://127.0.0.1:{}", first.port());
        let state = first.state().clone();
        let shutdown = first.shutdown_token();
        let server = tokio::spawn(first.run_until_stopped());
        let client = reqwest::Client::new();
        let model: Value = client
            .post(format!("{address}/api/device-models"))
            .json(&serde_json::json!({"code": "sensor", "name": "S"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let device: Value = client
            .post(format!("{address}/api/devices"))
            .json(&serde_json::json!({"device_model_id": model["id"], "config": "{}"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let credential = format!(
            "{}.{}",
            device["key"].as_str().unwrap(),
            device["device_secret"].as_str().unwrap()
        );
        let elf_key =
            iotsupport::storage::ObjectKey::parse("firmware/sensor/1.0/firmware.elf").unwrap();
        state
            .storage
            .put(&elf_key, bytes::Bytes::from(elf.clone()))
            .await
            .unwrap();
        let response = client
            .post(format!(
                "{address}/api/iot/coredump?chip=esp32&firmware_version=1.0"
            ))
            .bearer_auth(&credential)
            .body(dump_bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let id = response.json::<Value>().await.unwrap()["coredump_id"]
            .as_i64()
            .unwrap();
        shutdown.cancel();
        server.await.unwrap().unwrap();

        // Second process on the same database and bucket, with the default handlers.
        let storage = open_storage(&config).await.unwrap();
        let second = Application::build_with(
            config.clone(),
            BuildOptions {
                storage: Some(storage),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let address = format!("http://127.0.0.1:{}", second.port());
        let shutdown = second.shutdown_token();
        let server = tokio::spawn(second.run_until_stopped());
        let path = format!("{address}/api/devices/{}/coredumps/{id}", device["id"]);
        let parsed = eventually(Duration::from_secs(30), || async {
            let body: Value = client
                .get(&path)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["parse_status"] == "PARSED"
        })
        .await;
        assert!(parsed, "{stack:?}: not parsed after the restart");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}

/// A parse job whose workers kept dying before they finished (claimed again with its attempts
/// used up, so its handler never runs) ends its dump as `ERROR` with the reason, not `PENDING`
/// for ever.
#[tokio::test]
async fn a_dump_whose_parses_kept_killing_their_workers_ends_as_error() {
    for stack in [Stack::Embedded, Stack::Production] {
        let Some(app) = spawn_app_without_parsing(stack, "coredump_parse_workers_died", &[]).await
        else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let id = upload_ok(&app, &device, "1.0", b"not a dump").await;
        // Every attempt so far was claimed by a worker that died: the job is running under a
        // claim whose heartbeat is long past, with no attempt left.
        let past = iotsupport::db::now() - chrono::Duration::hours(1);
        iotsupport::on_pool!(app.db(), |p| sqlx::query(
            "UPDATE jobs SET status = 'running', claimed_by = 'dead-worker', heartbeat_at = $1,
                             attempts = max_attempts"
        )
        .bind(past)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();

        let outcome = run_one_job(&app).await;
        assert!(
            matches!(&outcome, Some(JobOutcome::Abort { error }) if error.contains("the worker stopped before finishing")),
            "{outcome:?} on {stack:?}"
        );
        let body = dump(&app, &device, id).await;
        assert_eq!(body["parse_status"], "ERROR", "{body} on {stack:?}");
        assert!(
            body["parsed_output"]
                .as_str()
                .is_some_and(|o| o.starts_with("Parsing gave up: gave up after")),
            "{body} on {stack:?}"
        );
        let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
        assert_eq!(jobs.len(), 1, "{stack:?}");
        assert_eq!(jobs[0].status, "failed", "{stack:?}");
        app.stop().await;
    }
}

/// A parse that finishes after its dump got a newer result (a reparse ran meanwhile, or the job
/// ran again after its result was committed) does not overwrite it.
/// Sets `assignments` (SQL, `column = value, …`) on dump `id` and queues a parse job for it with
/// the upload's payload (`{"coredump_id": id}`, no generation).
async fn change_dump_and_queue_its_parse(app: &TestApp, id: i64, assignments: &str) {
    let sql = format!("UPDATE coredumps SET {assignments} WHERE id = $1");
    iotsupport::on_pool!(app.db(), |p| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
        .bind(id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .unwrap();
    let mut tx = app.db().begin().await.unwrap();
    iotsupport::coredumps::job::enqueue(&mut tx, id)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_parse_finishing_late_does_not_overwrite_a_newer_result() {
    let Some((app, device, id)) = app_with_one_dump("coredump_parse_late").await else {
        return;
    };
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    // The newer result, and a job of the same dump still to run (the late one).
    change_dump_and_queue_its_parse(&app, id, "parsed_output = 'the newer result'").await;

    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    let body = dump(&app, &device, id).await;
    assert_eq!(body["parse_status"], "ERROR", "{body}");
    assert_eq!(body["parsed_output"], "the newer result", "{body}");
    app.stop().await;
}

/// A parser whose first call waits until the test lets it answer: a parse held in flight.
struct HeldParser {
    answers: std::sync::Mutex<Vec<&'static str>>,
    started: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl iotsupport::coredumps::parser::CoredumpParser for HeldParser {
    fn name(&self) -> &'static str {
        "held"
    }

    async fn parse(
        &self,
        _request: iotsupport::coredumps::parser::ParseRequest,
    ) -> Result<
        iotsupport::coredumps::parser::ParsedDump,
        iotsupport::coredumps::parser::ParseFailure,
    > {
        let text = self.answers.lock().unwrap().remove(0);
        self.started.notify_one();
        self.release.acquire().await.unwrap().forget();
        Ok(iotsupport::coredumps::parser::ParsedDump {
            text: text.to_string(),
            report_json: None,
            signature: None,
        })
    }
}

/// A reparse asked for while an older parse of the dump is still running (e.g. right after its
/// missing ELF was uploaded) gets its own result: the parse in flight, which finishes first with
/// the old answer, records nothing, and the dump ends with the reparse's result.
#[tokio::test]
async fn a_reparse_asked_for_while_a_parse_is_in_flight_is_not_consumed_by_it() {
    for stack in [Stack::Production, Stack::Embedded] {
        let Some(app) = spawn_app_without_parsing(stack, "coredump_reparse_in_flight", &[]).await
        else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let id = upload_ok(&app, &device, "1.0", b"a dump").await;
        let parser = std::sync::Arc::new(HeldParser {
            answers: std::sync::Mutex::new(vec!["the old answer", "the reparse's answer"]),
            started: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        });
        let handler = iotsupport::coredumps::job::ParseCoredumpHandler::new(
            app.db().clone(),
            app.state.storage.clone(),
            parser.clone(),
        );
        let runner = std::sync::Arc::new(iotsupport::jobs::worker::JobRunner::new(
            app.db().clone(),
            vec![std::sync::Arc::new(handler)],
            Duration::from_secs(60),
        ));
        let first = tokio::spawn({
            let runner = runner.clone();
            async move { runner.run_one().await.unwrap().map(|(_, outcome)| outcome) }
        });
        parser.started.notified().await;

        let (status, body) = app.reparse_coredump(device.id, id).await;
        assert_eq!(status, 202, "{body}");
        parser.release.add_permits(1);
        assert_eq!(first.await.unwrap(), Some(JobOutcome::Completed));
        let body = dump(&app, &device, id).await;
        assert_eq!(body["parse_status"], "PENDING", "{stack:?}: {body}");

        parser.release.add_permits(1);
        assert_eq!(
            runner.run_one().await.unwrap().map(|(_, o)| o),
            Some(JobOutcome::CompletedInTransaction)
        );
        let body = dump(&app, &device, id).await;
        assert_eq!(body["parse_status"], "PARSED", "{stack:?}: {body}");
        assert_eq!(
            body["parsed_output"], "the reparse's answer",
            "{stack:?}: {body}"
        );
        assert_eq!(count(&app, "jobs").await, 0, "{stack:?}");
        app.stop().await;
    }
}

/// A reparse withdraws its dump's parse still waiting in the queue: two reparses in a row leave
/// one job, and the dump is parsed once.
#[tokio::test]
async fn a_reparse_withdraws_the_queued_parse_it_replaces() {
    let Some((app, device, id)) = app_with_one_dump("coredump_reparse_withdraws").await else {
        return;
    };
    assert_eq!(count(&app, "jobs").await, 1);
    for _ in 0..2 {
        let (status, body) = app.reparse_coredump(device.id, id).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(count(&app, "jobs").await, 1);
    }
    let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
    assert_eq!(
        jobs[0].payload,
        format!(r#"{{"coredump_id":{id},"generation":2}}"#)
    );
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    assert_eq!(dump(&app, &device, id).await["parse_status"], "ERROR");
    assert_eq!(run_one_job(&app).await, None);
    app.stop().await;
}

/// During a rolling upgrade a process of a release before parse generations may reparse a dump:
/// it makes the row `PENDING` without moving its generation on and queues a job of generation 0.
/// That job, the dump's only one, parses it (it is not taken for one a reparse superseded).
#[tokio::test]
async fn a_reparse_by_a_release_before_parse_generations_still_parses_the_dump() {
    let Some((app, device, id)) = app_with_one_dump("coredump_reparse_old_release").await else {
        return;
    };
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    let (status, _) = app.reparse_coredump(device.id, id).await;
    assert_eq!(status, 202);
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    assert_eq!(dump(&app, &device, id).await["parse_status"], "ERROR");

    // The old release's reparse: PENDING, the generation left as it was, a job of generation 0.
    let old_release_reparse = async || {
        let pending = "parse_status = 'PENDING', parsed_output = NULL, parsed_at = NULL";
        change_dump_and_queue_its_parse(&app, id, pending).await;
    };
    old_release_reparse().await;

    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    let body = dump(&app, &device, id).await;
    assert_eq!(body["parse_status"], "ERROR", "{body}");
    assert!(body["parsed_at"].is_string(), "{body}");

    // The same, with that job's every attempt claimed by a worker that died: it gives up, and
    // the dump ends ERROR rather than PENDING with no job left.
    old_release_reparse().await;
    let past = iotsupport::db::now() - chrono::Duration::hours(1);
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "UPDATE jobs SET status = 'running', claimed_by = 'dead-worker', heartbeat_at = $1,
                         attempts = max_attempts"
    )
    .bind(past)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert!(matches!(
        run_one_job(&app).await,
        Some(JobOutcome::Abort { .. })
    ));
    let body = dump(&app, &device, id).await;
    assert_eq!(body["parse_status"], "ERROR", "{body}");
    assert!(
        body["parsed_output"]
            .as_str()
            .is_some_and(|o| o.starts_with("Parsing gave up")),
        "{body}"
    );
    app.stop().await;
}

/// Retention withdraws a pruned dump's queued parse of whatever generation (a reparse's too), on
/// both stacks: the upload's one-statement path on PostgreSQL and the step by step one on SQLite.
#[tokio::test]
async fn retention_withdraws_a_pruned_dumps_queued_reparse() {
    for stack in [Stack::Production, Stack::Embedded] {
        let Some(app) = spawn_app_without_parsing(
            stack,
            "coredump_retention_reparse",
            &[("MAX_COREDUMPS", "1")],
        )
        .await
        else {
            continue;
        };
        let device = model_with_device(&app, "sensor").await;
        let first = upload_ok(&app, &device, "1.0", b"not a dump").await;
        let (status, body) = app.reparse_coredump(device.id, first).await;
        assert_eq!(status, 202, "{body}");
        let second = upload_ok(&app, &device, "1.0", b"not a dump either").await;
        let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
        let payloads: Vec<&str> = jobs.iter().map(|j| j.payload.as_str()).collect();
        assert_eq!(
            payloads,
            [format!(r#"{{"coredump_id":{second}}}"#)],
            "{stack:?}: the pruned dump's reparse is still queued"
        );
        app.stop().await;
    }
}
