//! What the crash-group tests share (`crash_groups.rs`, `crash_group_changes.rs`,
//! `crash_group_counts.rs`): the real crashes of the ESP test data, uploading and parsing them,
//! the groups as the API shows them, the events they recorded, the crash-group metrics, and the
//! check that every group's counters equal the aggregates of its ledger.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::coredumps::*;
use crate::helpers::*;

/// One crash of the test data as a device of model `sensor` reports it.
#[derive(Clone)]
pub struct Crash {
    pub dump: Vec<u8>,
    pub elf: Vec<u8>,
    /// The firmware version its dumps are uploaded with (its ELF is stored under it).
    pub version: &'static str,
}

/// `abort() in fail_once` built twice — ESP-IDF v5.3-dev with ELF-format dumps as `1.0.0`,
/// v5.4-dev with binary-format dumps as `1.1.0`: other addresses, one signature — and a
/// `StoreProhibited` in `recur_func` as `2.0.0`, another signature.
#[derive(Clone)]
pub struct Crashes {
    pub abort_v1: Crash,
    pub abort_v2: Crash,
    pub store: Crash,
}

/// The three crashes, or `None` (with a SKIP line) without the test data.
pub fn crashes() -> Option<Crashes> {
    let crash = |case, dump, elf, version| {
        testdata_case(case, dump, elf).map(|(dump, elf)| Crash { dump, elf, version })
    };
    Some(Crashes {
        abort_v1: crash(
            "esp32_elf_crc32_abort",
            "coredump.bin",
            "esp32.elf",
            "1.0.0",
        )?,
        abort_v2: crash(
            "esp32_bin_v2_1_abort",
            "coredump_bin.bin",
            "esp32_bin.elf",
            "1.1.0",
        )?,
        store: crash(
            "esp32_elf_v2_0_storeprohibited",
            "coredump.b64",
            "esp32.elf",
            "2.0.0",
        )?,
    })
}

/// Stores the ELF of each crash's build for model `code`.
pub async fn store_builds(app: &TestApp, code: &str, crashes: &Crashes) {
    for crash in [&crashes.abort_v1, &crashes.abort_v2, &crashes.store] {
        put_elf(app, code, crash.version, crash.elf.clone()).await;
    }
}

/// Uploads `crash` as `device`; returns the dump's id.
pub async fn upload_crash(app: &TestApp, device: &TestDevice, crash: &Crash) -> i64 {
    upload_ok(app, device, crash.version, &crash.dump).await
}

/// Waits until dump `id` is parsed (it must be) and returns it.
pub async fn parsed(app: &TestApp, device: &TestDevice, id: i64) -> Value {
    let body = settled(app, device, id, Duration::from_secs(60)).await;
    assert_eq!(body["parse_status"], "PARSED", "{body}");
    body
}

/// Uploads `crash` as `device` and waits until it is parsed; returns the dump.
pub async fn crash_and_parse(app: &TestApp, device: &TestDevice, crash: &Crash) -> Value {
    let id = upload_crash(app, device, crash).await;
    parsed(app, device, id).await
}

/// The model's groups (`query` as in the URL).
pub async fn groups(app: &TestApp, model_id: i64, query: &str) -> Vec<Value> {
    let (status, body) = app.list_crash_groups(model_id, query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["count"],
        body["crash_groups"].as_array().unwrap().len()
    );
    body["crash_groups"].as_array().unwrap().clone()
}

/// One group, which must exist.
pub async fn group(app: &TestApp, id: i64) -> Value {
    let (status, body) = app.get_crash_group(id).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The payloads of the recorded events of type `kind`, oldest first.
pub async fn events_of(app: &TestApp, kind: &str) -> Vec<Value> {
    iotsupport::events::after(app.db(), &mut iotsupport::events::Cursor::new(0), 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect()
}

/// The `crash_group_id` of dump `id` as the core-dump API shows it.
pub async fn group_of(app: &TestApp, device: &TestDevice, id: i64) -> Value {
    dump(app, device, id).await["crash_group_id"].clone()
}

/// Held by every test that reopens a group (a regression), so each one reads exact deltas of
/// `crash_group_regressions_total`: the metrics recorder is one for this whole test binary.
pub static REOPENING_GROUPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The value of the unlabelled series `name` in a Prometheus text; `None` when it is absent (a
/// counter appears when it is first incremented).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        Some(value.parse().expect("a metric value"))
    })
}

/// `crash_group_regressions_total` as `GET /metrics` shows it (0 before the first regression).
pub async fn regressions_total(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "crash_group_regressions_total").unwrap_or(0.0)
}

/// Checks that `GET /metrics` shows `want` open groups. The gauge is set from the app's database
/// when `/metrics` is scraped; the recorder is one for this whole test binary, so another test's
/// app scraping at the same moment can set its own number between this app's setting and
/// rendering it. A scrape showing another number is therefore retried for a few seconds.
pub async fn assert_open_groups(app: &TestApp, want: f64) {
    let shown = eventually(Duration::from_secs(5), || async {
        metric_value(&app.metrics().await, "crash_groups_open") == Some(want)
    })
    .await;
    let text = app.metrics().await;
    assert!(
        shown,
        "crash_groups_open should be {want}: {:?}",
        metric_value(&text, "crash_groups_open")
    );
}

type Times = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// Checks the architecture invariant of crash groups: each group's counters, first and last
/// seen, and per-version counters equal the aggregates of its ledger entries.
pub async fn assert_counts_match_ledger(app: &TestApp) {
    let db = app.db();
    let counters: Vec<(i64, i64, i64)> = iotsupport::on_pool!(db, |p| sqlx::query_as(
        "SELECT id, coredump_count, device_count FROM crash_groups ORDER BY id"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    let ledger: Vec<(i64, i64, i64)> = iotsupport::on_pool!(db, |p| sqlx::query_as(
        "SELECT g.id, COUNT(m.coredump_id), COUNT(DISTINCT m.device_id)
         FROM crash_groups g LEFT JOIN crash_group_members m ON m.crash_group_id = g.id
         GROUP BY g.id ORDER BY g.id"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    assert_eq!(counters, ledger, "group counters vs ledger");
    let seen: Vec<Times> = iotsupport::on_pool!(db, |p| sqlx::query_as(
        "SELECT g.first_seen_at, g.last_seen_at FROM crash_groups g
         WHERE EXISTS (SELECT 1 FROM crash_group_members m WHERE m.crash_group_id = g.id)
         ORDER BY g.id"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    let ledger_seen: Vec<Times> = iotsupport::on_pool!(db, |p| sqlx::query_as(
        "SELECT MIN(uploaded_at), MAX(uploaded_at) FROM crash_group_members
         GROUP BY crash_group_id ORDER BY crash_group_id"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    assert_eq!(seen, ledger_seen, "first/last seen vs ledger");
    let versions: Vec<(i64, String, i64, i64)> = iotsupport::on_pool!(db, |p| sqlx::query_as(
        "SELECT crash_group_id, firmware_version, coredump_count, device_count
         FROM crash_group_versions ORDER BY crash_group_id, firmware_version"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    let ledger_versions: Vec<(i64, String, i64, i64)> =
        iotsupport::on_pool!(db, |p| sqlx::query_as(
            "SELECT crash_group_id, firmware_version, COUNT(*), COUNT(DISTINCT device_id)
             FROM crash_group_members GROUP BY crash_group_id, firmware_version
             ORDER BY crash_group_id, firmware_version"
        )
        .fetch_all(p)
        .await)
        .unwrap();
    assert_eq!(versions, ledger_versions, "version counters vs ledger");
}

/// A crash group of `model_id` written straight into the table (no dumps behind it): for lists
/// and pages that only read groups. `n` makes its signature, hash and title (`crash number n`).
pub async fn insert_group(
    app: &TestApp,
    model_id: i64,
    n: i64,
    last_seen_at: DateTime<Utc>,
    coredump_count: i64,
    device_count: i64,
) -> i64 {
    let title = format!("crash number {n}");
    iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "INSERT INTO crash_groups (device_model_id, signature_hash, signature, title,
             first_seen_at, last_seen_at, coredump_count, device_count, created_at, updated_at)
         VALUES ($1, $2, $3, $3, $4, $4, $5, $6, $4, $4) RETURNING id"
    )
    .bind(model_id)
    .bind(format!("{n:064x}"))
    .bind(&title)
    .bind(last_seen_at)
    .bind(coredump_count)
    .bind(device_count)
    .fetch_one(p)
    .await)
    .unwrap()
}
