//! What the core dump tests share (`coredump_upload.rs`, `coredump_admin.rs`,
//! `coredump_parse.rs`, `coredump_sidecar.rs`, `connections.rs`): uploads as a device, the rows,
//! objects and jobs they leave, running parse jobs by hand, and the ESP test data.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use iotsupport::jobs::worker::JobRunner;
use iotsupport::storage::ObjectKey;
use serde_json::Value;

pub use crate::fleet::{device_of, model_with_device, TestDevice};
use crate::helpers::*;

/// `POST /api/iot/coredump?{query}` as `device`.
pub async fn upload(
    app: &TestApp,
    device: &TestDevice,
    query: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    app.iot_upload_coredump(&device.credential, query, body)
        .await
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

/// `GET path` without credentials: status and JSON (`Null` when not JSON).
#[allow(dead_code)] // Kept for the tests that import it; new tests use the endpoint methods.
pub async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `method path` without credentials: status and JSON (`Null` when not JSON).
#[allow(dead_code)] // Kept for the tests that import it; new tests use the endpoint methods.
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

/// The number of rows in `table`.
pub async fn count(app: &TestApp, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(sql).fetch_one(p).await).unwrap()
}

/// Each device's `coredump_count` (kept by triggers, migration 24) against its dumps, counted:
/// `(device id, kept, counted)` for every device, by id, asserted equal. Returns the kept counts.
pub async fn assert_dump_counts_kept(app: &TestApp) -> Vec<(i64, i64)> {
    let rows: Vec<(i64, i64, i64)> = iotsupport::on_pool!(app.db(), |p| sqlx::query_as(
        "SELECT d.id, d.coredump_count,
                (SELECT COUNT(*) FROM coredumps c WHERE c.device_id = d.id)
         FROM devices d ORDER BY d.id"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    for (device, kept, counted) in &rows {
        assert_eq!(kept, counted, "device {device}: coredump_count is off");
    }
    rows.into_iter().map(|(id, kept, _)| (id, kept)).collect()
}

/// The ids of a device's dumps as the admin list shows them (newest first).
pub async fn listed_ids(app: &TestApp, device_id: i64) -> Vec<i64> {
    let (_, list) = app.list_coredumps(device_id).await;
    list["coredumps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect()
}

/// Keys of every object under `prefix`, sorted.
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

/// Dump `id` of `device`, which must exist.
pub async fn dump(app: &TestApp, device: &TestDevice, id: i64) -> Value {
    let (status, body) = app.get_coredump(device.id, id).await;
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
    let handlers = iotsupport::coredumps::default_job_handlers(
        &app.state.db,
        &app.state.storage,
        &app.state.config,
        &app.state.dump_handoff,
    );
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
