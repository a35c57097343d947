//! `iotsupport reconcile` against real PostgreSQL and S3: what it reports, that a plain run
//! changes nothing, what --repair fixes, and the grace period that protects uploads in flight.

use std::process::Command;

use bytes::Bytes;
use iotsupport::config::StorageConfig;
use iotsupport::layout::Artifact;
use iotsupport::storage::ObjectKey;
use serde_json::{json, Value};

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_iotsupport");

fn cli_env(app: &TestApp) -> Vec<(String, String)> {
    let StorageConfig::S3(s3) = &app.state.config.storage else {
        panic!("S3 expected")
    };
    vec![
        (
            "DATABASE_URL".into(),
            app.state.config.database_url.expose().into(),
        ),
        ("S3_ENDPOINT_URL".into(), s3.endpoint_url.clone()),
        ("S3_BUCKET_NAME".into(), s3.bucket.clone()),
        ("S3_ACCESS_KEY_ID".into(), "test".into()),
        ("S3_SECRET_ACCESS_KEY".into(), "test".into()),
        ("LOG_FORMAT".into(), "text".into()),
    ]
}

fn reconcile(app: &TestApp, args: &[&str]) -> String {
    reconcile_output(app, args).0
}

/// `iotsupport reconcile ARGS`: what it printed on stdout and on stderr.
fn reconcile_output(app: &TestApp, args: &[&str]) -> (String, String) {
    let output = Command::new(BIN)
        .arg("reconcile")
        .args(args)
        .env_clear()
        .envs(cli_env(app))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    (String::from_utf8(output.stdout).unwrap(), stderr)
}

async fn exec(app: &TestApp, sql: &'static str, binds: &[&str]) {
    let now = iotsupport::db::now();
    iotsupport::on_pool!(app.db(), |p| {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(*b);
        }
        q.bind(now).execute(p).await.map(|r| r.rows_affected())
    })
    .unwrap();
}

async fn put(app: &TestApp, key: &str) {
    app.state
        .storage
        .put(&ObjectKey::parse(key).unwrap(), Bytes::from_static(b"x"))
        .await
        .unwrap();
}

async fn exists(app: &TestApp, key: &str) -> bool {
    app.state
        .storage
        .head(&ObjectKey::parse(key).unwrap())
        .await
        .is_ok()
}

/// `POST path` with `body` as the admin; the created resource.
async fn create(app: &TestApp, path: &str, body: Value) -> Value {
    let response = app.client.post(app.url(path)).json(&body).send().await;
    response.unwrap().json().await.unwrap()
}

/// The model `sensor` and one device of it.
async fn sensor_with_device(app: &TestApp) -> Value {
    let model = create(
        app,
        "/api/device-models",
        json!({"code": "sensor", "name": "S"}),
    )
    .await;
    let device = json!({"device_model_id": model["id"], "config": "{}"});
    create(app, "/api/devices", device).await
}

/// SPEC §9: a long-running command shows its progress; without a terminal, as log lines.
#[tokio::test]
async fn reconcile_says_what_it_is_doing_as_log_lines_without_a_terminal() {
    let Some(app) = spawn_app(Stack::Production, "reconcile_progress").await else {
        return;
    };
    sensor_with_device(&app).await;
    exec(&app, "INSERT INTO firmware_versions (device_model_id, version, uploaded_at) SELECT id, $1, $2 FROM device_models WHERE code = 'sensor'", &["1.0.0"]).await;
    for artifact in Artifact::ALL.map(Artifact::file_name) {
        put(&app, &format!("firmware/sensor/1.0.0/{artifact}")).await;
    }
    let (_, stderr) = reconcile_output(&app, &[]);
    let steps: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("reconcile_progress"))
        .collect();
    let said = |text: &str| steps.iter().any(|l| l.contains(text));
    assert!(said("reading the database's rows"), "{stderr}");
    for prefix in ["firmware", "coredumps"] {
        let listing = format!("listing {prefix}/ in the object store");
        assert!(said(&listing), "{stderr}");
    }
    assert!(said("checking 5 objects against 1 rows"), "{stderr}");
    app.stop().await;
}

#[tokio::test]
async fn reconcile_reports_orphans_and_dangling_rows_and_repair_fixes_them() {
    let Some(app) = spawn_app_with(
        Stack::Production,
        "reconcile",
        &[("WORKER_POLL_SECONDS", "3600")],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let device = sensor_with_device(&app).await;
    create(
        &app,
        "/api/device-models",
        json!({"code": "lamp", "name": "L"}),
    )
    .await;
    let key = device["key"].as_str().unwrap().to_string();

    // sensor: 1.0.0 complete and current, 0.9.0 missing its image and ELF, 0.8.0 missing its map
    // only (as the Python service stored builds without one); lamp: current 2.0.0 with no objects.
    for version in ["1.0.0", "0.9.0", "0.8.0"] {
        exec(&app, "INSERT INTO firmware_versions (device_model_id, version, uploaded_at) SELECT id, $1, $2 FROM device_models WHERE code = 'sensor'", &[version]).await;
        for artifact in Artifact::ALL.map(Artifact::file_name) {
            let missing = match version {
                "0.9.0" => ["firmware.bin", "firmware.elf"].contains(&artifact),
                "0.8.0" => artifact == "firmware.map",
                _ => false,
            };
            if !missing {
                put(&app, &format!("firmware/sensor/{version}/{artifact}")).await;
            }
        }
    }
    exec(&app, "INSERT INTO firmware_versions (device_model_id, version, uploaded_at) SELECT id, '2.0.0', $1 FROM device_models WHERE code = 'lamp'", &[]).await;
    exec(&app, "UPDATE device_models SET firmware_version = '1.0.0', updated_at = $1 WHERE code = 'sensor'", &[]).await;
    exec(
        &app,
        "UPDATE device_models SET firmware_version = '2.0.0', updated_at = $1 WHERE code = 'lamp'",
        &[],
    )
    .await;
    // Three dumps, the second and the third without their objects; the third was parsed.
    for _ in 0..3 {
        exec(&app, "INSERT INTO coredumps (device_id, chip, firmware_version, size, uploaded_at) SELECT id, 'esp32', '1.0.0', 1, $1 FROM devices", &[]).await;
    }
    exec(
        &app,
        "UPDATE coredumps SET parse_status = 'PARSED', parsed_output = 'the crash report', \
         parsed_at = $1 WHERE id = (SELECT MAX(id) FROM coredumps)",
        &[],
    )
    .await;
    let ids: Vec<i64> = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT id FROM coredumps ORDER BY id"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    put(&app, &format!("coredumps/{key}/{}.dmp", ids[0])).await;
    // Orphans.
    put(&app, "firmware/ghost/1/firmware.bin").await;
    put(&app, "coredumps/zzzz2222/99.dmp").await;

    let text = reconcile(&app, &["--grace", "0"]);
    assert!(
        text.contains("orphan   coredumps/zzzz2222/99.dmp"),
        "{text}"
    );
    assert!(
        text.contains("orphan   firmware/ghost/1/firmware.bin"),
        "{text}"
    );
    assert!(
        text.contains("dangling firmware sensor/0.9.0: missing firmware.bin, firmware.elf"),
        "{text}"
    );
    assert!(
        text.contains("dangling firmware sensor/0.8.0: missing firmware.map"),
        "{text}"
    );
    assert!(
        text.contains("dangling firmware lamp/2.0.0 (current version)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("dangling coredump {} (device {key})", ids[1])),
        "{text}"
    );
    assert!(text.contains("current  sensor -> 1.0.0 [ok]"), "{text}");
    assert!(
        text.contains("2 orphan(s), 3 dangling firmware version(s), 2 dangling core dump(s)"),
        "{text}"
    );
    assert!(
        exists(&app, "firmware/ghost/1/firmware.bin").await,
        "a plain run must change nothing"
    );

    // Within the grace period nothing counts as an orphan.
    let text = reconcile(&app, &["--grace", "3600"]);
    assert!(
        text.contains("0 orphan(s)") && text.contains("2 recent object(s)"),
        "{text}"
    );

    let report: Value =
        serde_json::from_str(&reconcile(&app, &["--repair", "--grace", "0", "--json"])).unwrap();
    assert_eq!(report["repair"]["orphans_queued"], 2, "{report}");
    // The two orphans and the five keys of the removed version (two of them already missing).
    assert_eq!(report["objects_deleted"], 7, "{report}");
    assert_eq!(report["repair"]["coredumps_marked_error"], 1);
    // A parsed dump keeps its report: all that is left of that crash.
    assert_eq!(report["repair"]["parsed_coredumps_left"], 1, "{report}");
    assert_eq!(report["repair"]["firmware_versions_removed"], 1);
    assert_eq!(report["repair"]["current_versions_left"], 1);
    // Still holding its image and ELF: kept, with them.
    assert_eq!(report["repair"]["incomplete_versions_left"], 1, "{report}");
    for artifact in ["firmware.bin", "firmware.elf"] {
        assert!(exists(&app, &format!("firmware/sensor/0.8.0/{artifact}")).await);
    }
    assert!(!exists(&app, "firmware/ghost/1/firmware.bin").await);
    assert!(!exists(&app, "coredumps/zzzz2222/99.dmp").await);
    assert!(
        exists(&app, "firmware/sensor/1.0.0/firmware.bin").await,
        "stored versions untouched"
    );
    let status: String = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT parse_status FROM coredumps WHERE id = $1"
    )
    .bind(ids[1])
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(status, "ERROR");
    let parsed: (String, Option<String>) = iotsupport::on_pool!(app.db(), |p| sqlx::query_as(
        "SELECT parse_status, parsed_output FROM coredumps WHERE id = $1"
    )
    .bind(ids[2])
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(parsed, ("PARSED".into(), Some("the crash report".into())));
    let versions: Vec<String> = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT version FROM firmware_versions ORDER BY version"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    assert_eq!(
        versions,
        ["0.8.0", "1.0.0", "2.0.0"],
        "the dangling current version stays for an operator, the incomplete one as it is"
    );
    assert!(
        !exists(&app, "firmware/sensor/0.9.0/firmware.bin").await,
        "the removed version's objects went through the outbox"
    );
    assert!(iotsupport::outbox::pending(app.db())
        .await
        .unwrap()
        .is_empty());

    // What repair queued is not reported as orphaned. Left: the current version for an operator,
    // the incomplete one, and the dump (now ERROR, still without its object) until someone
    // deletes it.
    let text = reconcile(&app, &["--grace", "0"]);
    assert!(
        text.contains("0 orphan(s), 2 dangling firmware version(s), 2 dangling core dump(s)"),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_optional_sweep_in_serve_exports_counts_as_metrics() {
    let overrides = [
        ("RECONCILE_INTERVAL_SECONDS", "0.2"),
        ("RECONCILE_GRACE_SECONDS", "0.001"),
    ];
    let Some(app) = spawn_app_with(
        Stack::Embedded,
        "reconcile_sweep",
        &overrides,
        Default::default(),
    )
    .await
    else {
        return;
    };
    put(&app, "firmware/ghost/1/firmware.bin").await;
    put(&app, "firmware/ghost/1/firmware.elf").await;
    let seen = eventually(std::time::Duration::from_secs(10), || async {
        let text = app.get("/metrics").await.text().await.unwrap();
        text.lines().any(|l| l == "reconcile_orphan_objects 2")
    })
    .await;
    assert!(seen, "{}", app.get("/metrics").await.text().await.unwrap());
    assert!(
        exists(&app, "firmware/ghost/1/firmware.bin").await,
        "the sweep never repairs"
    );
    app.stop().await;
}

/// `reconcile` run against the bucket of `bucket` instead of the app's.
fn reconcile_in(app: &TestApp, bucket: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("reconcile")
        .args(args)
        .env_clear()
        .envs(cli_env(app))
        .env("S3_BUCKET_NAME", bucket)
        .output()
        .unwrap()
}

/// Pointed at the wrong store (a mistyped bucket), `reconcile` neither creates the bucket nor
/// repairs a scan in which nothing the database names is stored: it would remove the versions and
/// fail the dumps, and a later run against the right bucket would find every real object an
/// orphan. `--force` repairs all the same, for objects that really are gone.
#[tokio::test]
async fn repair_refuses_a_store_that_holds_nothing_the_database_names() {
    let Some(app) = spawn_app_with(
        Stack::Production,
        "reconcile_wrong_store",
        &[("WORKER_POLL_SECONDS", "3600")],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let StorageConfig::S3(s3) = &app.state.config.storage else {
        panic!("S3 expected")
    };
    // A version and a dump, stored in the app's bucket.
    let device = sensor_with_device(&app).await;
    exec(&app, "INSERT INTO firmware_versions (device_model_id, version, uploaded_at) SELECT id, '1.0.0', $1 FROM device_models WHERE code = 'sensor'", &[]).await;
    for artifact in Artifact::ALL.map(Artifact::file_name) {
        put(&app, &format!("firmware/sensor/1.0.0/{artifact}")).await;
    }
    exec(&app, "INSERT INTO coredumps (device_id, chip, firmware_version, size, uploaded_at) SELECT id, 'esp32', '1.0.0', 1, $1 FROM devices", &[]).await;
    let dump: i64 =
        iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar("SELECT id FROM coredumps")
            .fetch_one(p)
            .await)
        .unwrap();
    put(
        &app,
        &format!("coredumps/{}/{dump}.dmp", device["key"].as_str().unwrap()),
    )
    .await;
    let rows = || async {
        let versions: i64 = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM firmware_versions"
        )
        .fetch_one(p)
        .await)
        .unwrap();
        let status: String = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
            "SELECT parse_status FROM coredumps"
        )
        .fetch_one(p)
        .await)
        .unwrap();
        (versions, status)
    };

    // A bucket that does not exist: an error, and it is not created.
    let other = format!("{}-mistyped", s3.bucket);
    let run = reconcile_in(&app, &other, &["--repair", "--grace", "0"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("the bucket does not exist"), "{stderr}");
    let mut other_config = s3.clone();
    other_config.bucket = other.clone();
    assert!(
        iotsupport::storage::bucket::ensure_bucket(&other_config)
            .await
            .unwrap(),
        "reconcile created the bucket"
    );

    // The bucket exists now, empty: the scan says so, and repair refuses and changes nothing.
    let run = reconcile_in(&app, &other, &["--grace", "0"]);
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("warning: the object store holds nothing"),
        "{text}"
    );
    let run = reconcile_in(&app, &other, &["--repair", "--grace", "0"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("refusing to repair"), "{stderr}");
    // What the scan found is still shown, and in JSON with the refusal.
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains("dangling coredump"), "{text}");
    let run = reconcile_in(&app, &other, &["--repair", "--grace", "0", "--json"]);
    assert!(!run.status.success());
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(
        report["repair_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("refusing to repair")),
        "{report}"
    );
    assert_eq!(
        report["report"]["dangling_coredumps"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(rows().await, (1, "PENDING".to_string()));
    assert!(iotsupport::outbox::pending(app.db())
        .await
        .unwrap()
        .is_empty());

    // Another deployment's bucket: objects, none of them this database's. Refused as well, and
    // its objects (orphans to this database) are left alone.
    let theirs = iotsupport::storage::backend::ObjectStoreBackend::s3(&other_config).unwrap();
    let their_key = ObjectKey::parse("firmware/lamp/9.9.9/firmware.bin").unwrap();
    iotsupport::storage::ObjectStorage::put(&theirs, &their_key, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let run = reconcile_in(&app, &other, &["--repair", "--grace", "0"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("none of the 2 row(s) checked"), "{stderr}");
    assert!(
        iotsupport::storage::ObjectStorage::head(&theirs, &their_key)
            .await
            .is_ok()
    );
    assert!(iotsupport::outbox::pending(app.db())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(rows().await, (1, "PENDING".to_string()));

    // Against the right bucket all is well; with --force the empty one is repaired.
    assert!(reconcile(&app, &["--grace", "0"]).contains("0 orphan(s), 0 dangling"));
    let run = reconcile_in(
        &app,
        &other,
        &["--repair", "--force", "--grace", "0", "--json"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["repair"]["coredumps_marked_error"], 1, "{report}");
    assert_eq!(report["repair"]["firmware_versions_removed"], 1, "{report}");
    app.stop().await;
}

/// The mirror image of the wrong store: a database that names nothing (or little) of what the
/// bucket holds (an empty or freshly migrated one, a restore not yet loaded, the Python service's
/// bucket before its database was adopted). Every object would be an orphan, and a repair would
/// delete the fleet's firmware and dumps; it is refused, and nothing is queued or deleted.
#[tokio::test]
async fn repair_refuses_a_database_that_names_nothing_the_store_holds() {
    let Some(app) = spawn_app_with(
        Stack::Production,
        "reconcile_wrong_database",
        &[("WORKER_POLL_SECONDS", "3600")],
        Default::default(),
    )
    .await
    else {
        return;
    };
    let firmware: Vec<String> = Artifact::ALL
        .map(|a| format!("firmware/sensor/1.0.0/{}", a.file_name()))
        .to_vec();
    for key in &firmware {
        put(&app, key).await;
    }
    put(&app, "coredumps/abcd2345/7.dmp").await;
    let nothing_queued = || async {
        iotsupport::outbox::pending(app.db())
            .await
            .unwrap()
            .is_empty()
    };

    // A grace period beyond 100 years is a usage error (it overflowed the time arithmetic).
    let run = reconcile_in(&app, &bucket_of(&app), &["--grace", "9999999999999"]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");

    // The database is empty: refused, everything stays.
    let run = reconcile_in(&app, &bucket_of(&app), &["--repair", "--grace", "0"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("the database names no firmware or core dumps"),
        "{stderr}"
    );
    for key in firmware
        .iter()
        .map(String::as_str)
        .chain(["coredumps/abcd2345/7.dmp"])
    {
        assert!(exists(&app, key).await, "{key} was deleted");
    }
    assert!(nothing_queued().await);

    // A database that names one version (five objects) of a bucket holding thirteen more.
    sensor_with_device(&app).await;
    exec(&app, "INSERT INTO firmware_versions (device_model_id, version, uploaded_at) SELECT id, '1.0.0', $1 FROM device_models WHERE code = 'sensor'", &[]).await;
    let others: Vec<String> = (100..112)
        .map(|id| format!("coredumps/abcd2345/{id}.dmp"))
        .collect();
    for key in &others {
        put(&app, key).await;
    }
    let run = reconcile_in(&app, &bucket_of(&app), &["--repair", "--grace", "0"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("13 object(s) have no row, more than the 5 the database names"),
        "{stderr}"
    );
    assert!(exists(&app, "coredumps/abcd2345/100.dmp").await);
    assert!(nothing_queued().await);
    // A plain scan says why, and --force repairs all the same.
    let text = reconcile(&app, &["--grace", "0"]);
    assert!(text.contains("13 object(s) have no row"), "{text}");
    let run = reconcile_in(
        &app,
        &bucket_of(&app),
        &["--repair", "--force", "--grace", "0"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for key in &others {
        assert!(!exists(&app, key).await, "{key} was kept");
    }
    for key in &firmware {
        assert!(exists(&app, key).await, "{key} was deleted");
    }
    app.stop().await;
}

/// The Python service stored versions literally, `%` included: an adopted `2.1%7Erc1` owns
/// `firmware/sensor/2.1%7Erc1/…`, which an earlier release of ours would have written for
/// `2.1~rc1`. Such a version is reported as unsupported and its objects are left alone, not
/// taken for orphans of `2.1~rc1`.
#[tokio::test]
async fn a_version_the_python_service_stored_with_a_percent_keeps_its_objects() {
    let Some(app) = spawn_app_with(
        Stack::Production,
        "reconcile_percent_version",
        &[("WORKER_POLL_SECONDS", "3600")],
        Default::default(),
    )
    .await
    else {
        return;
    };
    sensor_with_device(&app).await;
    let mut keys = Vec::new();
    for version in ["1.0.0", "2.1%7Erc1", "2.1~rc1"] {
        exec(&app, "INSERT INTO firmware_versions (device_model_id, version, uploaded_at) SELECT id, $1, $2 FROM device_models WHERE code = 'sensor'", &[version]).await;
        for artifact in Artifact::ALL {
            let key = format!("firmware/sensor/{version}/{}", artifact.file_name());
            put(&app, &key).await;
            keys.push(key);
        }
    }
    let run = reconcile_in(
        &app,
        &bucket_of(&app),
        &["--repair", "--grace", "0", "--json"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let out: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(out["report"]["orphans"], json!([]), "{out}");
    assert_eq!(out["report"]["misplaced"], json!([]), "{out}");
    assert_eq!(
        out["report"]["unsupported_versions"][0]["version"], "2.1%7Erc1",
        "{out}"
    );
    for key in &keys {
        assert!(exists(&app, key).await, "{key} was deleted");
    }

    // `2.1%7Erc1/…` is also how an earlier release spelt `2.1~rc1`'s keys, but here they are the
    // literal version's: the rekey job does not move them, and deleting `2.1~rc1` leaves them.
    let storage = app.state.storage.clone();
    assert_eq!(
        iotsupport::reconcile::rekey_legacy_encoded(app.db(), &storage)
            .await
            .unwrap(),
        0
    );
    assert!(iotsupport::outbox::pending(app.db())
        .await
        .unwrap()
        .is_empty());
    let model_id: i64 = iotsupport::on_pool!(app.db(), |p| sqlx::query_scalar(
        "SELECT id FROM device_models WHERE code = 'sensor'"
    )
    .fetch_one(p)
    .await)
    .unwrap();
    let deleted = app
        .client
        .delete(app.url(&format!("/api/device-models/{model_id}/firmware/2.1~rc1")))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    iotsupport::outbox::process_due(app.db(), &storage)
        .await
        .unwrap();
    for key in &keys {
        let gone = key.starts_with("firmware/sensor/2.1~rc1/");
        assert_eq!(!exists(&app, key).await, gone, "{key}");
    }
    app.stop().await;
}

fn bucket_of(app: &TestApp) -> String {
    let StorageConfig::S3(s3) = &app.state.config.storage else {
        panic!("S3 expected")
    };
    s3.bucket.clone()
}
