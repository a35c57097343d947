//! The parser sidecar backend against a fake sidecar served by the test on 127.0.0.1: unique
//! transfer files per parse (also for two parses of one model at once), files removed after
//! success and failure, 5xx and connection failures retried, 4xx an `ERROR`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use iotsupport::jobs::JobOutcome;
use serde_json::{json, Value};

use crate::coredumps::*;
use crate::helpers::*;

/// What the fake sidecar saw in one call.
#[derive(Debug, Clone)]
struct Call {
    core: String,
    elf: String,
    chip: String,
    core_bytes: Option<Vec<u8>>,
    elf_bytes: Option<Vec<u8>>,
}

#[derive(Clone)]
struct Fake {
    dir: PathBuf,
    calls: Arc<Mutex<Vec<Call>>>,
    /// Scripted answers, in order; when empty: 200 with `output` naming the dump file.
    answers: Arc<Mutex<VecDeque<(u16, String)>>>,
    /// Each call waits (up to 10 s) until this many calls are in flight, so concurrent parses
    /// provably overlap.
    rendezvous: usize,
    in_flight: Arc<Mutex<(usize, usize)>>,
}

impl Fake {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn script(&self, answers: &[(u16, &str)]) {
        self.answers
            .lock()
            .unwrap()
            .extend(answers.iter().map(|(s, b)| (*s, b.to_string())));
    }
    fn max_in_flight(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }
    /// Forgets the calls seen so far.
    fn reset(&self) {
        self.calls.lock().unwrap().clear();
        self.answers.lock().unwrap().clear();
        *self.in_flight.lock().unwrap() = (0, 0);
    }
}

async fn parse_coredump(
    State(fake): State<Fake>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, String) {
    {
        let mut counts = fake.in_flight.lock().unwrap();
        counts.0 += 1;
        counts.1 = counts.1.max(counts.0);
    }
    let core = query.get("core").cloned().unwrap_or_default();
    let elf = query.get("elf").cloned().unwrap_or_default();
    let call = Call {
        core_bytes: std::fs::read(fake.dir.join(&core)).ok(),
        elf_bytes: std::fs::read(fake.dir.join(&elf)).ok(),
        chip: query.get("chip").cloned().unwrap_or_default(),
        core: core.clone(),
        elf,
    };
    fake.calls.lock().unwrap().push(call);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.in_flight.lock().unwrap().0 < fake.rendezvous
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.in_flight.lock().unwrap().0 -= 1;
    let scripted = fake.answers.lock().unwrap().pop_front();
    match scripted {
        Some((status, body)) => (StatusCode::from_u16(status).unwrap(), body),
        None => (
            StatusCode::OK,
            json!({"output": format!("sidecar report for {core}")}).to_string(),
        ),
    }
}

/// Starts the fake sidecar; returns it and its base URL.
async fn fake_sidecar(dir: PathBuf, rendezvous: usize) -> (Fake, String) {
    let fake = Fake {
        dir,
        calls: Arc::default(),
        answers: Arc::default(),
        rendezvous,
        in_flight: Arc::default(),
    };
    let app = Router::new()
        .route("/parse-coredump", get(parse_coredump))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url)
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn two_parses_of_one_model_at_once_get_their_own_transfer_files_which_are_then_removed() {
    // One sidecar for both stacks; each run starts from a clean slate.
    let xfer = tempfile::TempDir::new().unwrap();
    let (fake, url) = fake_sidecar(xfer.path().to_path_buf(), 2).await;
    let xfer_dir = xfer.path().display().to_string();
    TestApp::builder("sidecar_unique")
        .env("PARSE_SIDECAR_URL", &url)
        .env("PARSE_SIDECAR_XFER_DIR", &xfer_dir)
        .without_default_job_handlers()
        .for_each_stack(async |app| {
            fake.reset();
            let device = model_with_device(app, "sensor").await;
            put_elf(app, "sensor", "1.0", b"the ELF".to_vec()).await;
            let first = upload_ok(app, &device, "1.0", b"first dump").await;
            let second = upload_ok(app, &device, "1.0", b"second dump").await;

            let (a, b) = tokio::join!(run_one_job(app), run_one_job(app));
            // Parsed: each job ended with its result, in one transaction.
            assert_eq!(a, Some(JobOutcome::CompletedInTransaction));
            assert_eq!(b, Some(JobOutcome::CompletedInTransaction));
            assert_eq!(fake.max_in_flight(), 2, "the parses overlapped");

            let calls = fake.calls();
            assert_eq!(calls.len(), 2);
            assert_ne!(calls[0].core, calls[1].core);
            assert_ne!(calls[0].elf, calls[1].elf, "one ELF file per parse");
            let mut dumps: Vec<Vec<u8>> = calls
                .iter()
                .map(|c| {
                    c.core_bytes
                        .clone()
                        .expect("dump file present during the call")
                })
                .collect();
            dumps.sort();
            assert_eq!(dumps, [b"first dump".to_vec(), b"second dump".to_vec()]);
            for call in &calls {
                assert_eq!(call.elf_bytes.as_deref(), Some(&b"the ELF"[..]));
                assert_eq!(call.chip, "esp32");
                assert!(
                    !call.core.contains('/') && !call.elf.contains('/'),
                    "{call:?}"
                );
            }
            assert!(
                files_in(xfer.path()).is_empty(),
                "transfer files left behind"
            );

            for id in [first, second] {
                let body = dump(app, &device, id).await;
                assert_eq!(body["parse_status"], "PARSED", "{body}");
                let output = body["parsed_output"].as_str().unwrap();
                assert!(
                    output.starts_with("sidecar report for coredump-"),
                    "{output}"
                );
                assert_eq!(body["report"], Value::Null, "the sidecar gives text only");
                // No structured report, no signature: sidecar-parsed dumps are not grouped.
                assert_eq!(body["crash_group_id"], Value::Null, "{body}");
            }
            assert_eq!(count(app, "crash_groups").await, 0);
        })
        .await;
}

#[tokio::test]
async fn sidecar_5xx_is_retried_and_4xx_is_an_error_and_transfer_files_never_stay() {
    let xfer = tempfile::TempDir::new().unwrap();
    let (fake, url) = fake_sidecar(xfer.path().to_path_buf(), 0).await;
    let xfer_dir = xfer.path().display().to_string();
    let overrides = [
        ("PARSE_SIDECAR_URL", url.as_str()),
        ("PARSE_SIDECAR_XFER_DIR", xfer_dir.as_str()),
    ];
    let Some(app) =
        spawn_app_without_parsing(Stack::Production, "sidecar_errors", &overrides).await
    else {
        return;
    };
    let device = model_with_device(&app, "sensor").await;
    put_elf(&app, "sensor", "1.0", b"elf".to_vec()).await;

    // 503, then success.
    fake.script(&[(503, "busy")]);
    let retried = upload_ok(&app, &device, "1.0", b"dump one").await;
    match run_one_job(&app).await {
        Some(JobOutcome::Retry { error, .. }) => assert!(error.contains("503"), "{error}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(files_in(xfer.path()).is_empty(), "removed after a failure");
    assert_eq!(
        dump(&app, &device, retried).await["parse_status"],
        "PENDING"
    );
    let jobs = iotsupport::jobs::list(app.db()).await.unwrap();
    assert_eq!(jobs[0].status, "queued");
    assert!(jobs[0].run_at > iotsupport::db::now(), "backed off");
    make_jobs_due(&app).await;
    assert_eq!(
        run_one_job(&app).await,
        Some(JobOutcome::CompletedInTransaction)
    );
    assert_eq!(dump(&app, &device, retried).await["parse_status"], "PARSED");
    assert!(
        iotsupport::jobs::list(app.db()).await.unwrap().is_empty(),
        "the parse ended its job"
    );
    assert_eq!(fake.calls().len(), 2);

    // 400: the sidecar refuses this dump; retrying cannot help.
    fake.script(&[(400, "unknown chip")]);
    let refused = upload_ok(&app, &device, "1.0", b"dump two").await;
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    let body = dump(&app, &device, refused).await;
    assert_eq!(body["parse_status"], "ERROR", "{body}");
    let message = body["parsed_output"].as_str().unwrap();
    assert!(
        message.contains("400") && message.contains("unknown chip"),
        "{message}"
    );
    assert!(files_in(xfer.path()).is_empty());

    // 200 without an output field is an error too.
    fake.script(&[(200, r#"{"result": "?"}"#)]);
    let odd = upload_ok(&app, &device, "1.0", b"dump three").await;
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    assert_eq!(dump(&app, &device, odd).await["parse_status"], "ERROR");
    assert_eq!(count(&app, "jobs").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_sidecar_is_retried_and_finally_an_error() {
    let xfer = tempfile::TempDir::new().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let xfer_dir = xfer.path().display().to_string();
    let overrides = [
        ("PARSE_SIDECAR_URL", url.as_str()),
        ("PARSE_SIDECAR_XFER_DIR", xfer_dir.as_str()),
    ];
    let Some(app) = spawn_app_without_parsing(Stack::Embedded, "sidecar_down", &overrides).await
    else {
        return;
    };
    let device = model_with_device(&app, "sensor").await;
    put_elf(&app, "sensor", "1.0", b"elf".to_vec()).await;
    let id = upload_ok(&app, &device, "1.0", b"dump").await;
    match run_one_job(&app).await {
        Some(JobOutcome::Retry { error, .. }) => assert!(error.contains("unreachable"), "{error}"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert!(files_in(xfer.path()).is_empty());
    // On the last attempt the transient failure becomes the dump's ERROR.
    iotsupport::on_pool!(app.db(), |p| sqlx::query(
        "UPDATE jobs SET attempts = max_attempts - 1"
    )
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    make_jobs_due(&app).await;
    assert_eq!(run_one_job(&app).await, Some(JobOutcome::Completed));
    let body = dump(&app, &device, id).await;
    assert_eq!(body["parse_status"], "ERROR", "{body}");
    let message = body["parsed_output"].as_str().unwrap();
    assert!(
        message.starts_with("Gave up after 16 attempts") && message.contains("unreachable"),
        "{message}"
    );
    app.stop().await;
}
